//! The agent-side half of process creation: fork + re-exec of the agent as the child
//! (see `child.rs`) in the right pid namespace, registered with the reaper, put into the
//! container's cgroup, and driven through the sync protocol.
//!
//! **Spare setup children.** Before a snapshot is taken (`crate::warmup`), PID 1 starts a
//! few setup children ahead of need, each in a new pid namespace and waiting to be claimed.
//! A restored pod's first containers that want a new pid namespace (a standalone container,
//! a pod's sandbox container, the first app containers) claim one instead of spawning: on
//! KVM-PVM the spawn and the re-exec of the agent until its `main` cost ~1.2 s of emulated
//! guest kernel work per container, and the snapshot has that done. The claim hands over
//! the container's stdio; the cgroup and config follow as for a fresh child. Pages the spare
//! touched before its claim stay charged to the agent's cgroup (as runc's `init` is moved into
//! the container's cgroup after it started). Spares are not replenished: that work would
//! compete with the containers on the guest's vCPU.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cgroups::Cgroup;
use super::child::{self, AgentCommand, ChildConfig, ChildReport, CHILD_ARG, SPARE_ARG};
use crate::error::RequestError;
use crate::reaper::{lock, ExitCell, Reaper};

/// How long the child may take to set up before the agent gives up on it. Generous: on a
/// KVM-PVM host the setup child's exec, mounts and pivot_root take ~15 s idle and over 60 s
/// when the host is loaded (guest kernel code is emulated); on hardware KVM, milliseconds.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// Which pid namespace the child is forked into.
pub enum PidNs<'a> {
    /// The agent's own.
    Inherit,
    /// A new one: the child is its pid 1.
    New,
    /// An existing one (a path from the spec, or a running container's).
    Join(BorrowedFd<'a>),
}

/// A child that has been forked and configured but not yet released.
pub struct Spawned {
    pub pid: Pid,
    pub exit: Arc<ExitCell>,
    sync: UnixStream,
}

/// Spare setup children waiting to be claimed (see the module comment).
static SPARES: Mutex<Vec<Spawned>> = Mutex::new(Vec::new());

fn internal(what: &str, e: &dyn std::fmt::Display) -> RequestError {
    RequestError::internal(format!("{what}: {e}"))
}

/// Starts `count` spare setup children (stdio /dev/null until claimed); how many there are.
pub fn start_spares(count: usize) -> Result<usize, RequestError> {
    for _ in 0..count {
        let null = || {
            std::fs::File::open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| internal("/dev/null", &e))
        };
        let stdio = [null()?, null()?, null()?];
        let spare = fork_child(&stdio, &[], PidNs::New, true)?;
        lock(&SPARES).push(spare);
    }
    Ok(lock(&SPARES).len())
}

/// A spare child, claimed for a container with `stdio`; `None` if none is left.
fn claim_spare(stdio: &[OwnedFd; 3]) -> Option<Spawned> {
    loop {
        let spare = lock(&SPARES).pop()?;
        if spare.exit.get().is_some() {
            continue;
        }
        let fds: Vec<BorrowedFd<'_>> = stdio.iter().map(|f| f.as_fd()).collect();
        match child::send_with_fds(&spare.sync, &AgentCommand::Claim, &fds) {
            Ok(()) => {
                log::info!(
                    "spare setup child {} claimed ({} left)",
                    spare.pid,
                    lock(&SPARES).len()
                );
                return Some(spare);
            }
            Err(e) => {
                log::warn!("spare setup child {}: {e}", spare.pid);
                spare.abort();
            }
        }
    }
}

/// Forks the child (or claims a spare), moves it into `cgroup`, and sends it `config`.
pub fn spawn(
    config: &ChildConfig,
    stdio: &[OwnedFd; 3],
    extra_fds: &[BorrowedFd<'_>],
    pid_ns: PidNs<'_>,
    cgroup: &Cgroup,
) -> Result<Spawned, RequestError> {
    // Step times for the debug log (seconds on an emulating host).
    let t0 = std::time::Instant::now();
    let spare = match pid_ns {
        PidNs::New if extra_fds.is_empty() => claim_spare(stdio),
        _ => None,
    };
    let how = if spare.is_some() {
        "spare claimed"
    } else {
        "forked"
    };
    let spawned = match spare {
        Some(s) => s,
        None => fork_child(stdio, extra_fds, pid_ns, false)?,
    };
    let t_child = t0.elapsed();
    if let Err(e) = cgroup.add_process(spawned.pid.as_raw()) {
        spawned.abort();
        return Err(internal("join cgroup", &e));
    }
    let t_cgroup = t0.elapsed();
    let _ = spawned.sync.set_read_timeout(Some(SETUP_TIMEOUT));
    if let Err(e) = child::send(&spawned.sync, config) {
        let err = spawned
            .failure()
            .unwrap_or_else(|| internal("send child config", &e));
        spawned.abort();
        return Err(err);
    }
    log::debug!(
        "setup child {}: {how} {t_child:?}, moved into the cgroup {:?}, config sent {:?}",
        spawned.pid,
        t_cgroup - t_child,
        t0.elapsed() - t_cgroup
    );
    Ok(spawned)
}

/// Runs `fork` (which spawns, registered with the reaper) with the child's pid namespace
/// set to `pid_ns`. The pid namespace for children is a per-thread attribute: it is switched
/// on a short-lived thread so no request thread is ever left in a container's namespace.
pub fn in_pid_ns<T: Send>(
    pid_ns: PidNs<'_>,
    fork: impl FnOnce() -> std::io::Result<T> + Send,
) -> Result<T, RequestError> {
    let joined = !matches!(pid_ns, PidNs::Inherit | PidNs::New);
    let forked = std::thread::scope(|s| {
        s.spawn(|| -> Result<T, RequestError> {
            match pid_ns {
                PidNs::Inherit => {}
                PidNs::New => unshare(CloneFlags::CLONE_NEWPID)
                    .map_err(|e| internal("unshare pid namespace", &e))?,
                PidNs::Join(fd) => setns(fd, CloneFlags::CLONE_NEWPID)
                    .map_err(|e| internal("join pid namespace", &e))?,
            }
            fork().map_err(|e| match e.raw_os_error() {
                // fork into a pid namespace whose init has exited.
                Some(libc::ENOMEM) if joined => RequestError::precondition(
                    "the container's pid namespace is gone (its init exited)",
                ),
                _ => internal("fork", &e),
            })
        })
        .join()
    });
    forked.map_err(|_| RequestError::internal("spawn thread panicked"))?
}

/// Forks and re-executes the agent as a setup child in `pid_ns`, registered with the reaper.
fn fork_child(
    stdio: &[OwnedFd; 3],
    extra_fds: &[BorrowedFd<'_>],
    pid_ns: PidNs<'_>,
    spare: bool,
) -> Result<Spawned, RequestError> {
    let (agent_end, child_end) = UnixStream::pair().map_err(|e| internal("socketpair", &e))?;
    let mut fds: Vec<BorrowedFd<'_>> = stdio.iter().map(|f| f.as_fd()).collect();
    fds.push(child_end.as_fd());
    fds.extend_from_slice(extra_fds);
    let env = crate::fpu_workaround::child_env();
    let mut argv = vec!["vessel-agent", CHILD_ARG];
    if spare {
        argv.push(SPARE_ARG);
    }
    let plan = crate::sys::ExecPlan::new("/proc/self/exe", &argv, &env, &fds)
        .map_err(|e| internal("exec plan", &e))?;

    let (pid, exit) = in_pid_ns(pid_ns, || {
        Reaper::global().spawn_watched(|| crate::sys::fork_exec(&plan))
    })?;
    drop(child_end);
    Ok(Spawned {
        pid,
        exit,
        sync: agent_end,
    })
}

impl Spawned {
    /// Receives the pty master the child opened inside the container (terminal processes).
    pub fn recv_console(&self) -> Result<OwnedFd, RequestError> {
        match child::recv_with_fd::<ChildReport>(&self.sync) {
            Ok(Some((ChildReport::Console, Some(fd)))) => Ok(fd),
            Ok(Some((ChildReport::Failed { invalid, message }, _))) => {
                Err(report_error(invalid, message))
            }
            Ok(Some((other, _))) => Err(RequestError::internal(format!(
                "expected the pty master from the container, got {other:?}"
            ))),
            Ok(None) => Err(self.died("before sending its pty")),
            Err(e) => Err(RequestError::internal(format!(
                "receiving the container's pty: {e}"
            ))),
        }
    }

    /// Waits for the child to report that it is set up (CreateContainer); its step times.
    pub fn wait_ready(&self) -> Result<Vec<child::StepCost>, RequestError> {
        match child::recv::<ChildReport>(&self.sync) {
            Ok(Some(ChildReport::Ready { steps })) => Ok(steps),
            Ok(Some(ChildReport::Failed { invalid, message })) => {
                Err(report_error(invalid, message))
            }
            Ok(Some(ChildReport::Console)) => Err(RequestError::internal(
                "the child sent a pty master nobody asked for",
            )),
            Ok(None) => Err(self.died("during setup")),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(RequestError::deadline(
                format!("the container's setup did not finish within {SETUP_TIMEOUT:?}"),
            )),
            Err(e) => Err(RequestError::internal(format!(
                "waiting for container setup: {e}"
            ))),
        }
    }

    /// Releases the child to exec its program, and waits until `execve` has succeeded
    /// (end of file on the close-on-exec socket) or failed.
    pub fn start(&self) -> Result<(), RequestError> {
        if let Err(e) = child::send(&self.sync, &AgentCommand::Start) {
            return Err(self
                .failure()
                .unwrap_or_else(|| RequestError::internal(format!("starting process: {e}"))));
        }
        self.wait_exec()
    }

    /// Waits for `execve` (exec processes, which do not wait for a start command).
    pub fn wait_exec(&self) -> Result<(), RequestError> {
        match child::recv::<ChildReport>(&self.sync) {
            Ok(None) => Ok(()),
            Ok(Some(ChildReport::Failed { invalid, message })) => {
                Err(report_error(invalid, message))
            }
            Ok(Some(other)) => Err(RequestError::internal(format!(
                "unexpected report from the child while waiting for exec: {other:?}"
            ))),
            Err(e) => Err(RequestError::internal(format!("waiting for exec: {e}"))),
        }
    }

    /// A failure report, if the child sent one before going away.
    fn failure(&self) -> Option<RequestError> {
        match child::recv::<ChildReport>(&self.sync) {
            Ok(Some(ChildReport::Failed { invalid, message })) => {
                Some(report_error(invalid, message))
            }
            _ => None,
        }
    }

    fn died(&self, when: &str) -> RequestError {
        let status = self
            .exit
            .wait(Some(std::time::Instant::now() + Duration::from_secs(1)));
        RequestError::internal(format!("container process died {when} (status {status:?})"))
    }

    /// Kills the child and waits until the reaper has it (no zombie, no leaked fds).
    pub fn abort(&self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        self.exit.wait(None);
    }
}

fn report_error(invalid: bool, message: String) -> RequestError {
    if invalid {
        RequestError::invalid(message)
    } else {
        RequestError::internal(message)
    }
}
