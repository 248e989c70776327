//! The syscalls each VMM thread may make. Edit the lists here; everything else is generic.
//!
//! The vsock device (event thread) talks to Unix sockets; its syscalls are in
//! `VMM_THREAD_SYSCALLS`. If a device needs more, add them here.

use std::mem::size_of;

use kvm_bindings::{kvm_regs, kvm_sregs};

const KVMIO: u64 = 0xae;

const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}

const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// KVM ioctls a running vCPU makes (the run loop, plus register reads for exit reports).
pub fn vcpu_ioctls() -> Vec<u64> {
    vec![
        io(0x80),                          // KVM_RUN
        ior(0x81, size_of::<kvm_regs>()),  // KVM_GET_REGS
        ior(0x83, size_of::<kvm_sregs>()), // KVM_GET_SREGS
        iow(0x82, size_of::<kvm_regs>()),  // KVM_SET_REGS (VMM-emulated instructions)
    ]
}

/// Ioctls on sockets and fds the event thread may make.
pub fn vmm_ioctls() -> Vec<u64> {
    vec![libc::FIONBIO, libc::FIONREAD]
}

/// Syscalls common to every VMM thread: memory, locks, signals, time, thread exit.
pub const COMMON_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    // std's HashMap seeds come from getrandom, once per thread.
    libc::SYS_getrandom,
];

/// Extra syscalls for vCPU threads (beyond [`COMMON_SYSCALLS`]; ioctl is filtered by request).
pub const VCPU_THREAD_SYSCALLS: &[libc::c_long] = &[libc::SYS_read];

/// Extra syscalls for the event-loop (device) thread and the VMM's control thread.
pub const VMM_THREAD_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_fcntl,
    libc::SYS_getsockopt,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_getpid,
    libc::SYS_gettid,
    // Kicking vCPU threads (pthread_kill) when stopping.
    libc::SYS_tgkill,
];
