//! The agent's seam over the system calls that change what a container sees: mounts,
//! pivot_root, namespaces, device nodes, ownership, the hostname and sysctls (the model is
//! youki's `libcontainer::syscall`). Container and sandbox setup take a `&dyn Syscall`:
//! [`RealSyscall`] in the agent, a recording fake in unit tests, so the setup rules (mount
//! order and flags, masked and read-only paths, devices, propagation, namespace joins) are
//! tested without root. Plain file work (mkdir, symlinks to create mount points, reading
//! links) stays real: it needs no privilege, and tests run it in a temporary rootfs.

use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// The privileged calls of container and sandbox setup. Paths are as the caller resolved
/// them (a pinned destination is a `/proc/self/fd/N` path).
pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    /// `pivot_root(".", ".")` in the current directory (runc's way, no temporary directory).
    fn pivot_root_here(&self) -> nix::Result<()>;
    /// Where the container's `/` is seen from this process once pivoted: `/` for the real
    /// calls; the fake pivots nothing and answers the rootfs.
    fn container_root(&self, rootfs: &Path) -> PathBuf;
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()>;
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;
    /// A node `name` in the directory `dir`.
    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    ) -> nix::Result<()>;
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()>;
    fn chown(&self, path: &Path, uid: Option<Uid>, gid: Option<Gid>) -> nix::Result<()>;
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    /// Writes `value` to a sysctl file under /proc/sys.
    fn write_sysctl(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// The real system calls.
pub struct RealSyscall;

impl Syscall for RealSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn pivot_root_here(&self) -> nix::Result<()> {
        nix::unistd::pivot_root(".", ".")
    }

    fn container_root(&self, _rootfs: &Path) -> PathBuf {
        PathBuf::from("/")
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()> {
        nix::sched::setns(fd, nstype)
    }

    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    ) -> nix::Result<()> {
        nix::sys::stat::mknodat(dir, name, kind, perm, dev)
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()> {
        nix::sys::stat::mknod(path, kind, perm, dev)
    }

    fn chown(&self, path: &Path, uid: Option<Uid>, gid: Option<Gid>) -> nix::Result<()> {
        nix::unistd::chown(path, uid, gid)
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn write_sysctl(&self, path: &Path, value: &str) -> io::Result<()> {
        std::fs::write(path, value)
    }
}
