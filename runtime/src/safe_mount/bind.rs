//! [`prepare_bind`] (walk, clone, attributes) and [`PreparedBind::attach`] (move_mount).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{OFlag, ResolveFlag};

use super::sys::{self, Stat};
use super::{BindOptions, Kind, MountRecord, SafeMountError, Step};

/// Mode of directories and files created on the way to a target.
const CREATE_MODE: u32 = 0o700;
/// Regular files created as mount targets.
const FILE_MODE: u32 = 0o600;
/// How often a missing component is created before giving up (the guest may keep deleting it).
const CREATE_TRIES: usize = 3;

/// The walk's resolution: [`sys::BENEATH`], and no mount crossing either.
fn walk_resolve() -> ResolveFlag {
    sys::BENEATH | ResolveFlag::RESOLVE_NO_XDEV
}

/// Splits `rel` into its components, refusing anything but a relative path of normal names
/// (checked on the raw bytes: `Path::components` would silently drop `.` and doubled `/`).
pub(super) fn validate_rel(rel: &Path) -> Result<Vec<&OsStr>, SafeMountError> {
    let bad = |reason| SafeMountError::InvalidRelPath {
        rel: rel.to_path_buf(),
        reason,
    };
    let bytes = rel.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(bad("empty"));
    }
    if bytes.starts_with(b"/") {
        return Err(bad("absolute"));
    }
    if bytes.contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    bytes
        .split(|b| *b == b'/')
        .map(|name| match name {
            b"" => Err(bad("empty component (doubled or trailing '/')")),
            b"." => Err(bad("'.' component")),
            b".." => Err(bad("'..' component")),
            name => Ok(OsStr::from_bytes(name)),
        })
        .collect()
}

/// What an errno from a strict walk means.
fn walk_error(err: io::Error, path: &Path, step: Step) -> SafeMountError {
    let path = path.to_path_buf();
    match err.raw_os_error() {
        Some(libc::ELOOP) => SafeMountError::Symlink { path },
        Some(libc::ENOTDIR) => SafeMountError::NotADirectory { path },
        Some(libc::EXDEV) => SafeMountError::CrossesMount { path },
        _ => SafeMountError::Op {
            step,
            path,
            source: err,
        },
    }
}

fn kind_of(st: &Stat) -> Kind {
    if st.is_dir() {
        Kind::Directory
    } else if st.is_file() {
        Kind::File
    } else {
        Kind::Other
    }
}

/// Opens directory `name` in `parent`, creating it if missing.
fn open_or_create_dir(
    parent: BorrowedFd<'_>,
    name: &Path,
    path: &Path,
) -> Result<OwnedFd, SafeMountError> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    for _ in 0..CREATE_TRIES {
        match sys::openat2(parent, name, flags, 0, walk_resolve()) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match sys::mkdirat(parent, name, CREATE_MODE) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(walk_error(e, path, Step::CreateDir)),
                }
            }
            Err(e) => return Err(walk_error(e, path, Step::OpenDir)),
        }
    }
    Err(SafeMountError::Op {
        step: Step::OpenDir,
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::ENOENT),
    })
}

/// Opens (or creates) the mount target `name` in `parent`, of kind `want`.
fn open_target(
    parent: BorrowedFd<'_>,
    name: &Path,
    path: &Path,
    want: Kind,
) -> Result<OwnedFd, SafeMountError> {
    for _ in 0..CREATE_TRIES {
        match sys::openat2(parent, name, OFlag::O_PATH, 0, walk_resolve()) {
            Ok(fd) => {
                let st = sys::statx_fd(fd.as_fd()).map_err(SafeMountError::op(Step::Stat, path))?;
                let found = kind_of(&st);
                if found != want {
                    return Err(SafeMountError::KindMismatch {
                        path: path.to_path_buf(),
                        expected: want,
                        found,
                    });
                }
                return Ok(fd);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => match want {
                Kind::Directory => match sys::mkdirat(parent, name, CREATE_MODE) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(walk_error(e, path, Step::CreateDir)),
                },
                _ => {
                    let flags =
                        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_RDONLY;
                    match sys::openat2(parent, name, flags, FILE_MODE, walk_resolve()) {
                        // O_EXCL: this fd is the empty file we just created.
                        Ok(fd) => return Ok(fd),
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(walk_error(e, path, Step::CreateFile)),
                    }
                }
            },
            Err(e) => return Err(walk_error(e, path, Step::OpenTarget)),
        }
    }
    Err(SafeMountError::Op {
        step: Step::OpenTarget,
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::ENOENT),
    })
}

/// A bind whose target exists and whose source tree is cloned and configured, not yet attached.
/// Dropping it without [`attach`](Self::attach) mounts nothing (the detached tree is freed with
/// its fd); a target directory or file it created stays.
#[derive(Debug)]
pub struct PreparedBind {
    tree: OwnedFd,
    target: OwnedFd,
    record: MountRecord,
}

impl PreparedBind {
    /// The record of the mount [`attach`](Self::attach) will make, id included: store it first.
    pub fn record(&self) -> &MountRecord {
        &self.record
    }

    /// Attaches the prepared tree onto the target opened by the walk.
    pub fn attach(self) -> Result<MountRecord, SafeMountError> {
        let path = &self.record.target;
        sys::move_mount_fd(self.tree.as_fd(), self.target.as_fd())
            .map_err(SafeMountError::op(Step::Attach, path))?;
        // A shared parent mount made the attached tree shared: make it private again.
        if let Err(e) =
            sys::mount_setattr_recursive(self.tree.as_fd(), 0, 0, sys::PROPAGATION_PRIVATE)
        {
            if let Err(u) = sys::umount_detach_fd(self.tree.as_fd()) {
                log::warn!(
                    "detaching the bind on {} after a failure: {u}",
                    path.display()
                );
            }
            return Err(SafeMountError::Op {
                step: Step::SetAttr,
                path: path.clone(),
                source: e,
            });
        }
        Ok(self.record)
    }
}

/// Prepares a bind of `source` (trusted host path, followed as given) onto `root/rel`: walks and
/// creates `rel` beneath `root` by fd, clones the source's mount tree and sets its attributes
/// (see the module docs for each step). Nothing is mounted until [`PreparedBind::attach`].
pub fn prepare_bind(
    root: &Path,
    rel: &Path,
    source: &Path,
    opts: BindOptions,
) -> Result<PreparedBind, SafeMountError> {
    let names = validate_rel(rel)?;
    let target_path = root.join(rel);

    let tree = sys::open_tree_clone_recursive(source)
        .map_err(SafeMountError::op(Step::CloneSource, source))?;
    let st = sys::statx_fd(tree.as_fd()).map_err(SafeMountError::op(Step::Stat, source))?;
    let mnt_id = st.mnt_id.ok_or_else(|| SafeMountError::NoMountId {
        path: source.to_path_buf(),
    })?;
    let mut attr_set = libc::MOUNT_ATTR_NOSUID;
    if !opts.allow_devices {
        attr_set |= libc::MOUNT_ATTR_NODEV;
    }
    if opts.readonly {
        attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr_recursive(tree.as_fd(), attr_set, 0, sys::PROPAGATION_PRIVATE)
        .map_err(SafeMountError::op(Step::SetAttr, source))?;

    let root_fd = sys::open_dir_path(root).map_err(SafeMountError::op(Step::OpenRoot, root))?;
    let (last, parents) = names
        .split_last()
        .ok_or_else(|| SafeMountError::InvalidRelPath {
            rel: rel.to_path_buf(),
            reason: "empty",
        })?;
    let mut dir = root_fd;
    let mut at = root.to_path_buf();
    for name in parents {
        at.push(name);
        dir = open_or_create_dir(dir.as_fd(), Path::new(name), &at)?;
    }
    at.push(last);
    let want = if st.is_dir() {
        Kind::Directory
    } else {
        Kind::File
    };
    let target = open_target(dir.as_fd(), Path::new(last), &at, want)?;

    Ok(PreparedBind {
        tree,
        target,
        record: MountRecord {
            target: target_path,
            mnt_id,
            root_dev: st.dev,
            root_ino: st.ino,
        },
    })
}

/// Bind-mounts `source` onto `root/rel` in one call: [`prepare_bind`] then
/// [`PreparedBind::attach`]. Use the two-step form to record the mount before it exists.
pub fn bind_beneath(
    root: &Path,
    rel: &Path,
    source: &Path,
    opts: BindOptions,
) -> Result<MountRecord, SafeMountError> {
    prepare_bind(root, rel, source, opts)?.attach()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_relative_paths() {
        let names = validate_rel(Path::new("c1/volumes/0")).unwrap();
        assert_eq!(
            names,
            vec![OsStr::new("c1"), OsStr::new("volumes"), OsStr::new("0")]
        );
        assert_eq!(
            validate_rel(Path::new("rootfs")).unwrap(),
            vec![OsStr::new("rootfs")]
        );
        // Names that only look special are names.
        assert_eq!(
            validate_rel(Path::new("...")).unwrap(),
            vec![OsStr::new("...")]
        );
        assert_eq!(validate_rel(Path::new(".x/..y")).unwrap().len(), 2);
        assert_eq!(
            validate_rel(Path::new(OsStr::from_bytes(b"a\xff/b"))).unwrap()[0].as_bytes(),
            b"a\xff"
        );
    }

    #[test]
    fn rejects_everything_else() {
        for (rel, reason) in [
            ("", "empty"),
            ("/etc", "absolute"),
            ("/", "absolute"),
            (".", "'.' component"),
            ("..", "'..' component"),
            ("c1/../../etc", "'..' component"),
            ("c1/./volumes", "'.' component"),
            ("c1//volumes", "empty component (doubled or trailing '/')"),
            ("c1/volumes/", "empty component (doubled or trailing '/')"),
            ("./c1", "'.' component"),
            ("c1/\0x", "contains a NUL byte"),
        ] {
            match validate_rel(Path::new(rel)) {
                Err(SafeMountError::InvalidRelPath { reason: r, .. }) => {
                    assert_eq!(r, reason, "{rel:?}")
                }
                other => panic!("{rel:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bind_rejects_bad_rel_before_touching_anything() {
        let dir = tempfile::tempdir().unwrap();
        let err = bind_beneath(
            dir.path(),
            Path::new("../x"),
            dir.path(),
            BindOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, SafeMountError::InvalidRelPath { .. }),
            "{err}"
        );
        assert!(!dir.path().join("../x").exists());
    }

    #[test]
    fn errors_name_the_path_and_keep_the_errno_as_source() {
        let err = walk_error(
            io::Error::from_raw_os_error(libc::EACCES),
            Path::new("/r/c1"),
            Step::OpenDir,
        );
        assert_eq!(err.to_string(), "opening directory /r/c1");
        let src = std::error::Error::source(&err).unwrap();
        assert_eq!(
            src.to_string(),
            io::Error::from_raw_os_error(libc::EACCES).to_string()
        );
        let err = walk_error(
            io::Error::from_raw_os_error(libc::ELOOP),
            Path::new("/r/c1"),
            Step::OpenDir,
        );
        assert!(matches!(err, SafeMountError::Symlink { .. }), "{err}");
    }
}
