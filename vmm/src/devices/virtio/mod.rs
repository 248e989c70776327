//! Virtio devices and the MMIO transport.

pub mod device;
pub mod fs;
pub mod mmio;
pub mod vsock;
