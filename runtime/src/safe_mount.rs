//! Bind mounts into the guest-writable shared directory that a compromised guest cannot
//! redirect, and their removal by recorded mount id.
//!
//! # The threat
//!
//! `<state>/<sandbox>/shared/` is exported to the guest over virtio-fs; the guest can create,
//! rename and delete anything below it at any time, symlinks included. A host that walks a
//! path below it by name — `mkdir -p`, `mount(2)` on `shared/<cid>/volumes/0`, `umount2` of the
//! same path at cleanup — follows whatever the guest planted there: `volumes/0 -> /etc` makes
//! the host mount a volume over its own `/etc` (Kata's CVE-2020-2026), and cleanup by path then
//! unmounts something else, or nothing.
//!
//! # What each step defends against
//!
//! [`bind_beneath`] / [`prepare_bind`] + [`PreparedBind::attach`]:
//!
//! 1. `rel` is checked to be relative, of normal components only (no `..`, `.`, empty or
//!    doubled `/`): the caller's own name cannot leave `root`.
//! 2. `root` (trusted: created by the runtime, nothing at or above it is guest-writable) is
//!    opened `O_PATH|O_DIRECTORY|O_NOFOLLOW`; everything after is relative to fds.
//! 3. Each component is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!    RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` relative to its parent's fd, created with
//!    `mkdirat(0o700)` when missing (EEXIST tolerated, then opened the same way). A symlink at
//!    any level is refused (never followed, whatever it points at), so is a non-directory, and
//!    so is crossing or landing on a mount point (no stacking on an existing mount, no mounting
//!    inside another bind). A guest that renames a directory after we opened it only moves
//!    where, below the share, the mount lands: the fd still names the directory we checked.
//! 4. The target (last component) is a directory or an empty regular file matching the
//!    source's kind: created `O_CREAT|O_EXCL` (or `mkdirat`), or, if it exists, opened the same
//!    strict way and checked to be of that kind (a symlink or another kind is an error).
//! 5. The source is a trusted host path (containerd's `<bundle>/rootfs`, a kubelet volume):
//!    `open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)` clones its mount tree into a detached mount,
//!    submounts included.
//! 6. On that detached tree, before anyone can see it, `mount_setattr(AT_RECURSIVE)` sets
//!    `nosuid`, `nodev` (unless [`BindOptions::allow_devices`]) and, for read-only binds,
//!    `rdonly` on every mount of it — so a read-only volume is read-only all the way down,
//!    which a `MS_BIND|MS_REMOUNT|MS_RDONLY` of the top mount is not — and makes it private
//!    (it leaves the source's peer group: later host mounts under the source do not propagate
//!    into the share).
//! 7. `move_mount(tree_fd, "", target_fd, "", F_EMPTY_PATH|T_EMPTY_PATH)` attaches it onto the
//!    fd from step 4: no path is resolved after the walk, so nothing the guest swaps in
//!    meanwhile can redirect the mount. Attaching below a shared mount makes the new tree
//!    shared again, so propagation is set private once more through the tree fd.
//!
//! The mount's id is read from the detached tree (`statx(STATX_MNT_ID)`) before it is
//! attached and stays its id, so the caller can record it first ([`prepare_bind`] →
//! store [`PreparedBind::record`] → [`PreparedBind::attach`]): a crash between the two leaves a
//! record of a mount that never existed (the detached tree dies with its fd), never a mount
//! without a record. [`bind_beneath`] is the one-call form.
//!
//! [`unmount_record`] / [`unmount_all_beneath`]: a mount is found by its id in
//! `/proc/self/mountinfo`, wherever it is now (the guest may have renamed a parent; the kernel's
//! mount point path is the real, symlink-free one). One not beneath `root` is refused. Its mount
//! point is opened from `root`'s fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`, the fd's `statx` mount id must be the one sought (and, for a
//! record, its root's device and inode those recorded, so a reused id is told apart), and that
//! mount is detached through the fd: `umount2("/proc/self/fd/N", MNT_DETACH)` — the magic link
//! jumps to the fd's (mount, dentry) with no name lookup. Mounts on top of or below it (its
//! descendants, e.g. a source's submounts, and mounts it is stacked on at the same mount point)
//! go first, deepest first. A guest that swaps a symlink into the path can only make the open
//! fail (retried from a fresh mountinfo, then reported as [`SafeMountError::Unreachable`]),
//! never make the host unmount something else.
//!
//! # Not defended here
//!
//! * The source path is resolved as given, following symlinks: it must not lie in anything the
//!   guest can write (the shared dir, a container rootfs it writes through the share).
//! * `root` and its ancestors are trusted; its path is resolved by name.
//! * While the guest runs it can make [`unmount_record`] fail (by renaming in a loop); it cannot
//!   make it unmount the wrong mount. Clean up after the VM is stopped for a guaranteed result.
//! * Mount ids are 32-bit and reused: a record whose mount is long gone may name a newer mount.
//!   The recorded root device+inode catches that, except for a newer bind of the same source;
//!   when the mount is covered by one stacked on it, only the device is compared.
//! * Mounts are seen in this process's mount namespace only, and `/proc` must be mounted.
//!
//! Kernel: open_tree/move_mount 5.2, openat2 5.6, STATX_MNT_ID 5.8, mount_setattr 5.12.

use std::io;
use std::path::PathBuf;

mod bind;
pub mod mountinfo;
mod sys;
#[cfg(test)]
mod tests;

/// One mount-making test of this crate at a time: some read the whole mount table.
#[cfg(test)]
pub(crate) fn serial_mount_tests() -> std::sync::MutexGuard<'static, ()> {
    tests::SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
mod unmount;

pub use bind::{bind_beneath, prepare_bind, PreparedBind};
pub use mountinfo::MountEntry;
pub use unmount::{mounts_beneath, unmount_all_beneath, unmount_record};

/// How to bind. `nosuid` is always set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Read-only, recursively (every submount of the source too).
    pub readonly: bool,
    /// Leave out `nodev` (device nodes in the source work through the bind). Off by default;
    /// only for a source that must expose devices.
    pub allow_devices: bool,
}

/// A bind made (or about to be made) by [`prepare_bind`]/[`bind_beneath`]; what the runtime keeps
/// in its state to undo it later with [`unmount_record`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountRecord {
    /// `root.join(rel)` as asked: for logs. The mount may since have moved (the guest can rename
    /// its parents); [`unmount_record`] finds it by `mnt_id`, not by this path.
    pub target: PathBuf,
    /// The mount's id, as in /proc/self/mountinfo and `statx(STATX_MNT_ID)`.
    pub mnt_id: u64,
    /// Device of the mount's root (the bind source), to tell a reused `mnt_id` apart.
    pub root_dev: u64,
    /// Inode of the mount's root (the bind source).
    pub root_ino: u64,
}

/// What [`unmount_record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmounted {
    /// The recorded mount, found at `mount_point`, was detached, with the mounts on top of or
    /// below it: `count` mounts in all.
    Detached { mount_point: PathBuf, count: usize },
    /// No mount has the recorded id: already unmounted, or never attached.
    AlreadyGone,
    /// The id now belongs to another mount beneath root (different root device/inode); the
    /// recorded mount is gone and the other one was left alone.
    IdReused { mount_point: PathBuf },
}

/// The kind of a mount target or source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    /// A regular file (the target for any non-directory source).
    File,
    /// Anything else (fifo, socket, device, symlink).
    Other,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Directory => "directory",
            Kind::File => "regular file",
            Kind::Other => "special file",
        })
    }
}

/// The operation that failed, for [`SafeMountError::Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    OpenRoot,
    OpenDir,
    CreateDir,
    OpenTarget,
    CreateFile,
    CloneSource,
    SetAttr,
    Attach,
    Stat,
    OpenMountPoint,
    Unmount,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::OpenRoot => "opening trusted root directory",
            Step::OpenDir => "opening directory",
            Step::CreateDir => "creating directory",
            Step::OpenTarget => "opening mount target",
            Step::CreateFile => "creating mount target file",
            Step::CloneSource => "cloning the mount tree (open_tree) of bind source",
            Step::SetAttr => "setting mount attributes (mount_setattr) on the bind of",
            Step::Attach => "attaching the bind (move_mount) on",
            Step::Stat => "statx of",
            Step::OpenMountPoint => "opening mount point",
            Step::Unmount => "unmounting (umount2 MNT_DETACH through its fd)",
        })
    }
}

/// A safe-mount operation failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum SafeMountError {
    #[error("invalid path {rel:?} beneath the root: {reason}")]
    InvalidRelPath { rel: PathBuf, reason: &'static str },
    #[error("{path} is a symbolic link: refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is or crosses a mount point: refusing to mount on or through a mount")]
    CrossesMount { path: PathBuf },
    #[error("{path} is a {found}, but the bind needs a {expected}")]
    KindMismatch {
        path: PathBuf,
        expected: Kind,
        found: Kind,
    },
    #[error("{step} {path}")]
    Op {
        step: Step,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel reports no mount id for {path} (statx STATX_MNT_ID needs Linux 5.8)")]
    NoMountId { path: PathBuf },
    #[error("mount {mnt_id} is at {mount_point}, not beneath {root}: refusing to touch it")]
    NotBeneathRoot {
        mnt_id: u64,
        mount_point: PathBuf,
        root: PathBuf,
    },
    #[error("mount {mnt_id} at {mount_point} cannot be reached through its path beneath the root (is something renaming it?)")]
    Unreachable {
        mnt_id: u64,
        mount_point: PathBuf,
        #[source]
        source: Option<io::Error>,
    },
    #[error("reading /proc/self/mountinfo")]
    MountInfo(#[source] io::Error),
    #[error("/proc/self/mountinfo line {line} is malformed: {text:?}")]
    MountInfoFormat { line: usize, text: String },
}

impl SafeMountError {
    fn op(step: Step, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| SafeMountError::Op { step, path, source }
    }
}
