//! The container's rootfs as containerd hands it over: a list of mounts (an overlay snapshot)
//! mounted at `<bundle>/rootfs`, as runc's shim does; or nothing, when already mounted there.
//! The bundle is containerd's directory, not one the guest can write, so these mounts go by
//! path; they go through the [`Mounter`] like every other host mount of a pod.

use std::path::{Path, PathBuf};

use crate::mounts::{MountError, Mounter};

pub use crate::mounts::{RootfsMount, MAX_MOUNT_DATA};

/// Mounts `mounts` on `<bundle>/rootfs` in order. Returns whether anything was mounted. On
/// failure nothing stays mounted.
pub fn mount_rootfs(
    bundle: &Path,
    mounts: &[RootfsMount],
    mounter: &dyn Mounter,
) -> Result<bool, MountError> {
    let target = rootfs_path(bundle);
    if mounts.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(&target).map_err(|source| MountError::MountPoint {
        path: target.clone(),
        source,
    })?;
    for m in mounts {
        if let Err(e) = mounter.mount(m, &target) {
            if let Err(u) = unmount_rootfs(bundle, mounter) {
                log::error!("rootfs {}: rollback: {u}", target.display());
            }
            return Err(e);
        }
    }
    Ok(true)
}

pub fn rootfs_path(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Where the container's root is on the host. containerd's mounts always go to
/// `<bundle>/rootfs`; with none, the spec's `root.path` says (runc's rule: relative to the
/// bundle unless absolute; podman names its overlay mount by absolute path), and a spec
/// without a root means `<bundle>/rootfs`.
pub fn host_rootfs(bundle: &Path, mounts: &[RootfsMount], spec_root: Option<&Path>) -> PathBuf {
    match spec_root {
        Some(root) if mounts.is_empty() => bundle.join(root),
        _ => rootfs_path(bundle),
    }
}

/// Unmounts everything below `bundle` (the rootfs and anything stacked in it), each mount
/// through an fd: the guest writes inside the rootfs and could plant symlinks there.
pub fn unmount_rootfs(bundle: &Path, mounter: &dyn Mounter) -> Result<(), MountError> {
    mounter.unmount_all_beneath(bundle).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rootfs_follows_the_spec_unless_containerd_mounts_it() {
        let b = Path::new("/b");
        let overlay = RootfsMount {
            typ: "overlay".into(),
            source: "overlay".into(),
            options: vec![],
        };
        assert_eq!(host_rootfs(b, &[], None), Path::new("/b/rootfs"));
        assert_eq!(
            host_rootfs(b, &[], Some(Path::new("rootfs"))),
            Path::new("/b/rootfs")
        );
        assert_eq!(
            host_rootfs(b, &[], Some(Path::new("root"))),
            Path::new("/b/root")
        );
        assert_eq!(
            host_rootfs(b, &[], Some(Path::new("/var/lib/containers/o/merged"))),
            Path::new("/var/lib/containers/o/merged")
        );
        assert_eq!(
            host_rootfs(
                b,
                std::slice::from_ref(&overlay),
                Some(Path::new("/elsewhere"))
            ),
            Path::new("/b/rootfs")
        );
    }

    /// A real overlay mount and unmount at `<bundle>/rootfs` (root only).
    #[test]
    fn mounts_and_unmounts_an_overlay_rootfs() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root to mount"
        );
        let _serial = crate::safe_mount::serial_mount_tests();
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper, work) = (
            dir.path().join("l"),
            dir.path().join("u"),
            dir.path().join("w"),
        );
        for d in [&lower, &upper, &work] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(lower.join("from-image"), b"img").unwrap();
        let bundle = dir.path().join("bundle");
        let m = RootfsMount {
            typ: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", work.display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}", lower.display()),
            ],
        };
        let mounter = crate::mounts::HostMounter;
        assert!(mount_rootfs(&bundle, &[m], &mounter).unwrap());
        let rootfs = rootfs_path(&bundle);
        assert_eq!(std::fs::read(rootfs.join("from-image")).unwrap(), b"img");
        std::fs::write(rootfs.join("written"), b"w").unwrap();
        unmount_rootfs(&bundle, &mounter).unwrap();
        assert!(!rootfs.join("from-image").exists());
        assert_eq!(
            std::fs::read(upper.join("written")).unwrap(),
            b"w",
            "write did not land in upper"
        );
        assert!(!mount_rootfs(&bundle, &[], &mounter).unwrap());
    }
}
