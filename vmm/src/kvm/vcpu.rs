//! vCPUs: boot-time configuration and the run loop on a `vcpuN` thread.
//!
//! Stopping: the VMM sets the shared stop flag and sends [`kick_signal`] to each vCPU thread.
//! The handler sets `kvm_run.immediate_exit`, so KVM_RUN returns EINTR whether the signal
//! lands inside KVM_RUN or just before it (Firecracker's scheme).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{
    CpuId, Msrs, KVM_INTERNAL_ERROR_EMULATION, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use seccompiler::BpfProgram;
use vm_memory::{Bytes, GuestAddress};

use super::exit_counters::{self, ExitCounters};
use super::exits::{build_report, internal_error_data, vmm_emulation};
use super::profile::RipHistogram;
use super::vm::{ioctl_err, KvmError};
use super::xstate;
use crate::arch::msr::{boot_msr_entries, set_lint};
use crate::arch::regs::{boot_fpu, boot_regs, setup_sregs, BootEntry, RegsError};
use crate::cpu_policy::set_vcpu_topology;
use crate::devices::bus::Bus;
use crate::devices::virtio::device::GuestMemory;
use crate::exit::{ExitReason, ExitSignal};
use crate::log_limit::LogLimiter;

static UNHANDLED_IO: LogLimiter = LogLimiter::new(20, Duration::from_secs(10));
static VMM_EMULATION_LOG: LogLimiter = LogLimiter::new(5, Duration::from_secs(60));
static XSTATE_LOG: LogLimiter = LogLimiter::new(5, Duration::from_secs(60));

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vcpu{index}")]
    Kvm { index: u8, source: KvmError },
    #[error("vcpu{index}")]
    Regs { index: u8, source: RegsError },
    #[error("registering the vCPU kick signal handler")]
    SignalHandler(#[source] vmm_sys_util::errno::Error),
    #[error("spawning thread vcpu{index}")]
    Spawn { index: u8, source: std::io::Error },
}

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let ptr = IMMEDIATE_EXIT.with(|p| p.get());
    if !ptr.is_null() {
        // SAFETY: the pointer is this thread's kvm_run mapping, set by `VcpuRunner::run` while
        // the VcpuFd (which owns the mapping) is alive and cleared before it is dropped.
        unsafe { ptr.write_volatile(1) };
    }
    std::sync::atomic::fence(Ordering::Release);
}

/// Installs the kick handler (idempotent).
pub fn register_kick_handler() -> Result<(), VcpuError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
        .map_err(VcpuError::SignalHandler)
}

/// Everything a vCPU needs before it first runs.
pub struct VcpuBoot<'a> {
    pub entry: BootEntry,
    pub entry_addr: u64,
    pub cpuid: &'a CpuId,
    pub vcpu_count: u8,
}

/// Creates vCPU `index` and sets CPUID, MSRs, registers, FPU and LAPIC.
pub fn create_vcpu(
    vm: &VmFd,
    mem: &GuestMemory,
    index: u8,
    boot: &VcpuBoot<'_>,
) -> Result<VcpuFd, VcpuError> {
    let kvm_err = |source| VcpuError::Kvm { index, source };
    let fd = vm
        .create_vcpu(u64::from(index))
        .map_err(ioctl_err("KVM_CREATE_VCPU"))
        .map_err(kvm_err)?;
    let mut cpuid = boot.cpuid.clone();
    set_vcpu_topology(cpuid.as_mut_slice(), index, boot.vcpu_count);
    fd.set_cpuid2(&cpuid)
        .map_err(ioctl_err("KVM_SET_CPUID2"))
        .map_err(kvm_err)?;

    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|_| kvm_err(KvmError::GuestMemoryMap("too many boot MSRs".to_string())))?;
    let written = fd
        .set_msrs(&msrs)
        .map_err(ioctl_err("KVM_SET_MSRS"))
        .map_err(kvm_err)?;
    if written != entries.len() {
        // KVM stops at the first MSR it refuses; the rest are optional for booting.
        let failed = entries.get(written).map_or(0, |e| e.index);
        log::warn!(
            "vcpu{index}: KVM accepted {written} of {} boot MSRs (refused {failed:#x})",
            entries.len()
        );
    }

    let mut sregs = fd
        .get_sregs()
        .map_err(ioctl_err("KVM_GET_SREGS"))
        .map_err(kvm_err)?;
    setup_sregs(mem, boot.entry, &mut sregs).map_err(|source| VcpuError::Regs { index, source })?;
    fd.set_sregs(&sregs)
        .map_err(ioctl_err("KVM_SET_SREGS"))
        .map_err(kvm_err)?;
    fd.set_regs(&boot_regs(boot.entry, boot.entry_addr))
        .map_err(ioctl_err("KVM_SET_REGS"))
        .map_err(kvm_err)?;
    fd.set_fpu(&boot_fpu())
        .map_err(ioctl_err("KVM_SET_FPU"))
        .map_err(kvm_err)?;

    let mut lapic = fd
        .get_lapic()
        .map_err(ioctl_err("KVM_GET_LAPIC"))
        .map_err(kvm_err)?;
    set_lint(&mut lapic);
    fd.set_lapic(&lapic)
        .map_err(ioctl_err("KVM_SET_LAPIC"))
        .map_err(kvm_err)?;
    Ok(fd)
}

/// A configured vCPU and what its run loop needs.
pub struct VcpuRunner {
    pub index: u8,
    pub fd: VcpuFd,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub mem: GuestMemory,
    pub exit: Arc<ExitSignal>,
    pub stop: Arc<AtomicBool>,
    pub seccomp: Option<Arc<BpfProgram>>,
    /// Records the RIP each time the vCPU is kicked (sampling profiler), if set.
    pub rip_samples: Option<RipHistogram>,
    /// Complete instructions KVM's emulator lacks (see `exits::VMM_EMULATED`) in the VMM, and
    /// switch the guest tasks' extended register state for its FXSAVE-only kernel
    /// (`xstate`: the XSAVE/XRSTOR the emulator lacks).
    pub vmm_emulation: bool,
    /// How many instructions the VMM completed so far.
    pub vmm_emulated: u64,
    /// Exits by kind, shared by the VM's vCPUs (`RunningVm::metrics`).
    pub exits: Arc<ExitCounters>,
}

/// The extended-state switching of one vCPU (see [`xstate`]).
struct XstateSwitch {
    /// XCR0 bits KVM offers the guest (its CPUID leaf 0xd): all a restore may load.
    supported: u64,
    saves: u64,
    restores: u64,
    failures: u64,
}

impl XstateSwitch {
    fn new(fd: &VcpuFd) -> XstateSwitch {
        let leaf = fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES).ok().and_then(|c| {
            c.as_slice()
                .iter()
                .find(|e| e.function == 0xd && e.index == 0)
                .map(|e| (e.eax, e.edx))
        });
        XstateSwitch {
            supported: xstate::supported_xcr0(leaf),
            saves: 0,
            restores: 0,
            failures: 0,
        }
    }
}

/// What one KVM_RUN exit asks the loop to do.
enum Step {
    Continue,
    Interrupted,
    Stop(ExitReason),
}

impl VcpuRunner {
    /// Runs until the VM stops; returns the vCPU (out of KVM_RUN, its pending I/O completed)
    /// for whoever joins the thread. Meant to be the body of thread `vcpu{index}`.
    pub fn run(mut self) -> VcpuFd {
        let index = self.index;
        let immediate_exit: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
        // Before the seccomp filter: it does not allow KVM_GET_CPUID2.
        let mut xstate = self.vmm_emulation.then(|| XstateSwitch::new(&self.fd));
        if let Some(filter) = &self.seccomp {
            if let Err(e) = seccompiler::apply_filter(filter) {
                self.exit.request(ExitReason::VcpuFailed {
                    vcpu: index,
                    message: format!("installing seccomp filter: {e}"),
                });
                IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
                return self.fd;
            }
        }
        let mut own_stop = false;
        // Also leave as soon as the VM is stopping (e.g. the guest's own i8042 reset), rather
        // than running on until the VMM kicks us.
        while !self.stop.load(Ordering::Acquire) && !self.exit.is_requested() {
            match self.run_once(xstate.as_mut()) {
                Step::Continue => {}
                Step::Interrupted => {
                    if !self.stop.load(Ordering::Acquire) {
                        self.fd.set_kvm_immediate_exit(0);
                        if let Some(samples) = &self.rip_samples {
                            if let Ok(regs) = self.fd.get_regs() {
                                samples.record(regs.rip);
                            }
                        }
                    }
                }
                Step::Stop(reason) => {
                    self.exit.request(reason);
                    own_stop = true;
                    break;
                }
            }
        }
        if !own_stop {
            self.complete_pending_io();
        }
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
        if let Some(xs) = xstate.filter(|xs| xs.saves + xs.restores > 0) {
            log::info!(
                "vcpu{index}: guest extended register state: {} saves, {} restores, {} failed",
                xs.saves,
                xs.restores,
                xs.failures
            );
        }
        if !own_stop {
            // Stopped by the VM stopping (host stop, signal, guest reset, another vCPU): say
            // where the guest was, which is what one needs to find a guest that hangs.
            match self.fd.get_regs() {
                Ok(regs) => log::info!(
                    "vcpu{index} stopped at rip {:#x} rsp {:#x}",
                    regs.rip,
                    regs.rsp
                ),
                Err(e) => log::info!("vcpu{index} stopped (registers unavailable: {e})"),
            }
        }
        self.fd
    }

    /// An I/O or MMIO exit is only finished (an `in`'s value written to the guest register,
    /// RIP advanced) when KVM_RUN is entered again. With `immediate_exit` set, KVM completes
    /// it and returns EINTR without running guest code, leaving the vCPU state consistent for
    /// a snapshot (KVM API: "userspace should ensure that the operation is completed").
    fn complete_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => log::warn!("vcpu{}: completing pending I/O: {e}", self.index),
            Ok(exit) => log::warn!(
                "vcpu{}: completing pending I/O returned an exit: {exit:?}",
                self.index
            ),
        }
    }

    fn run_once(&mut self, xstate: Option<&mut XstateSwitch>) -> Step {
        let index = self.index;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.exits.count_interrupted();
                return Step::Interrupted;
            }
            Err(e) => {
                return Step::Stop(ExitReason::VcpuFailed {
                    vcpu: index,
                    message: format!("KVM_RUN: {e}"),
                })
            }
        };
        self.exits.count(exit_counters::kind_of(&exit));
        match exit {
            VcpuExit::IoIn(port, data) => {
                if !self.io_bus.read(u64::from(port), data) {
                    // Nothing there: the bus floats high.
                    data.fill(0xff);
                    crate::log_limited!(
                        UNHANDLED_IO,
                        log::Level::Debug,
                        "vcpu{index}: in from unhandled port {port:#x}"
                    );
                }
                Step::Continue
            }
            VcpuExit::IoOut(port, data) => {
                if let (Some(xs), Some(op)) = (xstate, xstate::Op::for_port(port)) {
                    let gpa = xstate::image_gpa(data);
                    self.switch_xstate(xs, op, gpa);
                    return Step::Continue;
                }
                if !self.io_bus.write(u64::from(port), data) {
                    crate::log_limited!(
                        UNHANDLED_IO,
                        log::Level::Debug,
                        "vcpu{index}: out to unhandled port {port:#x}"
                    );
                }
                Step::Continue
            }
            VcpuExit::MmioRead(addr, data) => {
                if !self.mmio_bus.read(addr, data) {
                    data.fill(0xff);
                    crate::log_limited!(
                        UNHANDLED_IO,
                        log::Level::Warn,
                        "vcpu{index}: MMIO read from unmapped {addr:#x}"
                    );
                }
                Step::Continue
            }
            VcpuExit::MmioWrite(addr, data) => {
                if !self.mmio_bus.write(addr, data) {
                    crate::log_limited!(
                        UNHANDLED_IO,
                        log::Level::Warn,
                        "vcpu{index}: MMIO write to unmapped {addr:#x}"
                    );
                }
                Step::Continue
            }
            VcpuExit::Intr => Step::Interrupted,
            VcpuExit::Hlt => Step::Stop(ExitReason::Halted { vcpu: index }),
            VcpuExit::Shutdown => {
                let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                log::warn!("vcpu{index}: triple fault (KVM_EXIT_SHUTDOWN) at rip {rip:#x}");
                Step::Stop(ExitReason::TripleFault { vcpu: index, rip })
            }
            VcpuExit::SystemEvent(kind, _) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => {
                    Step::Stop(ExitReason::GuestSystemEvent { kind })
                }
                KVM_SYSTEM_EVENT_CRASH => Step::Stop(ExitReason::GuestCrash { vcpu: index }),
                other => Step::Stop(ExitReason::VcpuFailed {
                    vcpu: index,
                    message: format!("unexpected system event {other}"),
                }),
            },
            VcpuExit::InternalError => self.internal_error(),
            VcpuExit::FailEntry(reason, cpu) => Step::Stop(ExitReason::VcpuFailed {
                vcpu: index,
                message: format!("KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on cpu {cpu}"),
            }),
            other => Step::Stop(ExitReason::VcpuFailed {
                vcpu: index,
                message: format!("unexpected exit {other:?}"),
            }),
        }
    }

    /// One save or restore of a guest task's extended register state (see [`xstate`]).
    fn switch_xstate(&mut self, xs: &mut XstateSwitch, op: xstate::Op, gpa: Option<u64>) {
        let index = self.index;
        let result = gpa
            .ok_or_else(|| "not a 4-byte write".to_string())
            .and_then(|gpa| {
                let ext = GuestAddress(gpa.wrapping_add(xstate::LEGACY_SIZE as u64));
                let vcpu = self
                    .fd
                    .get_xsave()
                    .map_err(|e| format!("KVM_GET_XSAVE: {e}"))?;
                match op {
                    xstate::Op::Save => {
                        xs.saves += 1;
                        self.mem
                            .write_slice(&xstate::saved_extension(&vcpu), ext)
                            .map_err(|e| format!("image at {gpa:#x}: {e}"))
                    }
                    xstate::Op::Restore => {
                        xs.restores += 1;
                        let mut image = [0u8; xstate::EXTENSION_SIZE];
                        let read = self.mem.read_slice(&mut image, ext);
                        // An unreadable image resets the extended state (`restored` with
                        // nothing to take).
                        let taken = if read.is_ok() { &image[..] } else { &[][..] };
                        let new = xstate::restored(&vcpu, taken, xs.supported);
                        // SAFETY: `new` is a complete legacy 4 KiB `kvm_xsave`; KVM_SET_XSAVE
                        // reads exactly that much (KVM_SET_XSAVE2 is never used here).
                        unsafe { self.fd.set_xsave(&new) }
                            .map_err(|e| format!("KVM_SET_XSAVE: {e}"))?;
                        read.map_err(|e| format!("image at {gpa:#x}: {e}"))
                    }
                }
            });
        if let Err(e) = result {
            xs.failures += 1;
            crate::log_limited!(
                XSTATE_LOG,
                log::Level::Warn,
                "vcpu{index}: guest extended register state {op:?} failed: {e}"
            );
        } else if xs.saves + xs.restores == 1 {
            log::info!(
                "vcpu{index}: switching the guest tasks' extended register state (XCR0 bits {:#x})",
                xs.supported
            );
        }
    }

    fn internal_error(&mut self) -> Step {
        let (suberror, data) = internal_error_data(self.fd.get_kvm_run());
        let mut regs = self.fd.get_regs().unwrap_or_default();
        let sregs = self.fd.get_sregs().unwrap_or_default();
        let report = build_report(&self.mem, self.index, suberror, data, &regs, &sregs);
        if self.vmm_emulation && suberror == KVM_INTERNAL_ERROR_EMULATION {
            if let Some(emulation) = vmm_emulation(&report.insn_bytes) {
                regs.rip = regs.rip.wrapping_add(u64::from(emulation.skip));
                if self.fd.set_regs(&regs).is_ok() {
                    self.vmm_emulated += 1;
                    crate::log_limited!(
                        VMM_EMULATION_LOG,
                        log::Level::Info,
                        "vcpu{}: emulated {} at rip {:#x} in the VMM ({} so far)",
                        self.index,
                        emulation.mnemonic,
                        report.rip,
                        self.vmm_emulated
                    );
                    return Step::Continue;
                }
            }
        }
        log::error!("{report}");
        Step::Stop(ExitReason::InternalError(Box::new(report)))
    }
}
