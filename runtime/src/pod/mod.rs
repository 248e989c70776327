//! The host side of pods. [`Pods`] is what a containerd shim (or the `vessel` CLI) holds: it
//! decides which pod a container belongs to (CRI annotations, [`crate::grouping`]), starts a
//! pod's VM for its first container and stops it with that container, and forwards every
//! container and exec operation to the [`Pod`] that holds it. A [`Pod`] owns one VM and
//! everything of the pod on the host: the VMM process and its cgroup, the agent connection,
//! the shared directory with the containers' rootfs and volume binds, the rootfs mounts,
//! containers, execs and their stdio, undo on failure and cleanup after a crash
//! ([`cleanup_after_crash`]).
//!
//! What happens asynchronously (a process exits, a container hits OOM) is reported through
//! [`PodEvents`]; the caller turns it into containerd events.

mod crash;
pub mod guest_stats;
mod io;
mod lifecycle;
pub mod namespaces;
pub mod process;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use oci_spec::runtime::{LinuxResources, Process, Spec};
use vessel_protocol::agent as pb;

use crate::config::LoadedConfig;
use crate::grouping::ContainerRole;
use crate::mounts::Mounter;
use crate::rootfs::RootfsMount;
use crate::sandbox::SandboxError;
use crate::vm::VmBackend;
pub use crash::{cleanup_after_crash, CrashCleanup};
pub use lifecycle::Pod;
use process::lock;
pub use process::{ProcInfo, ProcStatus, StdioPaths};

/// A pod operation failed. [`PodError::code`] is the status containerd should see.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{what}: already exists")]
    AlreadyExists { what: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{context}")]
    Sandbox {
        context: String,
        #[source]
        source: Box<SandboxError>,
    },
    #[error("{context}")]
    Mount {
        context: String,
        #[source]
        source: crate::mounts::MountError,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl PodError {
    pub(crate) fn sandbox(context: impl Into<String>, e: SandboxError) -> PodError {
        PodError::Sandbox {
            context: context.into(),
            source: Box::new(e),
        }
    }

    fn not_found(what: impl Into<String>) -> PodError {
        PodError::NotFound { what: what.into() }
    }

    /// The ttrpc status code, as containerd 1.6's runc shim answers the same situation.
    pub fn code(&self) -> ttrpc::Code {
        use crate::agent::code;
        use ttrpc::Code;
        match self {
            PodError::NotFound { .. } => Code::NOT_FOUND,
            PodError::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            PodError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            PodError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            PodError::Mount { .. } | PodError::Io { .. } => Code::UNKNOWN,
            PodError::Sandbox { source, .. } => match source.as_ref() {
                SandboxError::Agent(e) => match e.code() {
                    // The agent speaks the same code space; pass its verdicts through.
                    Some(c @ code::NOT_FOUND)
                    | Some(c @ code::ALREADY_EXISTS)
                    | Some(c @ code::FAILED_PRECONDITION)
                    | Some(c @ code::INVALID_ARGUMENT)
                    | Some(c @ code::UNIMPLEMENTED) => {
                        <Code as protobuf::Enum>::from_i32(c).unwrap_or(Code::UNKNOWN)
                    }
                    Some(_) => Code::UNKNOWN,
                    None => Code::UNAVAILABLE,
                },
                SandboxError::Stopped { .. } => Code::FAILED_PRECONDITION,
                SandboxError::AlreadyExists { .. } => Code::ALREADY_EXISTS,
                SandboxError::Share(_) | SandboxError::State(_) => Code::INVALID_ARGUMENT,
                _ => Code::UNKNOWN,
            },
        }
    }
}

/// A process of a pod exited (reported after its output reached its end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    pub container_id: String,
    /// "" for the container's init process.
    pub exec_id: String,
    /// The task pid (the VMM's).
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at_ns: u64,
}

/// Where a pod's asynchronous news goes.
pub trait PodEvents: Send + Sync {
    fn exited(&self, event: &ExitEvent);
    /// A container of the pod hit its memory limit and a process was killed.
    fn oom(&self, container_id: &str);
}

/// What [`Pods`] needs from its surroundings.
pub struct PodsDeps {
    /// containerd namespace (state dirs are keyed by it and the id).
    pub namespace: String,
    /// The runtime configuration, or why it could not be loaded (reported on create).
    pub config: LoadedConfig,
    pub backend: Arc<dyn VmBackend>,
    pub mounter: Arc<dyn Mounter>,
    pub events: Arc<dyn PodEvents>,
}

/// A container to create: containerd's Create request.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub id: String,
    /// Holds `config.json`; the rootfs is (or is mounted) at `<bundle>/rootfs`.
    pub bundle: PathBuf,
    /// Mounts making the rootfs (empty: already there).
    pub rootfs: Vec<RootfsMount>,
    pub stdio: StdioPaths,
}

/// A process's state, for containerd's State call.
#[derive(Debug, Clone)]
pub struct TaskState {
    pub bundle: PathBuf,
    pub pid: u32,
    pub info: ProcInfo,
    pub stdio: StdioPaths,
}

/// What a delete did.
#[derive(Debug)]
pub struct Deleted {
    /// The process's last state.
    pub state: TaskState,
    /// Whether everything it held was released.
    pub cleanup: Result<(), PodError>,
}

/// The pods of this process and the containers in them.
pub struct Pods {
    deps: PodsDeps,
    pods: Mutex<HashMap<String, Arc<Pod>>>,
    /// container id → the pod holding it.
    index: Mutex<HashMap<String, Arc<Pod>>>,
    /// Container ids being created right now.
    creating: Mutex<HashSet<String>>,
}

/// Removes `id` from the in-progress set when dropped.
struct Reservation<'a> {
    pods: &'a Pods,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.pods.creating).remove(&self.id);
    }
}

impl Pods {
    pub fn new(deps: PodsDeps) -> Pods {
        Pods {
            deps,
            pods: Mutex::default(),
            index: Mutex::default(),
            creating: Mutex::default(),
        }
    }

    fn reserve(&self, id: &str) -> Result<Reservation<'_>, PodError> {
        let index = lock(&self.index);
        let mut creating = lock(&self.creating);
        if index.contains_key(id) || !creating.insert(id.to_string()) {
            return Err(PodError::AlreadyExists {
                what: format!("container {id}"),
            });
        }
        Ok(Reservation {
            pods: self,
            id: id.to_string(),
        })
    }

    fn pod_of(&self, id: &str) -> Result<Arc<Pod>, PodError> {
        lock(&self.index)
            .get(id)
            .cloned()
            .ok_or_else(|| PodError::not_found(format!("container {id}")))
    }

    /// Creates container `req.id`: its pod's VM first when it is a pod's first container (a
    /// CRI sandbox, or a container of its own), else in the running pod its annotations
    /// name. Returns the task pid. On failure nothing it made is left.
    pub fn create(&self, req: CreateRequest) -> Result<u32, PodError> {
        let id = req.id.clone();
        vessel_protocol::ids::check_name("container id", &id)
            .map_err(|e| PodError::InvalidArgument(e.to_string()))?;
        let _reservation = self.reserve(&id)?;
        let config = self.deps.config.clone().map_err(|e| {
            PodError::InvalidArgument(format!(
                "create {id}: vessel configuration: {}",
                vessel_protocol::errors::chain(e.as_ref())
            ))
        })?;
        let spec = Spec::load(req.bundle.join("config.json")).map_err(|e| {
            PodError::InvalidArgument(format!(
                "create {id}: {}/config.json: {e}",
                req.bundle.display()
            ))
        })?;
        let role = ContainerRole::from_annotations(&id, spec.annotations().as_ref())
            .map_err(|e| PodError::InvalidArgument(e.to_string()))?;
        let (pod, owner) = match &role {
            ContainerRole::SandboxOwner { standalone } => {
                let pod = Pod::start(&self.deps, &id, &spec, *standalone, config)?;
                (pod, true)
            }
            ContainerRole::Member { sandbox_id } => {
                let pod = lock(&self.pods).get(sandbox_id).cloned().ok_or_else(|| {
                    PodError::not_found(format!(
                        "sandbox {sandbox_id} of container {id} (not running in this shim)"
                    ))
                })?;
                (pod, false)
            }
        };
        if let Err(e) = pod.add_container(&req, &spec, owner) {
            if owner {
                if let Err(s) = pod.stop() {
                    log::error!("create {id}: rollback: stopping the pod: {s}");
                }
            }
            return Err(e);
        }
        if owner {
            lock(&self.pods).insert(id.clone(), Arc::clone(&pod));
        }
        lock(&self.index).insert(id, Arc::clone(&pod));
        Ok(pod.task_pid())
    }

    /// Starts the container's init (`exec_id` "") or a recorded exec; returns the task pid.
    pub fn start(&self, id: &str, exec_id: &str) -> Result<u32, PodError> {
        self.pod_of(id)?.start_process(id, exec_id)
    }

    /// Records an exec (its OCI process as JSON) to be started by [`Pods::start`].
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: StdioPaths,
    ) -> Result<(), PodError> {
        let pod = self.pod_of(id)?;
        vessel_protocol::ids::check_name("exec id", exec_id)
            .map_err(|e| PodError::InvalidArgument(e.to_string()))?;
        let process: Process = serde_json::from_slice(process_json).map_err(|e| {
            PodError::InvalidArgument(format!("exec {id}/{exec_id}: process spec: {e}"))
        })?;
        pod.add_exec(id, exec_id, process, stdio)
    }

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), PodError> {
        self.pod_of(id)?.kill(id, exec_id, signal, all)
    }

    /// Blocks until the process exited.
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<ProcInfo, PodError> {
        let proc = self.pod_of(id)?.process(id, exec_id)?;
        Ok(proc.wait_exit())
    }

    pub fn state(&self, id: &str, exec_id: &str) -> Result<TaskState, PodError> {
        self.pod_of(id)?.state(id, exec_id)
    }

    /// Deletes an exec, or a container (its pod too when it started it). A running process
    /// is not deleted (FAILED_PRECONDITION). Once past that check the container is gone
    /// from here even if releasing something failed ([`Deleted::cleanup`] says what).
    pub fn delete(&self, id: &str, exec_id: &str) -> Result<Deleted, PodError> {
        let pod = self.pod_of(id)?;
        let deleted = pod.delete(id, exec_id)?;
        if exec_id.is_empty() {
            lock(&self.index).remove(id);
            if pod.id() == id {
                lock(&self.pods).remove(id);
            }
        }
        Ok(deleted)
    }

    pub fn pids(&self, id: &str) -> Result<Vec<u32>, PodError> {
        self.pod_of(id)?.pids(id)
    }

    pub fn pause(&self, id: &str) -> Result<(), PodError> {
        self.pod_of(id)?.pause(id)
    }

    pub fn resume(&self, id: &str) -> Result<(), PodError> {
        self.pod_of(id)?.resume(id)
    }

    pub fn stats(&self, id: &str) -> Result<pb::StatsContainerResponse, PodError> {
        self.pod_of(id)?.stats(id)
    }

    /// Applies new resources (OCI `LinuxResources` as JSON) to container `id`.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), PodError> {
        let pod = self.pod_of(id)?;
        let resources: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| PodError::InvalidArgument(format!("update {id}: resources: {e}")))?;
        pod.update(id, &resources)
    }

    pub fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), PodError> {
        self.pod_of(id)?.resize_pty(id, exec_id, rows, cols)
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), PodError> {
        self.pod_of(id)?.process(id, exec_id)?.close_stdin();
        Ok(())
    }

    /// The task pid of container `id`, if it exists.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        self.pod_of(id).ok().map(|p| p.task_pid())
    }

    /// Boots a pod with no container, waits for its agent, and stops it again (a health
    /// check of the host: `vessel probe`). Returns the VMM's pid.
    pub fn probe(&self, id: &str) -> Result<u32, PodError> {
        let config = self.deps.config.clone().map_err(|e| {
            PodError::InvalidArgument(format!(
                "vessel configuration: {}",
                vessel_protocol::errors::chain(e.as_ref())
            ))
        })?;
        let _reservation = self.reserve(id)?;
        let pod = Pod::start(&self.deps, id, &Spec::default(), true, config)?;
        let pid = pod.task_pid();
        pod.stop()?;
        Ok(pid)
    }

    /// No container exists and none is being created (the shim may exit).
    pub fn is_idle(&self) -> bool {
        lock(&self.index).is_empty() && lock(&self.creating).is_empty()
    }

    /// How many containers exist.
    pub fn len(&self) -> usize {
        lock(&self.index).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
