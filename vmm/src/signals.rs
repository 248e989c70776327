//! SIGTERM/SIGINT/SIGHUP stop the VM cleanly (vCPUs report where they were) instead of
//! killing the process mid-write.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::vmm::RunningVm;

/// The exit eventfd of the VM the signals stop (-1: none).
static EXIT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_termination(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd: RawFd = EXIT_FD.load(Ordering::Acquire);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is 8 valid bytes, as eventfd requires.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

#[derive(Debug, thiserror::Error)]
#[error("installing a handler for signal {signal}")]
pub struct SignalError {
    signal: libc::c_int,
    source: std::io::Error,
}

/// Makes SIGTERM, SIGINT and SIGHUP stop `vm` (its `wait` then returns `Stopped`).
pub fn stop_on_termination_signals(vm: &RunningVm) -> Result<(), SignalError> {
    EXIT_FD.store(vm.exit_fd(), Ordering::Release);
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid starting point; we fill handler and flags.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_termination as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: installs a handler that only performs an async-signal-safe write.
        let rc = unsafe { libc::sigaction(signal, &act, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(SignalError {
                signal,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
