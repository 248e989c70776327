//! Host mounts made for a sandbox, behind a narrow trait so the share logic is testable
//! without root. [`HostMounter`] is the real one (bind mounts, unmount, `/proc/self/mountinfo`).

use std::path::{Path, PathBuf};

/// A mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("bind-mounting {source_path} on {target}: {errno}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("unmounting {target}: {errno}")]
    Unmount {
        target: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("preparing mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    #[error("mounting {fstype} ({source_name}) on {target}: {reason}")]
    Mount {
        fstype: String,
        source_name: String,
        target: PathBuf,
        reason: String,
    },
}

/// The mount operations a sandbox needs on the host.
pub trait Mounter: Send + Sync {
    /// Bind-mounts `source` (a directory or a file) on `target`, which must exist and be of
    /// the same kind. Recursive, so submounts of a volume stay visible.
    fn bind(&self, source: &Path, target: &Path, readonly: bool) -> Result<(), MountError>;
    /// Mounts one of containerd's rootfs mounts on `target` (a path the guest cannot write:
    /// `<bundle>/rootfs`). A read-only bind is made read-only by a remount.
    fn mount(&self, m: &crate::rootfs::RootfsMount, target: &Path) -> Result<(), MountError>;
    /// Unmounts `target` (all mounts stacked on it). Not mounted is not an error.
    fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// Mount points at or below `dir`, deepest first (the order to unmount them in).
    fn mounts_under(&self, dir: &Path) -> Result<Vec<PathBuf>, MountError>;
}

/// Creates an empty directory or file at `target` to mount `source` on.
pub fn prepare_mount_point(source: &Path, target: &Path) -> Result<(), MountError> {
    let err = |source| MountError::MountPoint {
        path: target.to_path_buf(),
        source,
    };
    let is_dir = std::fs::metadata(source).map_err(err)?.is_dir();
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    if is_dir {
        std::fs::create_dir_all(target).map_err(err)?;
    } else if !target.exists() {
        std::fs::File::create(target).map_err(err)?;
    }
    Ok(())
}

/// Real mounts through mount(2)/umount2(2). Needs CAP_SYS_ADMIN.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostMounter;

impl Mounter for HostMounter {
    fn bind(&self, source: &Path, target: &Path, readonly: bool) -> Result<(), MountError> {
        use nix::mount::{mount, MsFlags};
        let err = |errno| MountError::Bind {
            source_path: source.to_path_buf(),
            target: target.to_path_buf(),
            errno,
        };
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err)?;
        // Keep the guest's view of this mount from propagating back and forth with the host.
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err)?;
        if readonly {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            if let Err(errno) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
                let _ = self.unmount(target);
                return Err(err(errno));
            }
        }
        Ok(())
    }

    fn mount(&self, m: &crate::rootfs::RootfsMount, target: &Path) -> Result<(), MountError> {
        use nix::mount::{mount, MsFlags};
        let fail = |reason: String| MountError::Mount {
            fstype: m.typ.clone(),
            source_name: m.source.clone(),
            target: target.to_path_buf(),
            reason,
        };
        let (flags, data) = crate::rootfs::parse_options(&m.options);
        if data.len() > crate::rootfs::MAX_MOUNT_DATA {
            return Err(fail(format!(
                "mount options are {} bytes, more than a page",
                data.len()
            )));
        }
        let fstype = (!m.typ.is_empty()).then_some(m.typ.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        let data = (!data.is_empty()).then_some(data.as_str());
        mount(source, target, fstype, flags, data).map_err(|e| fail(e.to_string()))?;
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            if let Err(e) = mount(None::<&str>, target, None::<&str>, ro, None::<&str>) {
                let _ = self.unmount(target);
                return Err(fail(e.to_string()));
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        use nix::errno::Errno;
        use nix::mount::{umount2, MntFlags};
        // A bind may be stacked more than once (e.g. a retried mount): unmount until none left.
        for _ in 0..16 {
            if !is_mount_point(target)? {
                return Ok(());
            }
            match umount2(target, MntFlags::empty()) {
                Ok(()) => {}
                // The VMM's virtio-fs server may still hold files open: detach lazily so the
                // mount disappears from the host's tree now and is freed when released.
                Err(Errno::EBUSY) => {
                    umount2(target, MntFlags::MNT_DETACH).map_err(|errno| MountError::Unmount {
                        target: target.to_path_buf(),
                        errno,
                    })?
                }
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
                Err(errno) => {
                    return Err(MountError::Unmount {
                        target: target.to_path_buf(),
                        errno,
                    })
                }
            }
        }
        Err(MountError::Unmount {
            target: target.to_path_buf(),
            errno: nix::errno::Errno::EBUSY,
        })
    }

    fn mounts_under(&self, dir: &Path) -> Result<Vec<PathBuf>, MountError> {
        let info =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
        Ok(mount_points_under(&info, dir))
    }
}

fn is_mount_point(path: &Path) -> Result<bool, MountError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
    Ok(parse_mount_points(&info).iter().any(|p| p == path))
}

/// Mount points listed in a mountinfo text (field 5), with octal escapes decoded.
pub fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

/// Mount points at or below `dir`, deepest first.
pub fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = parse_mount_points(mountinfo)
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
100 22 0:50 / /run/vessel/sb/shared/c1/rootfs rw - overlay overlay rw
101 100 0:51 / /run/vessel/sb/shared/c1/rootfs/proc rw - proc proc rw
102 22 254:0 /data /run/vessel/sb/shared/c1/volumes/0 rw - ext4 /dev/vda rw
103 22 254:0 /x /run/vessel/sb2/shared/a\\040b rw - ext4 /dev/vda rw
";

    #[test]
    fn finds_mounts_under_a_dir_deepest_first() {
        let found = mount_points_under(INFO, Path::new("/run/vessel/sb"));
        assert_eq!(
            found,
            vec![
                PathBuf::from("/run/vessel/sb/shared/c1/rootfs/proc"),
                PathBuf::from("/run/vessel/sb/shared/c1/volumes/0"),
                PathBuf::from("/run/vessel/sb/shared/c1/rootfs"),
            ]
        );
        // Path prefix, not string prefix: sb2 is not under sb.
        assert!(!found.iter().any(|p| p.starts_with("/run/vessel/sb2")));
    }

    #[test]
    fn decodes_escapes() {
        let found = mount_points_under(INFO, Path::new("/run/vessel/sb2"));
        assert_eq!(found, vec![PathBuf::from("/run/vessel/sb2/shared/a b")]);
    }

    #[test]
    fn prepares_file_and_dir_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let src_dir = dir.path().join("srcdir");
        let src_file = dir.path().join("srcfile");
        std::fs::create_dir(&src_dir).unwrap();
        std::fs::write(&src_file, b"x").unwrap();
        let t1 = dir.path().join("a/b/dir");
        let t2 = dir.path().join("a/c/file");
        prepare_mount_point(&src_dir, &t1).unwrap();
        prepare_mount_point(&src_file, &t2).unwrap();
        assert!(t1.is_dir());
        assert!(t2.is_file());
        assert!(prepare_mount_point(&dir.path().join("missing"), &t1).is_err());
    }
}
