//! KVM: the VM, its vCPUs and how their exits are handled.

pub mod exit_counters;
pub mod exits;
pub mod profile;
pub mod vcpu;
pub mod vm;
pub mod xstate;
