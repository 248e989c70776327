//! Namespace kinds, and entering them (setns by path or fd, unshare).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::LinuxNamespaceType;
use serde::{Deserialize, Serialize};

use super::ChildError;
use crate::syscall::Syscall;

/// The namespaces the agent handles. User and time namespaces are not supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsKind {
    Mount,
    Uts,
    Ipc,
    Net,
    Pid,
    Cgroup,
}

impl NsKind {
    /// Order in which an exec joins a container's namespaces (mount last: after it, paths
    /// resolve inside the container).
    pub const JOIN_ORDER: [NsKind; 5] = [
        NsKind::Ipc,
        NsKind::Uts,
        NsKind::Net,
        NsKind::Cgroup,
        NsKind::Mount,
    ];

    pub fn from_oci(t: LinuxNamespaceType) -> Option<NsKind> {
        Some(match t {
            LinuxNamespaceType::Mount => NsKind::Mount,
            LinuxNamespaceType::Uts => NsKind::Uts,
            LinuxNamespaceType::Ipc => NsKind::Ipc,
            LinuxNamespaceType::Network => NsKind::Net,
            LinuxNamespaceType::Pid => NsKind::Pid,
            LinuxNamespaceType::Cgroup => NsKind::Cgroup,
            _ => return None,
        })
    }

    pub fn flag(self) -> CloneFlags {
        match self {
            NsKind::Mount => CloneFlags::CLONE_NEWNS,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Net => CloneFlags::CLONE_NEWNET,
            NsKind::Pid => CloneFlags::CLONE_NEWPID,
            NsKind::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        }
    }

    /// Name under /proc/<pid>/ns/.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::Mount => "mnt",
            NsKind::Uts => "uts",
            NsKind::Ipc => "ipc",
            NsKind::Net => "net",
            NsKind::Pid => "pid",
            NsKind::Cgroup => "cgroup",
        }
    }
}

/// Opens a namespace file (a path from the spec, or /proc/<pid>/ns/<kind>).
pub fn open_ns(path: &Path) -> nix::Result<OwnedFd> {
    open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
}

/// Joins the namespace behind `fd`.
pub fn join(sys: &dyn Syscall, kind: NsKind, fd: impl AsFd) -> Result<(), ChildError> {
    sys.setns(fd.as_fd(), kind.flag())
        .map_err(|e| ChildError::sys(format!("setns {:?}", kind), e))
}

/// Joins the namespace at `path`.
pub fn join_path(sys: &dyn Syscall, kind: NsKind, path: &Path) -> Result<(), ChildError> {
    let fd = open_ns(path)
        .map_err(|e| ChildError::sys(format!("open namespace {}", path.display()), e))?;
    join(sys, kind, fd)
}

/// Creates new namespaces of the given kinds for the calling process.
pub fn unshare_kinds(sys: &dyn Syscall, kinds: &[NsKind]) -> Result<(), ChildError> {
    let flags = kinds.iter().fold(CloneFlags::empty(), |f, k| f | k.flag());
    if flags.is_empty() {
        return Ok(());
    }
    sys.unshare(flags)
        .map_err(|e| ChildError::sys(format!("unshare {kinds:?}"), e))
}
