//! VM snapshots: boot once, save the VM when its agent is ready, start every pod by restoring
//! it (Firecracker's model). A snapshot is a directory:
//!
//! * `memory.bin`: guest RAM, regions back to back, zero pages as holes ([`memory`]);
//! * `vm.json`: format and VMM versions, how the VM was booted, vCPU / VM / device state
//!   ([`format::Manifest`]).
//!
//! [`RunningVm::snapshot`](crate::RunningVm::snapshot) pauses the VM for good and writes the
//! directory; [`Vm::restore`](crate::Vm::restore) maps `memory.bin` copy-on-write as the new
//! VM's RAM (VMs restored from one snapshot share its unmodified pages through the page
//! cache), recreates the devices with the new VM's host paths (vsock socket, shared dirs,
//! console) and puts all saved state back.
//!
//! Never rewritten in place: a memory file may be mapped by running VMs, so creating a
//! snapshot refuses a directory that already holds one.

mod cpu;
mod create;
pub mod format;
pub mod memory;
pub mod raw;
mod restore;
mod vm_state;

use std::path::PathBuf;

pub use cpu::{VcpuState, VcpuStateError};
pub use create::{SnapshotOptions, SnapshotSummary};
pub use format::{Manifest, RestoreExpectations, MANIFEST_FILE, MEMORY_FILE};
pub use memory::MemoryFileError;
pub use restore::{verify, RestoreConfig};
pub use vm_state::{VmState, VmStateError};

use crate::exit::ExitReason;
use crate::kvm::vm::KvmError;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot directory {path}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already holds a snapshot (never overwritten in place: remove it first)")]
    Exists { path: PathBuf },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, too large for a snapshot manifest")]
    ManifestTooLarge { path: PathBuf, size: u64 },
    #[error("{path} is not a valid snapshot manifest")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("snapshot format version {found}; this VMM reads version {expected}")]
    FormatVersion { found: u32, expected: u32 },
    #[error("snapshot made by vessel-vmm {found}; this is vessel-vmm {expected}")]
    VmmVersion { found: String, expected: String },
    #[error("snapshot was taken on a {found} host; this host is {expected}")]
    HostKind { found: String, expected: String },
    #[error("snapshot does not match: {what}: the snapshot has {snapshot}, the restore asks for {requested}")]
    Mismatch {
        what: &'static str,
        snapshot: String,
        requested: String,
    },
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    #[error("virtio device {index} (type {device_type}): {message}")]
    Device {
        index: usize,
        device_type: u32,
        message: String,
    },
    #[error("serial console state: {0}")]
    Serial(String),
    #[error("vCPU state")]
    Vcpu(#[from] VcpuStateError),
    #[error("VM state")]
    Vm(#[from] VmStateError),
    #[error("KVM")]
    Kvm(#[from] KvmError),
    #[error("the VM cannot be snapshotted now: {0}")]
    NotQuiescent(String),
    #[error("the VM stopped before it could be snapshotted: {0}")]
    VmStopped(ExitReason),
    #[error("only {stopped} of {vcpus} vCPUs stopped; not snapshotting")]
    VcpusStuck { stopped: usize, vcpus: u8 },
}

impl SnapshotError {
    /// The snapshot itself is unusable here (missing, damaged, from another VMM or host, not
    /// what was asked for, or state this KVM refuses): the caller should remove and recreate
    /// it. Other errors are failures of this attempt (no KVM, I/O while creating, a busy VM).
    pub fn is_rejected_snapshot(&self) -> bool {
        matches!(
            self,
            SnapshotError::Read { .. }
                | SnapshotError::ManifestTooLarge { .. }
                | SnapshotError::Corrupt { .. }
                | SnapshotError::FormatVersion { .. }
                | SnapshotError::VmmVersion { .. }
                | SnapshotError::HostKind { .. }
                | SnapshotError::Mismatch { .. }
                | SnapshotError::Inconsistent(_)
                | SnapshotError::Device { .. }
                | SnapshotError::Serial(_)
                | SnapshotError::Vcpu(_)
                | SnapshotError::Vm(_)
                | SnapshotError::Memory(
                    MemoryFileError::Open { .. }
                        | MemoryFileError::Size { .. }
                        | MemoryFileError::Layout { .. }
                )
        )
    }
}
