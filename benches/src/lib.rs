//! vessel benchmark harness: start latency and memory vs runc, VMM boot vs qemu
