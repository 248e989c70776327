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
    #[error("building seccomp filter")]
    Build(#[from] seccompiler::BackendError),
    #[error("compiling seccomp filter")]
    Compile(#[from] seccompiler::Error),
    #[error("installing seccomp filter")]
    Install(#[source] seccompiler::Error),
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

/// The event thread's syscalls for a virtio-fs device that are allowed only with some
/// arguments ([`filters::FS_MKNOD_TYPES`], [`filters::FS_RENAME_FORBIDDEN_FLAGS`],
/// [`filters::FS_SETRES_EFFECTIVE_ONLY`]).
fn fs_device_arg_rules() -> Result<Vec<(i64, Vec<SeccompRule>)>, SeccompError> {
    let mknod = filters::FS_MKNOD_TYPES
        .iter()
        .map(|&file_type| {
            let cond = SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(u64::from(libc::S_IFMT)),
                u64::from(file_type),
            )?;
            Ok(SeccompRule::new(vec![cond])?)
        })
        .collect::<Result<Vec<_>, SeccompError>>()?;
    let rename = SeccompRule::new(vec![SeccompCondition::new(
        4,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(u64::from(filters::FS_RENAME_FORBIDDEN_FLAGS)),
        0,
    )?])?;
    let mut rules = vec![
        (libc::SYS_mknodat, mknod),
        (libc::SYS_renameat2, vec![rename]),
    ];
    for &nr in filters::FS_SETRES_EFFECTIVE_ONLY {
        let unchanged = |arg| {
            SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(u32::MAX),
            )
        };
        rules.push((
            nr,
            vec![SeccompRule::new(vec![unchanged(0)?, unchanged(2)?])?],
        ));
    }
    Ok(rules)
}

fn build(
    syscalls: &[&[libc::c_long]],
    arg_rules: Vec<(i64, Vec<SeccompRule>)>,
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
    for (nr, conditional) in arg_rules {
        // An unconditional allow from a list wins.
        rules.entry(nr).or_insert(conditional);
    }
    rules.insert(libc::SYS_ioctl, ioctl_rules(ioctls)?);
    // glibc grows per-thread malloc arenas with mprotect, threads and buffers come from mmap:
    // never allow making memory executable, by either (the prot argument is arg 2 of both).
    for nr in [libc::SYS_mprotect, libc::SYS_mmap] {
        rules.insert(
            nr,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
                0,
            )?])?],
        );
    }
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
    /// ([`filters::FS_DEVICE_SYSCALLS`], and `mknodat`/`renameat2`/`setresuid`/`setresgid`
    /// with some arguments only).
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
    let mut vmm_arg_rules = Vec::new();
    if needs.shared_fs {
        vmm_lists.push(filters::FS_DEVICE_SYSCALLS);
        vmm_arg_rules = fs_device_arg_rules()?;
    }
    Ok(ThreadFilters {
        vcpu: build(
            &[filters::COMMON_SYSCALLS, filters::VCPU_THREAD_SYSCALLS],
            Vec::new(),
            &filters::vcpu_ioctls(),
            false,
            mismatch.clone(),
        )?,
        vmm: build(
            &vmm_lists,
            vmm_arg_rules,
            &filters::vmm_ioctls(),
            true,
            mismatch,
        )?,
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

    /// Runs `body` in a forked child under the event thread's production filter for a
    /// virtio-fs device; returns the wait status.
    fn filtered_fs_child(body: impl FnOnce() -> i32) -> i32 {
        let filters = filters_for(ThreadNeeds { shared_fs: true }).expect("compile");
        // SAFETY: fork in a test; the child installs the (already built) filter, makes raw
        // syscalls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = match install(&filters.vmm) {
                Ok(()) => body(),
                Err(_) => 100,
            };
            // SAFETY: terminating the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        status
    }

    fn killed_by_sigsys(status: i32) -> bool {
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
    }

    #[test]
    fn fs_filter_allows_fifos_plain_renames_and_effective_id_switches_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| {
            std::ffi::CString::new(dir.path().join(name).to_str().unwrap().as_bytes()).unwrap()
        };
        let (fifo, sock, file, moved, chr, blk) = (
            path("fifo"),
            path("sock"),
            path("file"),
            path("moved"),
            path("chr"),
            path("blk"),
        );
        let mknodat = |p: &std::ffi::CString, mode: u32, dev: u64| {
            // SAFETY: raw syscall in the forked child with a valid NUL-terminated path.
            unsafe { libc::mknodat(libc::AT_FDCWD, p.as_ptr(), mode, dev) }
        };
        let allowed = filtered_fs_child(|| {
            let made = [
                mknodat(&fifo, libc::S_IFIFO | 0o600, 0),
                mknodat(&sock, libc::S_IFSOCK | 0o600, 0),
                mknodat(&file, libc::S_IFREG | 0o600, 0),
            ];
            if made != [0, 0, 0] {
                return 1;
            }
            // What fuse-backend-rs does around a create as a guest user.
            let switched = [
                (libc::SYS_setresgid, 1000),
                (libc::SYS_setresuid, 1000),
                (libc::SYS_setresuid, 0),
                (libc::SYS_setresgid, 0),
            ]
            .map(|(nr, id)| {
                // SAFETY: raw syscall in the forked child; it only changes its credentials.
                unsafe { libc::syscall(nr, -1, id, -1) }
            });
            if switched != [0, 0, 0, 0] {
                return 2;
            }
            // SAFETY: raw syscall in the forked child with valid NUL-terminated paths.
            let renamed = unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    file.as_ptr(),
                    libc::AT_FDCWD,
                    moved.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if renamed != 0 {
                return 3;
            }
            0
        });
        assert!(
            libc::WIFEXITED(allowed) && libc::WEXITSTATUS(allowed) == 0,
            "status {allowed:#x}"
        );
        let shapes = dir.path().join("fifo").metadata().unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&shapes.file_type()));

        for (what, status) in [
            (
                "mknodat of a character device",
                filtered_fs_child(|| mknodat(&chr, libc::S_IFCHR | 0o600, libc::makedev(1, 3))),
            ),
            (
                "mknodat of a block device",
                filtered_fs_child(|| mknodat(&blk, libc::S_IFBLK | 0o600, libc::makedev(7, 0))),
            ),
            (
                "mknodat of a 0/0 character device (a whiteout)",
                filtered_fs_child(|| mknodat(&chr, libc::S_IFCHR, 0)),
            ),
            (
                "renameat2 with RENAME_WHITEOUT",
                filtered_fs_child(|| {
                    // SAFETY: raw syscall in the forked child (it must be killed by it).
                    unsafe {
                        libc::syscall(
                            libc::SYS_renameat2,
                            libc::AT_FDCWD,
                            moved.as_ptr(),
                            libc::AT_FDCWD,
                            blk.as_ptr(),
                            libc::RENAME_WHITEOUT,
                        ) as i32
                    }
                }),
            ),
            (
                "setresuid changing the real and saved uid",
                filtered_fs_child(|| {
                    // SAFETY: raw syscall in the forked child (it must be killed by it).
                    unsafe { libc::syscall(libc::SYS_setresuid, 1000, 1000, 1000) as i32 }
                }),
            ),
            (
                "setresgid changing the saved gid",
                filtered_fs_child(|| {
                    // SAFETY: as above.
                    unsafe { libc::syscall(libc::SYS_setresgid, -1, 0, 1000) as i32 }
                }),
            ),
        ] {
            assert!(killed_by_sigsys(status), "{what}: status {status:#x}");
        }
        assert!(!dir.path().join("chr").exists() && !dir.path().join("blk").exists());
        assert!(
            dir.path().join("moved").is_file(),
            "no whiteout replaced it"
        );
    }

    #[test]
    fn mprotect_and_mmap_may_not_make_memory_executable() {
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
            // SAFETY: anonymous private mappings of one page each, unmapped below if made.
            let exec = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            // SAFETY: as above.
            let data = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            let exec_refused = exec == libc::MAP_FAILED;
            let data_made = data != libc::MAP_FAILED;
            if data_made {
                // SAFETY: unmapping the page mapped just above.
                unsafe { libc::munmap(data, 4096) };
            }
            (rw, rwx, exec_refused, data_made)
        })
        .join()
        .expect("thread");
        assert_eq!(results, (0, -1, true, true));
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
