//! Creating the virtio-net device for `--net` (the device itself lives in
//! `devices/virtio/net/`, written against the `VirtioDevice` contract).

use crate::config::NetConfig;
use crate::devices::virtio::net::{Net, Tap};
use crate::error::VmmError;
use crate::vmm::VirtioDeviceHandle;

/// The NIC, registered both on the MMIO bus and in the event loop.
pub fn create(cfg: &NetConfig) -> Result<VirtioDeviceHandle, VmmError> {
    let tap = cfg.tap_fd.map(Tap::from_inherited).transpose()?;
    match &tap {
        Some(t) => log::info!("virtio-net: on tap {}", t.name()),
        None => log::info!("virtio-net: no tap (frames from the guest are dropped)"),
    }
    let device = Net::new(tap).map_err(VmmError::Net)?;
    Ok(VirtioDeviceHandle::with_events(device))
}
