//! The agent's `unsafe` code (with `sys_exec`, the direct exec's child): thin wrappers over
//! system calls that neither `nix` nor `std` offer safely, and the vfork spawner both kinds of
//! child use. Each wrapper keeps its contract small and documented.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::unistd::Pid;

/// A program to execute in a freshly forked child, with its file descriptors remapped.
/// Everything is prepared before the fork, so the child only makes async-signal-safe calls.
pub struct ExecPlan {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Descriptors of the parent; `fds[i]` becomes fd `i` in the child.
    fds: Vec<RawFd>,
}

impl ExecPlan {
    /// `fds[i]` becomes fd `i` in the child; every other descriptor is closed on exec.
    pub fn new(
        path: &str,
        argv: &[&str],
        env: &[String],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<Self> {
        let cstr =
            |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
        Ok(Self {
            path: cstr(path)?,
            argv: argv.iter().map(|a| cstr(a)).collect::<io::Result<_>>()?,
            env: env.iter().map(|e| cstr(e)).collect::<io::Result<_>>()?,
            fds: fds.iter().map(|fd| fd.as_raw_fd()).collect(),
        })
    }
}

/// Stack of a vfork child until it execs (system calls only, no allocation).
const CHILD_STACK: usize = 64 * 1024;

/// Most descriptors [`child_install_fds`] maps.
const MAX_CHILD_FDS: usize = 16;

/// A NULL-terminated array of pointers to `strings`, for `execve`.
pub(crate) fn c_pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    let mut p: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    p.push(std::ptr::null());
    p
}

/// Runs `child(arg)` in a child process the way `posix_spawn` does and returns its pid:
/// `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own, so the agent's memory is neither
/// copied nor made copy-on-write (on KVM-PVM, where the guest kernel is emulated, a `fork`
/// of the agent cost ~1.7 s in page-table copies and later copy-on-write faults), and this
/// thread waits until the child has exec'd or exited.
///
/// # Safety
///
/// The child shares the agent's memory until `execve`: `child` must only read it (`arg`
/// included), write nothing but its own stack, make only async-signal-safe system calls, and
/// end in `execve` or `_exit`. The agent handles signals by `sigwait` on blocked signals, so
/// no handler code can run in the child ([`child_unblock_signals`] clears the mask right
/// before `execve`).
pub(crate) unsafe fn vfork_spawn<A>(
    arg: &A,
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
) -> io::Result<Pid> {
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down: its top, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !0xf;
    // SAFETY: `child` runs on `stack` (ours, unused by anything else until clone returns)
    // under the caller's contract above; CLONE_VFORK suspends this thread until the child
    // has exec'd or exited, so `arg` and `stack` outlive its use of them.
    let pid = unsafe {
        libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg as *const A as *mut libc::c_void,
        )
    };
    drop(stack);
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Pid::from_raw(pid))
}

/// The calling thread's errno.
pub(crate) fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// In a vfork child: `fds[i]` becomes fd `i` (at most 16), every other descriptor
/// close-on-exec. Fails with the errno.
pub(crate) fn child_install_fds(fds: &[RawFd]) -> Result<(), i32> {
    let mut tmp = [0 as RawFd; MAX_CHILD_FDS];
    if fds.len() > tmp.len() {
        return Err(libc::EMFILE);
    }
    // Copies above every target first, so a source that is also a target is not lost.
    let base = fds.len() as RawFd + 3;
    for (i, src) in fds.iter().enumerate() {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor the parent keeps open; async-signal-safe.
        let fd = unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, base) };
        if fd < 0 {
            return Err(errno());
        }
        tmp[i] = fd;
    }
    for (i, fd) in tmp[..fds.len()].iter().enumerate() {
        // SAFETY: dup2 between valid descriptors; it clears FD_CLOEXEC on the target.
        if unsafe { libc::dup2(*fd, i as RawFd) } < 0 {
            return Err(errno());
        }
    }
    // SAFETY: marks every descriptor above the mapped ones close-on-exec; no memory involved.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            fds.len() as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Ok(())
}

/// In a vfork child: an empty signal mask (the agent blocks the signals it `sigwait`s).
pub(crate) fn child_unblock_signals() {
    // SAFETY: an all-zero sigset_t is a valid (empty) set, filled by sigemptyset below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t on this stack.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: installs an empty mask for this (single-threaded) child.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
}

/// What the child of [`fork_exec`] reads, prepared before the clone.
struct ChildArgs<'a> {
    plan: &'a ExecPlan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

/// Starts `plan` in a child process ([`vfork_spawn`]) and returns its pid. The child only
/// maps its descriptors, clears its signal mask and calls `execve`.
pub fn fork_exec(plan: &ExecPlan) -> io::Result<Pid> {
    let argv = c_pointers(&plan.argv);
    let envp = c_pointers(&plan.env);
    let args = ChildArgs {
        plan,
        argv: &argv,
        envp: &envp,
    };
    extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `ChildArgs` below, alive until this child execs or exits
        // (CLONE_VFORK keeps the parent's frame waiting).
        let a = unsafe { &*(arg as *const ChildArgs<'_>) };
        if child_install_fds(&a.plan.fds).is_ok() {
            child_unblock_signals();
            // SAFETY: path, argv and envp are NUL-terminated arrays of valid C strings built
            // before the clone.
            unsafe { libc::execve(a.plan.path.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr()) };
        }
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(127) }
    }
    // SAFETY: `child` only reads `args`, maps descriptors, clears its mask and execs or exits.
    unsafe { vfork_spawn(&args, child) }
}

/// Takes ownership of an inherited descriptor number (the child's sync socket).
/// Fails if `fd` is not open.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    nix::fcntl::fcntl(
        // SAFETY: the borrow only lives for this fcntl call; an invalid fd yields EBADF.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    // SAFETY: the fd is open (checked above) and nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `fd` (a terminal) the calling process's controlling terminal (`TIOCSCTTY`).
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument and touches no memory of ours.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets a terminal's window size (`TIOCSWINSZ`).
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives on our stack for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs a seccomp BPF filter on the calling thread (`seccomp(SECCOMP_SET_MODE_FILTER)`).
pub fn load_seccomp_filter(program: &[libc::sock_filter], flags: u32) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's nice value (`setpriority(PRIO_PROCESS, 0, nice)`: on Linux, the
/// calling thread; threads and children made afterwards inherit it).
pub fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Restores the default disposition of every catchable signal (before exec of container
/// code: the agent's runtime ignores SIGPIPE, and ignored dispositions survive execve).
pub fn reset_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL involves no handler code; failures (invalid signals)
        // are harmless and ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// How long ago the calling process started (`/proc/self/stat` field 22 against
/// `/proc/uptime`), in µs; a 10 ms resolution is enough for the seconds an exec costs on an
/// emulating host.
pub fn process_age_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    // `rest` starts at field 3 (state): field 22 is the 20th from here.
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let now_us = (secs * 1e6) as u64;
    let start_us = start_ticks * 1_000_000 / clock_ticks_per_second();
    now_us.checked_sub(start_us)
}

/// Reads the calling process's CPU clock ticks per second (for cgroup v1 cpuacct.stat).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory side effects.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// `waitpid(-1, WNOHANG | __WALL)`: `Ok(None)` when no child has changed state.
/// Returns (pid, raw wait status).
pub fn wait_any_nohang() -> io::Result<Option<(i32, i32)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable int for the duration of the call.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
    match pid {
        0 => Ok(None),
        p if p > 0 => Ok(Some((p, status))),
        _ => Err(io::Error::last_os_error()),
    }
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `bytes` into the kernel's input pool crediting `bytes.len() * 8` bits of entropy
/// (`RNDADDENTROPY` on a /dev/(u)random fd; needs CAP_SYS_ADMIN).
pub fn add_entropy(random: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    let len =
        i32::try_from(bytes.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bits = len
        .checked_mul(8)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = vec![0u32; 2 + bytes.len().div_ceil(4)];
    info[0] = bits as u32;
    info[1] = len as u32;
    for (word, chunk) in info[2..].iter_mut().zip(bytes.chunks(4)) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_ne_bytes(w);
    }
    // SAFETY: `info` is a complete rand_pool_info whose buf_size matches the bytes that
    // follow the header; the kernel only reads it during the call.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `RNDRESEEDCRNG`: reseeds the kernel's CRNG from the input pool now.
pub fn reseed_crng(random: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: an argument-less ioctl on a /dev/(u)random fd.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `clock_settime(CLOCK_REALTIME)` to `ns` nanoseconds since the epoch (needs CAP_SYS_TIME).
pub fn set_realtime_ns(ns: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    };
    // SAFETY: `ts` is a valid timespec read by the kernel during the call.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling process's standard input.
pub fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 is set up by the agent before the child runs and stays open for the
    // life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// Takes ownership of a descriptor the kernel just installed for us through SCM_RIGHTS.
pub fn adopt_received_fd(raw: RawFd) -> OwnedFd {
    // SAFETY: `raw` came out of a recvmsg control message: the kernel created it in our fd
    // table for this call, so nothing else owns or closes it.
    unsafe { OwnedFd::from_raw_fd(raw) }
}
