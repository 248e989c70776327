//! Shared helpers for vessel's integration tests (bundles, agent scenarios, containerd, CRI).
//!
//! Integration tests live in `tests/tests/*.rs`; each layer is described in `tests/README.md`.

pub mod agent_scenarios;
pub mod bundle;
pub mod containerd;
pub mod cri;
pub mod vm;
