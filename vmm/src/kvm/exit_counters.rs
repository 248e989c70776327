//! vCPU exits to the VMM by kind, all vCPUs together (for `--metrics-fd`). On an emulating
//! host each exit is a round trip through the host kernel and this process, so their mix
//! says what the guest's devices cost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_ioctls::VcpuExit;

/// The kinds counted, in [`ExitCounters`]' order.
pub const KINDS: [&str; 8] = [
    "io_in",
    "io_out",
    "mmio_read",
    "mmio_write",
    "hlt",
    "interrupted",
    "system_event",
    "other",
];

/// One counter per kind of [`KINDS`].
#[derive(Debug, Default)]
pub struct ExitCounters([AtomicU64; KINDS.len()]);

/// The slot of [`KINDS`] an exit counts in.
pub fn kind_of(exit: &VcpuExit<'_>) -> usize {
    match exit {
        VcpuExit::IoIn(..) => 0,
        VcpuExit::IoOut(..) => 1,
        VcpuExit::MmioRead(..) => 2,
        VcpuExit::MmioWrite(..) => 3,
        VcpuExit::Hlt => 4,
        VcpuExit::Intr => 5,
        VcpuExit::SystemEvent(..) | VcpuExit::Shutdown => 6,
        _ => 7,
    }
}

impl ExitCounters {
    pub fn count(&self, kind: usize) {
        if let Some(c) = self.0.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// KVM_RUN returned EINTR/EAGAIN (a kick): counted as `interrupted` like `KVM_EXIT_INTR`.
    pub fn count_interrupted(&self) {
        self.count(5);
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        KINDS
            .iter()
            .zip(&self.0)
            .map(|(k, c)| (k.to_string(), c.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_count_by_kind() {
        let c = ExitCounters::default();
        let mut data = [0u8; 4];
        c.count(kind_of(&VcpuExit::IoOut(0x3f8, &data)));
        c.count(kind_of(&VcpuExit::MmioWrite(0xd000_0000, &data)));
        c.count(kind_of(&VcpuExit::MmioRead(0xd000_0000, &mut data)));
        c.count(kind_of(&VcpuExit::Hlt));
        c.count_interrupted();
        c.count(99);
        let s = c.snapshot();
        assert_eq!(s.len(), KINDS.len());
        assert_eq!(s["io_out"], 1);
        assert_eq!(s["mmio_write"], 1);
        assert_eq!(s["mmio_read"], 1);
        assert_eq!(s["hlt"], 1);
        assert_eq!(s["interrupted"], 1);
        assert_eq!(s["io_in"], 0);
    }
}
