//! Creating the virtio-vsock device for `--vsock-uds` (the device itself lives in
//! `devices/virtio/vsock/`, written against the `VirtioDevice` contract).

use crate::config::VsockConfig;
use crate::devices::virtio::vsock::Vsock;
use crate::error::VmmError;
use crate::vmm::VirtioDeviceHandle;

/// The vsock device, registered both on the MMIO bus and in the event loop.
pub fn create(cfg: &VsockConfig) -> Result<VirtioDeviceHandle, VmmError> {
    let device = Vsock::new(cfg.guest_cid, cfg.uds_path.clone())?;
    Ok(VirtioDeviceHandle::with_events(device))
}
