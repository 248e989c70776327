//! cargo-fuzz target `snapshot_manifest`: a thin wrapper over `vessel_vmm::fuzz_api::snapshot::run` (fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vessel_vmm::fuzz_api::snapshot::run(data);
});
