//! The direct exec: a process started in a running container without re-executing the agent
//! (crun's way). Everything it needs is prepared by the caller as raw values; the child of a
//! `clone(CLONE_VM | CLONE_VFORK)` then joins the container (namespaces, cgroup), sets its
//! limits, drops to the process's credentials, capabilities and seccomp filter in runc's
//! order, and `execve`s the program — with system calls only: it shares the agent's memory
//! until `execve`, so it allocates nothing, takes no lock and writes only its own stack.
//! Credentials go through raw `setresuid`/`setresgid`/`setgroups` system calls: glibc's
//! wrappers would signal every thread of the agent (its set-id broadcast) from a child that
//! is not one of them.
//!
//! A failure before `execve` is written to a close-on-exec pipe as (step, errno) and the
//! child exits 127; an empty pipe after the clone returns means the program runs.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use nix::unistd::Pid;

use crate::sys::{c_pointers, child_install_fds, child_unblock_signals, errno, vfork_spawn};

/// What one direct exec needs, prepared before the clone.
pub struct DirectExec {
    /// Absolute paths to try in order (the `$PATH` search, resolved inside the container by
    /// `execve` itself); the first that is not missing or not executable runs.
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// Become fds 0, 1, 2.
    pub stdio: [RawFd; 3],
    /// (namespace fd, CLONE_NEW* type) in join order, the mount namespace last.
    pub namespaces: Vec<(RawFd, libc::c_int)>,
    /// Open `cgroup.procs` files of the container's cgroup (one per v1 hierarchy).
    pub cgroup_procs: Vec<RawFd>,
    /// Written to `/proc/self/oom_score_adj`.
    pub oom_score_adj: Option<CString>,
    /// The nice value to take (`crate::priority`); `None`: keep the agent's.
    pub nice: Option<libc::c_int>,
    /// (resource, soft, hard).
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub cwd: CString,
    pub no_new_privs: bool,
    /// The container's filter and its SECCOMP_FILTER_FLAG_* bits.
    pub seccomp: Option<(Vec<libc::sock_filter>, u32)>,
    /// Capabilities to drop from the bounding set.
    pub bounding_drop: Vec<u32>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    /// Bit masks (bit n = capability n).
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: Vec<u32>,
    pub umask: libc::mode_t,
    /// Signals the agent ignores (ignored dispositions survive `execve`).
    pub ignored_signals: Vec<libc::c_int>,
}

/// The step a direct exec failed at, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct DirectExecFailure {
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

impl DirectExecFailure {
    /// The program does not exist (or is not executable) in the container: the request's
    /// fault, not the agent's.
    pub fn not_found(&self) -> bool {
        self.step == STEPS[STEP_EXEC]
            && matches!(
                self.source.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES)
            )
    }
}

/// The steps, in order; a failure reports its index.
const STEPS: [&str; 19] = [
    "setns",
    "join the container's cgroup",
    "oom_score_adj",
    "setsid",
    "setrlimit",
    "PR_SET_NO_NEW_PRIVS",
    "load the seccomp filter",
    "drop a bounding capability",
    "PR_SET_KEEPCAPS",
    "setgroups",
    "setgid",
    "setuid",
    "clear ambient capabilities",
    "set capabilities",
    "raise an ambient capability",
    "chdir",
    "set up stdio",
    "exec (no such executable in the container)",
    "setpriority",
];
const SETNS: usize = 0;
const CGROUP: usize = 1;
const OOM: usize = 2;
const SETSID: usize = 3;
const RLIMIT: usize = 4;
const NNP: usize = 5;
const SECCOMP: usize = 6;
const BOUNDING: usize = 7;
const KEEPCAPS: usize = 8;
const SETGROUPS: usize = 9;
const SETGID: usize = 10;
const SETUID: usize = 11;
const AMBIENT_CLEAR: usize = 12;
const CAPSET: usize = 13;
const AMBIENT_RAISE: usize = 14;
const CHDIR: usize = 15;
const STDIO: usize = 16;
const STEP_EXEC: usize = 17;
const NICE: usize = 18;

struct ChildArgs<'a> {
    plan: &'a DirectExec,
    candidates: &'a [*const libc::c_char],
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    report: RawFd,
}

/// Starts `plan` in a child and returns its pid and, if it failed before `execve` (it has
/// exited then, with 127), why. Call it where the child's pid namespace is set (the calling
/// thread's namespace for children) and under the reaper's registration.
pub fn spawn(plan: &DirectExec) -> io::Result<(Pid, Option<DirectExecFailure>)> {
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let candidates = c_pointers(&plan.candidates);
    let argv = c_pointers(&plan.argv);
    let envp = c_pointers(&plan.env);
    let args = ChildArgs {
        plan,
        candidates: &candidates[..plan.candidates.len()],
        argv: &argv,
        envp: &envp,
        report: report_w.as_raw_fd(),
    };
    extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `ChildArgs` below, alive until this child execs or exits
        // (CLONE_VFORK keeps the parent's frame waiting).
        let a = unsafe { &*(arg as *const ChildArgs<'_>) };
        let Err((step, errno)) = run_child(a);
        report_and_exit(a.report, step, errno)
    }
    // SAFETY: `child` only reads `args` and the plan, makes system calls on its own stack's
    // values and ends in `execve` or `_exit` (the module comment).
    let pid = unsafe { vfork_spawn(&args, child) };
    drop(report_w);
    let pid = pid?;
    let mut buf = [0u8; 8];
    let mut file = std::fs::File::from(report_r);
    let n = io::Read::read(&mut file, &mut buf).unwrap_or(0);
    let failure = (n == buf.len()).then(|| {
        let step = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
        DirectExecFailure {
            step: STEPS.get(step).copied().unwrap_or("set-up"),
            source: io::Error::from_raw_os_error(errno),
        }
    });
    Ok((pid, failure))
}

fn report_and_exit(report: RawFd, step: usize, errno: i32) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes 8 bytes of our stack to the report pipe (a short write loses only the
    // reason; the exit status still says 127).
    unsafe { libc::write(report, buf.as_ptr() as *const libc::c_void, buf.len()) };
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(127) }
}

/// A system call's return value as a result (errno on failure).
fn check(rc: i64) -> Result<(), i32> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong, arg2: libc::c_ulong) -> Result<(), i32> {
    // SAFETY: the prctl options used here take integer arguments only.
    check(i64::from(unsafe { libc::prctl(option, arg, arg2, 0, 0) }))
}

/// The child, up to `execve` (which only returns on failure): the failed step and errno.
fn run_child(a: &ChildArgs<'_>) -> Result<std::convert::Infallible, (usize, i32)> {
    let p = a.plan;
    let at = |step: usize| move |e: i32| (step, e);
    for &(fd, nstype) in &p.namespaces {
        // SAFETY: setns on a namespace descriptor the parent keeps open.
        check(i64::from(unsafe { libc::setns(fd, nstype) })).map_err(at(SETNS))?;
    }
    for &fd in &p.cgroup_procs {
        // SAFETY: writes one byte of a static string to an open cgroup.procs descriptor.
        let rc = unsafe { libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1) };
        check(rc as i64).map_err(at(CGROUP))?;
    }
    if let Some(adj) = &p.oom_score_adj {
        write_oom_score_adj(adj).map_err(at(OOM))?;
    }
    // SAFETY: setsid takes no arguments.
    check(i64::from(unsafe { libc::setsid() })).map_err(at(SETSID))?;
    if let Some(nice) = p.nice {
        // SAFETY: integer arguments only (this task alone).
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        check(i64::from(rc)).map_err(at(NICE))?;
    }
    for &(resource, soft, hard) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `lim` lives on this stack for the call.
        check(i64::from(unsafe { libc::setrlimit(resource, &lim) })).map_err(at(RLIMIT))?;
    }
    // SAFETY: chdir to a NUL-terminated path prepared before the clone.
    let chdir_done = unsafe { libc::chdir(p.cwd.as_ptr()) } == 0;
    if p.no_new_privs {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(at(NNP))?;
    }
    // Without NNP, loading a filter needs CAP_SYS_ADMIN: before the capabilities go.
    if !p.no_new_privs {
        load_seccomp(p).map_err(at(SECCOMP))?;
    }
    for &cap in &p.bounding_drop {
        prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0).map_err(at(BOUNDING))?;
    }
    prctl(libc::PR_SET_KEEPCAPS, 1, 0).map_err(at(KEEPCAPS))?;
    // SAFETY: setgroups reads `groups.len()` gids from the prepared vector.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) };
    check(rc).map_err(at(SETGROUPS))?;
    // SAFETY: integer arguments only (the raw call: this task alone, see the module comment).
    let rc = unsafe { libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) };
    check(rc).map_err(at(SETGID))?;
    // SAFETY: integer arguments only (the raw call: this task alone).
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) };
    check(rc).map_err(at(SETUID))?;
    prctl(libc::PR_SET_KEEPCAPS, 0, 0).map_err(at(KEEPCAPS))?;
    let clear = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
    prctl(libc::PR_CAP_AMBIENT, clear, 0).map_err(at(AMBIENT_CLEAR))?;
    set_capabilities(p).map_err(at(CAPSET))?;
    let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
    for &cap in &p.ambient {
        prctl(libc::PR_CAP_AMBIENT, raise, libc::c_ulong::from(cap)).map_err(at(AMBIENT_RAISE))?;
    }
    if !chdir_done {
        // SAFETY: as above; now with the process's own credentials.
        check(i64::from(unsafe { libc::chdir(p.cwd.as_ptr()) })).map_err(at(CHDIR))?;
    }
    // SAFETY: umask takes an integer and cannot fail.
    unsafe { libc::umask(p.umask) };
    if p.no_new_privs {
        load_seccomp(p).map_err(at(SECCOMP))?;
    }
    child_install_fds(&p.stdio).map_err(at(STDIO))?;
    for &sig in &p.ignored_signals {
        // SAFETY: installs SIG_DFL (no handler code) in this child's own signal table.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    child_unblock_signals();
    // execvp's rule: go on past a missing or non-executable candidate; any other error ends
    // the search. EACCES wins over ENOENT when nothing runs.
    let mut last = libc::ENOENT;
    for &path in a.candidates {
        // SAFETY: NUL-terminated path, argv and envp arrays prepared before the clone.
        unsafe { libc::execve(path, a.argv.as_ptr(), a.envp.as_ptr()) };
        match errno() {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => last = libc::EACCES,
            other => return Err((STEP_EXEC, other)),
        }
    }
    Err((STEP_EXEC, last))
}

fn write_oom_score_adj(adj: &CString) -> Result<(), i32> {
    let path = c"/proc/self/oom_score_adj";
    // SAFETY: opens a static NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    check(i64::from(fd))?;
    let len = adj.as_bytes().len();
    // SAFETY: writes the prepared value's bytes to the descriptor just opened.
    let rc = unsafe { libc::write(fd, adj.as_ptr() as *const libc::c_void, len) };
    let result = check(rc as i64);
    // SAFETY: closes the descriptor opened above, owned by nothing else.
    unsafe { libc::close(fd) };
    result
}

fn load_seccomp(p: &DirectExec) -> Result<(), i32> {
    let Some((program, flags)) = &p.seccomp else {
        return Ok(());
    };
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| libc::EINVAL)?,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at the prepared program, alive until the child execs.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            *flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(errno());
    }
    Ok(())
}

/// `capset` with the three sets at once (version 3: two 32-bit words per set).
fn set_capabilities(p: &DirectExec) -> Result<(), i32> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |mask: u64, i: u32| (mask >> (32 * i)) as u32;
    let data = [0u32, 1].map(|i| Data {
        effective: word(p.effective, i),
        permitted: word(p.permitted, i),
        inheritable: word(p.inheritable, i),
    });
    // SAFETY: the header and two data words live on this stack for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    if rc < 0 {
        return Err(errno());
    }
    Ok(())
}

/// The signals the agent ignores (their disposition would survive `execve`). Asked once:
/// the agent sets its dispositions at start-up, and on an emulating host each query is a
/// system call of ~0.7 ms.
pub fn ignored_signals() -> Vec<libc::c_int> {
    static IGNORED: std::sync::OnceLock<Vec<libc::c_int>> = std::sync::OnceLock::new();
    IGNORED.get_or_init(query_ignored_signals).clone()
}

fn query_ignored_signals() -> Vec<libc::c_int> {
    (1..libc::SIGRTMAX())
        .filter(|&sig| {
            // SAFETY: an all-zero sigaction is valid to be overwritten by the query.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: a query only (no new action), into our own struct.
            let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
            rc == 0 && old.sa_sigaction == libc::SIG_IGN
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ignored_signals_include_rusts_sigpipe() {
        // The Rust runtime ignores SIGPIPE; a container must not inherit that.
        assert!(ignored_signals().contains(&libc::SIGPIPE));
        assert!(!ignored_signals().contains(&libc::SIGTERM));
    }

    #[test]
    fn only_a_missing_or_unrunnable_program_is_the_requests_fault() {
        let f = |step: usize, errno: i32| DirectExecFailure {
            step: STEPS[step],
            source: io::Error::from_raw_os_error(errno),
        };
        assert!(f(STEP_EXEC, libc::ENOENT).not_found());
        assert!(f(STEP_EXEC, libc::EACCES).not_found());
        assert!(!f(STEP_EXEC, libc::E2BIG).not_found());
        assert!(!f(SETUID, libc::EPERM).not_found());
        let text = vessel_protocol::errors::chain(&f(CAPSET, libc::EPERM));
        assert!(text.starts_with("set capabilities: "), "{text}");
    }
}
