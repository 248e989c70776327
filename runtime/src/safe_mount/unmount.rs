//! Finding mounts beneath a root and removing them by id, each through a checked fd.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;

use super::mountinfo::{self, MountEntry};
use super::sys::{self, Stat};
use super::{MountRecord, SafeMountError, Step, Unmounted};

/// Rounds in a row without progress (every remaining mount out of reach) before giving up.
const STALL_ROUNDS: usize = 5;
const STALL_PAUSE: Duration = Duration::from_millis(10);

/// The trusted root, opened, with the path the kernel has for it (the form mountinfo uses).
struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// Opens `root`; `None` if it does not exist (then nothing can be mounted beneath it).
fn open_root(root: &Path) -> Result<Option<Root>, SafeMountError> {
    let fd = match sys::open_dir_path(root) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(SafeMountError::op(Step::OpenRoot, root)(e)),
    };
    let path = sys::fd_path(fd.as_fd()).map_err(SafeMountError::op(Step::OpenRoot, root))?;
    Ok(Some(Root { fd, path }))
}

/// Mounts whose mount point is `root` or below it, deepest first (see
/// [`mountinfo::sort_deepest_first`]). A missing `root` has none.
pub fn mounts_beneath(root: &Path) -> Result<Vec<MountEntry>, SafeMountError> {
    let Some(root) = open_root(root)? else {
        return Ok(Vec::new());
    };
    let table = mountinfo::read()?;
    Ok(mountinfo::entries_beneath(&table, &root.path))
}

enum Probe {
    /// The mount point, opened beneath root, is the root of the mount sought.
    Reached(OwnedFd, Stat),
    /// It could not be opened (moved, raced) or another mount is on top of it.
    Missed(Option<io::Error>),
}

/// Opens `m`'s mount point from root's fd (never through a symlink, never above root) and
/// checks that the mount there is `m`.
fn probe(root: &Root, m: &MountEntry) -> Result<Probe, SafeMountError> {
    let rel = m
        .mount_point
        .strip_prefix(&root.path)
        .map_err(|_| not_beneath(m, root))?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let fd = match sys::openat2(root.fd.as_fd(), rel, OFlag::O_PATH, 0, sys::BENEATH) {
        Ok(fd) => fd,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::EXDEV | libc::EAGAIN)
            ) =>
        {
            return Ok(Probe::Missed(Some(e)))
        }
        Err(e) => return Err(SafeMountError::op(Step::OpenMountPoint, &m.mount_point)(e)),
    };
    let st = sys::statx_fd(fd.as_fd()).map_err(SafeMountError::op(Step::Stat, &m.mount_point))?;
    match st.mnt_id {
        Some(id) if id == m.mnt_id => Ok(Probe::Reached(fd, st)),
        Some(_) => Ok(Probe::Missed(None)),
        None => Err(SafeMountError::NoMountId {
            path: m.mount_point.clone(),
        }),
    }
}

fn not_beneath(m: &MountEntry, root: &Root) -> SafeMountError {
    SafeMountError::NotBeneathRoot {
        mnt_id: m.mnt_id,
        mount_point: m.mount_point.clone(),
        root: root.path.clone(),
    }
}

/// The mount a record names, checked: (id, root device, root inode).
type Identity = (u64, u64, u64);

/// Unmounts the mounts `ids` (all at or beneath `root_path`) that still exist, children before
/// parents, each only once its mount point, opened beneath root, is verified to be it. Every
/// round starts from a fresh mountinfo and a freshly opened root; returns how many it detached.
fn unmount_ids(
    root_path: &Path,
    ids: &[u64],
    identity: Option<Identity>,
) -> Result<usize, SafeMountError> {
    let mut done = 0;
    let mut stalls = 0;
    loop {
        let Some(root) = open_root(root_path)? else {
            return Ok(done);
        };
        let table = mountinfo::read()?;
        let mut live: Vec<MountEntry> = table
            .iter()
            .filter(|m| ids.contains(&m.mnt_id))
            .cloned()
            .collect();
        if live.is_empty() {
            return Ok(done);
        }
        if let Some(m) = live.iter().find(|m| !m.mount_point.starts_with(&root.path)) {
            return Err(not_beneath(m, &root));
        }
        mountinfo::sort_deepest_first(&mut live, &table);
        let mut progress = false;
        let mut missed: Option<(&MountEntry, Option<io::Error>)> = None;
        for m in &live {
            let has_live_child = live
                .iter()
                .any(|c| c.parent_id == m.mnt_id && c.mnt_id != m.mnt_id);
            if has_live_child {
                continue;
            }
            match probe(&root, m)? {
                Probe::Reached(_, st)
                    if identity.is_some_and(|(id, dev, ino)| {
                        id == m.mnt_id && (st.dev, st.ino) != (dev, ino)
                    }) =>
                {
                    missed.get_or_insert((m, None));
                }
                Probe::Reached(fd, _) => {
                    sys::umount_detach_fd(fd.as_fd())
                        .map_err(SafeMountError::op(Step::Unmount, &m.mount_point))?;
                    done += 1;
                    progress = true;
                }
                Probe::Missed(e) => {
                    missed.get_or_insert((m, e));
                }
            }
        }
        if progress {
            stalls = 0;
            continue;
        }
        stalls += 1;
        if stalls >= STALL_ROUNDS {
            let (m, source) = missed.unwrap_or((&live[0], None));
            return Err(SafeMountError::Unreachable {
                mnt_id: m.mnt_id,
                mount_point: m.mount_point.clone(),
                source,
            });
        }
        std::thread::sleep(STALL_PAUSE);
    }
}

/// Unmounts the mount `rec` names, wherever beneath `root` it is now, together with the mounts
/// on top of or below it (its descendants — the source's submounts, anything stacked on it —
/// and mounts it is itself stacked on at the same mount point), deepest first, each through a
/// checked fd (see the module docs).
///
/// * Already gone (or never attached, or `root` missing): `Ok(Unmounted::AlreadyGone)`.
/// * The id belongs to another mount beneath root (root device/inode differ from the record):
///   `Ok(Unmounted::IdReused)`, nothing touched.
/// * The id's mount is at root itself or outside it: `Err(NotBeneathRoot)`, nothing touched.
///   (The guest cannot move a mount out of the share; the id was reused by an unrelated mount.)
/// * A parent directory renamed by the guest: found at its new place and unmounted. A parent
///   replaced by a symlink: the symlink is never followed; the real directory, wherever the
///   guest moved it beneath root, is what mountinfo names, and the mount is unmounted there.
pub fn unmount_record(root: &Path, rec: &MountRecord) -> Result<Unmounted, SafeMountError> {
    let Some(r) = open_root(root)? else {
        return Ok(Unmounted::AlreadyGone);
    };
    let table = mountinfo::read()?;
    let Some(ours) = table.iter().find(|m| m.mnt_id == rec.mnt_id) else {
        return Ok(Unmounted::AlreadyGone);
    };
    let strictly_beneath =
        |m: &MountEntry| m.mount_point != r.path && m.mount_point.starts_with(&r.path);
    if !strictly_beneath(ours) {
        return Err(not_beneath(ours, &r));
    }
    let mount_point = ours.mount_point.clone();
    match probe(&r, ours)? {
        Probe::Reached(_, st) => {
            if (st.dev, st.ino) != (rec.root_dev, rec.root_ino) {
                return Ok(Unmounted::IdReused { mount_point });
            }
        }
        // Covered by a mount stacked on it (or the guest is renaming): only the device can be
        // compared until the covering mounts are gone; the inode is checked when it is reached.
        Probe::Missed(_) => {
            if ours.dev() != rec.root_dev {
                return Ok(Unmounted::IdReused { mount_point });
            }
        }
    }
    // The lowest mount at the same mount point that ours is stacked on (ours if none).
    let mut bottom = ours;
    while let Some(below) = table
        .iter()
        .find(|m| m.mnt_id == bottom.parent_id && m.mnt_id != bottom.mnt_id)
    {
        if below.mount_point != mount_point || !strictly_beneath(below) {
            break;
        }
        bottom = below;
    }
    let mut ids = vec![bottom.mnt_id];
    ids.extend(mountinfo::descendants(&table, bottom.mnt_id));
    drop(r);
    let count = unmount_ids(root, &ids, Some((rec.mnt_id, rec.root_dev, rec.root_ino)))?;
    Ok(Unmounted::Detached { mount_point, count })
}

/// Unmounts every mount at or beneath `root` (after a crash, or before removing the directory),
/// deepest first, each through a checked fd; returns how many. A missing `root` has none.
pub fn unmount_all_beneath(root: &Path) -> Result<usize, SafeMountError> {
    let Some(r) = open_root(root)? else {
        return Ok(0);
    };
    let table = mountinfo::read()?;
    let ids: Vec<u64> = mountinfo::entries_beneath(&table, &r.path)
        .iter()
        .map(|m| m.mnt_id)
        .collect();
    drop(r);
    unmount_ids(root, &ids, None)
}
