//! `vm.json`: what a snapshot directory holds besides `memory.bin`, and the checks a restore
//! makes before trusting it. A snapshot is input: every mismatch is a typed error, nothing
//! in it can panic the VMM.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cpu::VcpuState;
use super::memory::RegionInfo;
use super::vm_state::VmState;
use super::SnapshotError;
use crate::arch::layout::MAX_VCPUS;
use crate::config::{MAX_MEM_MIB, MIN_MEM_MIB};
use crate::devices::legacy::serial::SerialSnapshot;
use crate::devices::virtio::mmio::VirtioSnapshot;

/// Bumped whenever the layout of `vm.json` or `memory.bin` changes incompatibly (2: device
/// state typed and tagged, `{"device": "vsock", ...}`).
pub const FORMAT_VERSION: u32 = 2;
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const MANIFEST_FILE: &str = "vm.json";
pub const MEMORY_FILE: &str = "memory.bin";
/// A manifest is a few hundred KiB at most (one vCPU's state is ~15 KiB of hex).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// A file the snapshot was booted from, as it was then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

impl FileIdentity {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            size: m.size(),
            mtime_sec: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

/// How the snapshotted VM was booted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    pub kernel: FileIdentity,
    pub initrd: Option<FileIdentity>,
    /// `--cmdline` as given.
    pub cmdline_extra: String,
    /// The whole command line the guest booted with.
    pub cmdline: String,
    pub mem_mib: u32,
    pub vcpus: u8,
    pub boot_entry: String,
    pub host_kind: String,
    pub removed_cpu_features: Vec<String>,
    /// The vsock device's guest CID (the guest read it at boot), if it had one.
    pub vsock_cid: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRecord {
    pub file: String,
    pub size: u64,
    pub regions: Vec<RegionInfo>,
    /// Bytes of non-zero pages in the file (its real disk use).
    pub data_bytes: u64,
}

/// Everything in `vm.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub vmm_version: String,
    pub created_unix_ms: u64,
    pub boot: BootRecord,
    pub memory: MemoryRecord,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    pub virtio_slots: Vec<SlotRecord>,
    pub virtio: Vec<VirtioSnapshot>,
}

/// What the restoring side expects the snapshot to be (e.g. the runtime's configuration);
/// `None` fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreExpectations {
    pub mem_mib: Option<u32>,
    pub vcpus: Option<u8>,
    /// The kernel must be this path and unchanged since the snapshot (size and mtime).
    pub kernel: Option<PathBuf>,
    /// Likewise for the initrd; `Some(None)`: booted without one.
    pub initrd: Option<Option<PathBuf>>,
    pub cmdline_extra: Option<String>,
    /// The vsock device's guest CID.
    pub vsock_cid: Option<u64>,
}

fn mismatch(
    what: &'static str,
    snapshot: impl ToString,
    requested: impl ToString,
) -> SnapshotError {
    SnapshotError::Mismatch {
        what,
        snapshot: snapshot.to_string(),
        requested: requested.to_string(),
    }
}

fn check_file(
    what: &'static str,
    recorded: Option<&FileIdentity>,
    wanted: Option<&Path>,
) -> Result<(), SnapshotError> {
    match (recorded, wanted) {
        (None, None) => Ok(()),
        (Some(r), None) => Err(mismatch(what, r.path.display(), "none")),
        (None, Some(w)) => Err(mismatch(what, "none", w.display())),
        (Some(r), Some(w)) => {
            if r.path != w {
                return Err(mismatch(what, r.path.display(), w.display()));
            }
            let now = FileIdentity::of(w)
                .map_err(|e| mismatch(what, r.path.display(), format!("{} ({e})", w.display())))?;
            if now != *r {
                return Err(mismatch(
                    what,
                    format!(
                        "{} of {} bytes, mtime {}",
                        r.path.display(),
                        r.size,
                        r.mtime_sec
                    ),
                    format!(
                        "{} changed since (now {} bytes, mtime {})",
                        w.display(),
                        now.size,
                        now.mtime_sec
                    ),
                ));
            }
            Ok(())
        }
    }
}

impl Manifest {
    /// Reads `dir/vm.json` and checks it is a snapshot this VMM can restore.
    pub fn load(dir: &Path) -> Result<Manifest, SnapshotError> {
        let path = dir.join(MANIFEST_FILE);
        let read_err = |source| SnapshotError::Read {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        if size > MAX_MANIFEST_BYTES {
            return Err(SnapshotError::ManifestTooLarge { path, size });
        }
        let mut text = String::new();
        file.take(MAX_MANIFEST_BYTES)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        Self::parse(&text, &path)
    }

    /// Parses and validates manifest text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, SnapshotError> {
        // The version first, so an old or future snapshot says so instead of failing on
        // whichever field changed.
        #[derive(Deserialize)]
        struct Versions {
            format_version: u32,
            vmm_version: String,
        }
        let corrupt = |source| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            source,
        };
        let v: Versions = serde_json::from_str(text).map_err(corrupt)?;
        if v.format_version != FORMAT_VERSION {
            return Err(SnapshotError::FormatVersion {
                found: v.format_version,
                expected: FORMAT_VERSION,
            });
        }
        if v.vmm_version != VMM_VERSION {
            return Err(SnapshotError::VmmVersion {
                found: v.vmm_version,
                expected: VMM_VERSION.to_string(),
            });
        }
        let m: Manifest = serde_json::from_str(text).map_err(corrupt)?;
        m.validate()?;
        Ok(m)
    }

    /// Internal consistency (the file could have been edited or damaged).
    fn validate(&self) -> Result<(), SnapshotError> {
        let bad = |s: String| Err(SnapshotError::Inconsistent(s));
        let b = &self.boot;
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&b.mem_mib) {
            return bad(format!("{} MiB of memory", b.mem_mib));
        }
        if b.vcpus == 0 || b.vcpus > MAX_VCPUS {
            return bad(format!("{} vCPUs", b.vcpus));
        }
        if self.vcpus.len() != usize::from(b.vcpus) {
            return bad(format!(
                "{} vCPU states for {} vCPUs",
                self.vcpus.len(),
                b.vcpus
            ));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if usize::from(v.index) != i {
                return bad(format!("vCPU state {i} is for vCPU {}", v.index));
            }
        }
        if self.memory.size != u64::from(b.mem_mib) << 20 {
            return bad(format!(
                "memory of {} bytes for {} MiB",
                self.memory.size, b.mem_mib
            ));
        }
        if self.memory.file != MEMORY_FILE {
            return bad(format!("memory file {:?}", self.memory.file));
        }
        if self.virtio.len() != self.virtio_slots.len() {
            return bad(format!(
                "{} virtio devices in {} slots",
                self.virtio.len(),
                self.virtio_slots.len()
            ));
        }
        Ok(())
    }

    /// Checks the snapshot is what the caller expects.
    pub fn check(&self, expect: &RestoreExpectations) -> Result<(), SnapshotError> {
        let b = &self.boot;
        if let Some(mem) = expect.mem_mib {
            if mem != b.mem_mib {
                return Err(mismatch("guest memory (MiB)", b.mem_mib, mem));
            }
        }
        if let Some(vcpus) = expect.vcpus {
            if vcpus != b.vcpus {
                return Err(mismatch("vCPUs", b.vcpus, vcpus));
            }
        }
        if let Some(kernel) = &expect.kernel {
            check_file("kernel", Some(&b.kernel), Some(kernel))?;
        }
        if let Some(initrd) = &expect.initrd {
            check_file("initrd", b.initrd.as_ref(), initrd.as_deref())?;
        }
        if let Some(extra) = &expect.cmdline_extra {
            if *extra != b.cmdline_extra {
                return Err(mismatch(
                    "kernel command line additions",
                    format!("{:?}", b.cmdline_extra),
                    format!("{extra:?}"),
                ));
            }
        }
        if let Some(cid) = expect.vsock_cid {
            if Some(cid) != b.vsock_cid {
                let saved = b
                    .vsock_cid
                    .map_or("no vsock".to_string(), |c| c.to_string());
                return Err(mismatch("vsock guest CID", saved, cid));
            }
        }
        Ok(())
    }

    pub fn memory_path(&self, dir: &Path) -> PathBuf {
        dir.join(MEMORY_FILE)
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
