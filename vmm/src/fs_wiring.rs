//! Creating the virtio-fs devices for `--shared-dir` (the device itself lives in
//! `devices/virtio/fs/`, written against the `VirtioDevice` contract).

use crate::config::SharedDirConfig;
use crate::devices::virtio::fs::Fs;
use crate::error::VmmError;
use crate::vmm::VirtioDeviceHandle;

/// One file system device, registered both on the MMIO bus and in the event loop.
pub fn create(cfg: &SharedDirConfig) -> Result<VirtioDeviceHandle, VmmError> {
    let device = Fs::new(&cfg.tag, &cfg.path, cfg.xattr)?;
    log::info!(
        "virtio-fs: sharing {} as {:?}{}",
        device.shared_dir().display(),
        cfg.tag,
        if cfg.xattr { " (with xattrs)" } else { "" }
    );
    Ok(VirtioDeviceHandle::with_events(device))
}
