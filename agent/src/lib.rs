//! vessel's in-guest agent: PID 1, ttrpc API on vsock, containers in namespaces.
//!
//! * [`init`]: PID 1 setup in the guest (mounts, cgroups, hostname, power-off).
//! * [`server`]: the ttrpc `Agent` service; [`sandbox`]: the agent's state.
//! * [`container`]: containers from OCI specs (namespaces, rootfs, devices, capabilities,
//!   seccomp, cgroups v1/v2), created by re-executing the agent as a setup child.
//! * [`reaper`]: the one place children are reaped; [`stdio`]: lossless output streams;
//!   [`oom`]: OOM-kill events; [`network`]: rtnetlink; [`pod`]: the pod's shared namespaces.
//! * [`fpu_workaround`]: a `GLIBC_TUNABLES` from the kernel command line, handed on to containers.
//! * [`sys`] and [`sys_exec`] (the direct exec's vfork child): the only modules with `unsafe`; [`syscall`]: the seam over the privileged calls of
//!   container and sandbox setup (a recording fake tests them without root).

pub mod agent;
pub mod container;
pub mod error;
pub mod fpu_workaround;
pub mod freshness;
/// Entry point of the `seccomp_compile` fuzz target in `fuzz/` (tests and the `fuzzing`
/// feature only).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz_api;
pub mod init;
pub mod logger;
pub mod network;
pub mod oom;
pub mod pod;
pub mod pod_network;
pub mod priority;
pub mod reaper;
pub mod sandbox;
pub mod server;
pub mod stdio;
pub mod sys;
pub mod sys_exec;
pub mod syscall;
#[cfg(test)]
pub mod syscall_fake;
pub mod warmup;
