//! The errors `Vm::start` can return, one variant per stage.

use crate::arch::mptable::MptableError;
use crate::boot::cmdline::CmdlineError;
use crate::boot::loader::LoaderError;
use crate::boot::params::BootParamsError;
use crate::boot::pvh::PvhError;
use crate::config::ConfigError;
use crate::devices::bus::BusError;
use crate::kvm::vcpu::VcpuError;
use crate::kvm::vm::KvmError;
use crate::seccomp::SeccompError;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("KVM")]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("boot parameters")]
    BootParams(#[from] BootParamsError),
    #[error("PVH boot data")]
    Pvh(#[from] PvhError),
    #[error("MP table")]
    Mptable(#[from] MptableError),
    #[error("kernel command line")]
    Cmdline(#[from] CmdlineError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("seccomp")]
    Seccomp(#[from] SeccompError),
    #[error("opening console output {path}")]
    Console {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("creating the RIP profile {path}")]
    Profile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("creating an eventfd for {what}")]
    EventFd {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("registering {what} with KVM")]
    Register {
        what: String,
        source: kvm_ioctls::Error,
    },
    #[error("device bus")]
    Bus(#[from] BusError),
    #[error("{0} virtio devices do not fit: IRQs 5..=23 are available")]
    TooManyDevices(usize),
    #[error("vsock device")]
    Vsock(#[from] crate::devices::virtio::vsock::VsockError),
    #[error("virtio-net device")]
    Tap(#[from] crate::devices::virtio::net::TapError),
    #[error("virtio-net device")]
    Net(#[source] std::io::Error),
    #[error("virtio-fs device")]
    Fs(#[from] crate::devices::virtio::fs::FsError),
    #[error("snapshot")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("spawning thread {name}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
}
