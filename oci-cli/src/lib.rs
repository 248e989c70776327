//! `vessel-runc`: runc's command-line contract over the vessel runtime, so podman (through
//! conmon), Docker (through containerd's runc shim) and any engine that drives runc start
//! each container in its own vessel VM.
//!
//! The process model: `create` forks a **holder** per container ([`holder`]); its pid is
//! the container's pid as the engine sees it. It owns the container's pod through the
//! runtime's `Pods` (the same lifecycle the containerd shim uses), relays the stdio the
//! engine passed to the guest, forwards signals, answers the other commands on a control
//! socket ([`control`]) and exits with the container's status. `exec` does the same for
//! one process ([`exec`]). State lives under `--root` ([`store`]).

pub mod cli;
pub mod commands;
pub mod console;
pub mod control;
pub mod errors;
pub mod exec;
pub mod holder;
pub mod logging;
pub mod stdio;
pub mod store;
mod sys;

pub use errors::CliError;
