//! Why a VM stopped, and the one-shot signal that tells the VMM to stop it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::kvm::exits::InternalErrorReport;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine through the i8042 (`reboot=k`): our power-off.
    GuestReset,
    /// KVM reported a guest shutdown/reset system event (PSCI-like or ACPI paths).
    GuestSystemEvent { kind: u32 },
    /// The host asked the VM to stop (`RunningVm::stop`).
    Stopped,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u8, rip: u64 },
    /// A vCPU halted with no in-kernel APIC to wake it (KVM_EXIT_HLT).
    Halted { vcpu: u8 },
    /// The guest reported a crash (KVM_SYSTEM_EVENT_CRASH).
    GuestCrash { vcpu: u8 },
    /// KVM could not run or emulate guest code (KVM_EXIT_INTERNAL_ERROR).
    InternalError(Box<InternalErrorReport>),
    /// Anything else that ended a vCPU (failed entry, unexpected exit, ioctl error).
    VcpuFailed { vcpu: u8, message: String },
    /// The device event loop failed (epoll error, seccomp install).
    EventLoopFailed { message: String },
}

impl ExitReason {
    /// Process exit status for this reason: 0 for a guest power-off or a host stop.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset | ExitReason::GuestSystemEvent { .. } | ExitReason::Stopped => 0,
            ExitReason::TripleFault { .. } => 2,
            ExitReason::InternalError(_) => 3,
            ExitReason::Halted { .. } | ExitReason::GuestCrash { .. } => 4,
            ExitReason::VcpuFailed { .. } | ExitReason::EventLoopFailed { .. } => 5,
        }
    }

    pub fn is_clean(&self) -> bool {
        self.exit_code() == 0
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestReset => write!(f, "guest reset via i8042 (power off)"),
            ExitReason::GuestSystemEvent { kind } => write!(f, "guest system event {kind}"),
            ExitReason::Stopped => write!(f, "stopped by the host"),
            ExitReason::TripleFault { vcpu, rip } => {
                write!(f, "vcpu{vcpu} triple fault (shutdown), rip {rip:#x}")
            }
            ExitReason::Halted { vcpu } => write!(f, "vcpu{vcpu} halted"),
            ExitReason::GuestCrash { vcpu } => write!(f, "vcpu{vcpu} guest crash event"),
            ExitReason::InternalError(report) => write!(f, "{report}"),
            ExitReason::VcpuFailed { vcpu, message } => write!(f, "vcpu{vcpu} failed: {message}"),
            ExitReason::EventLoopFailed { message } => write!(f, "event loop failed: {message}"),
        }
    }
}

/// Records the first exit reason and wakes whoever waits for the VM to stop.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    /// Set with `reason`; cheap to poll from vCPU loops.
    requested: AtomicBool,
    evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            requested: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Requests the VM to stop; the first reason wins.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.requested.store(true, Ordering::Release);
        drop(slot);
        // A full counter still wakes the waiter; nothing else to do on error.
        let _ = self.evt.write(1);
    }

    /// True once any reason was recorded.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_event_fires() {
        let s = ExitSignal::new().expect("eventfd");
        assert_eq!(s.reason(), None);
        assert!(!s.is_requested());
        s.request(ExitReason::GuestReset);
        assert!(s.is_requested());
        s.request(ExitReason::Stopped);
        assert_eq!(s.reason(), Some(ExitReason::GuestReset));
        assert_eq!(s.event().read().expect("read"), 2);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitReason::GuestReset.exit_code(), 0);
        assert_eq!(ExitReason::Stopped.exit_code(), 0);
        assert_eq!(ExitReason::TripleFault { vcpu: 0, rip: 0 }.exit_code(), 2);
        assert!(!ExitReason::Halted { vcpu: 0 }.is_clean());
    }
}
