//! containerd's Task API as an adapter over [`vessel_runtime::Pods`]: requests in, ttrpc
//! status codes and containerd events out. The pods, their containers, processes, stdio,
//! mounts and cleanup all live in the runtime.

use std::sync::Arc;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use vessel_runtime::config::LoadedConfig;
use vessel_runtime::mounts::Mounter;
use vessel_runtime::pod::{
    CreateRequest, ExitEvent, PodEvents, ProcInfo, ProcStatus, StdioPaths, TaskState,
};
use vessel_runtime::rootfs::RootfsMount;
use vessel_runtime::vm::VmBackend;
use vessel_runtime::{Pods, PodsDeps};

use crate::errors::TaskError;
use crate::events::EventSink;

/// What the task service needs from its surroundings.
pub struct TaskServiceDeps {
    pub namespace: String,
    pub events: Arc<dyn EventSink>,
    /// The runtime configuration, or why it could not be loaded (reported on Create).
    pub config: LoadedConfig,
    pub backend: Arc<dyn VmBackend>,
    pub mounter: Arc<dyn Mounter>,
    /// Signalled on Shutdown once no task is left: the shim then exits.
    pub exit: Arc<ExitSignal>,
}

/// The Task API service.
pub struct TaskService {
    pods: Pods,
    events: Arc<dyn EventSink>,
    exit: Arc<ExitSignal>,
    /// containerd asked us to shut down while tasks were left: exit once the last is
    /// deleted (containerd may not ask again, e.g. after a slow Delete it gave up on).
    shutdown_asked: std::sync::atomic::AtomicBool,
}

/// The runtime's exits and OOMs as containerd events.
struct Publisher(Arc<dyn EventSink>);

impl PodEvents for Publisher {
    fn exited(&self, e: &ExitEvent) {
        self.0.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: e.container_id.clone(),
                id: if e.exec_id.is_empty() {
                    e.container_id.clone()
                } else {
                    e.exec_id.clone()
                },
                pid: e.pid,
                exit_status: e.exit_status,
                exited_at: Some(timestamp(e.exited_at_ns)).into(),
                ..Default::default()
            }),
        );
    }

    fn oom(&self, container_id: &str) {
        self.0.publish(
            topics::TASK_OOM_EVENT_TOPIC,
            Box::new(TaskOOM {
                container_id: container_id.to_string(),
                ..Default::default()
            }),
        );
    }
}

impl TaskService {
    pub fn new(deps: TaskServiceDeps) -> TaskService {
        let pods = Pods::new(PodsDeps {
            namespace: deps.namespace,
            config: deps.config,
            backend: deps.backend,
            mounter: deps.mounter,
            events: Arc::new(Publisher(Arc::clone(&deps.events))),
        });
        TaskService {
            pods,
            events: deps.events,
            exit: deps.exit,
            shutdown_asked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn publish(&self, topic: &'static str, event: Box<dyn protobuf::MessageDyn>) {
        self.events.publish(topic, event);
    }
}

/// Unix nanoseconds (0: unknown) as a protobuf timestamp.
pub fn timestamp(ns: u64) -> Timestamp {
    Timestamp {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
        ..Default::default()
    }
}

fn exited_at(info: &ProcInfo) -> Option<Timestamp> {
    (info.status == ProcStatus::Stopped).then(|| timestamp(info.exited_at_ns))
}

fn status_of(s: ProcStatus) -> Status {
    match s {
        ProcStatus::Created => Status::CREATED,
        ProcStatus::Running => Status::RUNNING,
        ProcStatus::Paused => Status::PAUSED,
        ProcStatus::Stopped => Status::STOPPED,
    }
}

/// Logs a failed call and turns it into containerd's status.
fn fail(call: &str, e: impl Into<TaskError>) -> ttrpc::Error {
    let e = e.into();
    log::error!("{call}: {}", e.message());
    e.into()
}

fn state_response(id: &str, exec_id: &str, s: &TaskState) -> StateResponse {
    StateResponse {
        id: id.to_string(),
        bundle: s.bundle.display().to_string(),
        pid: s.pid,
        status: status_of(s.info.status).into(),
        stdin: s.stdio.stdin.clone(),
        stdout: s.stdio.stdout.clone(),
        stderr: s.stdio.stderr.clone(),
        terminal: s.stdio.terminal,
        exit_status: s.info.exit_status,
        exited_at: exited_at(&s.info).into(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    }
}

impl Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        log::info!(container = req.id.as_str(); "Create {} (bundle {})", req.id, req.bundle);
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let pid = self
            .pods
            .create(CreateRequest {
                id: req.id.clone(),
                bundle: req.bundle.clone().into(),
                rootfs: req
                    .rootfs
                    .iter()
                    .map(|m| RootfsMount {
                        typ: m.type_.clone(),
                        source: m.source.clone(),
                        options: m.options.clone(),
                    })
                    .collect(),
                stdio,
            })
            .map_err(|e| fail("Create", e))?;
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        );
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        log::info!(container = req.id.as_str(); "Start {} {}", req.id, req.exec_id);
        let pid = self
            .pods
            .start(&req.id, &req.exec_id)
            .map_err(|e| fail("Start", e))?;
        if req.exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        log::info!(container = req.id.as_str(); "Delete {} {}", req.id, req.exec_id);
        let deleted = self
            .pods
            .delete(&req.id, &req.exec_id)
            .map_err(|e| fail("Delete", e))?;
        let s = &deleted.state;
        if req.exec_id.is_empty() {
            self.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    id: req.id.clone(),
                    pid: s.pid,
                    exit_status: s.info.exit_status,
                    exited_at: exited_at(&s.info).into(),
                    ..Default::default()
                }),
            );
        }
        if self.pods.is_idle()
            && self
                .shutdown_asked
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            log::info!("Delete: no task left after an earlier Shutdown, exiting");
            self.exit.signal();
        }
        deleted.cleanup.map_err(|e| fail("Delete", e))?;
        Ok(DeleteResponse {
            pid: s.pid,
            exit_status: s.info.exit_status,
            exited_at: exited_at(&s.info).into(),
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let s = self
            .pods
            .state(&req.id, &req.exec_id)
            .map_err(TaskError::from)?;
        Ok(state_response(&req.id, &req.exec_id, &s))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        log::info!(
            container = req.id.as_str();
            "Kill {} {} signal {} all={}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        self.pods
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .map_err(|e| fail("Kill", e))?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        log::info!(
            container = req.id.as_str();
            "Exec {} {} terminal={} stdin={:?}",
            req.id,
            req.exec_id,
            req.terminal,
            req.stdin
        );
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.pods
            .exec(&req.id, &req.exec_id, &req.spec.value, stdio)
            .map_err(|e| fail("Exec", e))?;
        self.publish(
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
        self.pods
            .resize_pty(&req.id, &req.exec_id, req.height, req.width)
            .map_err(|e| fail("ResizePty", e))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            self.pods
                .close_stdin(&req.id, &req.exec_id)
                .map_err(TaskError::from)?;
        } else {
            self.pods
                .state(&req.id, &req.exec_id)
                .map_err(TaskError::from)?;
        }
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let info = self
            .pods
            .wait(&req.id, &req.exec_id)
            .map_err(TaskError::from)?;
        Ok(WaitResponse {
            exit_status: info.exit_status,
            exited_at: exited_at(&info).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = self.pods.pids(&req.id).map_err(|e| fail("Pids", e))?;
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
        self.pods.pause(&req.id).map_err(|e| fail("Pause", e))?;
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.pods.resume(&req.id).map_err(|e| fail("Resume", e))?;
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let s = self.pods.stats(&req.id).map_err(|e| fail("Stats", e))?;
        let any = containerd_shim::util::convert_to_any(Box::new(crate::stats::to_metrics(&s)))
            .map_err(|e| {
                fail(
                    "Stats",
                    TaskError::Internal(format!("stats {}: {e}", req.id)),
                )
            })?;
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.pods
            .update(&req.id, &req.resources.value)
            .map_err(|e| fail("Update", e))?;
        Ok(Empty::new())
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.pods.task_pid(&req.id).unwrap_or(0),
            version: format!("vessel {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.pods.is_idle() {
            log::info!("Shutdown: no task left, exiting");
            self.exit.signal();
        } else {
            log::info!(
                "Shutdown: {} task(s) left, staying until they are deleted",
                self.pods.len()
            );
            self.shutdown_asked
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::shim_sync::TaskClient;
    use containerd_shim::protos::ttrpc::context::Context;
    use std::sync::Mutex;
    use vessel_runtime::Config;

    #[derive(Default)]
    struct RecordingEvents(Mutex<Vec<&'static str>>);
    impl EventSink for RecordingEvents {
        fn publish(&self, topic: &'static str, _event: Box<dyn protobuf::MessageDyn>) {
            self.0.lock().unwrap().push(topic);
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

    fn serve(config: LoadedConfig) -> Served {
        let events = Arc::new(RecordingEvents::default());
        let exit = Arc::new(ExitSignal::default());
        let svc = TaskService::new(TaskServiceDeps {
            namespace: "t".into(),
            events: events.clone(),
            config,
            backend: Arc::new(vessel_runtime::vm::vmm::VmmBackend::default()),
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

    fn code<T: std::fmt::Debug>(r: TtrpcResult<T>) -> (ttrpc::Code, String) {
        match r {
            Err(ttrpc::Error::RpcStatus(s)) => (s.code.enum_value_or_default(), s.message),
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
        let nf = ttrpc::Code::NOT_FOUND;
        let k = KillRequest {
            id: id(),
            signal: 9,
            ..Default::default()
        };
        assert_eq!(code(c.kill(cx(), &k)).0, nf);
        let st = StateRequest {
            id: id(),
            ..Default::default()
        };
        assert_eq!(code(c.state(cx(), &st)).0, nf);
        let d = DeleteRequest {
            id: id(),
            ..Default::default()
        };
        assert_eq!(code(c.delete(cx(), &d)).0, nf);
        let w = WaitRequest {
            id: id(),
            ..Default::default()
        };
        assert_eq!(code(c.wait(cx(), &w)).0, nf);
        let sr = StartRequest {
            id: id(),
            ..Default::default()
        };
        assert_eq!(code(c.start(cx(), &sr)).0, nf);
        let e = ExecProcessRequest {
            id: id(),
            exec_id: "e1".into(),
            ..Default::default()
        };
        assert_eq!(code(c.exec(cx(), &e)).0, nf);
        assert!(
            s.events.0.lock().unwrap().is_empty(),
            "no event for failed calls"
        );
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
        let inv = ttrpc::Code::INVALID_ARGUMENT;
        let bad = Config::from_toml("[hypervisor]\nvcpus = 0\n", "t.toml").unwrap_err();
        let s = serve(Err(Arc::new(bad)));
        let (c, msg) = code(s.client.create(cx(), &req("c1")));
        assert_eq!(c, inv);
        assert!(msg.contains("hypervisor.vcpus"), "{msg}");
        s.server.shutdown();

        let s = serve(Ok(Arc::new(Config::default())));
        // No config.json in the bundle.
        let (c, msg) = code(s.client.create(cx(), &req("c1")));
        assert_eq!(c, inv, "{msg}");
        assert!(msg.contains("config.json"), "{msg}");
        // An id that cannot be a path component.
        assert_eq!(code(s.client.create(cx(), &req("../x"))).0, inv);
        assert!(s.events.0.lock().unwrap().is_empty());
        s.server.shutdown();
    }

    #[test]
    fn timestamps() {
        let t = timestamp(1_500_000_000);
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
        let running = ProcInfo {
            status: ProcStatus::Running,
            guest_pid: 1,
            exit_status: 0,
            exited_at_ns: 0,
        };
        assert!(exited_at(&running).is_none());
    }
}
