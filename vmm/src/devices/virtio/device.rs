//! The contract between the virtio-mmio transport and a virtio device.
//!
//! The transport (`mmio.rs`) owns register state (status, feature selectors, queue selector) and
//! programs each queue's size/addresses/ready bit through [`VirtioDevice::queues_mut`]. When the
//! driver sets DRIVER_OK it calls [`VirtioDevice::activate`]; from then on the device processes
//! its queues when their [`VirtioDevice::queue_events`] fire (KVM ioeventfds on QueueNotify) and
//! raises interrupts through its [`IrqTrigger`].

pub use super::device_core::DeviceCore;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use super::device_base::{
    check_queues, read_config_bytes, ActivateError, GuestMemory, IrqTrigger, VIRTIO_F_VERSION_1,
    VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
};

/// A virtio device behind the MMIO transport. The transport's side (features, queues,
/// eventfds, interrupt, activation state) comes from the device's [`DeviceCore`]; a device
/// writes what is its own: type, config space, activation and reset hooks, snapshot state.
pub trait VirtioDevice: Send {
    /// Virtio device ID (e.g. 19 for vsock).
    fn device_type(&self) -> u32;
    fn core(&self) -> &DeviceCore;
    fn core_mut(&mut self) -> &mut DeviceCore;
    /// Feature bits the device offers (including `VIRTIO_F_VERSION_1`).
    fn avail_features(&self) -> u64 {
        self.core().avail_features
    }
    /// Feature bits the driver accepted so far.
    fn acked_features(&self) -> u64 {
        self.core().acked_features
    }
    /// Records the features the driver accepted, masked with `avail_features`.
    fn set_acked_features(&mut self, features: u64) {
        let core = self.core_mut();
        core.acked_features = features & core.avail_features;
    }
    fn queues(&self) -> &[Queue] {
        &self.core().queues
    }
    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.core_mut().queues
    }
    /// One eventfd per queue, written when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd] {
        &self.core().queue_evts
    }
    fn interrupt_trigger(&self) -> &IrqTrigger {
        &self.core().irq
    }
    /// Reads the device-specific configuration space; out-of-range reads leave `data`
    /// untouched.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space; out-of-range writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Called once the driver set DRIVER_OK with all queues ready: by default the core's
    /// checks, then the event loop is told ([`DeviceCore::activate`]).
    fn activate(&mut self, mem: GuestMemory) -> Result<(), ActivateError> {
        let name = format!("virtio device {}", self.device_type());
        self.core_mut().activate(mem, &name)
    }
    fn is_activated(&self) -> bool {
        self.core().is_active()
    }
    /// Device reset requested by the driver (status written 0); the transport resets the
    /// queues. Returns false if the device cannot be reset, in which case the transport marks
    /// it as needing reset.
    fn reset(&mut self) -> bool {
        false
    }
    /// Why the device cannot be snapshotted right now (e.g. open host connections); `None`
    /// when it can. A snapshot waits for this to clear.
    /// The device's counters by name, for the VMM's metrics (none by default).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    fn snapshot_blocker(&self) -> Option<String> {
        None
    }
    /// Device-specific state a snapshot carries beyond what the transport saves (features,
    /// queues, interrupt status). Host-side backends are not saved: restore recreates them.
    fn save_state(&self) -> Option<DeviceState> {
        None
    }
    /// Takes back what [`VirtioDevice::save_state`] returned, before the device is
    /// re-activated. The value comes from a file: validate it.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), String> {
        Err(format!(
            "virtio device {} keeps no state, the snapshot has {state:?}",
            self.device_type()
        ))
    }
}

/// Device-specific snapshot state, one variant per device that has any (typed, so a
/// damaged or foreign manifest is refused when it is parsed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "device", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceState {
    /// The last local port the vsock device handed out (new host connections continue
    /// after it, so a restored guest never sees a port reused), and the idle connections
    /// the snapshot keeps for the first host client that asks for their guest port.
    Vsock {
        local_port_last: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        parked: Vec<super::vsock::ParkedConnection>,
    },
}
