//! VM snapshots for starting pods (`[snapshot]` in the config): one snapshot per
//! configuration, keyed by a hash of everything that goes into the VM (VMM binary, kernel,
//! initrd — path, size, mtime — memory, vCPUs, kernel parameters, device set). A pod's VM is
//! restored from the snapshot of its configuration; the snapshot is made on first use by one
//! cold boot (`vessel-vmm snapshot-create`), under a lock so concurrent sandbox starts make
//! it once. A snapshot the VMM rejects (`vessel-vmm snapshot-check`) is removed and made
//! again.
//!
//! Snapshots are never modified in place (running VMs map `memory.bin`): one is created in a
//! private work directory and renamed into place, and removed by renaming it away first.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::config::Config;
use crate::share::SHARED_FS_TAG;

/// Bumped when what goes into a snapshot changes in a way the inputs do not show.
const KEY_VERSION: &str = "vessel-snapshot-key v1";
use vessel_protocol::GUEST_VSOCK_CID as VSOCK_CID;
const MANIFEST: &str = "vm.json";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotStoreError {
    #[error("snapshot input {what} {path}")]
    Input {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot directory {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for the snapshot lock {path}: {reason}")]
    Lock { path: PathBuf, reason: String },
    #[error("creating snapshot {key}: {reason}")]
    Create { key: String, reason: String },
    #[error("checking snapshot {path}: {reason}")]
    Check { path: PathBuf, reason: String },
    #[error("{0:?} is not a snapshot key")]
    BadKey(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotStoreError + '_ {
    move |source| SnapshotStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the VMM says about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    Usable,
    /// Unusable for this configuration (damaged, stale, from another VMM...), with why.
    Rejected(String),
}

/// Making and checking snapshots: the VMM binary in production, a fake in unit tests.
pub trait SnapshotTool: Send + Sync {
    /// Boots the configured VM and snapshots it into `target` (which does not exist yet),
    /// using `work` (an empty private directory) for sockets and logs.
    fn create(
        &self,
        config: &Config,
        work: &Path,
        target: &Path,
        deadline: Instant,
    ) -> Result<(), String>;
    /// Whether the VMM would restore `dir` for `config`.
    fn check(&self, config: &Config, dir: &Path) -> Result<CheckOutcome, String>;
}

/// 64-bit FNV-1a: stable across builds and Rust versions (unlike `DefaultHasher`).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The snapshot key of `config`: changes whenever anything the guest is booted from does.
pub fn snapshot_key(config: &Config) -> Result<String, SnapshotStoreError> {
    let h = &config.hypervisor;
    let mut text = format!("{KEY_VERSION}\n");
    for (what, path) in [
        ("VMM binary", &h.path),
        ("kernel", &h.kernel),
        ("initrd", &h.initrd),
    ] {
        let m = std::fs::metadata(path).map_err(|source| SnapshotStoreError::Input {
            what,
            path: path.clone(),
            source,
        })?;
        text.push_str(&format!(
            "{what} {} {} {} {} {}\n",
            path.display(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        ));
    }
    text.push_str(&format!(
        "memory {}\nvcpus {}\nparams {}\ndevices vsock:{VSOCK_CID} fs:{SHARED_FS_TAG} net\n",
        h.memory_mib, h.vcpus, h.kernel_params
    ));
    Ok(format!("{:016x}", fnv1a(text.as_bytes())))
}

fn valid_key(key: &str) -> bool {
    key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A snapshot on disk, for `vessel snapshot list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub key: String,
    pub path: PathBuf,
    /// Blocks actually allocated (memory.bin is sparse).
    pub disk_bytes: u64,
    /// A few fields of vm.json, or why it could not be read.
    pub summary: String,
}

/// The snapshot directory of one configuration.
pub struct SnapshotStore {
    dir: PathBuf,
    tool: Arc<dyn SnapshotTool>,
}

impl SnapshotStore {
    pub fn new(dir: impl Into<PathBuf>, tool: Arc<dyn SnapshotTool>) -> Self {
        Self {
            dir: dir.into(),
            tool,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_for(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    fn lock(&self, key: &str, deadline: Instant) -> Result<Flock<File>, SnapshotStoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join(format!(".{key}.lock"));
        let mut file = File::create(&path).map_err(io_err(&path))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((_, e)) => {
                    return Err(SnapshotStoreError::Lock {
                        path,
                        reason: if e == nix::errno::Errno::EWOULDBLOCK {
                            "another process is still creating it".to_string()
                        } else {
                            e.to_string()
                        },
                    })
                }
            }
        }
    }

    /// The usable snapshot for `config`, made now if there is none; one the VMM rejects is
    /// removed and made again. Blocks while another process makes it (until `deadline`).
    pub fn ensure(
        &self,
        config: &Config,
        deadline: Instant,
    ) -> Result<PathBuf, SnapshotStoreError> {
        let key = snapshot_key(config)?;
        let _lock = self.lock(&key, deadline)?;
        let path = self.path_for(&key);
        if path.join(MANIFEST).exists() {
            match self.tool.check(config, &path) {
                Ok(CheckOutcome::Usable) => return Ok(path),
                Ok(CheckOutcome::Rejected(why)) => {
                    log::warn!(
                        "snapshot {}: rejected by the VMM ({why}); removing and recreating it",
                        path.display()
                    );
                    self.remove_path(&path)?;
                }
                Err(reason) => return Err(SnapshotStoreError::Check { path, reason }),
            }
        } else if path.exists() {
            log::warn!("snapshot {}: incomplete; removing it", path.display());
            self.remove_path(&path)?;
        }
        self.create_locked(config, &key, deadline)
    }

    /// Makes the snapshot for `config` (replacing an existing one if `force`).
    pub fn create(
        &self,
        config: &Config,
        deadline: Instant,
        force: bool,
    ) -> Result<PathBuf, SnapshotStoreError> {
        let key = snapshot_key(config)?;
        let _lock = self.lock(&key, deadline)?;
        let path = self.path_for(&key);
        if path.exists() {
            if !force {
                return Ok(path);
            }
            self.remove_path(&path)?;
        }
        self.create_locked(config, &key, deadline)
    }

    fn create_locked(
        &self,
        config: &Config,
        key: &str,
        deadline: Instant,
    ) -> Result<PathBuf, SnapshotStoreError> {
        let work = self.dir.join(format!(".tmp-{key}-{}", std::process::id()));
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(io_err(&work))?;
        }
        std::fs::create_dir_all(&work).map_err(io_err(&work))?;
        let target = work.join("snapshot");
        let started = Instant::now();
        log::info!("snapshot {key}: booting a VM to snapshot (one cold boot)");
        let made = self.tool.create(config, &work, &target, deadline);
        let result = match made {
            Ok(()) if target.join(MANIFEST).is_file() => {
                let path = self.path_for(key);
                std::fs::rename(&target, &path)
                    .map(|()| path)
                    .map_err(io_err(&target))
            }
            Ok(()) => Err(SnapshotStoreError::Create {
                key: key.to_string(),
                reason: format!("the VMM wrote no {}", target.join(MANIFEST).display()),
            }),
            Err(reason) => Err(SnapshotStoreError::Create {
                key: key.to_string(),
                reason,
            }),
        };
        if let Err(e) = std::fs::remove_dir_all(&work) {
            log::warn!("snapshot {key}: removing {}: {e}", work.display());
        }
        if let Ok(path) = &result {
            log::info!(
                "snapshot {key}: made in {:.1} s at {}",
                started.elapsed().as_secs_f64(),
                path.display()
            );
        }
        result
    }

    /// Removes a snapshot directory: renamed away first (so nobody restores a half-deleted
    /// one), then deleted. VMs restored from it keep their mapping of the unlinked file.
    fn remove_path(&self, path: &Path) -> Result<(), SnapshotStoreError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let trash = self.dir.join(format!(
            ".trash-{}-{}-{nanos}",
            name.unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(path, &trash).map_err(io_err(path))?;
        std::fs::remove_dir_all(&trash).map_err(io_err(&trash))
    }

    /// Removes the snapshot with `key`; false if there was none.
    pub fn remove(&self, key: &str) -> Result<bool, SnapshotStoreError> {
        if !valid_key(key) {
            return Err(SnapshotStoreError::BadKey(key.to_string()));
        }
        let path = self.path_for(key);
        if !path.exists() {
            return Ok(false);
        }
        let _lock = self.lock(key, Instant::now() + Duration::from_secs(10))?;
        self.remove_path(&path)?;
        Ok(true)
    }

    /// The snapshots in the store (work and trash directories are not listed).
    pub fn list(&self) -> Result<Vec<SnapshotEntry>, SnapshotStoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let key = entry.file_name().to_string_lossy().into_owned();
            if !valid_key(&key) {
                continue;
            }
            let path = entry.path();
            let disk_bytes = std::fs::read_dir(&path)
                .map(|files| {
                    files
                        .flatten()
                        .filter_map(|f| f.metadata().ok())
                        .map(|m| m.blocks() * 512)
                        .sum()
                })
                .unwrap_or(0);
            out.push(SnapshotEntry {
                summary: manifest_summary(&path.join(MANIFEST)),
                key,
                path,
                disk_bytes,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// "128 MiB, 1 vCPU, kernel /path, made <unix time>" from vm.json (read leniently: it is
/// the VMM's format, only shown here).
fn manifest_summary(path: &Path) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|f| f.take(16 << 20).read_to_string(&mut text));
    if let Err(e) = read {
        return format!("no manifest ({e})");
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return "damaged manifest".to_string();
    };
    let boot = &v["boot"];
    format!(
        "{} MiB, {} vCPU, kernel {}, vessel-vmm {}, created {} (unix ms)",
        boot["mem_mib"],
        boot["vcpus"],
        boot["kernel"]["path"].as_str().unwrap_or("?"),
        v["vmm_version"].as_str().unwrap_or("?"),
        v["created_unix_ms"]
    )
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
