//! Creating the virtio devices a VM's configuration asks for (each device itself lives in
//! its folder, written against the `VirtioDevice` contract): `--vsock-uds`, `--shared-dir`,
//! `--net`.

use crate::config::{NetConfig, SharedDirConfig, VmConfig, VsockConfig};
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::vsock::Vsock;
use crate::error::VmmError;

use super::handle::VirtioDeviceHandle;

/// The virtio devices `config` asks for, in bus order (also used to recreate them when
/// restoring a snapshot, with the restored VM's host paths).
pub(crate) fn configured_devices(config: &VmConfig) -> Result<Vec<VirtioDeviceHandle>, VmmError> {
    let mut devices = Vec::new();
    if let Some(vsock) = &config.vsock {
        devices.push(self::vsock(vsock)?);
    }
    for dir in &config.shared_dirs {
        devices.push(shared_dir(dir)?);
    }
    if let Some(net) = &config.net {
        devices.push(self::net(net)?);
    }
    Ok(devices)
}

/// The vsock device, registered both on the MMIO bus and in the event loop.
fn vsock(cfg: &VsockConfig) -> Result<VirtioDeviceHandle, VmmError> {
    let device = Vsock::new(cfg.guest_cid, cfg.uds_path.clone())?;
    Ok(VirtioDeviceHandle::with_events(device))
}

/// One file system device, registered both on the MMIO bus and in the event loop.
fn shared_dir(cfg: &SharedDirConfig) -> Result<VirtioDeviceHandle, VmmError> {
    let device = Fs::new(&cfg.tag, &cfg.path, cfg.xattr)?;
    log::info!(
        "virtio-fs: sharing {} as {:?}{}",
        device.shared_dir().display(),
        cfg.tag,
        if cfg.xattr { " (with xattrs)" } else { "" }
    );
    raise_fd_limit();
    Ok(VirtioDeviceHandle::with_events(device))
}

/// The backend holds an `O_PATH` fd for every inode the guest has looked up and not yet
/// forgotten (Linux forgets only under memory pressure), so a container walking its rootfs
/// needs thousands: raise the soft fd limit to the hard one, as virtiofsd does.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        log::warn!(
            "virtio-fs: reading the fd limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if lim.rlim_cur >= lim.rlim_max {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        log::info!(
            "virtio-fs: fd limit raised from {} to {}",
            lim.rlim_cur,
            lim.rlim_max
        );
    } else {
        log::warn!(
            "virtio-fs: raising the fd limit to {}: {}",
            lim.rlim_max,
            std::io::Error::last_os_error()
        );
    }
}

/// The NIC, registered both on the MMIO bus and in the event loop.
fn net(cfg: &NetConfig) -> Result<VirtioDeviceHandle, VmmError> {
    let tap = cfg.tap_fd.map(Tap::from_inherited).transpose()?;
    match &tap {
        Some(t) => log::info!("virtio-net: on tap {}", t.name()),
        None => log::info!("virtio-net: no tap (frames from the guest are dropped)"),
    }
    let device = Net::new(tap).map_err(VmmError::Net)?;
    Ok(VirtioDeviceHandle::with_events(device))
}
