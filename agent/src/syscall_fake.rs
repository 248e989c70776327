//! A recording [`Syscall`] for unit tests: every privileged call is written down, none is
//! made (beyond an empty placeholder file for a device node, so the real `fchmodat` that
//! follows a `mknod` finds it). Paths inside the test's rootfs are recorded as the container
//! sees them (`/proc/self/fd/N` of a pinned destination resolved first), so a test reads
//! `/etc/resolv.conf`, not a temporary directory. Calls can be made to fail with an errno.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{major, minor, Mode, SFlag};
use nix::unistd::{Gid, Uid};

use crate::syscall::Syscall;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount {
        target: String,
        flags: MntFlags,
    },
    Chdir(String),
    PivotRoot,
    /// The namespace kind, and what the fd was (`/proc/self/fd/N`'s link text).
    Setns {
        nstype: CloneFlags,
        file: String,
    },
    Unshare(CloneFlags),
    Mknod {
        path: String,
        kind: SFlag,
        perm: u32,
        major: u64,
        minor: u64,
    },
    Chown {
        path: String,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Sethostname(String),
    Sysctl {
        path: String,
        value: String,
    },
}

type FailRule = Box<dyn Fn(&Call) -> bool + Send>;

/// Records calls against a test rootfs.
pub struct RecordingSyscall {
    rootfs: PathBuf,
    calls: Mutex<Vec<Call>>,
    failures: Mutex<Vec<(FailRule, Errno)>>,
}

impl RecordingSyscall {
    pub fn new(rootfs: &Path) -> RecordingSyscall {
        RecordingSyscall {
            rootfs: rootfs.to_path_buf(),
            calls: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
        }
    }

    /// Every later call that `rule` matches fails with `errno` (and is still recorded).
    pub fn fail(&self, rule: impl Fn(&Call) -> bool + Send + 'static, errno: Errno) {
        vessel_protocol::sync::lock(&self.failures).push((Box::new(rule), errno));
    }

    pub fn calls(&self) -> Vec<Call> {
        vessel_protocol::sync::lock(&self.calls).clone()
    }

    /// The recorded mounts as `(source, target, fstype, flags, data)`.
    pub fn mounts(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Mount { .. }))
            .collect()
    }

    /// A path as the container sees it when it lies in the rootfs; else as given.
    pub fn show(&self, path: &Path) -> String {
        // /proc/self/fd/N[/rest]: the pinned fd's path, then the rest.
        let fd_link: PathBuf = path.components().take(5).collect();
        let real = match fs::read_link(&fd_link) {
            Ok(target) if path.starts_with("/proc/self/fd/") => {
                target.join(path.strip_prefix(&fd_link).unwrap_or(Path::new("")))
            }
            _ => path.to_path_buf(),
        };
        match real.strip_prefix(&self.rootfs) {
            Ok(rest) => Path::new("/").join(rest).display().to_string(),
            Err(_) => real.display().to_string(),
        }
    }

    fn record(&self, call: Call) -> nix::Result<()> {
        let errno = vessel_protocol::sync::lock(&self.failures)
            .iter()
            .find(|(rule, _)| rule(&call))
            .map(|(_, e)| *e);
        vessel_protocol::sync::lock(&self.calls).push(call);
        errno.map_or(Ok(()), Err)
    }

    fn node(&self, real: &Path, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()> {
        self.record(Call::Mknod {
            path: self.show(real),
            kind,
            perm: perm.bits(),
            major: major(dev),
            minor: minor(dev),
        })?;
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(real)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Errno::EEXIST),
            Err(e) => Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.record(Call::Mount {
            source: source.map(|s| self.show(s)),
            target: self.show(target),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        })
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        self.record(Call::Umount {
            target: self.show(target),
            flags,
        })
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        self.record(Call::Chdir(self.show(path)))
    }

    fn pivot_root_here(&self) -> nix::Result<()> {
        self.record(Call::PivotRoot)
    }

    fn container_root(&self, rootfs: &Path) -> PathBuf {
        rootfs.to_path_buf()
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()> {
        let link = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let file = fs::read_link(link)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.record(Call::Setns { nstype, file })
    }

    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        self.record(Call::Unshare(flags))
    }

    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    ) -> nix::Result<()> {
        let dir = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(|_| Errno::EBADF)?;
        self.node(&dir.join(name), kind, perm, dev)
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()> {
        self.node(path, kind, perm, dev)
    }

    fn chown(&self, path: &Path, uid: Option<Uid>, gid: Option<Gid>) -> nix::Result<()> {
        self.record(Call::Chown {
            path: self.show(path),
            uid: uid.map(Uid::as_raw),
            gid: gid.map(Gid::as_raw),
        })
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        self.record(Call::Sethostname(name.to_owned()))
    }

    fn write_sysctl(&self, path: &Path, value: &str) -> io::Result<()> {
        self.record(Call::Sysctl {
            path: self.show(path),
            value: value.to_owned(),
        })
        .map_err(io::Error::from)
    }
}
