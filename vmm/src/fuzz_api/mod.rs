//! Entry points of the fuzz targets in `fuzz/` (cargo-fuzz), one per parser of guest input.
//!
//! Each target is a thin wrapper over one function here, which the corpus replay tests
//! (`corpus_tests.rs`, part of `cargo test --workspace`) call on every file of
//! `fuzz/corpus/<target>/`:
//!
//! * [`mmio::run`]: the virtio-mmio register interface of a real vsock or virtio-fs device
//!   (reads and writes at any offset and width, feature negotiation, queue setup, status
//!   transitions, notifies) on mock guest memory, with snapshot round trips;
//! * [`vsock::run`]: the vsock device fed hostile TX/RX chains, with real host sockets on the
//!   other side (packet parsing, the muxer and the connection state machine);
//! * [`fs::run`]: FUSE requests into the virtio-fs device over a real shared directory, with
//!   a canary outside the share that must never change;
//! * [`snapshot::run`]: `vm.json` text through `Manifest::parse`, then its device states
//!   (serial, virtio transports with real devices) through their restore paths.
//!
//! An input is decoded by [`input::Input`] (fixed-width little-endian fields, zeros past the
//! end), so every byte string is a valid program; `seeds()` of each module builds the
//! committed seed corpus with [`input::Enc`], the matching encoder. A function panics only
//! when the code under test broke one of its promises (a guest made the VMM panic, a reply
//! does not match its request, something outside a share changed): what the fuzzer reports.
//!
//! Compiled for tests and with the `fuzzing` feature only.

pub mod fs;
pub mod input;
pub mod mmio;
pub mod net;
pub mod snapshot;
pub mod vsock;

pub(crate) mod driver;

#[cfg(test)]
mod corpus_tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) use crate::devices::virtio::mmio::lock;

/// `VESSEL_FUZZ_TRACE=1`: the harnesses print what they send (to triage a crash input).
pub(crate) fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("VESSEL_FUZZ_TRACE").is_some_and(|v| v == "1"))
}

/// A fresh, empty directory for one run (unique within the machine: pid + counter), removed
/// when dropped.
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn new(what: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("vessel-fuzz-{what}-{}-{n}", std::process::id()));
        // Left over from a crashed run with the same pid: start clean.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("fuzz scratch dir");
        Self(path)
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Guest memory of `size` bytes at guest address 0.
pub(crate) fn guest_memory(size: usize) -> crate::devices::virtio::device::GuestMemory {
    vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), size)])
        .expect("fuzz guest memory")
}
