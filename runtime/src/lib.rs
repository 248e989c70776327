//! vessel's host side of a pod: VMM process, agent connection, containers, config.
//!
//! * [`pod::Pods`]: what a shim (or the CLI) holds — which pod a container goes to, and
//!   every container/exec operation; [`pod::Pod`]: one VM and everything of the pod on the
//!   host. [`pod::cleanup_after_crash`]: the same, after the holder died.
//! * [`config`]: `/etc/vessel/config.toml` over built-in defaults; [`sizing`]: a pod's VM size.
//! * [`vm`]: the [`vm::VmBackend`] seam — the real VMM + hybrid vsock, or the real agent on
//!   the host for tests where no guest boots.
//! * [`share`]: rootfs and volumes → the virtio-fs shared dir, spec rewritten to guest paths;
//!   [`pod::namespaces`]: the pod's namespaces; [`rootfs`]: containerd's rootfs mounts.
//! * [`stdio`]: containerd fifos ↔ agent streams, never losing a tail.
//! * [`cleanup`]: releasing a sandbox's host resources, also after its shim died;
//!   [`host_cgroup`]: the pod's cgroup on the host (the VMM runs in it).
//! * [`grouping`]: CRI annotations → which VM a container runs in.
//! * [`check`]: can this host run vessel.
//! * [`snapshot`]: pods start from a snapshot of a booted VM (`[snapshot]`).

pub mod agent;
pub mod check;
pub mod cleanup;
pub mod config;
pub mod diagnostics;
pub mod grouping;
pub mod host_cgroup;
pub mod monitor;
pub mod mountpoints;
pub mod mounts;
pub mod network;
pub mod pod;
pub mod rootfs;
pub mod safe_mount;
mod sandbox;
pub mod share;
pub mod sizing;
pub mod snapshot;
pub mod state;
pub mod stdio;
mod sys;
pub mod vm;

pub use agent::AgentError;
pub use config::{Config, ConfigError};
pub use pod::{PodError, Pods, PodsDeps};
pub use sandbox::SandboxError;
