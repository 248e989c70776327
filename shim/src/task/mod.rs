//! containerd's Task API mapped onto vessel sandboxes.

mod lifecycle;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{TaskExecAdded, TaskPaused, TaskResumed};
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use vessel_runtime::mounts::Mounter;
use vessel_runtime::vm::VmBackend;
use vessel_runtime::{Config, Sandbox};

use crate::errors::TaskError;
use crate::events::EventSink;
use crate::io::StdioPaths;
use state::{lock, Container, Proc, ProcStatus};

/// What the task service needs from its surroundings.
pub struct TaskServiceDeps {
    pub namespace: String,
    pub events: Arc<dyn EventSink>,
    /// The runtime configuration, or why it could not be loaded (reported on Create).
    pub config: Result<Arc<Config>, String>,
    pub backend: Arc<dyn VmBackend>,
    pub mounter: Arc<dyn Mounter>,
    /// Signalled on Shutdown once no task is left: the shim then exits.
    pub exit: Arc<ExitSignal>,
}

pub(crate) struct Inner {
    deps: TaskServiceDeps,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    creating: Mutex<HashSet<String>>,
}

/// The Task API service.
pub struct TaskService {
    inner: Arc<Inner>,
}

impl TaskService {
    pub fn new(deps: TaskServiceDeps) -> TaskService {
        TaskService {
            inner: Arc::new(Inner {
                deps,
                containers: Mutex::default(),
                sandboxes: Mutex::default(),
                creating: Mutex::default(),
            }),
        }
    }
}

impl Inner {
    fn container(&self, id: &str) -> Result<Arc<Container>, TaskError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("container {id}")))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Proc>), TaskError> {
        let c = self.container(id)?;
        let p = c
            .process(exec_id)
            .ok_or_else(|| TaskError::NotFound(format!("process {exec_id} of container {id}")))?;
        Ok((c, p))
    }

    fn publish(&self, topic: &'static str, event: Box<dyn protobuf::MessageDyn>) {
        self.deps.events.publish(topic, event);
    }
}

fn status_of(s: ProcStatus) -> Status {
    match s {
        ProcStatus::Created => Status::CREATED,
        ProcStatus::Running => Status::RUNNING,
        ProcStatus::Paused => Status::PAUSED,
        ProcStatus::Stopped => Status::STOPPED,
    }
}

fn task_pid(c: &Container) -> u32 {
    u32::try_from(c.sandbox.vmm_pid()).unwrap_or(0)
}

fn ctx_err(what: String) -> impl FnOnce(vessel_runtime::SandboxError) -> TaskError {
    move |e| TaskError::sandbox(what, e)
}

impl Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        log::info!("Create {} (bundle {})", req.id, req.bundle);
        lifecycle::create(&self.inner, req).map_err(|e| {
            log::error!("Create: {e}");
            e.into()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        log::info!("Start {} {}", req.id, req.exec_id);
        lifecycle::start(&self.inner, &req.id, &req.exec_id).map_err(|e| {
            log::error!("Start: {e}");
            e.into()
        })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        log::info!("Delete {} {}", req.id, req.exec_id);
        lifecycle::delete(&self.inner, &req.id, &req.exec_id).map_err(|e| {
            log::error!("Delete: {e}");
            e.into()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let (c, p) = self.inner.process(&req.id, &req.exec_id)?;
        let info = p.info();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: task_pid(&c),
            status: status_of(info.status).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: info.exit_status,
            exited_at: info.exited_at.into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        log::info!(
            "Kill {} {} signal {} all={}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        let (c, p) = self.inner.process(&req.id, &req.exec_id)?;
        match p.info().status {
            ProcStatus::Stopped => {
                return Err(
                    TaskError::NotFound(format!("{}: process already finished", p.label())).into(),
                )
            }
            ProcStatus::Created if !req.exec_id.is_empty() => {
                return Err(TaskError::FailedPrecondition(format!(
                    "{}: process not created",
                    p.label()
                ))
                .into())
            }
            _ => {}
        }
        c.sandbox
            .signal_process(&req.id, &req.exec_id, req.signal, req.all)
            .map_err(ctx_err(format!("kill {}", p.label())))?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        log::info!(
            "Exec {} {} terminal={} stdin={:?}",
            req.id,
            req.exec_id,
            req.terminal,
            req.stdin
        );
        let c = self.inner.container(&req.id)?;
        vessel_runtime::state::validate_id(&req.exec_id)
            .map_err(|e| TaskError::InvalidArgument(format!("exec id: {e}")))?;
        if c.init.info().status == ProcStatus::Stopped {
            return Err(TaskError::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            ))
            .into());
        }
        let spec: oci_spec::runtime::Process =
            serde_json::from_slice(&req.spec.value).map_err(|e| {
                TaskError::InvalidArgument(format!(
                    "exec {}/{}: process spec: {e}",
                    req.id, req.exec_id
                ))
            })?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(
                    TaskError::AlreadyExists(format!("exec {}/{}", req.id, req.exec_id)).into(),
                );
            }
            execs.insert(
                req.exec_id.clone(),
                Arc::new(Proc::new(&req.id, &req.exec_id, stdio, Some(spec))),
            );
        }
        self.inner.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let (c, p) = self.inner.process(&req.id, &req.exec_id)?;
        if p.stdio.terminal && p.info().status != ProcStatus::Stopped {
            c.sandbox
                .resize_tty(&req.id, &req.exec_id, req.height, req.width)
                .map_err(ctx_err(format!("resize {}", p.label())))?;
        }
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let (_, p) = self.inner.process(&req.id, &req.exec_id)?;
        if req.stdin {
            p.close_stdin();
        }
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let (_, p) = self.inner.process(&req.id, &req.exec_id)?;
        let info = p.wait_exit();
        Ok(WaitResponse {
            exit_status: info.exit_status,
            exited_at: info.exited_at.into(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let c = self.inner.container(&req.id)?;
        let pids = c
            .sandbox
            .list_processes(&req.id)
            .map_err(ctx_err(format!("pids {}", req.id)))?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        c.sandbox
            .pause_container(&req.id)
            .map_err(ctx_err(format!("pause {}", req.id)))?;
        c.init.set_status(ProcStatus::Paused);
        self.inner.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        c.sandbox
            .resume_container(&req.id)
            .map_err(ctx_err(format!("resume {}", req.id)))?;
        c.init.set_status(ProcStatus::Running);
        self.inner.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let c = self.inner.container(&req.id)?;
        let s = c
            .sandbox
            .stats_container(&req.id)
            .map_err(ctx_err(format!("stats {}", req.id)))?;
        let any = containerd_shim::util::convert_to_any(Box::new(crate::stats::to_metrics(&s)))
            .map_err(|e| TaskError::Internal(format!("stats {}: {e}", req.id)))?;
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&req.resources.value).map_err(|e| {
                TaskError::InvalidArgument(format!("update {}: resources: {e}", req.id))
            })?;
        c.sandbox
            .update_container(&req.id, &resources)
            .map_err(ctx_err(format!("update {}", req.id)))?;
        Ok(Empty::new())
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .inner
            .container(&req.id)
            .map(|c| task_pid(&c))
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("vessel {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        let left = lock(&self.inner.containers).len();
        if left == 0 && lock(&self.inner.creating).is_empty() {
            log::info!("Shutdown: no task left, exiting");
            self.inner.deps.exit.signal();
        } else {
            log::info!("Shutdown: {left} task(s) left, staying");
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::status;
    use containerd_shim::protos::shim_sync::TaskClient;
    use containerd_shim::protos::ttrpc::context::Context;

    #[derive(Default)]
    struct RecordingEvents(Mutex<Vec<&'static str>>);
    impl EventSink for RecordingEvents {
        fn publish(&self, topic: &'static str, _event: Box<dyn protobuf::MessageDyn>) {
            lock(&self.0).push(topic);
        }
    }

    /// The task service behind a real ttrpc server on a temp socket, and a client for it.
    struct Served {
        _dir: tempfile::TempDir,
        server: containerd_shim::protos::ttrpc::Server,
        client: TaskClient,
        events: Arc<RecordingEvents>,
        exit: Arc<ExitSignal>,
    }

    fn serve(config: Result<Arc<Config>, String>) -> Served {
        let events = Arc::new(RecordingEvents::default());
        let exit = Arc::new(ExitSignal::default());
        let svc = TaskService::new(TaskServiceDeps {
            namespace: "t".into(),
            events: events.clone(),
            config,
            backend: Arc::new(vessel_runtime::vm::vmm::VmmBackend),
            mounter: Arc::new(vessel_runtime::mounts::HostMounter),
            exit: exit.clone(),
        });
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("shim.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut server = containerd_shim::protos::ttrpc::Server::new()
            .add_listener(std::os::fd::IntoRawFd::into_raw_fd(listener))
            .unwrap()
            .register_service(crate::bootstrap::task_methods(Arc::new(svc)));
        server.start().unwrap();
        let client = TaskClient::new(
            containerd_shim::protos::ttrpc::Client::connect(&format!("unix://{}", sock.display()))
                .unwrap(),
        );
        Served {
            _dir: dir,
            server,
            client,
            events,
            exit,
        }
    }

    fn code<T: std::fmt::Debug>(r: TtrpcResult<T>) -> (i32, String) {
        match r {
            Err(ttrpc::Error::RpcStatus(s)) => (s.code.value(), s.message),
            other => panic!("expected a status, got {other:?}"),
        }
    }

    fn cx() -> Context {
        ttrpc::context::with_timeout(30_000_000_000)
    }

    #[test]
    fn unknown_task_is_not_found_everywhere() {
        let s = serve(Ok(Arc::new(Config::default())));
        let c = &s.client;
        let id = || "nope".to_string();
        let k = KillRequest {
            id: id(),
            signal: 9,
            ..Default::default()
        };
        assert_eq!(code(c.kill(cx(), &k)).0, status::NOT_FOUND);
        let st = StateRequest {
            id: id(),
            ..Default::default()
        };
        assert_eq!(code(c.state(cx(), &st)).0, status::NOT_FOUND);
        let d = DeleteRequest {
            id: id(),
            ..Default::default()
        };
        assert_eq!(code(c.delete(cx(), &d)).0, status::NOT_FOUND);
        let w = WaitRequest {
            id: id(),
            ..Default::default()
        };
        assert_eq!(code(c.wait(cx(), &w)).0, status::NOT_FOUND);
        let sr = StartRequest {
            id: id(),
            ..Default::default()
        };
        assert_eq!(code(c.start(cx(), &sr)).0, status::NOT_FOUND);
        let e = ExecProcessRequest {
            id: id(),
            exec_id: "e1".into(),
            ..Default::default()
        };
        assert_eq!(code(c.exec(cx(), &e)).0, status::NOT_FOUND);
        assert!(lock(&s.events.0).is_empty(), "no event for failed calls");
        // Shutdown with nothing left lets the shim exit.
        c.shutdown(cx(), &ShutdownRequest::default()).unwrap();
        s.exit.wait();
        s.server.shutdown();
    }

    #[test]
    fn bad_create_requests_are_invalid_argument_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let req = |id: &str| CreateTaskRequest {
            id: id.into(),
            bundle: dir.path().display().to_string(),
            ..Default::default()
        };
        let s = serve(Err(
            "config t.toml: hypervisor.vcpus = 0: must be between 1 and 254".into(),
        ));
        let (c, msg) = code(s.client.create(cx(), &req("c1")));
        assert_eq!(c, status::INVALID_ARGUMENT);
        assert!(msg.contains("hypervisor.vcpus"), "{msg}");
        s.server.shutdown();

        let s = serve(Ok(Arc::new(Config::default())));
        // No config.json in the bundle.
        let (c, msg) = code(s.client.create(cx(), &req("c1")));
        assert_eq!(c, status::INVALID_ARGUMENT, "{msg}");
        assert!(msg.contains("config.json"), "{msg}");
        // An id that cannot be a path component.
        assert_eq!(
            code(s.client.create(cx(), &req("../x"))).0,
            status::INVALID_ARGUMENT
        );
        assert!(lock(&s.events.0).is_empty());
        s.server.shutdown();
    }
}
