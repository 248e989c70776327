//! One process of a pod's container, as the host tracks it: the container's init
//! (`exec_id` "") or an exec, its stdio attachment and its exit.

use std::sync::{Arc, Condvar, Mutex};

use oci_spec::runtime::Process;

use crate::stdio::ProcessIo;

/// Where a process is in its life (containerd's task status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// A snapshot of a process's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub status: ProcStatus,
    /// Guest pid once started (0 before).
    pub guest_pid: u32,
    pub exit_status: u32,
    /// Unix time in ns of the exit (0 while running).
    pub exited_at_ns: u64,
}

/// The stdio paths the caller gave for a process ("" = no such stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// One process: a container's init (`exec_id` "") or an exec.
pub struct Proc {
    pub container_id: String,
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// The OCI process of an exec (None for init).
    pub spec: Option<Process>,
    state: Mutex<ProcInfo>,
    exited: Condvar,
    io: Mutex<Option<Arc<ProcessIo>>>,
}

pub(crate) use vessel_protocol::sync::lock;

/// Now in Unix ns (0 if the clock is before the epoch).
pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Proc {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        spec: Option<Process>,
    ) -> Proc {
        Proc {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            spec,
            state: Mutex::new(ProcInfo {
                status: ProcStatus::Created,
                guest_pid: 0,
                exit_status: 0,
                exited_at_ns: 0,
            }),
            exited: Condvar::new(),
            io: Mutex::new(None),
        }
    }

    /// "c1" for an init, "c1/e1" for an exec: for messages.
    pub fn label(&self) -> String {
        if self.exec_id.is_empty() {
            self.container_id.clone()
        } else {
            format!("{}/{}", self.container_id, self.exec_id)
        }
    }

    pub fn info(&self) -> ProcInfo {
        lock(&self.state).clone()
    }

    pub(crate) fn set_status(&self, status: ProcStatus) {
        let mut s = lock(&self.state);
        if s.status != ProcStatus::Stopped {
            s.status = status;
        }
    }

    pub(crate) fn set_running(&self, guest_pid: u32) {
        let mut s = lock(&self.state);
        if s.status != ProcStatus::Stopped {
            s.status = ProcStatus::Running;
            s.guest_pid = guest_pid;
        }
    }

    /// Records the exit (first one wins; `exited_at_ns` 0 = now) and wakes waiters. Returns
    /// false if already stopped.
    pub(crate) fn set_exited(&self, exit_status: u32, exited_at_ns: u64) -> bool {
        let mut s = lock(&self.state);
        if s.status == ProcStatus::Stopped {
            return false;
        }
        s.status = ProcStatus::Stopped;
        s.exit_status = exit_status;
        s.exited_at_ns = if exited_at_ns == 0 {
            now_ns()
        } else {
            exited_at_ns
        };
        self.exited.notify_all();
        true
    }

    /// Blocks until the process stopped.
    pub fn wait_exit(&self) -> ProcInfo {
        let mut s = lock(&self.state);
        while s.status != ProcStatus::Stopped {
            s = self.exited.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.clone()
    }

    pub(crate) fn set_io(&self, io: ProcessIo) {
        *lock(&self.io) = Some(Arc::new(io));
    }

    pub(crate) fn io_ref(&self) -> Option<Arc<ProcessIo>> {
        lock(&self.io).clone()
    }

    /// Stops copying this process's stdio (its task is being deleted).
    pub(crate) fn cancel_io(&self) {
        if let Some(io) = lock(&self.io).take() {
            io.cancel();
        }
    }

    pub fn close_stdin(&self) {
        if let Some(io) = lock(&self.io).as_ref() {
            io.close_stdin();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn exit_is_recorded_once_and_wakes_waiters() {
        let p = Arc::new(Proc::new("c1", "", StdioPaths::default(), None));
        assert_eq!(p.info().status, ProcStatus::Created);
        p.set_running(42);
        let waiter = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || p.wait_exit())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        assert!(p.set_exited(3, 1_500_000_000));
        assert!(!p.set_exited(9, 0), "second exit must not overwrite");
        let info = waiter.join().unwrap();
        assert_eq!(info.status, ProcStatus::Stopped);
        assert_eq!(info.exit_status, 3);
        assert_eq!(info.exited_at_ns, 1_500_000_000);
        // A stopped process stays stopped.
        p.set_running(1);
        p.set_status(ProcStatus::Paused);
        assert_eq!(p.info().status, ProcStatus::Stopped);
        // An unknown exit time becomes now.
        let q = Proc::new("c2", "e", StdioPaths::default(), None);
        q.set_exited(0, 0);
        assert!(q.info().exited_at_ns > 1_577_836_800_000_000_000);
    }

    #[test]
    fn labels() {
        assert_eq!(Proc::new("c", "", StdioPaths::default(), None).label(), "c");
        assert_eq!(
            Proc::new("c", "e", StdioPaths::default(), None).label(),
            "c/e"
        );
    }
}
