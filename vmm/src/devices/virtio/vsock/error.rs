//! Errors of the vsock device's constructor.

use std::path::PathBuf;

/// Why a [`super::Vsock`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved (CIDs 0-2 and u32::MAX belong to the hypervisor/host)")]
    InvalidCid(u64),
    #[error("vsock socket path {0} already exists (stale socket of a previous VMM?)")]
    PathExists(PathBuf),
    #[error("binding vsock socket {path}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating vsock queues, event or timer fds")]
    EventFd(#[source] std::io::Error),
}
