//! The plain types and helpers the virtio-mmio transport, [`super::device_core`] and every
//! device share: guest memory, feature and interrupt bits, activation errors, the interrupt
//! trigger, config-space reads and queue checks (re-exported by [`super::device`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: the device speaks virtio 1.x (every device here offers it; the
/// transport refuses a driver that does not accept it).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// `InterruptStatus` bit: a used buffer was added to a queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// `InterruptStatus` bit: the device configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not valid (size, addresses or ready bit)")]
    InvalidQueue(usize),
    #[error("device needs {needed} queues, driver set up {got}")]
    QueueCount { needed: usize, got: usize },
    #[error("activating device: {0}")]
    Backend(String),
}

/// Sets interrupt status bits and signals the device's IRQ line (a KVM irqfd).
#[derive(Debug, Clone)]
pub struct IrqTrigger {
    /// Shared with the transport, which reads it on `InterruptStatus` and clears it on
    /// `InterruptACK`.
    pub irq_status: Arc<AtomicU32>,
    pub irq_evt: Arc<EventFd>,
}

impl IrqTrigger {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            irq_status: Arc::new(AtomicU32::new(0)),
            irq_evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// Raises `status_bit` (one of `VIRTIO_MMIO_INT_*`) and injects the interrupt.
    pub fn trigger(&self, status_bit: u32) -> std::io::Result<()> {
        self.irq_status.fetch_or(status_bit, Ordering::SeqCst);
        self.irq_evt.write(1)
    }
}

/// Copies `config[offset..offset + data.len()]` into `data` for a device's
/// [`VirtioDevice::read_config`]; an out-of-range read (offset and length come from the
/// guest) leaves `data` untouched.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = start
        .checked_add(data.len())
        .and_then(|end| config.get(start..end))
    {
        data.copy_from_slice(src);
    }
}

/// The checks every [`VirtioDevice::activate`] starts with: the driver set up exactly
/// `needed` queues and each is valid in `mem`.
pub fn check_queues(
    queues: &[Queue],
    needed: usize,
    mem: &GuestMemory,
) -> Result<(), ActivateError> {
    if queues.len() != needed {
        return Err(ActivateError::QueueCount {
            needed,
            got: queues.len(),
        });
    }
    match queues.iter().position(|q| !q.is_valid(mem)) {
        Some(i) => Err(ActivateError::InvalidQueue(i)),
        None => Ok(()),
    }
}
