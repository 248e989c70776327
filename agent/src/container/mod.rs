//! Containers: creation from an OCI spec, start, exec, signals, wait, pause/resume,
//! resource updates, stats and removal. The container-side setup lives in `child.rs` and
//! the modules it uses; this file is the agent's bookkeeping.

pub mod builtin_pause;
pub mod capabilities;
pub mod cgroup_cpu;
pub mod cgroup_placement;
pub mod cgroups;
pub mod child;
pub mod console;
pub mod devices;
pub mod direct_exec;
pub mod mounts;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
#[cfg(test)]
mod setup_tests;
pub mod spec;
mod syscall_table;

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vessel_protocol::errors::chain;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process};

use self::cgroups::{Cgroup, CgroupStats};
use self::child::ChildConfig;
use self::namespaces::NsKind;
use self::process::{PidNs, Spawned};
use self::seccomp::CompiledSeccomp;
use crate::error::{RequestError, RequestResult};
use crate::reaper::{lock, ExitCell, ExitInfo};
use crate::stdio::{ProcessStreams, StdioSetup};

/// An error in the child while setting up a container process.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("{context}")]
    Sys {
        context: String,
        source: nix::errno::Errno,
    },
    #[error("{context}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
}

impl ChildError {
    pub fn sys(context: impl Into<String>, source: nix::errno::Errno) -> Self {
        ChildError::Sys {
            context: context.into(),
            source,
        }
    }
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ChildError::Io {
            context: context.into(),
            source,
        }
    }
}

/// One process of a container (its init, or an exec), as the agent tracks it.
pub struct ProcessHandle {
    pub pid: Pid,
    pub exit: Arc<ExitCell>,
    pub streams: ProcessStreams,
}

impl ProcessHandle {
    pub fn exited(&self) -> Option<ExitInfo> {
        self.exit.get()
    }
}

/// A created container.
pub struct Container {
    pub id: String,
    cgroup: Cgroup,
    seccomp: Option<CompiledSeccomp>,
    pub init: Arc<ProcessHandle>,
    /// The init process until StartContainer releases it.
    pending: Mutex<Option<Spawned>>,
    execs: Mutex<HashMap<String, Arc<ProcessHandle>>>,
    /// The container's namespaces, for execs.
    ns_fds: Mutex<Vec<(NsKind, OwnedFd)>>,
    /// Whether the container has a pid namespace of its own (or joined one).
    own_pid_ns: bool,
    paused: AtomicBool,
    /// Runs vessel's built-in pause: nothing to exec into.
    builtin_pause: bool,
}

/// What the sandbox provides to a new container.
pub struct CreateContext<'a> {
    pub cgroups: &'a cgroup_placement::CgroupPlacement,
    pub resolv_conf: Option<&'a std::path::Path>,
    /// Pod namespaces to join instead of the spec's entries of those kinds.
    pub pod_join: &'a [(NsKind, std::path::PathBuf)],
    /// The pod's sandbox container runs vessel's built-in pause ([`builtin_pause`]).
    pub builtin_pause: bool,
}

impl Container {
    /// Creates the container: cgroup, child set up and blocked before exec.
    pub fn create(
        id: &str,
        spec_json: &[u8],
        stdin: bool,
        ctx: &CreateContext<'_>,
    ) -> RequestResult<Container> {
        let t0 = std::time::Instant::now();
        let mut plan = spec::plan(id, spec_json, ctx)?;
        let planned = t0.elapsed();
        // A spare made before the snapshot saves the `mkdir` (`cgroup_placement`).
        let spare = ctx.cgroups.claim_spare();
        let made = if spare.is_some() { "spare" } else { "made" };
        match spare {
            Some(spare) => plan.cgroup = spare,
            None => plan.cgroup.create().map_err(|e| {
                RequestError::internal(format!("creating cgroup: {e}", e = chain(&e)))
            })?,
        }
        let cgroup = plan.cgroup.clone();
        let before = format!(
            "plan {planned:?}, cgroup ({made}) {:?}",
            t0.elapsed() - planned
        );
        let result = Self::create_in(id, plan, stdin, ctx.cgroups, &before);
        if result.is_err() {
            if let Err(e) = cgroup.destroy() {
                log::warn!(
                    "container {id}: removing cgroup after failed create: {e}",
                    e = chain(&e)
                );
            }
        }
        result
    }

    /// `before`: the step times so far, for the debug log.
    fn create_in(
        id: &str,
        plan: spec::CreatePlan,
        stdin: bool,
        cgroups: &cgroup_placement::CgroupPlacement,
        before: &str,
    ) -> RequestResult<Container> {
        let t_res = std::time::Instant::now();
        let builtin_pause = plan
            .config
            .init
            .as_ref()
            .is_some_and(|init| init.builtin_pause);
        if let Some(res) = &plan.resources {
            cgroups
                .apply(&plan.cgroup, res, !builtin_pause)
                .map_err(|e| {
                    RequestError::invalid(format!("applying resources: {e}", e = chain(&e)))
                })?;
        }
        let terminal = plan.config.process.terminal().unwrap_or(false);
        let mut stdio = if terminal {
            StdioSetup::terminal_placeholder()
        } else {
            StdioSetup::pipes(stdin)
        }
        .map_err(|e| RequestError::internal(chain(&e)))?;
        let pid_ns_fd = match &plan.pid_ns_path {
            Some(p) => Some(namespaces::open_ns(p).map_err(|e| {
                RequestError::invalid(format!("pid namespace {}: {e}", p.display()))
            })?),
            None => None,
        };
        let pid_ns = match (&pid_ns_fd, plan.new_pid_ns) {
            (Some(fd), _) => PidNs::Join(fd.as_fd()),
            (None, true) => PidNs::New,
            (None, false) => PidNs::Inherit,
        };
        let own_pid_ns = !matches!(pid_ns, PidNs::Inherit);
        // Step times go to the debug log: on an emulating host (KVM-PVM) a create takes
        // seconds and these say where.
        let resources_stdio = t_res.elapsed();
        let t0 = std::time::Instant::now();
        let spawned = process::spawn(&plan.config, &stdio.child, &[], pid_ns, &plan.cgroup)?;
        drop(stdio.child);
        let spawned_after = t0.elapsed();
        if terminal {
            match attach_console(&spawned, plan.console_size) {
                Ok(streams) => stdio.streams = streams,
                Err(e) => {
                    spawned.abort();
                    return Err(e);
                }
            }
        }
        let steps = match spawned.wait_ready() {
            Ok(s) => s,
            Err(e) => {
                spawned.abort();
                return Err(e);
            }
        };
        let mut ns_fds = Vec::new();
        for kind in NsKind::JOIN_ORDER.iter().copied().chain([NsKind::Pid]) {
            let path = format!("/proc/{}/ns/{}", spawned.pid, kind.proc_name());
            match namespaces::open_ns(std::path::Path::new(&path)) {
                Ok(fd) => ns_fds.push((kind, fd)),
                Err(e) => {
                    spawned.abort();
                    return Err(RequestError::internal(format!("opening {path}: {e}")));
                }
            }
        }
        let init = Arc::new(ProcessHandle {
            pid: spawned.pid,
            exit: spawned.exit.clone(),
            streams: stdio.streams,
        });
        let steps: Vec<String> = steps.iter().map(ToString::to_string).collect();
        log::debug!(
            "container {id}: created, init pid {} ({before}, resources and stdio \
             {resources_stdio:?}, spawn {:?}, child set up {:?}: {})",
            init.pid,
            spawned_after,
            t0.elapsed() - spawned_after,
            steps.join(", ")
        );
        Ok(Container {
            id: id.to_string(),
            cgroup: plan.cgroup,
            seccomp: plan.config.seccomp,
            init,
            pending: Mutex::new(Some(spawned)),
            execs: Mutex::new(HashMap::new()),
            ns_fds: Mutex::new(ns_fds),
            own_pid_ns,
            paused: AtomicBool::new(false),
            builtin_pause,
        })
    }

    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Releases the init process to exec its program.
    pub fn start(&self) -> RequestResult<Pid> {
        let spawned = lock(&self.pending).take().ok_or_else(|| {
            RequestError::precondition(format!("container {} is already started", self.id))
        })?;
        let t0 = std::time::Instant::now();
        if let Err(e) = spawned.start() {
            spawned.abort();
            return Err(e);
        }
        log::debug!(
            "container {}: started (exec done) in {:?}",
            self.id,
            t0.elapsed()
        );
        Ok(self.init.pid)
    }

    fn running(&self) -> RequestResult<()> {
        if lock(&self.pending).is_some() {
            return Err(RequestError::precondition(format!(
                "container {} is not started",
                self.id
            )));
        }
        if self.init.exited().is_some() {
            return Err(RequestError::precondition(format!(
                "container {} is stopped",
                self.id
            )));
        }
        Ok(())
    }

    /// Runs an extra process in the container's namespaces and cgroup.
    pub fn exec(&self, exec_id: &str, process_json: &[u8], stdin: bool) -> RequestResult<Pid> {
        if exec_id.is_empty() || exec_id.len() > 256 {
            return Err(RequestError::invalid("exec_id must be 1..=256 bytes"));
        }
        let process: Process = serde_json::from_slice(process_json)
            .map_err(|e| RequestError::invalid(format!("malformed OCI process: {e}")))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(RequestError::invalid("process.args is empty"));
        }
        self.running()?;
        if self.builtin_pause {
            return Err(RequestError::precondition(format!(
                "container {} runs vessel's built-in pause: it has no root filesystem to exec in",
                self.id
            )));
        }
        if lock(&self.execs).contains_key(exec_id) {
            return Err(RequestError::exists(format!(
                "exec {exec_id} already exists in container {}",
                self.id
            )));
        }
        let terminal = process.terminal().unwrap_or(false);
        let size = process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        let mut stdio = if terminal {
            StdioSetup::terminal_placeholder()
        } else {
            StdioSetup::pipes(stdin)
        }
        .map_err(|e| RequestError::internal(chain(&e)))?;
        let ns = lock(&self.ns_fds);
        let join: Vec<NsKind> = ns
            .iter()
            .filter(|(k, _)| *k != NsKind::Pid)
            .map(|(k, _)| *k)
            .collect();
        let fds: Vec<BorrowedFd<'_>> = ns
            .iter()
            .filter(|(k, _)| *k != NsKind::Pid)
            .map(|(_, f)| f.as_fd())
            .collect();
        let pid_fd = ns
            .iter()
            .find(|(k, _)| *k == NsKind::Pid)
            .map(|(_, f)| f.as_fd());
        let pid_ns = match pid_fd {
            Some(fd) if self.own_pid_ns => PidNs::Join(fd),
            _ => PidNs::Inherit,
        };
        let t0 = std::time::Instant::now();
        if direct_exec::supported(&process) {
            let joined: Vec<(NsKind, BorrowedFd<'_>)> = join.iter().copied().zip(fds).collect();
            let (pid, exit) = direct_exec::spawn(
                &process,
                self.seccomp.as_ref(),
                &joined,
                pid_ns,
                &self.cgroup,
                &stdio.child,
            )?;
            drop(ns);
            drop(stdio.child);
            let handle = Arc::new(ProcessHandle {
                pid,
                exit,
                streams: stdio.streams,
            });
            return self.register_exec(exec_id, handle, t0, "direct");
        }
        let config = ChildConfig {
            process,
            seccomp: self.seccomp.clone(),
            init: None,
            join,
            wait_for_start: false,
            nice: crate::priority::container_nice(),
        };
        let spawned = process::spawn(&config, &stdio.child, &fds, pid_ns, &self.cgroup)?;
        drop(ns);
        drop(stdio.child);
        if terminal {
            match attach_console(&spawned, size) {
                Ok(streams) => stdio.streams = streams,
                Err(e) => {
                    spawned.abort();
                    return Err(e);
                }
            }
        }
        if let Err(e) = spawned.wait_exec() {
            spawned.abort();
            return Err(e);
        }
        let handle = Arc::new(ProcessHandle {
            pid: spawned.pid,
            exit: spawned.exit.clone(),
            streams: stdio.streams,
        });
        self.register_exec(exec_id, handle, t0, "setup child")
    }

    /// Records a started exec under `exec_id`; a second exec that raced for the same id
    /// loses (its process is killed).
    fn register_exec(
        &self,
        exec_id: &str,
        handle: Arc<ProcessHandle>,
        t0: std::time::Instant,
        how: &str,
    ) -> RequestResult<Pid> {
        let mut execs = lock(&self.execs);
        if execs.contains_key(exec_id) {
            drop(execs);
            let _ = nix::sys::signal::kill(handle.pid, nix::sys::signal::Signal::SIGKILL);
            handle.exit.wait(None);
            return Err(RequestError::exists(format!(
                "exec {exec_id} already exists in container {}",
                self.id
            )));
        }
        let pid = handle.pid;
        execs.insert(exec_id.to_string(), handle);
        log::info!(
            "container {}: exec {exec_id} ({how}) in {:?}",
            self.id,
            t0.elapsed()
        );
        Ok(pid)
    }

    /// Forgets an exited exec: its status and the agent's ends of its streams.
    pub fn delete_exec(&self, exec_id: &str) -> RequestResult<()> {
        let mut execs = lock(&self.execs);
        let p = execs.get(exec_id).ok_or_else(|| {
            RequestError::not_found(format!("no exec {exec_id:?} in container {}", self.id))
        })?;
        if p.exited().is_none() {
            return Err(RequestError::precondition(format!(
                "exec {exec_id:?} of container {} is still running",
                self.id
            )));
        }
        execs.remove(exec_id);
        Ok(())
    }

    /// The init process ("") or an exec.
    pub fn process(&self, exec_id: &str) -> RequestResult<Arc<ProcessHandle>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            RequestError::not_found(format!("no exec {exec_id:?} in container {}", self.id))
        })
    }

    pub fn signal(&self, exec_id: &str, signal: u32, all: bool) -> RequestResult<()> {
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| RequestError::invalid(format!("unknown signal {signal}")))?;
        if all {
            return self
                .cgroup
                .signal_all(sig)
                .map_err(|e| RequestError::internal(chain(&e)));
        }
        let p = self.process(exec_id)?;
        if p.exited().is_some() {
            return Err(RequestError::precondition(format!(
                "process {exec_id:?} of container {} has exited",
                self.id
            )));
        }
        if lock(&self.pending).is_some() && exec_id.is_empty() && sig == Signal::SIGKILL {
            // Killing a created-but-not-started container: also release its setup.
            if let Some(s) = lock(&self.pending).take() {
                s.abort();
                return Ok(());
            }
        }
        kill(p.pid, sig).map_err(|e| RequestError::internal(format!("kill {}: {e}", p.pid)))
    }

    pub fn pids(&self) -> RequestResult<Vec<u32>> {
        let pids = self
            .cgroup
            .pids()
            .map_err(|e| RequestError::internal(chain(&e)))?;
        Ok(pids
            .into_iter()
            .filter_map(|p| u32::try_from(p).ok())
            .collect())
    }

    pub fn stats(&self) -> CgroupStats {
        self.cgroup.stats()
    }

    pub fn set_paused(&self, paused: bool) -> RequestResult<()> {
        if paused {
            self.running()?;
        }
        self.cgroup
            .set_frozen(paused)
            .map_err(|e| RequestError::internal(chain(&e)))?;
        self.paused.store(paused, Ordering::SeqCst);
        Ok(())
    }

    /// Applies new resources (UpdateContainer) by the placement's rules.
    pub fn update(
        &self,
        resources_json: &[u8],
        cgroups: &cgroup_placement::CgroupPlacement,
    ) -> RequestResult<()> {
        let res: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| RequestError::invalid(format!("malformed OCI resources: {e}")))?;
        cgroups
            .apply(&self.cgroup, &res, !self.builtin_pause)
            .map_err(|e| RequestError::invalid(format!("applying resources: {e}", e = chain(&e))))
    }

    /// Kills every process, waits for them to be reaped, removes the cgroup and releases
    /// every descriptor the agent held for the container.
    pub fn destroy(&self, timeout: Duration) -> RequestResult<()> {
        if let Some(s) = lock(&self.pending).take() {
            s.abort();
        }
        if self.paused.load(Ordering::SeqCst) {
            let _ = self.cgroup.set_frozen(false);
        }
        let deadline = Instant::now() + timeout;
        let mut procs: Vec<Arc<ProcessHandle>> = lock(&self.execs).values().cloned().collect();
        procs.push(self.init.clone());
        for p in &procs {
            if p.exited().is_none() {
                let _ = kill(p.pid, Signal::SIGKILL);
            }
        }
        let _ = self.cgroup.signal_all(Signal::SIGKILL);
        for p in &procs {
            if p.exit.wait(Some(deadline)).is_none() {
                return Err(RequestError::deadline(format!(
                    "container {}: process {} did not exit within {timeout:?} after SIGKILL",
                    self.id, p.pid
                )));
            }
        }
        self.cgroup
            .destroy()
            .map_err(|e| RequestError::internal(format!("removing cgroup: {e}", e = chain(&e))))?;
        lock(&self.ns_fds).clear();
        lock(&self.execs).clear();
        Ok(())
    }
}

/// Receives the pty master a terminal process opened inside the container and builds the
/// agent's streams on it.
fn attach_console(spawned: &Spawned, size: Option<(u16, u16)>) -> RequestResult<ProcessStreams> {
    let master = spawned.recv_console()?;
    ProcessStreams::from_pty_master(master, size).map_err(|e| RequestError::internal(chain(&e)))
}
