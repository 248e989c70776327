//! The container's rootfs as containerd hands it over: a list of mounts (an overlay snapshot)
//! mounted at `<bundle>/rootfs`, as runc's shim does; or nothing, when already mounted there.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use vessel_runtime::mounts::Mounter;

/// Mounts `mounts` on `<bundle>/rootfs` in order. Returns whether anything was mounted.
pub fn mount_rootfs(bundle: &Path, mounts: &[Mount]) -> Result<bool, String> {
    let target = rootfs_path(bundle);
    if mounts.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    for m in mounts {
        let fstype = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        if let Err(e) = containerd_shim::mount::mount_rootfs(fstype, source, &m.options, &target) {
            let _ = unmount_rootfs(bundle, &vessel_runtime::mounts::HostMounter);
            return Err(format!(
                "mounting {} rootfs ({}) on {}: {e}",
                m.type_,
                m.source,
                target.display()
            ));
        }
    }
    Ok(true)
}

pub fn rootfs_path(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Unmounts everything at and below `<bundle>/rootfs`.
pub fn unmount_rootfs(bundle: &Path, mounter: &dyn Mounter) -> Result<(), String> {
    let target = rootfs_path(bundle);
    let mounts = mounter.mounts_under(&target).map_err(|e| e.to_string())?;
    for m in mounts {
        mounter.unmount(&m).map_err(|e| e.to_string())?;
    }
    Ok(())
}
