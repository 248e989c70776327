//! Virtio devices and the MMIO transport.

pub mod device;
pub mod mmio;
pub mod vsock;
