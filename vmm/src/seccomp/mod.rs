//! Per-thread seccomp filters (`seccompiler`): one for vCPU threads, one for the VMM's event
//! and control threads. Each thread installs its filter itself, before it runs guest code or
//! reads guest-controlled data. A disallowed syscall kills the process.

pub mod filters;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("compiling seccomp filter: {0}")]
    Compile(#[from] seccompiler::Error),
    #[error("installing seccomp filter: {0}")]
    Install(seccompiler::Error),
}

/// Compiled filters for the VMM's threads.
#[derive(Debug, Clone)]
pub struct ThreadFilters {
    pub vcpu: BpfProgram,
    pub vmm: BpfProgram,
}

fn ioctl_rules(requests: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    requests
        .iter()
        .map(|req| {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *req)?;
            Ok(SeccompRule::new(vec![cond])?)
        })
        .collect()
}

fn build(
    syscalls: &[&[libc::c_long]],
    ioctls: &[u64],
    socket_unix_only: bool,
    mismatch: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for list in syscalls {
        for nr in list.iter() {
            rules.insert(*nr, Vec::new());
        }
    }
    rules.insert(libc::SYS_ioctl, ioctl_rules(ioctls)?);
    // glibc grows per-thread malloc arenas with mprotect; never allow making memory executable.
    rules.insert(
        libc::SYS_mprotect,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?],
    );
    // Rust's std checks fds with fcntl(F_GETFD) in debug builds (OwnedFd sanity checks).
    rules
        .entry(libc::SYS_fcntl)
        .or_insert(vec![SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::F_GETFD as u64,
        )?])?]);
    if socket_unix_only {
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?;
        rules.insert(libc::SYS_socket, vec![SeccompRule::new(vec![cond])?]);
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    Ok(filter.try_into()?)
}

/// What the VMM's event thread serves, beyond the base set of syscalls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadNeeds {
    /// A virtio-fs device: the event thread works on host files
    /// ([`filters::FS_DEVICE_SYSCALLS`]).
    pub shared_fs: bool,
}

/// Compiles both filters; `mismatch` is what happens on a disallowed syscall
/// (`KillProcess` in production).
pub fn compile(mismatch: SeccompAction) -> Result<ThreadFilters, SeccompError> {
    compile_for(mismatch, ThreadNeeds::default())
}

/// Like [`compile`], with the extra syscalls `needs` calls for in the event thread's filter.
pub fn compile_for(
    mismatch: SeccompAction,
    needs: ThreadNeeds,
) -> Result<ThreadFilters, SeccompError> {
    let mut vmm_lists = vec![filters::COMMON_SYSCALLS, filters::VMM_THREAD_SYSCALLS];
    if needs.shared_fs {
        vmm_lists.push(filters::FS_DEVICE_SYSCALLS);
    }
    Ok(ThreadFilters {
        vcpu: build(
            &[filters::COMMON_SYSCALLS, filters::VCPU_THREAD_SYSCALLS],
            &filters::vcpu_ioctls(),
            false,
            mismatch.clone(),
        )?,
        vmm: build(&vmm_lists, &filters::vmm_ioctls(), true, mismatch)?,
    })
}

/// The production filters: a disallowed syscall kills the process.
pub fn default_filters() -> Result<ThreadFilters, SeccompError> {
    filters_for(ThreadNeeds::default())
}

/// The production filters for a VM whose event thread serves `needs`.
pub fn filters_for(needs: ThreadNeeds) -> Result<ThreadFilters, SeccompError> {
    compile_for(SeccompAction::KillProcess, needs)
}

/// Process-wide preparation before threads run under the filters: one glibc malloc arena.
/// glibc gives each thread its own arena, and shrinking one opens
/// `/proc/sys/vm/overcommit_memory` (openat, which the filters forbid: a profiled boot was
/// killed that way); the main arena grows and shrinks with brk/mmap only.
pub fn prepare_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX = 1 is always valid.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        if ok != 1 {
            log::warn!("mallopt(M_ARENA_MAX, 1) failed; threads may use their own arenas");
        }
    });
}

/// Installs `filter` on the calling thread only.
pub fn install(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(SeccompError::Install)
}

/// The calling thread's seccomp mode from /proc (0 none, 2 filter).
pub fn current_thread_mode() -> Option<u32> {
    thread_mode_from_status(&std::fs::read_to_string("/proc/thread-self/status").ok()?)
}

/// Parses `Seccomp:` from a /proc status file.
pub fn thread_mode_from_status(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_filter_is_installed_per_thread_and_blocks_other_syscalls() {
        let filters = compile(SeccompAction::Errno(libc::EPERM as u32)).expect("compile");
        let before = current_thread_mode();
        let handle = std::thread::spawn(move || {
            use std::io::Read;
            // Opened before the filter (which forbids open), read after it.
            let mut status = std::fs::File::open("/proc/thread-self/status").expect("open");
            install(&filters.vcpu).expect("install");
            let mut text = String::new();
            status.read_to_string(&mut text).expect("read status");
            let mode = thread_mode_from_status(&text);
            // SAFETY: plain syscall with constant arguments; the result is only inspected.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let err = std::io::Error::last_os_error().raw_os_error();
            (mode, fd, err)
        });
        let (mode, fd, err) = handle.join().expect("thread");
        assert_eq!(mode, Some(2), "filter not installed in the thread");
        assert_eq!(
            (fd, err),
            (-1, Some(libc::EPERM)),
            "socket() must be refused"
        );
        assert_eq!(
            current_thread_mode(),
            before,
            "other threads are not filtered"
        );
    }

    #[test]
    fn kill_filter_kills_the_process_on_a_disallowed_syscall() {
        let filters = default_filters().expect("compile");
        // SAFETY: fork in a test; the child only installs the (already built) filter, makes
        // raw syscalls and _exits, all async-signal-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = match install(&filters.vmm) {
                Ok(()) => {
                    // AF_UNIX sockets are allowed, AF_INET ones are not.
                    // SAFETY: raw syscall in the forked child, see above.
                    let unix = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
                    if unix < 0 {
                        3
                    } else {
                        // SAFETY: as above; this one must kill the child.
                        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                        4
                    }
                }
                Err(_) => 5,
            };
            // SAFETY: terminating the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "child should die of SIGSYS, status {status:#x} (exit code {})",
            libc::WEXITSTATUS(status)
        );
    }

    #[test]
    fn mprotect_may_not_make_memory_executable() {
        let filters = compile(SeccompAction::Errno(libc::EPERM as u32)).expect("compile");
        let results = std::thread::spawn(move || {
            // SAFETY: anonymous private mapping of one page, unmapped below.
            let page = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(page, libc::MAP_FAILED);
            install(&filters.vcpu).expect("install");
            // SAFETY: changing protection of the page we own.
            let rw = unsafe { libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_WRITE) };
            // SAFETY: as above.
            let rwx = unsafe { libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC) };
            // SAFETY: unmapping the page mapped above.
            unsafe { libc::munmap(page, 4096) };
            (rw, rwx)
        })
        .join()
        .expect("thread");
        assert_eq!(results, (0, -1));
    }

    #[test]
    fn status_parsing() {
        assert_eq!(
            thread_mode_from_status("Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\n"),
            Some(2)
        );
        assert_eq!(thread_mode_from_status("Name:\tx\n"), None);
    }
}
