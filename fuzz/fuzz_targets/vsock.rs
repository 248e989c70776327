//! cargo-fuzz target `vsock`: a thin wrapper over `vessel_vmm::fuzz_api::vsock::run` (fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vessel_vmm::fuzz_api::vsock::run(data);
});
