//! What every virtio device here has in common, once: offered and accepted features, the
//! queues and their notify eventfds, the interrupt line, the activation signal and the guest
//! memory once active. A device embeds a [`DeviceCore`] and hands it to [`VirtioDevice`]
//! (`core`/`core_mut`), which implements the transport's side of the contract from it.
//!
//! Activation happens on the vCPU thread that handles the driver's DRIVER_OK write, which
//! cannot reach the event loop: [`DeviceCore::activate`] checks the queues, keeps the memory and
//! writes `activate_evt`; the device's event subscriber registers its fds when that fires.

use std::io;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::device_base::{
    check_queues, ActivateError, GuestMemory, IrqTrigger, VIRTIO_MMIO_INT_VRING,
};

/// The state the virtio-mmio transport sees of a device.
pub struct DeviceCore {
    /// Feature bits offered (always with `VIRTIO_F_VERSION_1`).
    pub avail_features: u64,
    /// Feature bits the driver accepted (a subset of `avail_features`).
    pub acked_features: u64,
    pub queues: Vec<Queue>,
    /// One per queue: written (by KVM's ioeventfd) when the driver notifies it.
    pub queue_evts: Vec<EventFd>,
    pub irq: IrqTrigger,
    /// Written once per activation for the event loop (see the module docs).
    pub activate_evt: EventFd,
    /// Guest memory while the device is active.
    pub mem: Option<GuestMemory>,
}

impl DeviceCore {
    /// `num_queues` queues of at most `max_size` entries each, offering `avail_features`.
    pub fn new(num_queues: usize, max_size: u16, avail_features: u64) -> io::Result<DeviceCore> {
        let queues = (0..num_queues)
            .map(|_| Queue::new(max_size).map_err(|e| io::Error::other(e.to_string())))
            .collect::<io::Result<Vec<_>>>()?;
        let queue_evts = (0..num_queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(DeviceCore {
            avail_features,
            acked_features: 0,
            queues,
            queue_evts,
            irq: IrqTrigger::new()?,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            mem: None,
        })
    }

    /// Takes `mem` if every queue is set up and valid in it, and tells the event loop.
    /// `name` is the device's, for the errors.
    pub fn activate(&mut self, mem: GuestMemory, name: &str) -> Result<(), ActivateError> {
        if self.mem.is_some() {
            return Err(ActivateError::Backend(format!("{name} already activated")));
        }
        check_queues(&self.queues, self.queues.len(), &mem)?;
        self.mem = Some(mem);
        self.activate_evt
            .write(1)
            .map_err(|e| ActivateError::Backend(format!("signalling {name} activation: {e}")))
    }

    /// Back to before activation (the transport resets the queues themselves).
    pub fn reset(&mut self) {
        self.mem = None;
        self.acked_features = 0;
    }

    pub fn is_active(&self) -> bool {
        self.mem.is_some()
    }

    /// Raises the used-buffer interrupt.
    pub fn signal_used(&self) -> io::Result<()> {
        self.irq.trigger(VIRTIO_MMIO_INT_VRING)
    }

    /// Reads queue `index`'s notify eventfd: how many notifies came since the last read
    /// (0 when none; a missing queue is 0 too).
    pub fn drain_queue_evt(&self, index: usize) -> io::Result<u64> {
        match self.queue_evts.get(index).map(EventFd::read) {
            Some(Ok(n)) => Ok(n),
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Some(Err(e)) => Err(e),
            None => Ok(0),
        }
    }
}

impl std::fmt::Debug for DeviceCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCore")
            .field(
                "avail_features",
                &format_args!("{:#x}", self.avail_features),
            )
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features),
            )
            .field("queues", &self.queues.len())
            .field("active", &self.mem.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::device::VIRTIO_F_VERSION_1;

    #[test]
    fn activation_needs_valid_queues_and_happens_once() {
        let mut core = DeviceCore::new(2, 16, VIRTIO_F_VERSION_1).unwrap();
        let mem = crate::fuzz_api::guest_memory(1 << 20);
        assert!(matches!(
            core.activate(mem.clone(), "test"),
            Err(ActivateError::InvalidQueue(0))
        ));
        assert!(!core.is_active());
        for (i, q) in core.queues.iter_mut().enumerate() {
            use virtio_queue::QueueT;
            let base = 0x1000 * (3 * i as u64 + 1);
            q.set_size(16);
            q.set_desc_table_address(Some(base as u32), Some(0));
            q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
            q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
            q.set_ready(true);
        }
        core.activate(mem.clone(), "test").unwrap();
        assert!(core.is_active());
        assert_eq!(
            core.activate_evt.read().unwrap(),
            1,
            "the event loop is told"
        );
        assert!(core.activate(mem, "test").is_err(), "once");
        core.acked_features = VIRTIO_F_VERSION_1;
        core.reset();
        assert!(!core.is_active());
        assert_eq!(core.acked_features, 0);
        assert_eq!(core.drain_queue_evt(0).unwrap(), 0);
        core.queue_evts[1].write(3).unwrap();
        assert_eq!(core.drain_queue_evt(1).unwrap(), 3);
        assert_eq!(core.drain_queue_evt(9).unwrap(), 0);
    }
}
