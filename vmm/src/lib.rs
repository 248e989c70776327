//! vessel's micro-VM monitor: KVM, guest memory, direct Linux boot, virtio-mmio devices.

pub mod devices;
