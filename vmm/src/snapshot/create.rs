//! Taking a snapshot of a running VM: wait until no device holds host-side state we cannot
//! save (open vsock connections), stop the vCPUs and the event loop, save everything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::cpu::{msr_index_list, save_vcpu};
use super::format::{
    BootRecord, FileIdentity, Manifest, MemoryRecord, SlotRecord, FORMAT_VERSION, MANIFEST_FILE,
    MEMORY_FILE, VMM_VERSION,
};
use super::memory::save_memory;
use super::vm_state::save_vm;
use super::SnapshotError;
use crate::kvm::vm::ioctl_err;
use crate::vmm::RunningVm;

#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// How long to wait for devices to become snapshottable (e.g. the guest to finish
    /// closing a vsock connection).
    pub quiesce_timeout: Duration,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            quiesce_timeout: Duration::from_secs(30),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub dir: PathBuf,
    pub mem_bytes: u64,
    /// Non-zero guest memory written (the memory file's real disk use).
    pub memory_data_bytes: u64,
    /// MSRs KVM listed but would not read (left out of the snapshot).
    pub skipped_msrs: Vec<u32>,
    /// From pausing the vCPUs to the manifest being on disk.
    pub save_time: Duration,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `text` to `dir/name` atomically (temp file, fsync, rename, fsync of the dir).
fn write_atomic(dir: &Path, name: &str, text: &[u8]) -> Result<(), SnapshotError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = std::fs::File::create(&tmp).map_err(write_err(&tmp))?;
    f.write_all(text).map_err(write_err(&tmp))?;
    f.sync_all().map_err(write_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(write_err(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err(dir))
}

fn prepare_dir(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    for name in [MANIFEST_FILE, MEMORY_FILE] {
        if std::fs::symlink_metadata(dir.join(name)).is_ok() {
            return Err(SnapshotError::Exists {
                path: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

impl RunningVm {
    /// Reasons devices give for not being snapshottable now (empty: ready).
    fn snapshot_blockers(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter_map(|d| {
                d.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .snapshot_blocker()
            })
            .collect()
    }

    /// Waits until every device can be snapshotted, or the VM stops, or `timeout`.
    fn wait_quiescent(&self, timeout: Duration) -> Result<(), SnapshotError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reason) = self.exit.reason() {
                return Err(SnapshotError::VmStopped(reason));
            }
            let blockers = self.snapshot_blockers();
            if blockers.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SnapshotError::NotQuiescent(blockers.join("; ")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the VM for good and writes a snapshot of it into `dir` (created if needed; it
    /// must not already hold one). The VM is torn down afterwards, whether this succeeds or
    /// not. Call it from a thread without the VMM's seccomp filter (it opens files).
    pub fn snapshot(
        mut self,
        dir: &Path,
        options: &SnapshotOptions,
    ) -> Result<SnapshotSummary, SnapshotError> {
        prepare_dir(dir)?;
        self.wait_quiescent(options.quiesce_timeout)?;
        let started = Instant::now();
        let vcpu_fds = self.stop_vcpus();
        self.stop_event_loop();
        if let Some(reason) = self.exit.reason() {
            return Err(SnapshotError::VmStopped(reason));
        }
        if vcpu_fds.len() != usize::from(self.config.vcpus) {
            return Err(SnapshotError::VcpusStuck {
                stopped: vcpu_fds.len(),
                vcpus: self.config.vcpus,
            });
        }
        // A host client may have connected between the check and the pause.
        let blockers = self.snapshot_blockers();
        if !blockers.is_empty() {
            return Err(SnapshotError::NotQuiescent(blockers.join("; ")));
        }
        let Some(vm) = self.vm.as_ref() else {
            return Err(SnapshotError::Inconsistent("VM already torn down".into()));
        };

        let msr_indices = msr_index_list(&vm.kvm)
            .map_err(ioctl_err("KVM_GET_MSR_INDEX_LIST"))
            .map_err(SnapshotError::Kvm)?;
        let mut vcpus = Vec::with_capacity(vcpu_fds.len());
        let mut skipped_msrs = Vec::new();
        for (index, fd) in (0u8..).zip(&vcpu_fds) {
            let (state, refused) = save_vcpu(fd, index, &msr_indices)?;
            for msr in refused {
                if !skipped_msrs.contains(&msr) {
                    skipped_msrs.push(msr);
                }
            }
            vcpus.push(state);
        }
        if !skipped_msrs.is_empty() {
            log::info!(
                "snapshot: MSRs KVM lists but would not read (not saved): {skipped_msrs:x?}"
            );
        }
        let vm_state = save_vm(&vm.fd)?;
        let serial = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .save_state();
        let virtio = self
            .transports
            .iter()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()).save_state())
            .collect();

        let mem_bytes = self.config.mem_bytes();
        let (regions, stats) = save_memory(&vm.mem, mem_bytes, &dir.join(MEMORY_FILE))?;
        let identity = |path: &Path| {
            FileIdentity::of(path).map_err(|source| SnapshotError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            vmm_version: VMM_VERSION.to_string(),
            created_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            boot: BootRecord {
                kernel: identity(&self.config.kernel)?,
                initrd: self.config.initrd.as_deref().map(identity).transpose()?,
                cmdline_extra: self.config.cmdline_extra.clone(),
                cmdline: self.info.cmdline.clone(),
                mem_mib: self.config.mem_mib,
                vcpus: self.config.vcpus,
                boot_entry: self.info.boot_entry.to_string(),
                host_kind: self.info.host.to_string(),
                removed_cpu_features: self
                    .info
                    .removed_cpu_features
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                vsock_cid: self.config.vsock.as_ref().map(|v| v.guest_cid),
            },
            memory: MemoryRecord {
                file: MEMORY_FILE.to_string(),
                size: mem_bytes,
                regions,
                data_bytes: stats.data_bytes,
            },
            vm: vm_state,
            vcpus,
            serial,
            virtio_slots: self
                .info
                .virtio_slots
                .iter()
                .map(|s| SlotRecord {
                    base: s.base,
                    size: s.size,
                    irq: s.irq,
                })
                .collect(),
            virtio,
        };
        let text = serde_json::to_vec(&manifest).map_err(|e| SnapshotError::Write {
            path: dir.join(MANIFEST_FILE),
            source: std::io::Error::other(e),
        })?;
        write_atomic(dir, MANIFEST_FILE, &text)?;
        let summary = SnapshotSummary {
            dir: dir.to_path_buf(),
            mem_bytes,
            memory_data_bytes: stats.data_bytes,
            skipped_msrs,
            save_time: started.elapsed(),
        };
        log::info!(
            "snapshot written to {} in {:?}: {} MiB RAM, {:.1} MiB of it non-zero",
            dir.display(),
            summary.save_time,
            mem_bytes >> 20,
            stats.data_bytes as f64 / (1 << 20) as f64
        );
        drop(vcpu_fds);
        self.exit.request(crate::ExitReason::Stopped);
        self.teardown();
        Ok(summary)
    }
}
