//! cargo-fuzz target `seccomp_compile`: a thin wrapper over `vessel_agent::fuzz_api::seccomp` (fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vessel_agent::fuzz_api::seccomp(data);
});
