//! Virtio devices and the MMIO transport.

pub(crate) mod chain;
pub mod device;
pub mod device_base;
pub mod device_core;
pub mod fs;
pub mod handle;
pub mod mmio;
pub mod net;
pub mod vsock;
pub(crate) mod wiring;
