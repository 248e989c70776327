//! The syscalls each VMM thread may make. Edit the lists here; everything else is generic.
//!
//! The vsock device (event thread) talks to Unix sockets; its syscalls are in
//! `VMM_THREAD_SYSCALLS`. A virtio-fs device (also on the event thread) works on host files:
//! `FS_DEVICE_SYSCALLS`, added to the event thread's filter only when a directory is shared,
//! plus a few allowed only with some arguments (`FS_MKNOD_TYPES`, `FS_RENAME_FORBIDDEN_FLAGS`,
//! `FS_SETRES_EFFECTIVE_ONLY`).
//! If a device needs more, add them here.

use std::mem::size_of;

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_xsave};

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
        // KVM_GET_XSAVE, KVM_SET_XSAVE: the guest tasks' extended state on KVM-PVM (kvm::xstate)
        ior(0xa4, size_of::<kvm_xsave>()),
        iow(0xa5, size_of::<kvm_xsave>()),
    ]
}

/// Ioctls on sockets and fds the event thread may make.
pub fn vmm_ioctls() -> Vec<u64> {
    vec![libc::FIONBIO, libc::FIONREAD]
}

/// Syscalls common to every VMM thread: memory, locks, signals, time, thread exit.
pub const COMMON_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_brk,
    // mmap: only without PROT_EXEC (the rule in `seccomp::build`).
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
/// ftruncate: the serial console's file is cut back when it reaches its size limit.
pub const VCPU_THREAD_SYSCALLS: &[libc::c_long] = &[libc::SYS_read, libc::SYS_ftruncate];

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

/// Extra syscalls for the event thread when it serves a virtio-fs device (fuse-backend-rs's
/// `PassthroughFs`): what its requests made under strace, checked by running every request
/// kind under this filter (`devices/virtio/fs/tests/seccomp.rs`). Beyond the base list it
/// already relies on `read`, `write`, `close`, `fcntl`, `lseek`, `newfstatat`, `statx`,
/// `unlinkat`.
pub const FS_DEVICE_SYSCALLS: &[libc::c_long] = &[
    // Lookups and opens: an O_PATH fd per inode, reopened through /proc/self/fd.
    libc::SYS_openat,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_fstatfs,
    // FLUSH closes a dup of the handle (what close(2) does on the host).
    libc::SYS_dup,
    // File data (the single-buffer paths use pread64/pwrite64).
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    // Namespace changes (`mknodat`: only with some arguments, see FS_MKNOD_TYPES).
    libc::SYS_mkdirat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    // `renameat2`: only without RENAME_WHITEOUT, see FS_RENAME_FORBIDDEN_FLAGS.
    // Attributes.
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    // xattrs (with `xattr` enabled; path variants on /proc/self/fd/N).
    libc::SYS_getxattr,
    libc::SYS_setxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
    // Creating files as the guest caller: per-thread effective uid/gid switches, with
    // `setresuid`/`setresgid`, allowed only as FS_SETRES_EFFECTIVE_ONLY says.
    // FUSE_INIT: the backend clears the umask so the guest's modes apply as given.
    libc::SYS_umask,
];

/// The file types (`mode & S_IFMT`, argument 2) the event thread may `mknodat` when it serves
/// virtio-fs: regular files (type 0 is one too), FIFOs, sockets. Device nodes are refused by
/// the policy before they reach the backend, and the thread has no `CAP_MKNOD` either
/// (`devices/virtio/fs/policy.rs`, `privileges.rs`): a `mknodat` of one here means both
/// failed, and the process is killed.
pub const FS_MKNOD_TYPES: &[u32] = &[0, libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK];

/// `renameat2` flags (argument 4) the event thread never passes: `RENAME_WHITEOUT` leaves a
/// 0/0 character device (an overlayfs whiteout) behind, which needs no capability since
/// Linux 5.8; the policy refuses it first.
pub const FS_RENAME_FORBIDDEN_FLAGS: u32 = libc::RENAME_WHITEOUT;

/// `setresuid`/`setresgid` (per-thread, raw syscalls: fuse-backend-rs's credential switch)
/// only in the form `(-1, id, -1)`: the effective id changes, the real and saved ids stay 0,
/// so the thread can always switch back and never loses its permitted capabilities.
pub const FS_SETRES_EFFECTIVE_ONLY: &[libc::c_long] = &[libc::SYS_setresuid, libc::SYS_setresgid];
