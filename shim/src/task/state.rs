//! The shim's model of tasks: containers (with their init process) and exec processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use oci_spec::runtime::Process;
use vessel_runtime::stdio::ProcessIo;
use vessel_runtime::Sandbox;

use crate::io::StdioPaths;

/// Where a process is in its life (containerd's task status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// A snapshot of a process's state.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcInfo {
    pub status: ProcStatus,
    /// Guest pid once started (0 before).
    pub guest_pid: u32,
    pub exit_status: u32,
    pub exited_at: Option<Timestamp>,
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
                exited_at: None,
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

    pub fn set_status(&self, status: ProcStatus) {
        let mut s = lock(&self.state);
        if s.status != ProcStatus::Stopped {
            s.status = status;
        }
    }

    pub fn set_running(&self, guest_pid: u32) {
        let mut s = lock(&self.state);
        if s.status != ProcStatus::Stopped {
            s.status = ProcStatus::Running;
            s.guest_pid = guest_pid;
        }
    }

    /// Records the exit (first one wins) and wakes waiters. Returns false if already stopped.
    pub fn set_exited(&self, exit_status: u32, exited_at: Timestamp) -> bool {
        let mut s = lock(&self.state);
        if s.status == ProcStatus::Stopped {
            return false;
        }
        s.status = ProcStatus::Stopped;
        s.exit_status = exit_status;
        s.exited_at = Some(exited_at);
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

    pub fn set_io(&self, io: ProcessIo) {
        *lock(&self.io) = Some(Arc::new(io));
    }

    /// The process's copy threads, if started.
    pub fn io_ref(&self) -> Option<Arc<ProcessIo>> {
        lock(&self.io).clone()
    }

    pub fn take_io(&self) -> Option<Arc<ProcessIo>> {
        lock(&self.io).take()
    }

    pub fn close_stdin(&self) {
        if let Some(io) = lock(&self.io).as_ref() {
            io.close_stdin();
        }
    }
}

/// A container and the sandbox it runs in.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub sandbox: Arc<Sandbox>,
    /// This container's creation started the sandbox (a CRI sandbox or a plain `ctr run`).
    pub owns_sandbox: bool,
    /// The shim mounted `<bundle>/rootfs` from the request's mounts.
    pub rootfs_mounted: bool,
    pub init: Arc<Proc>,
    pub execs: Mutex<HashMap<String, Arc<Proc>>>,
}

impl Container {
    /// The init (`exec_id` "") or the named exec.
    pub fn process(&self, exec_id: &str) -> Option<Arc<Proc>> {
        if exec_id.is_empty() {
            Some(Arc::clone(&self.init))
        } else {
            lock(&self.execs).get(exec_id).cloned()
        }
    }
}

/// Converts Unix nanoseconds (0 = unknown → now) to a protobuf timestamp.
pub fn timestamp_from_ns(ns: u64) -> Timestamp {
    let ns = if ns == 0 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    } else {
        ns
    };
    Timestamp {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
        ..Default::default()
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
        assert!(p.set_exited(3, timestamp_from_ns(1_500_000_000)));
        assert!(
            !p.set_exited(9, timestamp_from_ns(0)),
            "second exit must not overwrite"
        );
        let info = waiter.join().unwrap();
        assert_eq!(info.status, ProcStatus::Stopped);
        assert_eq!(info.exit_status, 3);
        assert_eq!(info.exited_at.as_ref().unwrap().seconds, 1);
        assert_eq!(info.exited_at.as_ref().unwrap().nanos, 500_000_000);
        // A stopped process stays stopped.
        p.set_running(1);
        p.set_status(ProcStatus::Paused);
        assert_eq!(p.info().status, ProcStatus::Stopped);
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
