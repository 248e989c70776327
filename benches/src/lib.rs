//! vessel benchmark harness: start latency, memory per pod, density and CRI pod latency of
//! vessel vs runc under a containerd the harness starts itself, and vessel-vmm vs qemu
//! microvm boot.
//!
//! `vessel-bench --help` for the options; `benches/README.md` for how to run it and a result.
//! Speed is measured here, never asserted: the unit tests check the harness itself (maths,
//! parsing, output formats, error reporting).

pub mod boot;
pub mod cli;
pub mod cri;
pub mod ctr;
pub mod density;
pub mod exec;
pub mod machine;
pub mod memory;
pub mod prereq;
pub mod procmem;
pub mod report;
pub mod run;
pub mod setup;
pub mod shimlog;
pub mod start;
pub mod stats;
pub mod svg;

#[cfg(test)]
mod report_tests;
