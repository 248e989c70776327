//! containerd Task API v2 shim for vessel: `containerd-shim-vessel-v2`.
//!
//! * [`bootstrap`]: the binary's entry (start / delete / serve), compatible with containerd 1.6.
//! * [`service`]: the `containerd-shim` crate's `Shim` trait: grouping shims per pod, cleanup.
//! * [`task`]: the Task API as an adapter over `vessel-runtime`'s `Pods`.

pub mod bootstrap;
pub mod errors;
pub mod events;
pub mod logging;
pub mod service;
pub mod stats;
pub mod task;
