//! vessel's sandbox lifecycle: VMM process, agent connection, containers, config.
//!
//! * [`config`]: `/etc/vessel/config.toml` over built-in defaults.
//! * [`sandbox::Sandbox`]: one pod = one VM: state dir, VMM process, agent, containers.
//! * [`vm`]: the [`vm::VmBackend`] seam — the real VMM + hybrid vsock, or the real agent on
//!   the host for tests where no guest boots.
//! * [`share`]: rootfs and volumes → the virtio-fs shared dir, spec rewritten to guest paths.
//! * [`stdio`]: containerd fifos ↔ agent streams, never losing a tail.
//! * [`cleanup`]: releasing a sandbox's host resources, also after its shim died.
//! * [`grouping`]: CRI annotations → which VM a container runs in.
//! * [`check`]: can this host run vessel.
//! * [`snapshot`]: pods start from a snapshot of a booted VM (`[snapshot]`).

pub mod agent;
pub mod check;
pub mod cleanup;
pub mod config;
pub mod grouping;
pub mod mounts;
pub mod safe_mount;
pub mod sandbox;
pub mod share;
pub mod snapshot;
pub mod state;
pub mod stdio;
pub mod vm;

pub use agent::{Agent, AgentError};
pub use config::{Config, ConfigError};
pub use sandbox::{ContainerConfig, Sandbox, SandboxError, SandboxOptions};
