//! How a virtio device is handed to the VMM: the device for the MMIO bus, and the same
//! object as an event-loop subscriber when it has host-side events of its own.

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;

use super::device::VirtioDevice;

pub type SharedSubscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A virtio device to put on the MMIO bus, and its event-loop side if it has one.
pub struct VirtioDeviceHandle {
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    pub subscriber: Option<SharedSubscriber>,
}

impl VirtioDeviceHandle {
    /// A device that also handles its own events (queue notifications, backend sockets).
    pub fn with_events<D: VirtioDevice + MutEventSubscriber + 'static>(device: D) -> Self {
        let shared = Arc::new(Mutex::new(device));
        Self {
            device: shared.clone(),
            subscriber: Some(shared),
        }
    }

    /// A device with no event-loop side (tests).
    pub fn passive<D: VirtioDevice + 'static>(device: D) -> Self {
        Self {
            device: Arc::new(Mutex::new(device)),
            subscriber: None,
        }
    }
}
