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
