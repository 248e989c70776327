//! One pod: its VM ([`Sandbox`]) and its containers, with their processes, stdio, exit
//! waiters and OOM events. Every failing step releases what the call had acquired.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use vessel_protocol::errors::chain;

use oci_spec::runtime::{LinuxResources, Process, Spec};
use vessel_protocol::agent as pb;

use super::namespaces::{self, NsRole};
use super::process::{lock, Proc, ProcStatus, StdioPaths};
use super::{io, CreateRequest, Deleted, ExitEvent, PodError, PodEvents, PodsDeps, TaskState};
use crate::config::Config;
use crate::host_cgroup::HostCgroup;
use crate::mounts::Mounter;
use crate::rootfs::{host_rootfs, mount_rootfs, unmount_rootfs};
use crate::sandbox::{ContainerConfig, Sandbox, SandboxOptions};
use crate::sizing;

/// How long an exit waits for the process's output streams to reach their end. Past it (a
/// background child still holds the stream) the exit is reported and copying goes on.
const OUTPUT_GRACE: Duration = Duration::from_secs(30);
/// Floor between two OOM events of one pod (the guest controls how often they come).
const OOM_EVENT_INTERVAL: Duration = Duration::from_millis(100);
/// What the VMM may use on the host beyond guest memory (its own heap, virtio-fs buffers,
/// page tables, the page cache it pulls in); its PSS is ~15-30 MiB measured.
const VMM_MEMORY_OVERHEAD_MIB: u64 = 256;
/// Tasks the VMM may have besides one per vCPU (its waiter, main, device and helper
/// threads); a guest cannot make the VMM spawn threads, so this bounds a bug, not a guest.
const VMM_TASKS_BASE: u64 = 32;
/// Exit status recorded for an exec that never ran (its program could not be started).
const EXIT_NOT_STARTED: u32 = 127;
/// Exit status recorded when the VM is gone and the real one is unknown.
const EXIT_UNKNOWN: u32 = 255;

/// A container of the pod.
struct Container {
    bundle: PathBuf,
    /// `<bundle>/rootfs` was mounted here from containerd's mounts.
    rootfs_mounted: bool,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
}

/// A pod: one VM and the containers in it.
pub struct Pod {
    id: String,
    /// A container of its own (`ctr run`), not a CRI pod.
    standalone: bool,
    sandbox: Sandbox,
    mounter: Arc<dyn Mounter>,
    events: Arc<dyn PodEvents>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

impl Pod {
    /// Starts the pod's VM for its first container `id` (the CRI sandbox, or a standalone
    /// container), sized from `spec` and placed in its `cgroupsPath` on the host.
    pub(super) fn start(
        deps: &PodsDeps,
        id: &str,
        spec: &Spec,
        standalone: bool,
        config: Arc<Config>,
    ) -> Result<Arc<Pod>, PodError> {
        let size = sizing::pod_size(&config.hypervisor, spec)
            .map_err(|e| PodError::InvalidArgument(format!("pod {id}: VM size: {e}")))?;
        let mut sized = (*config).clone();
        sized.hypervisor.memory_mib = size.memory_mib;
        sized.hypervisor.vcpus = size.vcpus;
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .filter(|_| deps.backend.runs_in_pod_cgroup());
        let cgroup = match cgroups_path {
            Some(path) => Some(
                HostCgroup::for_path(&path.to_string_lossy())
                    .map_err(|e| PodError::InvalidArgument(format!("pod {id}: {e}")))?
                    .with_limits(
                        (u64::from(size.memory_mib) + VMM_MEMORY_OVERHEAD_MIB) << 20,
                        VMM_TASKS_BASE + u64::from(size.vcpus),
                    ),
            ),
            None => None,
        };
        let sandbox = Sandbox::start(SandboxOptions {
            id: id.to_string(),
            namespace: deps.namespace.clone(),
            hostname: spec.hostname().clone().unwrap_or_default(),
            config: Arc::new(sized),
            backend: Arc::clone(&deps.backend),
            mounter: Arc::clone(&deps.mounter),
            cgroup,
            pod_shm: !standalone,
            netns: namespaces::host_netns(spec),
            cri_pod: crate::grouping::cri_pod_name(spec.annotations().as_ref()),
        })
        .map_err(|e| PodError::sandbox(format!("create {id}: starting the pod's VM"), e))?;
        let pod = Arc::new(Pod {
            id: id.to_string(),
            standalone,
            sandbox,
            mounter: Arc::clone(&deps.mounter),
            events: Arc::clone(&deps.events),
            containers: Mutex::default(),
        });
        start_oom_poller(&pod);
        super::guest_stats::start_sampler(&pod);
        Ok(pod)
    }

    /// The pod's id (its first container's).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pid containerd sees for every task of the pod: the VMM's.
    pub fn task_pid(&self) -> u32 {
        u32::try_from(self.sandbox.vmm_pid()).unwrap_or(0)
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, PodError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| PodError::not_found(format!("container {id}")))
    }

    /// The init (`exec_id` "") or the named exec of container `id`.
    pub(super) fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Proc>, PodError> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(Arc::clone(&c.init));
        }
        let found = lock(&c.execs).get(exec_id).cloned();
        found.ok_or_else(|| PodError::not_found(format!("process {exec_id} of container {id}")))
    }

    /// Mounts the container's rootfs, shares it with the guest, creates it in the agent
    /// (with the pod's namespaces) and attaches its init's stdio. `owner`: it is the pod's
    /// first container (CRI sandbox or standalone).
    pub(super) fn add_container(
        &self,
        req: &CreateRequest,
        spec: &Spec,
        owner: bool,
    ) -> Result<(), PodError> {
        let id = req.id.as_str();
        let role = match (owner, self.standalone) {
            (true, true) => NsRole::Standalone,
            (true, false) => NsRole::Sandbox,
            (false, _) => NsRole::Member {
                pod_task_pid: self.task_pid(),
            },
        };
        let mut guest_spec = spec.clone();
        let mut shared = namespaces::translate(
            &mut guest_spec,
            id,
            role,
            self.sandbox.network_is_the_pods(),
        )
        .map_err(|e| PodError::InvalidArgument(e.to_string()))?;
        shared.builtin_pause = shared.pod_sandbox && self.sandbox.config().builtin_pause();
        if let (Some(netns), false) = (&shared.host_netns, self.sandbox.has_network()) {
            log::info!(
                "pod {}: container {id}: host network namespace {} not wired (the guest has lo only)",
                self.id,
                netns.display()
            );
        }
        // Step times for the log (seconds on an emulating host; the bench's stages).
        let t0 = std::time::Instant::now();
        let rootfs_mounted = mount_rootfs(&req.bundle, &req.rootfs, self.mounter.as_ref())
            .map_err(|source| PodError::Mount {
                context: format!("create {id}: rootfs"),
                source,
            })?;
        let undo_rootfs = || {
            if rootfs_mounted {
                if let Err(e) = unmount_rootfs(&req.bundle, self.mounter.as_ref()) {
                    log::error!("create {id}: rollback: {e}", e = chain(&e));
                }
            }
        };
        let t_rootfs = t0.elapsed();
        let shm = (!self.standalone).then(|| self.sandbox.guest_pod_shm());
        let host_rootfs = host_rootfs(
            &req.bundle,
            &req.rootfs,
            spec.root().as_ref().map(|r| r.path().as_path()),
        );
        let created = self.sandbox.create_container(ContainerConfig {
            id,
            spec: &guest_spec,
            host_rootfs: &host_rootfs,
            stdin: !req.stdio.stdin.is_empty(),
            pod: &shared,
            guest_pod_shm: shm.as_deref(),
        });
        if let Err(e) = created {
            undo_rootfs();
            return Err(PodError::sandbox(format!("create {id}"), e));
        }
        let t_created = t0.elapsed();
        let io = match io::attach(self.sandbox.agent(), id, "", &req.stdio) {
            Ok(io) => io,
            Err(source) => {
                if let Err(r) = self.sandbox.remove_container(id) {
                    log::error!("create {id}: rollback: {r}");
                }
                undo_rootfs();
                return Err(PodError::Io {
                    context: format!("create {id}: stdio"),
                    source,
                });
            }
        };
        log::info!(
            container = id;
            "pod {}: container {id}: created (rootfs {t_rootfs:?}, agent {:?}, stdio {:?})",
            self.id,
            t_created - t_rootfs,
            t0.elapsed() - t_created
        );
        let init = Arc::new(Proc::new(id, "", req.stdio.clone(), None));
        init.set_io(io);
        lock(&self.containers).insert(
            id.to_string(),
            Arc::new(Container {
                bundle: req.bundle.clone(),
                rootfs_mounted,
                init,
                execs: Mutex::default(),
            }),
        );
        Ok(())
    }

    pub(super) fn add_exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Process,
        stdio: StdioPaths,
    ) -> Result<(), PodError> {
        let c = self.container(id)?;
        if c.init.info().status == ProcStatus::Stopped {
            return Err(PodError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let mut execs = lock(&c.execs);
        if execs.contains_key(exec_id) {
            return Err(PodError::AlreadyExists {
                what: format!("exec {id}/{exec_id}"),
            });
        }
        execs.insert(
            exec_id.to_string(),
            Arc::new(Proc::new(id, exec_id, stdio, Some(process))),
        );
        Ok(())
    }

    /// Starts a created process; returns the task pid.
    pub(super) fn start_process(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
    ) -> Result<u32, PodError> {
        let p = self.process(id, exec_id)?;
        let status = p.info().status;
        if status != ProcStatus::Created {
            return Err(PodError::FailedPrecondition(format!(
                "{}: cannot start a process that is {status:?}",
                p.label()
            )));
        }
        if exec_id.is_empty() {
            let guest_pid = self
                .sandbox
                .start_container(id)
                .map_err(|e| PodError::sandbox(format!("start {id}"), e))?;
            p.set_running(guest_pid);
        } else {
            let spec = p.spec.clone().ok_or_else(|| {
                PodError::FailedPrecondition(format!("{}: exec without a process spec", p.label()))
            })?;
            let guest_pid =
                match self
                    .sandbox
                    .exec_process(id, exec_id, &spec, !p.stdio.stdin.is_empty())
                {
                    Ok(pid) => pid,
                    Err(e) => {
                        // It never ran: a waiter must not block on it.
                        p.set_exited(EXIT_NOT_STARTED, 0);
                        return Err(PodError::sandbox(format!("exec {}", p.label()), e));
                    }
                };
            match io::attach(self.sandbox.agent(), id, exec_id, &p.stdio) {
                Ok(io) => p.set_io(io),
                Err(source) => {
                    let _ = self.sandbox.signal_process(id, exec_id, 9, false);
                    p.set_exited(128 + 9, 0);
                    return Err(PodError::Io {
                        context: format!("exec {}: stdio", p.label()),
                        source,
                    });
                }
            }
            p.set_running(guest_pid);
        }
        self.spawn_waiter(&p);
        Ok(self.task_pid())
    }

    /// Waits for the process in the agent, then for its output to drain, then records the
    /// exit and reports it: the exit is never reported before the output's tail.
    fn spawn_waiter(self: &Arc<Self>, p: &Arc<Proc>) {
        let pod = Arc::clone(self);
        let p = Arc::clone(p);
        let name = format!("wait-{}", p.label());
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let (status, at_ns) = match pod.sandbox.wait_process(&p.container_id, &p.exec_id) {
                Ok((status, at)) => (u32::try_from(status).unwrap_or(EXIT_UNKNOWN), at),
                Err(e) => {
                    log::warn!("{}: wait: {e}; reporting exit status 255", p.label());
                    (EXIT_UNKNOWN, 0)
                }
            };
            if let Some(io) = p.io_ref() {
                io.wait_outputs(OUTPUT_GRACE);
            }
            if !p.set_exited(status, at_ns) {
                return;
            }
            let info = p.info();
            log::info!(container = p.container_id.as_str(); "{}: exited with status {status}", p.label());
            pod.events.exited(&ExitEvent {
                container_id: p.container_id.clone(),
                exec_id: p.exec_id.clone(),
                pid: pod.task_pid(),
                exit_status: status,
                exited_at_ns: info.exited_at_ns,
            });
        });
        if let Err(e) = spawned {
            log::error!("spawning a waiter: {e}");
        }
    }

    pub(super) fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), PodError> {
        let p = self.process(id, exec_id)?;
        match p.info().status {
            ProcStatus::Stopped => {
                return Err(PodError::not_found(format!(
                    "{}: process already finished",
                    p.label()
                )))
            }
            ProcStatus::Created if !exec_id.is_empty() => {
                return Err(PodError::FailedPrecondition(format!(
                    "{}: process not created",
                    p.label()
                )))
            }
            _ => {}
        }
        self.sandbox
            .signal_process(id, exec_id, signal, all)
            .map_err(|e| PodError::sandbox(format!("kill {}", p.label()), e))
    }

    pub(super) fn state(&self, id: &str, exec_id: &str) -> Result<TaskState, PodError> {
        let c = self.container(id)?;
        let p = self.process(id, exec_id)?;
        Ok(TaskState {
            bundle: c.bundle.clone(),
            pid: self.task_pid(),
            info: p.info(),
            stdio: p.stdio.clone(),
        })
    }

    pub(super) fn delete(&self, id: &str, exec_id: &str) -> Result<Deleted, PodError> {
        let c = self.container(id)?;
        let p = self.process(id, exec_id)?;
        let state = self.state(id, exec_id)?;
        if matches!(state.info.status, ProcStatus::Running | ProcStatus::Paused) {
            return Err(PodError::FailedPrecondition(format!(
                "{}: cannot delete a running process",
                p.label()
            )));
        }
        if !exec_id.is_empty() {
            lock(&c.execs).remove(exec_id);
            p.cancel_io();
            // The agent keeps an exec's status and streams until told: forget it there too
            // (an exec probe every few seconds would otherwise grow the agent for ever).
            let cleanup = self
                .sandbox
                .delete_process(id, exec_id)
                .map_err(|e| PodError::sandbox(format!("delete {}", p.label()), e));
            return Ok(Deleted { state, cleanup });
        }
        let mut errors: Vec<PodError> = Vec::new();
        // The pod's own container goes with the pod: when the VM's end ends it, the agent's
        // removal (its cgroup, its mounts and namespaces torn down in the guest, ~0.6 s of
        // emulated kernel work on KVM-PVM) would only delay the kill below.
        let pod_goes = id == self.id;
        if !(pod_goes && self.sandbox.stop_ends_containers()) {
            if let Err(e) = self.sandbox.remove_container(id) {
                errors.push(PodError::sandbox(format!("delete {id}"), e));
            }
        }
        let execs: Vec<Arc<Proc>> = lock(&c.execs).drain().map(|(_, p)| p).collect();
        for proc in execs.iter().chain(std::iter::once(&c.init)) {
            proc.cancel_io();
        }
        lock(&self.containers).remove(id);
        if pod_goes {
            if let Err(e) = self.stop() {
                errors.push(e);
            }
        }
        if c.rootfs_mounted {
            if let Err(source) = unmount_rootfs(&c.bundle, self.mounter.as_ref()) {
                errors.push(PodError::Mount {
                    context: format!("delete {id}: rootfs"),
                    source,
                });
            }
        }
        for e in errors.iter().skip(1) {
            log::error!("{}", vessel_protocol::errors::chain(e));
        }
        Ok(Deleted {
            state,
            cleanup: errors.into_iter().next().map_or(Ok(()), Err),
        })
    }

    /// Destroys the VM and releases every host resource of the pod. Idempotent.
    pub fn stop(&self) -> Result<(), PodError> {
        self.sandbox
            .stop()
            .map_err(|e| PodError::sandbox(format!("stopping pod {}", self.id), e))
    }

    pub(super) fn pids(&self, id: &str) -> Result<Vec<u32>, PodError> {
        self.container(id)?;
        self.sandbox
            .list_processes(id)
            .map_err(|e| PodError::sandbox(format!("pids {id}"), e))
    }

    pub(super) fn pause(&self, id: &str) -> Result<(), PodError> {
        let c = self.container(id)?;
        self.sandbox
            .pause_container(id)
            .map_err(|e| PodError::sandbox(format!("pause {id}"), e))?;
        c.init.set_status(ProcStatus::Paused);
        Ok(())
    }

    pub(super) fn resume(&self, id: &str) -> Result<(), PodError> {
        let c = self.container(id)?;
        self.sandbox
            .resume_container(id)
            .map_err(|e| PodError::sandbox(format!("resume {id}"), e))?;
        c.init.set_status(ProcStatus::Running);
        Ok(())
    }

    /// Asks the guest for every container's stats and records them for `vessel monitor`
    /// (`guest_stats`). False once the pod is stopped (the sampler then ends).
    pub(super) fn sample_guest_stats(&self) -> bool {
        if self.sandbox.is_stopped() {
            return false;
        }
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        let answers: Vec<(String, pb::StatsContainerResponse)> = ids
            .into_iter()
            .filter_map(|id| match self.sandbox.stats_container(&id) {
                Ok(r) => Some((id, r)),
                Err(e) => {
                    log::debug!("pod {}: stats of {id}: {}", self.id, chain(&e));
                    None
                }
            })
            .collect();
        let stats =
            super::guest_stats::from_responses(answers.iter().map(|(id, r)| (id.as_str(), r)));
        match serde_json::to_vec(&stats) {
            Ok(bytes) => {
                if let Err(e) = self.sandbox.record_guest_stats(&bytes) {
                    log::debug!("pod {}: recording guest stats: {e}", self.id);
                }
            }
            Err(e) => log::debug!("pod {}: guest stats: {e}", self.id),
        }
        true
    }

    pub(super) fn stats(&self, id: &str) -> Result<pb::StatsContainerResponse, PodError> {
        self.container(id)?;
        self.sandbox
            .stats_container(id)
            .map_err(|e| PodError::sandbox(format!("stats {id}"), e))
    }

    pub(super) fn update(&self, id: &str, resources: &LinuxResources) -> Result<(), PodError> {
        self.container(id)?;
        self.sandbox
            .update_container(id, resources)
            .map_err(|e| PodError::sandbox(format!("update {id}"), e))
    }

    pub(super) fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), PodError> {
        let p = self.process(id, exec_id)?;
        if p.stdio.terminal && p.info().status != ProcStatus::Stopped {
            self.sandbox
                .resize_tty(id, exec_id, rows, cols)
                .map_err(|e| PodError::sandbox(format!("resize {}", p.label()), e))?;
        }
        Ok(())
    }

    fn knows(&self, id: &str) -> bool {
        lock(&self.containers).contains_key(id)
    }
}

/// Forwards the pod's OOM events until its agent goes away. Holds the pod weakly: the long
/// poll runs on a clone of the agent connection, which closes when the VM stops.
fn start_oom_poller(pod: &Arc<Pod>) {
    let weak: Weak<Pod> = Arc::downgrade(pod);
    let agent = pod.sandbox.agent().clone();
    let id = pod.id.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("oom-{id}"))
        .spawn(move || loop {
            let cid = match agent.get_oom_event() {
                Ok(cid) => cid,
                Err(e) => {
                    log::debug!("pod {id}: OOM events end: {e}");
                    return;
                }
            };
            let Some(pod) = weak.upgrade() else { return };
            if pod.knows(&cid) {
                log::info!(container = cid.as_str(); "container {cid}: OOM");
                pod.events.oom(&cid);
            }
            drop(pod);
            std::thread::sleep(OOM_EVENT_INTERVAL);
        });
    if let Err(e) = spawned {
        log::error!("spawning the OOM poller: {e}");
    }
}
