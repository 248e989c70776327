//! cargo-fuzz target `virtio_net`: a thin wrapper over `vessel_vmm::fuzz_api::net::run` (fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vessel_vmm::fuzz_api::net::run(data);
});
