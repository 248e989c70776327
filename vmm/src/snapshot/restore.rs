//! Restoring a snapshot into a new VM: RAM mapped copy-on-write from `memory.bin`, VM-wide
//! state, vCPUs, then the devices (recreated with this VM's host paths, their saved state put
//! back), then the same threads a booted VM runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::cpu::restore_vcpu;
use super::format::{Manifest, RestoreExpectations};
use super::memory::{check_memory_file, map_memory_file};
use super::vm_state::restore_vm;
use super::SnapshotError;
use crate::arch::regs::BootEntry;
use crate::config::{VmConfig, VsockConfig};
use crate::cpu_policy::{HostKindChoice, HostProfile, SysfsProbe};
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::mmio::device_identity;
use crate::error::VmmError;
use crate::kvm::vm::{ioctl_err, KvmVm};
use crate::vmm::{
    configured_devices, console_output, launch, legacy_bus, new_exit_signal, serial_irq,
    virtio_bus, Launch, RunningVm, Vm, VmInfo,
};

/// What to restore, and the host side of the new VM.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub snapshot_dir: PathBuf,
    /// This VM's host side: console, seccomp, host kind, RIP profile, the vsock socket path
    /// and shared directories. Everything the guest sees (kernel, memory, vCPUs, command
    /// line, vsock CID) comes from the snapshot; `host`'s values for those are ignored.
    pub host: VmConfig,
    /// What the snapshot must be (checked before anything is created).
    pub expect: RestoreExpectations,
}

fn mismatch(what: &'static str, snapshot: impl ToString, requested: impl ToString) -> VmmError {
    SnapshotError::Mismatch {
        what,
        snapshot: snapshot.to_string(),
        requested: requested.to_string(),
    }
    .into()
}

/// The VM config the snapshot was booted with, with `host`'s host-side settings.
fn restored_config(m: &Manifest, host: &VmConfig) -> Result<VmConfig, VmmError> {
    let b = &m.boot;
    let mut config = host.clone();
    config.kernel = b.kernel.path.clone();
    config.initrd = b.initrd.as_ref().map(|f| f.path.clone());
    config.cmdline_extra = b.cmdline_extra.clone();
    config.mem_mib = b.mem_mib;
    config.vcpus = b.vcpus;
    config.boot_entry =
        Some(b.boot_entry.parse::<BootEntry>().map_err(|e| {
            VmmError::from(SnapshotError::Inconsistent(format!("boot entry: {e}")))
        })?);
    config.vsock = match (b.vsock_cid, &host.vsock) {
        (None, None) => None,
        (Some(guest_cid), Some(v)) => Some(VsockConfig {
            guest_cid,
            uds_path: v.uds_path.clone(),
        }),
        (Some(cid), None) => {
            return Err(mismatch(
                "vsock device",
                format!("one (guest CID {cid})"),
                "none (give it a host socket)",
            ))
        }
        (None, Some(v)) => return Err(mismatch("vsock device", "none", v.uds_path.display())),
    };
    Ok(config)
}

/// Everything about the snapshot in `dir` that can be checked without creating a VM: the
/// manifest, `expect`, the host kind, the memory file. What `vessel-vmm snapshot-check` runs.
pub fn verify(
    dir: &Path,
    expect: &RestoreExpectations,
    host_kind: HostKindChoice,
) -> Result<(Manifest, HostProfile), SnapshotError> {
    let m = Manifest::load(dir)?;
    m.check(expect)?;
    let profile = HostProfile::detect(host_kind, &SysfsProbe);
    if profile.kind.to_string() != m.boot.host_kind {
        return Err(SnapshotError::HostKind {
            found: m.boot.host_kind.clone(),
            expected: profile.kind.to_string(),
        });
    }
    check_memory_file(&m.memory_path(dir), m.memory.size, &m.memory.regions)?;
    Ok((m, profile))
}

impl Vm {
    /// Restores the snapshot in `cfg.snapshot_dir` and runs it.
    pub fn restore(cfg: RestoreConfig) -> Result<RunningVm, VmmError> {
        let started = Instant::now();
        let (m, profile) = verify(&cfg.snapshot_dir, &cfg.expect, cfg.host.host_kind)?;
        let config = restored_config(&m, &cfg.host)?;

        let mem = map_memory_file(
            &m.memory_path(&cfg.snapshot_dir),
            m.memory.size,
            &m.memory.regions,
        )
        .map_err(SnapshotError::from)?;
        let vm = KvmVm::with_memory(mem)?;
        restore_vm(&vm.fd, &m.vm).map_err(SnapshotError::from)?;
        let mut vcpu_fds = Vec::with_capacity(m.vcpus.len());
        for state in &m.vcpus {
            let fd = vm
                .fd
                .create_vcpu(u64::from(state.index))
                .map_err(ioctl_err("KVM_CREATE_VCPU"))?;
            restore_vcpu(&fd, state).map_err(SnapshotError::from)?;
            vcpu_fds.push(fd);
        }

        // Devices after the vCPUs: interrupts they raise again must find the LAPICs.
        let exit = new_exit_signal()?;
        let serial = SerialDevice::restore(
            serial_irq(&vm)?,
            console_output(&config.console, config.console_max_bytes)?,
            &m.serial,
        )
        .map_err(SnapshotError::Serial)?;
        let (io_bus, serial) = legacy_bus(serial, &exit)?;
        let devices = configured_devices(&config)?;
        if devices.len() != m.virtio.len() {
            let types = |v: Vec<u32>| format!("{} device(s) {v:?}", v.len());
            return Err(mismatch(
                "virtio devices",
                types(m.virtio.iter().map(|d| d.device_type).collect()),
                types(
                    devices
                        .iter()
                        .map(|d| {
                            d.device
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .device_type()
                        })
                        .collect(),
                ),
            ));
        }
        for (index, (handle, saved)) in devices.iter().zip(&m.virtio).enumerate() {
            let dev = handle.device.lock().unwrap_or_else(|e| e.into_inner());
            let (device_type, config_space) = device_identity(&*dev);
            if device_type != saved.device_type {
                return Err(mismatch(
                    "virtio device type",
                    saved.device_type,
                    device_type,
                ));
            }
            if config_space != saved.config_space {
                return Err(SnapshotError::Mismatch {
                    what: "virtio device configuration (vsock CID or fs tag)",
                    snapshot: format!("device {index} as saved"),
                    requested: format!("device {index} as configured now"),
                }
                .into());
            }
        }
        let virtio = virtio_bus(&vm, devices)?;
        let slots_now: Vec<(u64, u64, u32)> = virtio
            .slots
            .iter()
            .map(|s| (s.base, s.size, s.irq))
            .collect();
        let slots_saved: Vec<(u64, u64, u32)> = m
            .virtio_slots
            .iter()
            .map(|s| (s.base, s.size, s.irq))
            .collect();
        if slots_now != slots_saved {
            return Err(mismatch(
                "virtio-mmio slots",
                format!("{slots_saved:x?}"),
                format!("{slots_now:x?}"),
            ));
        }
        for (index, (transport, saved)) in virtio.transports.iter().zip(&m.virtio).enumerate() {
            let mut t = transport.lock().unwrap_or_else(|e| e.into_inner());
            let pending = t
                .restore_state(saved)
                .map_err(|message| SnapshotError::Device {
                    index,
                    device_type: saved.device_type,
                    message,
                })?;
            if pending {
                // Raised before the snapshot and maybe not yet taken by the guest: raise it
                // again (a spurious virtio interrupt is harmless).
                let dev = t.device().lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = dev.interrupt_trigger().irq_evt.write(1) {
                    log::warn!("restore: re-raising the interrupt of virtio device {index}: {e}");
                }
            }
        }

        let info = VmInfo {
            host: profile.kind,
            removed_cpu_features: profile.removed_names(),
            boot_entry: config.boot_entry.unwrap_or(BootEntry::Linux64),
            cmdline: m.boot.cmdline.clone(),
            virtio_slots: virtio.slots.clone(),
        };
        log::info!(
            "restored {} ({} MiB, {} vCPU(s), {} virtio device(s)) in {:?}",
            cfg.snapshot_dir.display(),
            config.mem_mib,
            config.vcpus,
            m.virtio.len(),
            started.elapsed()
        );
        launch(Launch {
            config,
            vm,
            exit,
            io_bus,
            serial,
            virtio,
            vcpu_fds,
            info,
            vmm_emulation: profile.vmm_emulation,
        })
    }
}
