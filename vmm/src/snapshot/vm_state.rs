//! VM-wide in-kernel devices: the two PICs, the IOAPIC, the PIT, and the KVM clock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::raw::Raw;

#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct VmStateError {
    pub what: &'static str,
    pub source: kvm_ioctls::Error,
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { what, source }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: Raw<kvm_irqchip>,
    pub pic_slave: Raw<kvm_irqchip>,
    pub ioapic: Raw<kvm_irqchip>,
    pub pit: Raw<kvm_pit_state2>,
    /// kvmclock at the moment of the snapshot. Restored as is: the guest's monotonic clock
    /// continues from where it stopped (as if the VM had been paused) instead of jumping by
    /// the time the snapshot sat on disk; wall-clock time is set by the agent at
    /// CreateSandbox (`realtime_ns`).
    pub clock: Raw<kvm_clock_data>,
}

fn get_chip(fd: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip).map_err(ioctl(what))?;
    Ok(chip)
}

/// Saves the VM-wide state (vCPUs must be out of KVM_RUN).
pub fn save_vm(fd: &VmFd) -> Result<VmState, VmStateError> {
    let mut clock = fd.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?;
    // KVM_SET_CLOCK refuses flags it does not take (TSC_STABLE, HOST_TSC): keep the value only.
    clock.flags = 0;
    clock.realtime = 0;
    clock.host_tsc = 0;
    Ok(VmState {
        pic_master: Raw(get_chip(
            fd,
            KVM_IRQCHIP_PIC_MASTER,
            "KVM_GET_IRQCHIP (PIC master)",
        )?),
        pic_slave: Raw(get_chip(
            fd,
            KVM_IRQCHIP_PIC_SLAVE,
            "KVM_GET_IRQCHIP (PIC slave)",
        )?),
        ioapic: Raw(get_chip(
            fd,
            KVM_IRQCHIP_IOAPIC,
            "KVM_GET_IRQCHIP (IOAPIC)",
        )?),
        pit: Raw(fd.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?),
        clock: Raw(clock),
    })
}

/// Restores the VM-wide state into a VM that has its irqchip and PIT, before its vCPUs are
/// created.
pub fn restore_vm(fd: &VmFd, state: &VmState) -> Result<(), VmStateError> {
    fd.set_pit2(&state.pit.0).map_err(ioctl("KVM_SET_PIT2"))?;
    let mut clock = state.clock.0;
    clock.flags = 0;
    fd.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))?;
    // The chip ids are ours, not the file's: a snapshot cannot swap the PICs and the IOAPIC.
    for (id, chip, what) in [
        (
            KVM_IRQCHIP_PIC_MASTER,
            &state.pic_master,
            "KVM_SET_IRQCHIP (PIC master)",
        ),
        (
            KVM_IRQCHIP_PIC_SLAVE,
            &state.pic_slave,
            "KVM_SET_IRQCHIP (PIC slave)",
        ),
        (
            KVM_IRQCHIP_IOAPIC,
            &state.ioapic,
            "KVM_SET_IRQCHIP (IOAPIC)",
        ),
    ] {
        let mut c = chip.0;
        c.chip_id = id;
        fd.set_irqchip(&c).map_err(ioctl(what))?;
    }
    Ok(())
}
