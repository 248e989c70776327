//! virtio-mmio transport, version 2 ("modern"), over the [`VirtioDevice`] contract.
//!
//! Everything the guest writes is validated: queue sizes and ring addresses are checked when
//! the driver sets QueueReady (and again by `activate` on DRIVER_OK); invalid values leave
//! the queue not ready. Nothing a guest writes can panic the VMM.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::device::{GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_CONFIG};
use crate::devices::bus::BusDevice;
use crate::log_limit::LogLimiter;

pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
pub const MMIO_VERSION: u32 = 2;
/// "QEMU" — what Linux and most VMMs use; the driver does not care.
pub const VENDOR_ID: u32 = 0x554d_4551;

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
pub const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
pub const REG_QUEUE_USED_LOW: u64 = 0x0a0;
pub const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 0x01;
pub const STATUS_DRIVER: u32 = 0x02;
pub const STATUS_DRIVER_OK: u32 = 0x04;
pub const STATUS_FEATURES_OK: u32 = 0x08;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

static GUEST_ERRORS: LogLimiter = LogLimiter::new(10, Duration::from_secs(10));

macro_rules! guest_warn {
    ($($arg:tt)+) => { crate::log_limited!(GUEST_ERRORS, log::Level::Warn, $($arg)+) };
}

/// Ring addresses as the driver wrote them; applied to the queue on QueueReady.
#[derive(Debug, Default, Clone, Copy)]
struct QueueConfig {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

fn set_low(v: u64, low: u32) -> u64 {
    (v & !0xffff_ffff) | u64::from(low)
}

fn set_high(v: u64, high: u32) -> u64 {
    (v & 0xffff_ffff) | (u64::from(high) << 32)
}

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    queue_configs: Vec<QueueConfig>,
}

impl MmioTransport {
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, mem: GuestMemory) -> Self {
        let queues = lock(&device).queues().len();
        Self {
            device,
            mem,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            queue_configs: vec![QueueConfig::default(); queues],
        }
    }

    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// Queue registers may only be written between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.has(STATUS_FEATURES_OK) && self.status & (STATUS_DRIVER_OK | STATUS_FAILED) == 0
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let dev = lock(&self.device);
        match offset {
            REG_MAGIC => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => dev.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => dev.avail_features() as u32,
                1 => (dev.avail_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => dev
                .queues()
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => dev
                .queues()
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => dev.interrupt_trigger().irq_status.load(Ordering::SeqCst),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            REG_QUEUE_NUM | REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH | REG_QUEUE_AVAIL_LOW
            | REG_QUEUE_AVAIL_HIGH | REG_QUEUE_USED_LOW | REG_QUEUE_USED_HIGH => {
                let Some(qc) = self.queue_configs.get(self.queue_sel as usize) else {
                    return 0;
                };
                match offset {
                    REG_QUEUE_NUM => u32::from(qc.size),
                    REG_QUEUE_DESC_LOW => qc.desc as u32,
                    REG_QUEUE_DESC_HIGH => (qc.desc >> 32) as u32,
                    REG_QUEUE_AVAIL_LOW => qc.avail as u32,
                    REG_QUEUE_AVAIL_HIGH => (qc.avail >> 32) as u32,
                    REG_QUEUE_USED_LOW => qc.used as u32,
                    _ => (qc.used >> 32) as u32,
                }
            }
            _ => {
                guest_warn!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM | REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH | REG_QUEUE_AVAIL_LOW
            | REG_QUEUE_AVAIL_HIGH | REG_QUEUE_USED_LOW | REG_QUEUE_USED_HIGH => {
                self.write_queue_config(offset, value)
            }
            REG_QUEUE_READY => self.write_queue_ready(value),
            REG_QUEUE_NOTIFY => self.notify_queue(value),
            REG_INTERRUPT_ACK => {
                lock(&self.device)
                    .interrupt_trigger()
                    .irq_status
                    .fetch_and(!value, Ordering::SeqCst);
            }
            REG_STATUS => self.write_status(value),
            _ => guest_warn!(
                "virtio-mmio: write of {value:#x} to unknown/read-only register {offset:#x}"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if !self.has(STATUS_DRIVER) || self.status & (STATUS_FEATURES_OK | STATUS_FAILED) != 0 {
            guest_warn!(
                "virtio-mmio: driver features written in status {:#x}",
                self.status
            );
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => {
                guest_warn!("virtio-mmio: driver features select {sel} out of range");
                return;
            }
        };
        let mut dev = lock(&self.device);
        let page_mask = 0xffff_ffffu64 << shift;
        let acked = (dev.acked_features() & !page_mask)
            | ((u64::from(value) << shift) & dev.avail_features());
        dev.set_acked_features(acked);
    }

    fn write_queue_config(&mut self, offset: u64, value: u32) {
        if !self.queue_config_allowed() {
            guest_warn!(
                "virtio-mmio: queue register {offset:#x} written in status {:#x}",
                self.status
            );
            return;
        }
        let sel = self.queue_sel as usize;
        if lock(&self.device)
            .queues()
            .get(sel)
            .is_some_and(|q| q.ready())
        {
            guest_warn!("virtio-mmio: queue {sel} reconfigured while ready");
            return;
        }
        let Some(qc) = self.queue_configs.get_mut(sel) else {
            guest_warn!("virtio-mmio: queue select {sel} out of range");
            return;
        };
        match offset {
            REG_QUEUE_NUM => qc.size = u16::try_from(value).unwrap_or(0),
            REG_QUEUE_DESC_LOW => qc.desc = set_low(qc.desc, value),
            REG_QUEUE_DESC_HIGH => qc.desc = set_high(qc.desc, value),
            REG_QUEUE_AVAIL_LOW => qc.avail = set_low(qc.avail, value),
            REG_QUEUE_AVAIL_HIGH => qc.avail = set_high(qc.avail, value),
            REG_QUEUE_USED_LOW => qc.used = set_low(qc.used, value),
            _ => qc.used = set_high(qc.used, value),
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        if !self.queue_config_allowed() {
            guest_warn!(
                "virtio-mmio: QueueReady written in status {:#x}",
                self.status
            );
            return;
        }
        let sel = self.queue_sel as usize;
        let Some(qc) = self.queue_configs.get(sel).copied() else {
            guest_warn!("virtio-mmio: queue select {sel} out of range");
            return;
        };
        let mut dev = lock(&self.device);
        let Some(queue) = dev.queues_mut().get_mut(sel) else {
            return;
        };
        if value == 0 {
            queue.set_ready(false);
            return;
        }
        match configure_queue(queue, &qc, &self.mem) {
            Ok(()) => queue.set_ready(true),
            Err(why) => {
                queue.set_ready(false);
                guest_warn!("virtio-mmio: queue {sel} not made ready: {why}");
            }
        }
    }

    fn notify_queue(&self, value: u32) {
        // Normally caught by the KVM ioeventfd (datamatch = queue index) and never seen here.
        let dev = lock(&self.device);
        match dev.queue_events().get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    guest_warn!("virtio-mmio: queue {value} notify: {e}");
                }
            }
            None => guest_warn!("virtio-mmio: notify for queue {value} out of range"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            guest_warn!("virtio-mmio: status {value:#x} clears bits of {old:#x} without reset");
            return;
        }
        let added = value & !old;
        // The driver sets one step at a time (FAILED may come at any point).
        let next_step = [
            STATUS_ACKNOWLEDGE,
            STATUS_DRIVER,
            STATUS_FEATURES_OK,
            STATUS_DRIVER_OK,
        ]
        .into_iter()
        .find(|bit| old & bit == 0)
        .unwrap_or(0);
        let step = added & !STATUS_FAILED;
        if step != 0 && step != next_step {
            guest_warn!("virtio-mmio: status transition {old:#x} -> {value:#x} out of order");
            return;
        }
        let mut new_status = value;
        if added & STATUS_FEATURES_OK != 0 {
            let acked = lock(&self.device).acked_features();
            if acked & VIRTIO_F_VERSION_1 == 0 {
                // Legacy drivers are not supported: refuse FEATURES_OK (the driver reads it back).
                guest_warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1");
                new_status &= !STATUS_FEATURES_OK;
            }
        }
        self.status = new_status;
        if added & STATUS_DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut dev = lock(&self.device);
        if dev.is_activated() {
            return;
        }
        let result = match dev
            .queues()
            .iter()
            .position(|q| !q.ready() || !q.is_valid(&self.mem))
        {
            Some(i) => Err(super::device::ActivateError::InvalidQueue(i)),
            None => dev.activate(self.mem.clone()),
        };
        if let Err(e) = result {
            log::error!(
                "virtio-mmio: activating device type {}: {e}",
                dev.device_type()
            );
            self.status |= STATUS_NEEDS_RESET;
            if let Err(e) = dev.interrupt_trigger().trigger(VIRTIO_MMIO_INT_CONFIG) {
                log::error!("virtio-mmio: raising config interrupt: {e}");
            }
        }
    }

    fn reset(&mut self) {
        let mut dev = lock(&self.device);
        if dev.is_activated() && !dev.reset() {
            guest_warn!(
                "virtio-mmio: device type {} cannot be reset",
                dev.device_type()
            );
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        for queue in dev.queues_mut() {
            queue.reset();
        }
        dev.interrupt_trigger()
            .irq_status
            .store(0, Ordering::SeqCst);
        if !dev.is_activated() {
            dev.set_acked_features(0);
        }
        drop(dev);
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.queue_configs.fill(QueueConfig::default());
    }
}

/// Locks even if a thread panicked holding the lock: device state stays usable (a guest must
/// not be able to wedge the VMM through one panic).
pub(crate) use vessel_protocol::sync::lock;

/// Applies the driver's size and ring addresses to `queue`, checking them.
fn configure_queue(queue: &mut Queue, qc: &QueueConfig, mem: &GuestMemory) -> Result<(), String> {
    if qc.size == 0 || !qc.size.is_power_of_two() || qc.size > queue.max_size() {
        return Err(format!(
            "size {} (max {}, power of two)",
            qc.size,
            queue.max_size()
        ));
    }
    queue
        .try_set_size(qc.size)
        .map_err(|e| format!("size: {e}"))?;
    queue
        .try_set_desc_table_address(GuestAddress(qc.desc))
        .map_err(|e| format!("descriptor table {:#x}: {e}", qc.desc))?;
    queue
        .try_set_avail_ring_address(GuestAddress(qc.avail))
        .map_err(|e| format!("available ring {:#x}: {e}", qc.avail))?;
    queue
        .try_set_used_ring_address(GuestAddress(qc.used))
        .map_err(|e| format!("used ring {:#x}: {e}", qc.used))?;
    // Checks the rings lie inside guest memory (needs `ready` set to say anything).
    queue.set_ready(true);
    let valid = queue.is_valid(mem);
    queue.set_ready(false);
    if !valid {
        return Err(format!(
            "rings outside guest memory (desc {:#x}, avail {:#x}, used {:#x})",
            qc.desc, qc.avail, qc.used
        ));
    }
    Ok(())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            data.fill(0);
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            guest_warn!("virtio-mmio: {}-byte read at {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            // The driver wrote config: bump the generation so a concurrent reader retries.
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!("virtio-mmio: {}-byte write at {offset:#x}", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            guest_warn!("virtio-mmio: unaligned write at {offset:#x}");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[path = "mmio_state.rs"]
mod state;
pub use state::{device_identity, QueueSnapshot, RingConfigSnapshot, VirtioSnapshot};

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
