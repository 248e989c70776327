//! `vessel-vmm`: boots one micro-VM. A thin edge over the `vessel_vmm` library.
fn main() {}
