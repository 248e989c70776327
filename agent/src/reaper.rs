//! The one place that reaps children.
//!
//! SIGCHLD is blocked in every thread (the mask is set in `main` before any thread starts)
//! and one thread waits for it with `sigwait`, then reaps every exited child with
//! `waitpid(-1, WNOHANG)`. Processes the agent starts are registered *under the reaper's lock
//! while forking*, so an exit can never be reaped before it is known, and a stale status can
//! never be matched to a reused pid. Orphans (reparented to PID 1 or to the subreaper agent)
//! are reaped and forgotten.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

/// How a process ended, as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal number.
    pub status: i32,
    /// Unix time in nanoseconds when the process was reaped.
    pub exited_at_ns: u64,
}

/// Where the reaper leaves one process's exit; any number of requests may wait on it.
#[derive(Default)]
pub struct ExitCell {
    exit: Mutex<Option<ExitInfo>>,
    changed: Condvar,
}

impl ExitCell {
    /// The exit status if the process has been reaped.
    pub fn get(&self) -> Option<ExitInfo> {
        *lock(&self.exit)
    }

    /// Blocks until the process is reaped or `deadline` passes (`None` = no deadline).
    pub fn wait(&self, deadline: Option<Instant>) -> Option<ExitInfo> {
        let mut guard = lock(&self.exit);
        loop {
            if let Some(info) = *guard {
                return Some(info);
            }
            match deadline {
                None => guard = self.changed.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    guard = self
                        .changed
                        .wait_timeout(guard, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    fn set(&self, info: ExitInfo) {
        *lock(&self.exit) = Some(info);
        self.changed.notify_all();
    }
}

/// Lock a mutex, recovering from poisoning (a panicking request must not wedge the agent).
pub use vessel_protocol::sync::lock;

/// The process-wide child reaper.
pub struct Reaper {
    watched: Mutex<HashMap<i32, Arc<ExitCell>>>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

impl Reaper {
    /// The single reaper of this process.
    pub fn global() -> &'static Reaper {
        REAPER.get_or_init(|| Reaper {
            watched: Mutex::new(HashMap::new()),
        })
    }

    /// Blocks SIGCHLD in the calling thread; call from `main` before any other thread exists
    /// so every thread inherits the mask.
    pub fn block_sigchld() -> nix::Result<()> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
    }

    /// Starts the reaper thread.
    pub fn start(&'static self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || self.run())
            .map(|_| ())
    }

    /// Runs `fork` (which must create exactly one child and return its pid) while holding the
    /// reaper's lock, and registers the child before the lock is released.
    pub fn spawn_watched<E>(
        &self,
        fork: impl FnOnce() -> Result<Pid, E>,
    ) -> Result<(Pid, Arc<ExitCell>), E> {
        let mut watched = lock(&self.watched);
        let pid = fork()?;
        let cell = Arc::new(ExitCell::default());
        watched.insert(pid.as_raw(), cell.clone());
        Ok((pid, cell))
    }

    fn run(&self) {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        loop {
            self.reap_all();
            if let Err(e) = set.wait() {
                log::error!("sigwait for SIGCHLD failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    /// Reaps every child that has exited.
    fn reap_all(&self) {
        loop {
            // Raw statuses: nix's decoding rejects signals it has no name for (real-time ones),
            // which would lose an exit that is already reaped.
            match crate::sys::wait_any_nohang() {
                Ok(None) => return,
                Ok(Some((pid, raw))) => {
                    if libc::WIFEXITED(raw) {
                        self.deliver(pid, libc::WEXITSTATUS(raw));
                    } else if libc::WIFSIGNALED(raw) {
                        self.deliver(pid, 128 + libc::WTERMSIG(raw));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return,
                Err(e) => {
                    log::error!("waitpid failed: {e}");
                    return;
                }
            }
        }
    }

    fn deliver(&self, pid: i32, status: i32) {
        let cell = lock(&self.watched).remove(&pid);
        let exited_at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        match cell {
            Some(cell) => {
                log::debug!("reaped {pid}: status {status}");
                cell.set(ExitInfo {
                    status,
                    exited_at_ns,
                });
            }
            None => log::debug!("reaped orphan {pid}: status {status}"),
        }
    }
}
