//! A spawned child process (the VMM, or a host agent) watched by its own thread, so its exit is
//! noticed at once and it is never signalled after its pid could have been reused.

use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::state::ProcessIdentity;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    Exited(i32),
    Signaled(i32),
    /// waitid failed (e.g. someone else reaped it): the process is gone, status unknown.
    Unknown,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitInfo::Exited(c) => write!(f, "exited with status {c}"),
            ExitInfo::Signaled(s) => {
                let name = Signal::try_from(*s).map(|s| s.as_str()).unwrap_or("?");
                write!(f, "killed by signal {s} ({name})")
            }
            ExitInfo::Unknown => write!(f, "exited (status unknown)"),
        }
    }
}

type ExitHook = Box<dyn FnOnce(ExitInfo) + Send>;

#[derive(Default)]
struct Shared {
    exit: Option<ExitInfo>,
    hooks: Vec<ExitHook>,
}

/// A running child and its watcher thread.
pub struct ChildProcess {
    name: String,
    pid: i32,
    identity: Option<ProcessIdentity>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
}

impl ChildProcess {
    /// Spawns `cmd` and starts watching it. `name` is used in logs and errors.
    pub fn spawn(mut cmd: Command, name: &str) -> std::io::Result<ChildProcess> {
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // The watcher reaps it; std's Child is only dropped (which neither waits nor kills).
        drop(child);
        let identity = ProcessIdentity::of(pid);
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let watch = Arc::clone(&shared);
        let thread_name = format!("watch-{name}");
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || watch_child(pid, &watch))?;
        Ok(ChildProcess {
            name: name.to_string(),
            pid,
            identity,
            shared,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pid + start time, for the state file.
    pub fn identity(&self) -> Option<ProcessIdentity> {
        self.identity
    }

    /// The exit, if it happened.
    pub fn exit_status(&self) -> Option<ExitInfo> {
        lock(&self.shared.0).exit
    }

    /// Waits up to `timeout` for the exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.shared;
        let mut g = lock(m);
        while g.exit.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = match cv.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        g.exit
    }

    /// Sends `signal` unless the child already exited (and so may have been reaped).
    pub fn signal(&self, signal: Signal) -> Result<(), nix::Error> {
        let g = lock(&self.shared.0);
        if g.exit.is_some() {
            return Ok(());
        }
        // Holding the lock: the watcher records the exit under it before reaping, so the pid
        // still names our child (alive or zombie) here.
        match kill(Pid::from_raw(self.pid), signal) {
            Err(nix::errno::Errno::ESRCH) => Ok(()),
            other => other,
        }
    }

    /// SIGKILL and wait up to `timeout` for the exit.
    pub fn kill_and_wait(&self, timeout: Duration) -> Option<ExitInfo> {
        if let Err(e) = self.signal(Signal::SIGKILL) {
            log::warn!("killing {} (pid {}): {e}", self.name, self.pid);
        }
        self.wait_timeout(timeout)
    }

    /// Runs `hook` once when the child exits (at once if it already has).
    pub fn on_exit(&self, hook: impl FnOnce(ExitInfo) + Send + 'static) {
        let mut g = lock(&self.shared.0);
        match g.exit {
            Some(e) => {
                drop(g);
                hook(e);
            }
            None => g.hooks.push(Box::new(hook)),
        }
    }
}

use vessel_protocol::sync::lock;

fn watch_child(pid: i32, shared: &(Mutex<Shared>, Condvar)) {
    let pid = Pid::from_raw(pid);
    let info = loop {
        // WNOWAIT: learn the exit without reaping, so a concurrent signal() cannot hit a reused pid.
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(WaitStatus::Exited(_, code)) => break ExitInfo::Exited(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break ExitInfo::Signaled(sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("waiting for child {pid}: {e}");
                break ExitInfo::Unknown;
            }
        }
    };
    let hooks = {
        let (m, cv) = shared;
        let mut g = lock(m);
        g.exit = Some(info);
        let _ = waitpid(pid, None);
        cv.notify_all();
        std::mem::take(&mut g.hooks)
    };
    for hook in hooks {
        hook(info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn reports_exit_code_and_runs_hooks() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 7"]);
        let child = ChildProcess::spawn(cmd, "sh").unwrap();
        let (tx, rx) = mpsc::channel();
        child.on_exit(move |e| tx.send(e).unwrap());
        assert_eq!(
            child.wait_timeout(Duration::from_secs(30)),
            Some(ExitInfo::Exited(7))
        );
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).unwrap(),
            ExitInfo::Exited(7)
        );
        // Hook added after the exit runs at once.
        let (tx, rx) = mpsc::channel();
        child.on_exit(move |e| tx.send(e).unwrap());
        assert_eq!(rx.try_recv().unwrap(), ExitInfo::Exited(7));
        // Signalling an exited child is a no-op, not an error.
        child.signal(Signal::SIGKILL).unwrap();
    }

    #[test]
    fn kill_and_wait_reports_the_signal() {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        let child = ChildProcess::spawn(cmd, "sleep").unwrap();
        assert!(child.identity().unwrap().is_alive());
        assert_eq!(child.exit_status(), None);
        let e = child.kill_and_wait(Duration::from_secs(30)).unwrap();
        assert_eq!(e, ExitInfo::Signaled(9));
        assert_eq!(e.to_string(), "killed by signal 9 (SIGKILL)");
        // Reaped: no zombie left with that pid.
        assert!(!child.identity().unwrap().is_alive());
    }
}
