//! One vCPU's architectural state: what KVM_GET_* returns and KVM_SET_* takes back, in the
//! orders KVM needs (Firecracker's, see the comments on [`save_vcpu`] and [`restore_vcpu`]).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::raw::Raw;

/// MSRs per KVM_GET/SET_MSRS call (KVM stops a call at the first MSR it refuses).
const MSR_BATCH: usize = 64;
/// Bound on MSRs accepted from a snapshot (KVM lists a few dozen).
pub const MAX_MSRS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vcpu{index}: {what}")]
    Ioctl {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vcpu{index}: {what}")]
    Invalid { index: u8, what: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrValue {
    pub index: u32,
    pub data: u64,
}

/// Everything KVM keeps for one vCPU that a guest could notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u8,
    pub cpuid: Vec<Raw<kvm_cpuid_entry2>>,
    pub mp_state: Raw<kvm_mp_state>,
    pub regs: Raw<kvm_regs>,
    pub sregs: Raw<kvm_sregs>,
    /// `kvm_xsave.region` (the legacy 4 KiB area; KVM_CAP_XSAVE2 larger areas are refused).
    pub xsave: Raw<[u32; 1024]>,
    pub xcrs: Raw<kvm_xcrs>,
    pub debugregs: Raw<kvm_debugregs>,
    pub lapic: Raw<kvm_lapic_state>,
    /// In KVM_GET_MSR_INDEX_LIST order (TSC before TSC_DEADLINE, as KVM needs on restore).
    pub msrs: Vec<MsrValue>,
    pub vcpu_events: Raw<kvm_vcpu_events>,
    /// Guest TSC frequency, if KVM reported it.
    pub tsc_khz: Option<u32>,
}

fn ioctl(index: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Ioctl {
        index,
        what,
        source,
    }
}

/// The MSRs KVM can save and restore, as it lists them.
pub fn msr_index_list(kvm: &Kvm) -> Result<Vec<u32>, kvm_ioctls::Error> {
    Ok(kvm.get_msr_index_list()?.as_slice().to_vec())
}

/// Reads `indices`, skipping MSRs KVM refuses to read (returned separately).
fn read_msrs(
    fd: &VcpuFd,
    index: u8,
    indices: &[u32],
) -> Result<(Vec<MsrValue>, Vec<u32>), VcpuStateError> {
    let mut values = Vec::with_capacity(indices.len());
    let mut refused = Vec::new();
    let mut rest = indices;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| VcpuStateError::Invalid {
            index,
            what: format!("MSR batch: {e:?}"),
        })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(ioctl(index, "KVM_GET_MSRS"))?;
        values.extend(
            msrs.as_slice()[..n.min(batch.len())]
                .iter()
                .map(|e| MsrValue {
                    index: e.index,
                    data: e.data,
                }),
        );
        if n < batch.len() {
            // KVM stopped at batch[n]: it cannot read that one. Skip it.
            refused.push(batch[n]);
            rest = &rest[n + 1..];
        } else {
            rest = &rest[batch.len()..];
        }
    }
    Ok((values, refused))
}

/// Writes `values` in order; every one must be accepted.
fn write_msrs(fd: &VcpuFd, index: u8, values: &[MsrValue]) -> Result<(), VcpuStateError> {
    for batch in values.chunks(MSR_BATCH) {
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|v| kvm_msr_entry {
                index: v.index,
                data: v.data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|e| VcpuStateError::Invalid {
            index,
            what: format!("MSR batch: {e:?}"),
        })?;
        let n = fd.set_msrs(&msrs).map_err(ioctl(index, "KVM_SET_MSRS"))?;
        if n < batch.len() {
            return Err(VcpuStateError::Invalid {
                index,
                what: format!(
                    "KVM refused to restore MSR {:#x} = {:#x}",
                    batch[n].index, batch[n].data
                ),
            });
        }
    }
    Ok(())
}

/// Saves a vCPU that is out of KVM_RUN (and whose pending I/O was completed). Order matters:
/// KVM_GET_MP_STATE first (it makes the LAPIC accept pending events, changing other state),
/// KVM_GET_VCPU_EVENTS last (the other GETs may still change what it reports).
pub fn save_vcpu(
    fd: &VcpuFd,
    index: u8,
    msr_indices: &[u32],
) -> Result<(VcpuState, Vec<u32>), VcpuStateError> {
    let mp_state = fd
        .get_mp_state()
        .map_err(ioctl(index, "KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(ioctl(index, "KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(ioctl(index, "KVM_GET_SREGS"))?;
    let xsave = fd.get_xsave().map_err(ioctl(index, "KVM_GET_XSAVE"))?;
    let xcrs = fd.get_xcrs().map_err(ioctl(index, "KVM_GET_XCRS"))?;
    let debugregs = fd
        .get_debug_regs()
        .map_err(ioctl(index, "KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(ioctl(index, "KVM_GET_LAPIC"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl(index, "KVM_GET_CPUID2"))?;
    let (msrs, refused) = read_msrs(fd, index, msr_indices)?;
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(ioctl(index, "KVM_GET_VCPU_EVENTS"))?;
    let state = VcpuState {
        index,
        cpuid: cpuid.as_slice().iter().copied().map(Raw).collect(),
        mp_state: Raw(mp_state),
        regs: Raw(regs),
        sregs: Raw(sregs),
        xsave: Raw(xsave.region),
        xcrs: Raw(xcrs),
        debugregs: Raw(debugregs),
        lapic: Raw(lapic),
        msrs,
        vcpu_events: Raw(vcpu_events),
        tsc_khz,
    };
    Ok((state, refused))
}

/// Restores a freshly created vCPU (no KVM_RUN yet) to `state`: CPUID first (KVM checks
/// other state against it), the LAPIC before the MSRs (TSC_DEADLINE needs its timer mode),
/// the vCPU events last.
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuStateError> {
    let index = state.index;
    if state.cpuid.is_empty() || state.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(VcpuStateError::Invalid {
            index,
            what: format!("{} CPUID entries", state.cpuid.len()),
        });
    }
    if state.msrs.len() > MAX_MSRS {
        return Err(VcpuStateError::Invalid {
            index,
            what: format!("{} MSRs (at most {MAX_MSRS})", state.msrs.len()),
        });
    }
    let entries: Vec<kvm_cpuid_entry2> = state.cpuid.iter().map(|e| e.0).collect();
    let cpuid = CpuId::from_entries(&entries).map_err(|e| VcpuStateError::Invalid {
        index,
        what: format!("CPUID: {e:?}"),
    })?;
    fd.set_cpuid2(&cpuid)
        .map_err(ioctl(index, "KVM_SET_CPUID2"))?;
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            if let Err(e) = fd.set_tsc_khz(khz) {
                log::warn!("vcpu{index}: guest TSC was {khz} kHz; KVM_SET_TSC_KHZ: {e}");
            }
        }
    }
    fd.set_mp_state(state.mp_state.0)
        .map_err(ioctl(index, "KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs.0)
        .map_err(ioctl(index, "KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs.0)
        .map_err(ioctl(index, "KVM_SET_SREGS"))?;
    let xsave = kvm_xsave {
        region: state.xsave.0,
        ..Default::default()
    };
    // SAFETY: `xsave` is a complete legacy 4 KiB `kvm_xsave`; KVM_SET_XSAVE reads exactly that
    // much (the larger KVM_SET_XSAVE2 layout is never used here).
    unsafe { fd.set_xsave(&xsave) }.map_err(ioctl(index, "KVM_SET_XSAVE"))?;
    fd.set_xcrs(&state.xcrs.0)
        .map_err(ioctl(index, "KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debugregs.0)
        .map_err(ioctl(index, "KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic.0)
        .map_err(ioctl(index, "KVM_SET_LAPIC"))?;
    write_msrs(fd, index, &state.msrs)?;
    fd.set_vcpu_events(&state.vcpu_events.0)
        .map_err(ioctl(index, "KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
