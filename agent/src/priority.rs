//! The guest's agent runs ahead of the pod's containers (nice [`AGENT_NICE`]); each
//! container and exec process takes nice 0 again before its `execve`.
//!
//! Why: in the guest the agent's work is the pod's lifecycle (create, start, exec, wait) and
//! competes with the containers' own work for the pod's vCPUs. A CRI pod's BestEffort
//! containers used to sit in cgroups of weight 1 (shares 2) beside the agent's 1024, so the
//! agent's requests ran first. Without the `cpu` controller (`container::cgroup_cpu`) every
//! task weighs the same; on KVM-PVM, where the guest kernel is emulated, an ExecSync then
//! waited behind a busy container (its p50 moved from 3.7 s to 5.8 s in `vessel-bench`,
//! `benches/README.md`). A nice value restores the order without a scheduling group.
//! Only PID 1 (the guest) does this; the host agent leaves priorities as it found them.

use std::sync::atomic::{AtomicBool, Ordering};

/// The agent's nice value in the guest (weight 9548 against a container's 1024).
pub const AGENT_NICE: i32 = -10;
/// What container processes take: the kernel's default, as under runc.
const CONTAINER_NICE: i32 = 0;

static RAISED: AtomicBool = AtomicBool::new(false);

/// Raises the calling thread (PID 1's main thread, before it starts any other: threads
/// inherit it) to [`AGENT_NICE`].
pub fn raise_agent() -> std::io::Result<()> {
    crate::sys::set_nice(AGENT_NICE)?;
    RAISED.store(true, Ordering::SeqCst);
    Ok(())
}

/// The nice value a container's or exec's process must take before its `execve`: `Some`
/// once the agent raised its own.
pub fn container_nice() -> Option<i32> {
    RAISED.load(Ordering::SeqCst).then_some(CONTAINER_NICE)
}
