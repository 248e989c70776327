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
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("KVM: {0}")]
    Kvm(#[from] KvmError),
    #[error("{0}")]
    Loader(#[from] LoaderError),
    #[error("boot parameters: {0}")]
    BootParams(#[from] BootParamsError),
    #[error("PVH boot data: {0}")]
    Pvh(#[from] PvhError),
    #[error("MP table: {0}")]
    Mptable(#[from] MptableError),
    #[error("kernel command line: {0}")]
    Cmdline(#[from] CmdlineError),
    #[error("{0}")]
    Vcpu(#[from] VcpuError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
    #[error("opening console output {path}: {source}")]
    Console {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("creating the RIP profile {path}: {source}")]
    Profile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("creating an eventfd for {what}: {source}")]
    EventFd {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("registering {what} with KVM: {source}")]
    Register {
        what: String,
        source: kvm_ioctls::Error,
    },
    #[error("device bus: {0}")]
    Bus(#[from] BusError),
    #[error("{0} virtio devices do not fit: IRQs 5..=23 are available")]
    TooManyDevices(usize),
    #[error("vsock device: {0}")]
    Vsock(#[from] crate::devices::virtio::vsock::VsockError),
    #[error("virtio-net device: {0}")]
    Tap(#[from] crate::devices::virtio::net::TapError),
    #[error("virtio-net device: {0}")]
    Net(std::io::Error),
    #[error("virtio-fs device: {0}")]
    Fs(#[from] crate::devices::virtio::fs::FsError),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("spawning thread {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
}
