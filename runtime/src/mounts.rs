//! Host mounts made for a pod, behind a narrow trait so the share logic is testable without
//! root. [`HostMounter`] is the real one: binds into the guest-writable shared directory go
//! through [`crate::safe_mount`] (no symlink followed, mounted by fd, nosuid/nodev, read-only
//! all the way down, undone by recorded mount id); containerd's rootfs mounts go by path onto
//! `<bundle>/rootfs`, a directory the guest cannot write.

use std::path::{Path, PathBuf};

use crate::safe_mount::{self, BindOptions, MountRecord, SafeMountError};

/// One mount of containerd's rootfs list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsMount {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The kernel takes at most a page of mount data (deep overlay stacks can exceed it).
pub const MAX_MOUNT_DATA: usize = 4095;

/// A mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("binding {source_path} on {target}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: Box<SafeMountError>,
    },
    #[error("unmounting beneath {root}")]
    Unmount {
        root: PathBuf,
        #[source]
        source: Box<SafeMountError>,
    },
    #[error("unmounting {target}: {errno}")]
    UnmountPath {
        target: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("preparing mount point {path}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {fstype} ({source_name}) on {target}: {reason}")]
    Mount {
        fstype: String,
        source_name: String,
        target: PathBuf,
        reason: String,
    },
}

/// The mount operations a pod needs on the host.
pub trait Mounter: Send + Sync {
    /// Bind-mounts `source` (a trusted host path: a directory or a file) on `root/rel`,
    /// creating what is missing beneath `root` (trusted) without following any symlink the
    /// guest may have planted there. Recursive, nosuid, nodev; `readonly` on every submount.
    /// `record` gets the mount's record before the mount exists (so a crash leaves a record,
    /// never an unrecorded mount).
    fn bind_beneath(
        &self,
        root: &Path,
        rel: &Path,
        source: &Path,
        readonly: bool,
        record: &mut dyn FnMut(&MountRecord),
    ) -> Result<MountRecord, MountError>;
    /// Unmounts a recorded bind wherever beneath `root` it now is (with what is stacked on
    /// or below it); returns how many mounts went. Gone is not an error.
    fn unmount_record(&self, root: &Path, rec: &MountRecord) -> Result<usize, MountError>;
    /// Unmounts every mount beneath `root` (deepest first), each through an fd checked to be
    /// that mount. Returns how many.
    fn unmount_all_beneath(&self, root: &Path) -> Result<usize, MountError>;
    /// Mount points beneath `root`.
    fn mounts_beneath(&self, root: &Path) -> Result<Vec<PathBuf>, MountError>;
    /// Makes `dir` (just created by the runtime, not yet visible to the guest) a mount of
    /// its own with shared propagation, so binds made beneath it later reach the jailed
    /// VMM's mount namespace (a slave of it).
    fn share_subtree(&self, dir: &Path) -> Result<(), MountError>;
    /// Mounts one of containerd's rootfs mounts on `target` (a path the guest cannot write:
    /// `<bundle>/rootfs`). A read-only bind is made read-only by a remount.
    fn mount(&self, m: &RootfsMount, target: &Path) -> Result<(), MountError>;
}

/// Real mounts. Needs CAP_SYS_ADMIN.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostMounter;

impl Mounter for HostMounter {
    fn bind_beneath(
        &self,
        root: &Path,
        rel: &Path,
        source: &Path,
        readonly: bool,
        record: &mut dyn FnMut(&MountRecord),
    ) -> Result<MountRecord, MountError> {
        let err = |source_err| MountError::Bind {
            source_path: source.to_path_buf(),
            target: root.join(rel),
            source: Box::new(source_err),
        };
        let opts = BindOptions {
            readonly,
            allow_devices: false,
        };
        let prepared = safe_mount::prepare_bind(root, rel, source, opts).map_err(err)?;
        record(prepared.record());
        prepared.attach().map_err(err)
    }

    fn unmount_record(&self, root: &Path, rec: &MountRecord) -> Result<usize, MountError> {
        match safe_mount::unmount_record(root, rec) {
            Ok(safe_mount::Unmounted::Detached { count, .. }) => Ok(count),
            Ok(_) => Ok(0),
            // The id now names a mount outside root: ours is gone.
            Err(SafeMountError::NotBeneathRoot { .. }) => Ok(0),
            Err(source) => Err(MountError::Unmount {
                root: root.to_path_buf(),
                source: Box::new(source),
            }),
        }
    }

    fn unmount_all_beneath(&self, root: &Path) -> Result<usize, MountError> {
        safe_mount::unmount_all_beneath(root).map_err(|source| MountError::Unmount {
            root: root.to_path_buf(),
            source: Box::new(source),
        })
    }

    fn mounts_beneath(&self, root: &Path) -> Result<Vec<PathBuf>, MountError> {
        let entries = safe_mount::mounts_beneath(root).map_err(|source| MountError::Unmount {
            root: root.to_path_buf(),
            source: Box::new(source),
        })?;
        Ok(entries.into_iter().map(|e| e.mount_point).collect())
    }

    fn share_subtree(&self, dir: &Path) -> Result<(), MountError> {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        let fail = |reason: String| MountError::Mount {
            fstype: "bind".into(),
            source_name: dir.display().to_string(),
            target: dir.to_path_buf(),
            reason,
        };
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| fail(e.to_string()))?;
        let flags = MsFlags::MS_SHARED;
        if let Err(e) = mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
            return Err(fail(format!("making it shared: {e}")));
        }
        Ok(())
    }

    fn mount(&self, m: &RootfsMount, target: &Path) -> Result<(), MountError> {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        let fail = |reason: String| MountError::Mount {
            fstype: m.typ.clone(),
            source_name: m.source.clone(),
            target: target.to_path_buf(),
            reason,
        };
        let opts = vessel_protocol::mount_options::parse(&m.options);
        let (flags, data) = (opts.flags, opts.data_string());
        if data.len() > MAX_MOUNT_DATA {
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
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(fail(e.to_string()));
            }
        }
        Ok(())
    }
}
