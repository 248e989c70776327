//! Snapshot state of a virtio-mmio transport and the generic virtio state of its device
//! (features, queues, interrupt status), plus the device's own extra state.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{
    lock, MmioTransport, QueueConfig, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use crate::devices::virtio::device::{GuestMemory, VirtioDevice};

/// Bytes of configuration space a snapshot records: what the guest read at boot (vsock CID,
/// virtio-fs tag) must be what the restored device shows.
pub const CONFIG_SPACE_SNAPSHOT_LEN: u64 = 256;

const KNOWN_STATUS: u32 = STATUS_ACKNOWLEDGE
    | STATUS_DRIVER
    | STATUS_DRIVER_OK
    | STATUS_FEATURES_OK
    | STATUS_NEEDS_RESET
    | STATUS_FAILED;

/// One virtqueue as the device uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

/// Ring registers as the driver wrote them (applied on QueueReady).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingConfigSnapshot {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtioSnapshot {
    pub device_type: u32,
    #[serde(with = "crate::snapshot::raw::hex_bytes")]
    pub config_space: Vec<u8>,
    pub acked_features: u64,
    pub activated: bool,
    pub irq_status: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub ring_configs: Vec<RingConfigSnapshot>,
    pub queues: Vec<QueueSnapshot>,
    /// [`VirtioDevice::save_state`].
    #[serde(default)]
    pub device: Option<crate::devices::virtio::device::DeviceState>,
}

/// The device's type and configuration space: what identifies it to the guest.
pub fn device_identity(dev: &dyn VirtioDevice) -> (u32, Vec<u8>) {
    let mut config = Vec::with_capacity(CONFIG_SPACE_SNAPSHOT_LEN as usize);
    for offset in 0..CONFIG_SPACE_SNAPSHOT_LEN {
        // Byte by byte: devices answer only reads that fit their config struct.
        let mut b = [0u8];
        dev.read_config(offset, &mut b);
        config.push(b[0]);
    }
    (dev.device_type(), config)
}

fn queue_snapshot(q: &Queue) -> QueueSnapshot {
    QueueSnapshot {
        max_size: q.max_size(),
        size: q.size(),
        ready: q.ready(),
        desc_table: q.desc_table(),
        avail_ring: q.avail_ring(),
        used_ring: q.used_ring(),
        next_avail: q.next_avail(),
        next_used: q.next_used(),
        event_idx: q.event_idx_enabled(),
    }
}

fn restore_queue(q: &mut Queue, s: &QueueSnapshot, mem: &GuestMemory) -> Result<(), String> {
    if q.max_size() != s.max_size {
        return Err(format!(
            "queue max size {} in the snapshot, {} on the device",
            s.max_size,
            q.max_size()
        ));
    }
    q.try_set_size(s.size)
        .map_err(|e| format!("queue size {}: {e}", s.size))?;
    q.try_set_desc_table_address(GuestAddress(s.desc_table))
        .map_err(|e| format!("descriptor table {:#x}: {e}", s.desc_table))?;
    q.try_set_avail_ring_address(GuestAddress(s.avail_ring))
        .map_err(|e| format!("available ring {:#x}: {e}", s.avail_ring))?;
    q.try_set_used_ring_address(GuestAddress(s.used_ring))
        .map_err(|e| format!("used ring {:#x}: {e}", s.used_ring))?;
    q.set_next_avail(s.next_avail);
    q.set_next_used(s.next_used);
    q.set_event_idx(s.event_idx);
    q.set_ready(s.ready);
    if s.ready && !q.is_valid(mem) {
        return Err("ready queue with rings outside guest memory".to_string());
    }
    Ok(())
}

impl MmioTransport {
    /// The transport's and its device's state (the device must not be processing queues).
    pub fn save_state(&self) -> VirtioSnapshot {
        let dev = lock(&self.device);
        let (device_type, config_space) = device_identity(&*dev);
        VirtioSnapshot {
            device_type,
            config_space,
            acked_features: dev.acked_features(),
            activated: dev.is_activated(),
            irq_status: dev.interrupt_trigger().irq_status.load(Ordering::SeqCst),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            ring_configs: self
                .queue_configs
                .iter()
                .map(|c| RingConfigSnapshot {
                    size: c.size,
                    desc: c.desc,
                    avail: c.avail,
                    used: c.used,
                })
                .collect(),
            queues: dev.queues().iter().map(queue_snapshot).collect(),
            device: dev.save_state(),
        }
    }

    /// Puts a freshly created transport and device back into `s` and re-activates the
    /// device if it was active. Returns whether an interrupt was pending (the caller raises
    /// it again once the vCPUs exist). Everything in `s` is checked: it comes from a file.
    pub fn restore_state(&mut self, s: &VirtioSnapshot) -> Result<bool, String> {
        let mem = self.mem.clone();
        let mut dev = lock(&self.device);
        let (device_type, config_space) = device_identity(&*dev);
        if device_type != s.device_type {
            return Err(format!(
                "device type {} in the snapshot, {} here",
                s.device_type, device_type
            ));
        }
        if config_space != s.config_space {
            return Err(
                "configuration space differs from the snapshot's (vsock CID or fs tag changed)"
                    .to_string(),
            );
        }
        let nqueues = dev.queues().len();
        if s.queues.len() != nqueues || s.ring_configs.len() != self.queue_configs.len() {
            return Err(format!(
                "{} queues in the snapshot, the device has {nqueues}",
                s.queues.len()
            ));
        }
        if s.status & !KNOWN_STATUS != 0 {
            return Err(format!("unknown status bits {:#x}", s.status));
        }
        if s.activated && s.status & STATUS_DRIVER_OK == 0 {
            return Err(format!("active device with status {:#x}", s.status));
        }
        dev.set_acked_features(s.acked_features);
        if s.acked_features & !dev.avail_features() != 0 || dev.acked_features() != s.acked_features
        {
            return Err(format!(
                "features {:#x} were acked, the device offers {:#x}",
                s.acked_features,
                dev.avail_features()
            ));
        }
        for (i, (q, qs)) in dev.queues_mut().iter_mut().zip(&s.queues).enumerate() {
            restore_queue(q, qs, &mem).map_err(|e| format!("queue {i}: {e}"))?;
        }
        dev.interrupt_trigger()
            .irq_status
            .store(s.irq_status, Ordering::SeqCst);
        if let Some(extra) = &s.device {
            dev.restore_state(extra)?;
        }
        if s.activated {
            dev.activate(mem)
                .map_err(|e| format!("re-activating: {e}"))?;
        }
        drop(dev);
        self.status = s.status;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        for (c, rs) in self.queue_configs.iter_mut().zip(&s.ring_configs) {
            *c = QueueConfig {
                size: rs.size,
                desc: rs.desc,
                avail: rs.avail,
                used: rs.used,
            };
        }
        Ok(s.irq_status != 0)
    }
}
