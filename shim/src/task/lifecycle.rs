//! Create / Start / Delete, the exit waiters and the OOM poller. Every failure path releases
//! what the call had acquired (rootfs mount, shares, the sandbox it started).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api::{CreateTaskRequest, CreateTaskResponse, DeleteResponse, StartResponse};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::topics;
use oci_spec::runtime::Spec;
use vessel_runtime::grouping::ContainerRole;
use vessel_runtime::sandbox::{ContainerConfig, SandboxOptions};
use vessel_runtime::Sandbox;

use super::state::{lock, timestamp_from_ns, Container, Proc, ProcStatus};
use super::{ctx_err, task_pid, Inner};
use crate::errors::TaskError;
use crate::io::{start_process_io, StdioPaths};
use crate::rootfs::{mount_rootfs, rootfs_path, unmount_rootfs};

/// How long an exit waits for the process's output streams to reach their end. Past it (a
/// background child still holds the stream) the exit is reported and copying goes on.
const OUTPUT_GRACE: Duration = Duration::from_secs(30);
/// Floor between two OOM events of one sandbox (the guest controls how often they come).
const OOM_EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// Removes `id` from the in-progress set when dropped.
struct Reservation<'a> {
    inner: &'a Inner,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.inner.creating).remove(&self.id);
    }
}

fn reserve<'a>(inner: &'a Inner, id: &str) -> Result<Reservation<'a>, TaskError> {
    let containers = lock(&inner.containers);
    let mut creating = lock(&inner.creating);
    if containers.contains_key(id) || !creating.insert(id.to_string()) {
        return Err(TaskError::AlreadyExists(format!("container {id}")));
    }
    Ok(Reservation {
        inner,
        id: id.to_string(),
    })
}

pub(crate) fn create(
    inner: &Arc<Inner>,
    req: CreateTaskRequest,
) -> Result<CreateTaskResponse, TaskError> {
    let id = req.id.clone();
    vessel_runtime::state::validate_id(&id)
        .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
    let _reservation = reserve(inner, &id)?;
    let config = inner.deps.config.clone().map_err(|e| {
        TaskError::InvalidArgument(format!("create {id}: vessel configuration: {e}"))
    })?;
    let bundle = PathBuf::from(&req.bundle);
    let spec = Spec::load(bundle.join("config.json")).map_err(|e| {
        TaskError::InvalidArgument(format!("create {id}: {}/config.json: {e}", req.bundle))
    })?;
    let role = ContainerRole::from_annotations(&id, spec.annotations().as_ref())
        .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
    let rootfs_mounted = mount_rootfs(&bundle, &req.rootfs).map_err(TaskError::Internal)?;
    let stdio = StdioPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    };

    let placed = place_container(inner, &id, &role, &spec, &bundle, &stdio, config);
    let (sandbox, owns_sandbox, io) = match placed {
        Ok(v) => v,
        Err(e) => {
            if rootfs_mounted {
                if let Err(u) = unmount_rootfs(&bundle, inner.deps.mounter.as_ref()) {
                    log::error!("create {id}: rollback: {u}");
                }
            }
            return Err(e);
        }
    };
    if owns_sandbox {
        lock(&inner.sandboxes).insert(id.clone(), Arc::clone(&sandbox));
        start_oom_poller(inner, &sandbox);
    }
    let init = Arc::new(Proc::new(&id, "", stdio.clone(), None));
    init.set_io(io);
    let container = Arc::new(Container {
        id: id.clone(),
        bundle: bundle.clone(),
        sandbox,
        owns_sandbox,
        rootfs_mounted,
        init,
        execs: Default::default(),
    });
    let pid = task_pid(&container);
    lock(&inner.containers).insert(id.clone(), container);
    inner.publish(
        topics::TASK_CREATE_EVENT_TOPIC,
        Box::new(TaskCreate {
            container_id: id,
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
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

/// Starts (or finds) the sandbox, creates the container in it and starts its init's stdio.
fn place_container(
    inner: &Arc<Inner>,
    id: &str,
    role: &ContainerRole,
    spec: &Spec,
    bundle: &Path,
    stdio: &StdioPaths,
    config: Arc<vessel_runtime::Config>,
) -> Result<(Arc<Sandbox>, bool, vessel_runtime::stdio::ProcessIo), TaskError> {
    let (sandbox, owns) = match role {
        ContainerRole::SandboxOwner { .. } => {
            let sb = Sandbox::start(SandboxOptions {
                id: id.to_string(),
                hostname: spec.hostname().clone().unwrap_or_default(),
                config,
                backend: Arc::clone(&inner.deps.backend),
                mounter: Arc::clone(&inner.deps.mounter),
            })
            .map_err(ctx_err(format!("create {id}: starting sandbox")))?;
            (Arc::new(sb), true)
        }
        ContainerRole::Member { sandbox_id } => {
            let sb = lock(&inner.sandboxes)
                .get(sandbox_id)
                .cloned()
                .ok_or_else(|| {
                    TaskError::NotFound(format!(
                        "sandbox {sandbox_id} of container {id} (not running in this shim)"
                    ))
                })?;
            (sb, false)
        }
    };
    let undo_sandbox = |sb: &Sandbox| {
        if owns {
            if let Err(e) = sb.stop() {
                log::error!("create {id}: rollback: stopping sandbox: {e}");
            }
        }
    };
    let host_rootfs = rootfs_path(bundle);
    let created = sandbox.create_container(ContainerConfig {
        id,
        spec,
        host_rootfs: &host_rootfs,
        stdin: !stdio.stdin.is_empty(),
    });
    if let Err(e) = created {
        undo_sandbox(&sandbox);
        return Err(TaskError::sandbox(format!("create {id}"), e));
    }
    match start_process_io(sandbox.agent(), id, "", stdio) {
        Ok(io) => Ok((sandbox, owns, io)),
        Err(e) => {
            if let Err(r) = sandbox.remove_container(id) {
                log::error!("create {id}: rollback: {r}");
            }
            undo_sandbox(&sandbox);
            Err(TaskError::Internal(format!("create {id}: stdio: {e}")))
        }
    }
}

pub(crate) fn start(
    inner: &Arc<Inner>,
    id: &str,
    exec_id: &str,
) -> Result<StartResponse, TaskError> {
    let (c, p) = inner.process(id, exec_id)?;
    let status = p.info().status;
    if status != ProcStatus::Created {
        return Err(TaskError::FailedPrecondition(format!(
            "{}: cannot start a process that is {status:?}",
            p.label()
        )));
    }
    let pid = task_pid(&c);
    if exec_id.is_empty() {
        let guest_pid = c
            .sandbox
            .start_container(id)
            .map_err(ctx_err(format!("start {id}")))?;
        p.set_running(guest_pid);
        spawn_waiter(inner, &c, &p);
        inner.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id.to_string(),
                pid,
                ..Default::default()
            }),
        );
    } else {
        let spec = p.spec.clone().ok_or_else(|| {
            TaskError::Internal(format!("{}: exec without a process spec", p.label()))
        })?;
        let guest_pid = match c
            .sandbox
            .exec_process(id, exec_id, &spec, !p.stdio.stdin.is_empty())
        {
            Ok(pid) => pid,
            Err(e) => {
                // It never ran: a waiter must not block on it (exit 127 = could not exec).
                p.set_exited(127, timestamp_from_ns(0));
                return Err(TaskError::sandbox(format!("exec {}", p.label()), e));
            }
        };
        match start_process_io(c.sandbox.agent(), id, exec_id, &p.stdio) {
            Ok(io) => p.set_io(io),
            Err(e) => {
                let _ = c.sandbox.signal_process(id, exec_id, 9, false);
                p.set_exited(137, timestamp_from_ns(0));
                return Err(TaskError::Internal(format!(
                    "exec {}: stdio: {e}",
                    p.label()
                )));
            }
        }
        p.set_running(guest_pid);
        spawn_waiter(inner, &c, &p);
        inner.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
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

/// Waits for the process in the agent, then for its output to drain, then records the exit
/// and publishes TaskExit: the exit is never reported before the output's tail.
fn spawn_waiter(inner: &Arc<Inner>, c: &Arc<Container>, p: &Arc<Proc>) {
    let inner = Arc::clone(inner);
    let c = Arc::clone(c);
    let p = Arc::clone(p);
    let name = format!("wait-{}", p.label());
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let (status, at_ns) = match c.sandbox.wait_process(&p.container_id, &p.exec_id) {
            Ok((status, at)) => (u32::try_from(status).unwrap_or(255), at),
            Err(e) => {
                log::warn!("{}: wait: {e}; reporting exit status 255", p.label());
                (255, 0)
            }
        };
        if let Some(io) = p.io_ref() {
            io.wait_outputs(OUTPUT_GRACE);
        }
        let exited_at = timestamp_from_ns(at_ns);
        if !p.set_exited(status, exited_at.clone()) {
            return;
        }
        log::info!("{}: exited with status {status}", p.label());
        inner.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: p.container_id.clone(),
                id: if p.exec_id.is_empty() {
                    p.container_id.clone()
                } else {
                    p.exec_id.clone()
                },
                pid: task_pid(&c),
                exit_status: status,
                exited_at: Some(exited_at).into(),
                ..Default::default()
            }),
        );
    });
    if let Err(e) = spawned {
        log::error!("spawning a waiter: {e}");
    }
}

/// Forwards the sandbox's OOM events until its agent goes away.
fn start_oom_poller(inner: &Arc<Inner>, sandbox: &Arc<Sandbox>) {
    let weak = Arc::downgrade(inner);
    let sandbox = Arc::clone(sandbox);
    let name = format!("oom-{}", sandbox.id());
    let spawned = std::thread::Builder::new().name(name).spawn(move || loop {
        let cid = match sandbox.next_oom_event() {
            Ok(cid) => cid,
            Err(e) => {
                log::debug!("sandbox {}: OOM events end: {e}", sandbox.id());
                return;
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        if lock(&inner.containers).contains_key(&cid) {
            log::info!("container {cid}: OOM");
            inner.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: cid,
                    ..Default::default()
                }),
            );
        }
        drop(inner);
        std::thread::sleep(OOM_EVENT_INTERVAL);
    });
    if let Err(e) = spawned {
        log::error!("spawning the OOM poller: {e}");
    }
}

pub(crate) fn delete(
    inner: &Arc<Inner>,
    id: &str,
    exec_id: &str,
) -> Result<DeleteResponse, TaskError> {
    let (c, p) = inner.process(id, exec_id)?;
    let info = p.info();
    if matches!(info.status, ProcStatus::Running | ProcStatus::Paused) {
        return Err(TaskError::FailedPrecondition(format!(
            "{}: cannot delete a running process",
            p.label()
        )));
    }
    let pid = task_pid(&c);
    let response = DeleteResponse {
        pid,
        exit_status: info.exit_status,
        exited_at: info.exited_at.clone().into(),
        ..Default::default()
    };
    if !exec_id.is_empty() {
        lock(&c.execs).remove(exec_id);
        if let Some(io) = p.take_io() {
            io.cancel();
        }
        return Ok(response);
    }

    let mut errors = Vec::new();
    if let Err(e) = c.sandbox.remove_container(id) {
        errors.push(e.to_string());
    }
    let execs: Vec<Arc<Proc>> = lock(&c.execs).drain().map(|(_, p)| p).collect();
    for proc in execs.iter().chain(std::iter::once(&c.init)) {
        if let Some(io) = proc.take_io() {
            io.cancel();
        }
    }
    if c.owns_sandbox {
        lock(&inner.sandboxes).remove(id);
        if let Err(e) = c.sandbox.stop() {
            errors.push(e.to_string());
        }
    }
    if c.rootfs_mounted {
        if let Err(e) = unmount_rootfs(&c.bundle, inner.deps.mounter.as_ref()) {
            errors.push(e);
        }
    }
    lock(&inner.containers).remove(id);
    inner.publish(
        topics::TASK_DELETE_EVENT_TOPIC,
        Box::new(TaskDelete {
            container_id: id.to_string(),
            id: id.to_string(),
            pid,
            exit_status: info.exit_status,
            exited_at: info.exited_at.into(),
            ..Default::default()
        }),
    );
    if !errors.is_empty() {
        return Err(TaskError::Internal(format!(
            "delete {id}: {}",
            errors.join("; ")
        )));
    }
    Ok(response)
}
