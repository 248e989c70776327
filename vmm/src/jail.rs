//! The jail every pod's VMM runs in (Firecracker's jailer model, done by the VMM itself
//! before it creates the VM, so nothing of the guest is read outside it):
//!
//! 1. **pid namespace**: `unshare(CLONE_NEWPID)` + `fork`. The parent stays outside, does
//!    nothing but wait (forwarding SIGTERM/SIGINT/SIGHUP) and exits with the child's status;
//!    the child is PID 1 of a namespace of its own (it sees no host process; `kill` cannot
//!    reach one) and dies with the parent (`PR_SET_PDEATHSIG`).
//! 2. **mount namespace**: the child's whole tree is made a slave of the host's (nothing
//!    propagates back), a tmpfs is mounted on the jail directory, and only what the VMM needs
//!    is bound into it, each at its own host path: the kernel and initrd (read-only), the
//!    snapshot (read-only to restore, writable to create), the directories of the vsock
//!    socket and the console log (writable: the VMM binds and connects sockets there), each
//!    shared directory (recursively: the runtime's later binds under it propagate in, as the
//!    runtime makes it a shared mount), `/dev/kvm` and a fresh `/proc` (fuse-backend-rs needs
//!    `/proc/self/fd`). Binds are nosuid (and nodev but for `/dev/kvm`). Then `pivot_root`
//!    into it and the old root is detached: no other host path exists for the VMM.
//! 3. **ipc, uts and net namespaces**: new and empty (the guest's network will come as a tap
//!    fd; hybrid vsock is a path-bound Unix socket, which crosses network namespaces).
//! 4. **limits**: `RLIMIT_NOFILE` capped (virtio-fs pins one fd per guest inode: the cap
//!    bounds what a guest can pin), no core dumps.
//! 5. **privileges**: every capability dropped from all sets and the bounding set, but, with a
//!    shared directory, those the virtio-fs passthrough needs to create and serve files as the
//!    guest's users: CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_SETUID,
//!    CAP_SETGID. No CAP_MKNOD (no device nodes), no CAP_FSETID (the host kernel clears
//!    setuid/setgid when a file is written or chowned), no CAP_SYS_ADMIN (no mounts, no
//!    namespaces, no BPF), no CAP_NET_*, no CAP_SYS_PTRACE. Then `PR_SET_NO_NEW_PRIVS`.
//!    The VMM stays uid 0: the passthrough switches its fs ids to the guest caller's for each
//!    create, which an unprivileged uid could not.
//!
//! The per-thread seccomp filters come on top, as before.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use std::os::fd::AsFd;

use nix::unistd::{ForkResult, Pid};

/// Highest `RLIMIT_NOFILE` in the jail.
pub const JAIL_NOFILE: u64 = 65536;

/// A jail step failed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {step}")]
    Sys {
        step: String,
        #[source]
        source: nix::Error,
    },
    #[error("jail: {step}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: {step}: {reason}")]
    Caps { step: &'static str, reason: String },
    #[error("jail: {path} must be an absolute path")]
    NotAbsolute { path: PathBuf },
}

fn sys(step: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let step = step.into();
    move |source| JailError::Sys { step, source }
}

fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let step = step.into();
    move |source| JailError::Io { step, source }
}

/// How a host path appears in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    Writable,
}

/// What the jail holds.
#[derive(Debug, Clone, Default)]
pub struct JailSpec {
    /// An empty directory (trusted: the runtime's) the jail's root is built on.
    pub dir: PathBuf,
    /// Host paths bound in at the same path, files or directories (recursively).
    pub binds: Vec<(PathBuf, Access)>,
    /// Keep the capabilities the virtio-fs passthrough needs.
    pub virtio_fs: bool,
}

impl JailSpec {
    /// Adds `path` unless it is already inside a bound directory with at least that access.
    pub fn bind(&mut self, path: PathBuf, access: Access) {
        // `a` grants at least what `b` asks for.
        let covers = |a: Access, b: Access| a == Access::Writable || a == b;
        if self
            .binds
            .iter()
            .any(|(p, a)| path.starts_with(p) && covers(*a, access))
        {
            return;
        }
        self.binds
            .retain(|(p, a)| !(p.starts_with(&path) && covers(access, *a)));
        self.binds.push((path, access));
    }
}

/// Forks into a new pid namespace. Returns in the child (PID 1 there); the parent never
/// returns: it waits for the child, forwards termination signals, and exits with the
/// child's status (128 + signal if it was killed). Must run while the process has one thread.
pub fn fork_into_pid_namespace() -> Result<(), JailError> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(sys("unshare(CLONE_NEWPID)"))?;
    let mut forwarded = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        forwarded.add(s);
    }
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), Some(&mut old))
        .map_err(sys("blocking signals"))?;
    // The parent holds the write end for its whole life: its hang-up tells the child that
    // the parent died before the death signal was armed (getppid() is 0 across the pid
    // namespace boundary, so it cannot tell).
    let (alive_r, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(sys("pipe for the parent's liveness"))?;
    // SAFETY: the VMM calls this from main before it starts any thread (the caller's
    // contract), so the child is a copy of a single-threaded process: no lock can be held by
    // a thread that does not exist in the child, and the child goes on as a normal process.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(alive_w);
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None)
                .map_err(sys("restoring the signal mask"))?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("PR_SET_PDEATHSIG"))?;
            let mut fds = [nix::poll::PollFd::new(
                alive_r.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let hung_up = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO)
                .map(|n| n > 0)
                .unwrap_or(true);
            if hung_up {
                // The parent died before the death signal was armed.
                std::process::exit(1);
            }
            Ok(())
        }
        ForkResult::Parent { child } => {
            drop(alive_r);
            // Kept open (never written) until this process exits.
            std::mem::forget(alive_w);
            // The waiter needs no privilege either (it only signals its own child).
            if let Err(e) = drop_privileges(false) {
                log::warn!("{e}");
            }
            wait_for_jailed(child, &forwarded)
        }
    }
}

/// The parent's whole life: wait for the child, pass on what would stop it.
fn wait_for_jailed(child: Pid, set: &SigSet) -> ! {
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => std::process::exit(128 + sig as i32),
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(_) => continue,
                    Err(nix::Error::EINTR) => continue,
                    Err(_) => std::process::exit(1),
                }
            },
            Ok(sig) => {
                let _ = kill(child, sig);
            }
            Err(_) => {}
        }
    }
}

/// Builds the jail around the calling process and enters it (see the module docs).
pub fn enter(spec: &JailSpec) -> Result<(), JailError> {
    for (p, _) in &spec.binds {
        if !p.is_absolute() {
            return Err(JailError::NotAbsolute { path: p.clone() });
        }
    }
    if !spec.dir.is_absolute() {
        return Err(JailError::NotAbsolute {
            path: spec.dir.clone(),
        });
    }
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(sys("unshare(mount, ipc, uts, net)"))?;
    // Receive the host's mounts (the runtime's binds into the shared directory), never send.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(sys("making / a slave"))?;
    let root = &spec.dir;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755,size=1m"),
    )
    .map_err(sys(format!("mounting the jail root on {}", root.display())))?;
    for (path, access) in &spec.binds {
        bind_into(root, path, *access, false)?;
    }
    // A bind of a directory above the jail's (the sandbox dir) brought a copy of the jail
    // itself along: take it out.
    let inner = root.join(root.strip_prefix("/").unwrap_or(root));
    if spec.binds.iter().any(|(p, _)| root.starts_with(p)) {
        umount2(&inner, MntFlags::MNT_DETACH)
            .map_err(sys(format!("detaching {} from the jail", inner.display())))?;
    }
    bind_into(root, Path::new("/dev/kvm"), Access::Writable, true)?;
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(io("creating /proc in the jail"))?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("mounting /proc in the jail"))?;
    let old = root.join(".old-root");
    std::fs::create_dir_all(&old).map_err(io("creating the old root's mount point"))?;
    nix::unistd::pivot_root(root, &old).map_err(sys("pivot_root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    umount2("/.old-root", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
    let _ = std::fs::remove_dir("/.old-root");
    // The jail's own skeleton is read-only from now on (binds keep their own flags).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(sys("making the jail root read-only"))?;
    limit_resources()?;
    drop_privileges(spec.virtio_fs)
}

/// Binds host `path` at the same path beneath `root`, creating the mount point.
fn bind_into(root: &Path, path: &Path, access: Access, devices: bool) -> Result<(), JailError> {
    let meta = std::fs::metadata(path).map_err(io(format!("jail source {}", path.display())))?;
    let target = root.join(path.strip_prefix("/").unwrap_or(path));
    let parent = target.parent().unwrap_or(root);
    std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    if meta.is_dir() {
        std::fs::create_dir_all(&target).map_err(io(format!("creating {}", target.display())))?;
    } else if !target.exists() {
        std::fs::File::create(&target).map_err(io(format!("creating {}", target.display())))?;
    }
    mount(
        Some(path),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("binding {} into the jail", path.display())))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
    if !devices {
        flags |= MsFlags::MS_NODEV;
    }
    if access == Access::ReadOnly {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
        .map_err(sys(format!("restricting {} in the jail", path.display())))?;
    Ok(())
}

fn limit_resources() -> Result<(), JailError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(sys("getrlimit NOFILE"))?;
    let hard = hard.min(JAIL_NOFILE);
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard).map_err(sys("setrlimit NOFILE"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(sys("setrlimit CORE"))?;
    Ok(())
}

/// The capabilities the virtio-fs passthrough needs (module docs).
pub fn virtio_fs_capabilities() -> caps::CapsHashSet {
    use caps::Capability::*;
    [
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_DAC_READ_SEARCH,
        CAP_FOWNER,
        CAP_SETUID,
        CAP_SETGID,
    ]
    .into_iter()
    .collect()
}

fn drop_privileges(virtio_fs: bool) -> Result<(), JailError> {
    use caps::{CapSet, CapsHashSet};
    let keep: CapsHashSet = if virtio_fs {
        virtio_fs_capabilities()
    } else {
        CapsHashSet::new()
    };
    let err = |step| {
        move |e: caps::errors::CapsError| JailError::Caps {
            step,
            reason: e.to_string(),
        }
    };
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(err("dropping from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err("clearing the ambient set"))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .map_err(err("clearing the inheritable set"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(err("setting the effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err("setting the permitted set"))?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("PR_SET_NO_NEW_PRIVS"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_are_deduplicated_by_coverage() {
        let mut j = JailSpec::default();
        j.bind("/run/vessel/ns/sb".into(), Access::Writable);
        j.bind("/run/vessel/ns/sb/shared".into(), Access::Writable);
        j.bind("/run/vessel/ns/sb/console.log".into(), Access::ReadOnly);
        j.bind("/k/vmlinux".into(), Access::ReadOnly);
        assert_eq!(
            j.binds,
            vec![
                ("/run/vessel/ns/sb".into(), Access::Writable),
                ("/k/vmlinux".into(), Access::ReadOnly),
            ]
        );
        // A writable parent added later replaces what it covers.
        j.bind("/k".into(), Access::Writable);
        assert_eq!(j.binds.len(), 2);
        assert!(j.binds.contains(&("/k".into(), Access::Writable)));
    }

    #[test]
    fn the_virtio_fs_set_has_no_dangerous_capability() {
        use caps::Capability::*;
        let set = virtio_fs_capabilities();
        for bad in [
            CAP_SYS_ADMIN,
            CAP_MKNOD,
            CAP_FSETID,
            CAP_NET_ADMIN,
            CAP_NET_RAW,
            CAP_SYS_PTRACE,
            CAP_SYS_MODULE,
            CAP_SETFCAP,
            CAP_SYS_CHROOT,
            CAP_KILL,
        ] {
            assert!(!set.contains(&bad), "{bad} kept");
        }
        assert_eq!(set.len(), 6);
    }
}
