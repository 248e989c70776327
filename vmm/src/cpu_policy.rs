//! The guest's CPUID and the command-line options chosen for the host we run on.
//!
//! On KVM-PVM ("native" mode) the guest kernel's code is run by KVM's instruction emulator,
//! which lacks a number of instructions. Every feature in [`PVM_REMOVED_FEATURES`] is taken out
//! of the guest's CPUID (so the kernel picks code paths without those instructions) and also
//! passed as `clearcpuid=` (belt and braces: some paths test the bits before CPUID is
//! consulted again). Edit the tables below to tune; nothing else needs to change.

use std::path::Path;

use kvm_bindings::kvm_cpuid_entry2;

/// A CPUID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One CPUID feature bit, named as in the kernel's `/proc/cpuinfo` (and `clearcpuid=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeature {
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
}

const fn f(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> CpuFeature {
    CpuFeature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// The feature bits this module knows by name.
pub const FEATURES: &[CpuFeature] = &[
    f("pclmulqdq", 1, 0, Reg::Ecx, 1),
    f("ssse3", 1, 0, Reg::Ecx, 9),
    f("fma", 1, 0, Reg::Ecx, 12),
    f("cx16", 1, 0, Reg::Ecx, 13),
    f("sse4_1", 1, 0, Reg::Ecx, 19),
    f("sse4_2", 1, 0, Reg::Ecx, 20),
    f("x2apic", 1, 0, Reg::Ecx, 21),
    f("movbe", 1, 0, Reg::Ecx, 22),
    f("popcnt", 1, 0, Reg::Ecx, 23),
    f("aes", 1, 0, Reg::Ecx, 25),
    f("xsave", 1, 0, Reg::Ecx, 26),
    f("osxsave", 1, 0, Reg::Ecx, 27),
    f("avx", 1, 0, Reg::Ecx, 28),
    f("f16c", 1, 0, Reg::Ecx, 29),
    f("rdrand", 1, 0, Reg::Ecx, 30),
    f("fsgsbase", 7, 0, Reg::Ebx, 0),
    f("bmi1", 7, 0, Reg::Ebx, 3),
    f("avx2", 7, 0, Reg::Ebx, 5),
    f("smep", 7, 0, Reg::Ebx, 7),
    f("bmi2", 7, 0, Reg::Ebx, 8),
    f("erms", 7, 0, Reg::Ebx, 9),
    f("invpcid", 7, 0, Reg::Ebx, 10),
    f("avx512f", 7, 0, Reg::Ebx, 16),
    f("rdseed", 7, 0, Reg::Ebx, 18),
    f("adx", 7, 0, Reg::Ebx, 19),
    f("smap", 7, 0, Reg::Ebx, 20),
    f("sha_ni", 7, 0, Reg::Ebx, 29),
    f("umip", 7, 0, Reg::Ecx, 2),
    f("pku", 7, 0, Reg::Ecx, 3),
    f("ospke", 7, 0, Reg::Ecx, 4),
    f("vaes", 7, 0, Reg::Ecx, 9),
    f("vpclmulqdq", 7, 0, Reg::Ecx, 10),
    f("rdpid", 7, 0, Reg::Ecx, 22),
    f("fsrm", 7, 0, Reg::Edx, 4),
    f("lahf_lm", 0x8000_0001, 0, Reg::Ecx, 0),
    f("svm", 0x8000_0001, 0, Reg::Ecx, 2),
    f("abm", 0x8000_0001, 0, Reg::Ecx, 5),
    f("sse4a", 0x8000_0001, 0, Reg::Ecx, 6),
    // KVM paravirt features (leaf 0x40000001 EAX); not x86 flags, so never in clearcpuid=.
    f("kvm_pv_eoi", KVM_FEATURES_LEAF, 0, Reg::Eax, 6),
    f("kvm_pv_unhalt", KVM_FEATURES_LEAF, 0, Reg::Eax, 7),
    f("kvm_pv_tlb_flush", KVM_FEATURES_LEAF, 0, Reg::Eax, 9),
    f("kvm_pv_send_ipi", KVM_FEATURES_LEAF, 0, Reg::Eax, 11),
    f("kvm_poll_control", KVM_FEATURES_LEAF, 0, Reg::Eax, 12),
    f("kvm_pv_sched_yield", KVM_FEATURES_LEAF, 0, Reg::Eax, 13),
];

/// CPUID leaf of KVM's paravirt feature bits.
pub const KVM_FEATURES_LEAF: u32 = 0x4000_0001;

/// Features KVM-PVM's emulator cannot run (from PLATFORM.md, plus the AVX family, which
/// needs XSAVE anyway). `x2apic` is removed until shown to work on PVM.
pub const PVM_REMOVED_FEATURES: &[&str] = &[
    "cx16",
    "xsave",
    "osxsave",
    "avx",
    "avx2",
    "avx512f",
    "f16c",
    "fma",
    "popcnt",
    "lahf_lm",
    "abm",
    "svm",
    "smap",
    "smep",
    "pku",
    "ospke",
    "umip",
    "fsgsbase",
    "rdpid",
    "bmi1",
    "bmi2",
    "erms",
    "fsrm",
    "rdrand",
    "rdseed",
    "movbe",
    "pclmulqdq",
    "vpclmulqdq",
    "aes",
    "vaes",
    "sse4_1",
    "sse4_2",
    "ssse3",
    "x2apic",
    "adx",
    "sha_ni",
    "invpcid",
];

/// KVM paravirt features hidden on PVM: with them an SMP guest livelocked while bringing up
/// its second CPU (one vCPU in `kvm_hypercall4` = PV send-IPI, the other spinning in
/// `queued_spin_lock_slowpath`); plain IPIs and spinlocks go through the emulated LAPIC.
pub const PVM_REMOVED_KVM_FEATURES: &[&str] = &[
    "kvm_pv_unhalt",
    "kvm_pv_tlb_flush",
    "kvm_pv_send_ipi",
    "kvm_pv_sched_yield",
];

/// CPUID leaves emptied on PVM. Leaf 0xd (XSAVE state components) stays as KVM offers it:
/// the guest kernel never reads it (`noxsave`, and `xsave` is removed), but KVM takes the
/// guest's XCR0 bits from it, and only those travel through KVM_GET_XSAVE / KVM_SET_XSAVE,
/// which switch the guest tasks' AVX and AVX-512 state (see [`PVM_XSTATE_PORT_OPTION`]).
pub const PVM_ZEROED_LEAVES: &[u32] = &[];

/// I/O port of the VMM's extended-state switching (`kvm::xstate`), as the guest kernel's
/// `vessel.xstate_port=` option (guest-kernel patch 0004).
///
/// Why: the guest kernel runs with `noxsave` (the emulator has no XSAVE) and switches only
/// the FXSAVE state (x87, XMM0-15) between its tasks, but guest user code runs natively and
/// sees the host's CPUID and XCR0 (user-mode CPUID and XGETBV are not intercepted on
/// KVM-PVM: a guest process reads AVX, AVX2, AVX-512F and XCR0 = 0xe7 whatever this table
/// and the guest kernel say; a guest kernel that set XCR0 = x87|SSE changed nothing). glibc
/// 2.36 then copies through ZMM16-31 (`__memmove_avx512_unaligned_erms`, `__memset_avx512_*`)
/// and YMM/ZMM/opmask registers leaked between guest tasks: busybox processes in containers
/// died of SIGSEGV. With this option the guest kernel asks the VMM to save and restore that
/// state with each FXSAVE/FXRSTOR of a task.
pub const PVM_XSTATE_PORT_OPTION: &str = "vessel.xstate_port=0xe40";

/// Command-line options for PVM (before `clearcpuid=`).
///
/// * `rodata=off`: mark_rodata_ro() rewrites the attributes of every kernel page; emulated, it
///   took 8.6 s of a 36 s boot (measured with qemu and vessel-vmm on this host).
/// * `noreplace-smp`: an SMP kernel on one vCPU otherwise rewrites every `lock` prefix through
///   text_poke (a page-table switch per site), about 4 s emulated.
/// * `clocksource=kvm-clock`: PVM cannot offset the TSC (guest `rdtsc` returns the host's),
///   so with the `tsc` clocksource (the guest's choice on an invariant-TSC host) a VM restored
///   from a snapshot sees its monotonic clock jump by the time the snapshot sat on disk;
///   kvmclock is restored with the snapshot (KVM_SET_CLOCK), so time continues as if the VM
///   had been paused. The vDSO serves kvm-clock too (1000 `clock_gettime` in ~30 us either
///   way, measured in the guest here).
/// * `vessel.xstate_port=`: see [`PVM_XSTATE_PORT_OPTION`]. (Before it, a
///   `GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,...` word here kept glibc off AVX; it missed
///   AVX-512, which glibc 2.36 prefers for `memcpy`/`memset`, and programs that pick their own
///   code. It is gone: the state is switched now.)
pub const PVM_CMDLINE: &[&str] = &[
    "noxsave",
    "nopti",
    "mitigations=off",
    "rodata=off",
    "noreplace-smp",
    "clocksource=kvm-clock",
    PVM_XSTATE_PORT_OPTION,
];

/// Which kind of KVM we run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// KVM-PVM: guest kernel code runs through KVM's emulator.
    Pvm,
    /// Hardware virtualization (VMX/SVM).
    Hardware,
}

impl std::fmt::Display for HostKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostKind::Pvm => "kvm-pvm",
            HostKind::Hardware => "kvm-hardware",
        })
    }
}

/// How to pick the host kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKindChoice {
    #[default]
    Auto,
    Force(HostKind),
}

impl std::str::FromStr for HostKindChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(HostKindChoice::Auto),
            "pvm" => Ok(HostKindChoice::Force(HostKind::Pvm)),
            "hardware" => Ok(HostKindChoice::Force(HostKind::Hardware)),
            other => Err(format!("unknown host kind {other:?} (auto, pvm, hardware)")),
        }
    }
}

/// What the host looks like (an OS effect, behind a trait for tests).
pub trait HostProbe {
    fn kvm_pvm_loaded(&self) -> bool;
}

/// Looks at `/sys/module/kvm_pvm`.
pub struct SysfsProbe;

impl HostProbe for SysfsProbe {
    fn kvm_pvm_loaded(&self) -> bool {
        Path::new("/sys/module/kvm_pvm").exists()
    }
}

/// The CPUID edits and command-line options for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProfile {
    pub kind: HostKind,
    pub removed_features: Vec<CpuFeature>,
    pub zeroed_leaves: Vec<u32>,
    pub cmdline: Vec<String>,
    /// Let the VMM complete instructions the in-kernel emulator lacks (`exits::VMM_EMULATED`),
    /// and switch the guest tasks' extended register state for it (`kvm::xstate`).
    pub vmm_emulation: bool,
}

/// Feature names the kernel's `clearcpuid=` does not know (it prints "unknown: ...").
const NOT_KERNEL_FLAG_NAMES: &[&str] = &["osxsave"];
/// Linux 6.1 copies the `clearcpuid=` value into a 128-byte buffer: longer lists are cut.
pub const CLEARCPUID_MAX_VALUE: usize = 127;

/// `clearcpuid=` for `names`, skipping names the kernel does not know and stopping before the
/// kernel's length limit. The CPUID filter removes every feature anyway; this only repeats
/// it for code that looks at CPUID before the kernel re-reads it.
pub fn clearcpuid_option(names: &[&str]) -> String {
    let mut value = String::new();
    for name in names.iter().filter(|n| !NOT_KERNEL_FLAG_NAMES.contains(n)) {
        let extra = if value.is_empty() {
            name.len()
        } else {
            name.len() + 1
        };
        if value.len() + extra > CLEARCPUID_MAX_VALUE {
            break;
        }
        if !value.is_empty() {
            value.push(',');
        }
        value.push_str(name);
    }
    format!("clearcpuid={value}")
}

fn feature(name: &str) -> Option<CpuFeature> {
    FEATURES.iter().copied().find(|f| f.name == name)
}

impl HostProfile {
    pub fn detect(choice: HostKindChoice, probe: &dyn HostProbe) -> Self {
        let kind = match choice {
            HostKindChoice::Force(kind) => kind,
            HostKindChoice::Auto if probe.kvm_pvm_loaded() => HostKind::Pvm,
            HostKindChoice::Auto => HostKind::Hardware,
        };
        Self::for_kind(kind)
    }

    pub fn for_kind(kind: HostKind) -> Self {
        match kind {
            HostKind::Hardware => HostProfile {
                kind,
                removed_features: Vec::new(),
                zeroed_leaves: Vec::new(),
                cmdline: Vec::new(),
                vmm_emulation: false,
            },
            HostKind::Pvm => {
                // Unknown names would be a typo in the table above; tests check there are none.
                let removed: Vec<CpuFeature> = PVM_REMOVED_FEATURES
                    .iter()
                    .chain(PVM_REMOVED_KVM_FEATURES)
                    .filter_map(|n| feature(n))
                    .collect();
                let mut cmdline: Vec<String> = PVM_CMDLINE.iter().map(|s| s.to_string()).collect();
                let names: Vec<&str> = removed
                    .iter()
                    .filter(|f| f.leaf != KVM_FEATURES_LEAF)
                    .map(|f| f.name)
                    .collect();
                cmdline.push(clearcpuid_option(&names));
                HostProfile {
                    kind,
                    removed_features: removed,
                    zeroed_leaves: PVM_ZEROED_LEAVES.to_vec(),
                    cmdline,
                    vmm_emulation: true,
                }
            }
        }
    }

    pub fn removed_names(&self) -> Vec<&'static str> {
        self.removed_features.iter().map(|f| f.name).collect()
    }

    /// Applies the profile to KVM's supported CPUID (the vCPU-independent part).
    pub fn filter_cpuid(&self, entries: &mut [kvm_cpuid_entry2]) {
        for entry in entries.iter_mut() {
            if self.zeroed_leaves.contains(&entry.function) {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
                continue;
            }
            for feat in &self.removed_features {
                if feat.leaf == entry.function && feat.subleaf == entry.index {
                    *reg_mut(entry, feat.reg) &= !(1u32 << feat.bit);
                }
            }
        }
    }
}

fn reg_mut(entry: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut entry.eax,
        Reg::Ebx => &mut entry.ebx,
        Reg::Ecx => &mut entry.ecx,
        Reg::Edx => &mut entry.edx,
    }
}

/// Per-vCPU CPUID: the APIC ID and the logical processor count.
pub fn set_vcpu_topology(entries: &mut [kvm_cpuid_entry2], cpu_index: u8, cpu_count: u8) {
    const EBX_APIC_ID_SHIFT: u32 = 24;
    const EBX_CPU_COUNT_SHIFT: u32 = 16;
    const EDX_HTT_BIT: u32 = 28;
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(cpu_index) << EBX_APIC_ID_SHIFT)
                    | (u32::from(cpu_count) << EBX_CPU_COUNT_SHIFT);
                if cpu_count > 1 {
                    entry.edx |= 1 << EDX_HTT_BIT;
                }
            }
            // Extended topology: EDX is the x2APIC ID.
            0xb | 0x1f => entry.edx = u32::from(cpu_index),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeProbe(bool);
    impl HostProbe for FakeProbe {
        fn kvm_pvm_loaded(&self) -> bool {
            self.0
        }
    }

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    #[test]
    fn every_pvm_feature_name_is_known() {
        for name in PVM_REMOVED_FEATURES.iter().chain(PVM_REMOVED_KVM_FEATURES) {
            assert!(
                feature(name).is_some(),
                "unknown feature name {name} in the PVM table"
            );
        }
        let p = HostProfile::for_kind(HostKind::Pvm);
        assert_eq!(
            p.removed_features.len(),
            PVM_REMOVED_FEATURES.len() + PVM_REMOVED_KVM_FEATURES.len()
        );
    }

    #[test]
    fn detection_follows_the_probe_unless_forced() {
        assert_eq!(
            HostProfile::detect(HostKindChoice::Auto, &FakeProbe(true)).kind,
            HostKind::Pvm
        );
        assert_eq!(
            HostProfile::detect(HostKindChoice::Auto, &FakeProbe(false)).kind,
            HostKind::Hardware
        );
        assert_eq!(
            HostProfile::detect(HostKindChoice::Force(HostKind::Hardware), &FakeProbe(true)).kind,
            HostKind::Hardware
        );
        assert_eq!("pvm".parse(), Ok(HostKindChoice::Force(HostKind::Pvm)));
        assert!("vmx".parse::<HostKindChoice>().is_err());
    }

    #[test]
    fn pvm_clears_emulator_unsafe_bits_and_keeps_the_rest() {
        let p = HostProfile::for_kind(HostKind::Pvm);
        let mut entries = vec![
            entry(1, 0, [0x800f12, 0, u32::MAX, u32::MAX]),
            entry(7, 0, [0, u32::MAX, u32::MAX, u32::MAX]),
            entry(7, 1, [u32::MAX, u32::MAX, u32::MAX, u32::MAX]),
            entry(0xd, 0, [7, 0x340, 0x340, 0]),
            entry(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            entry(0x8000_0001, 0, [0, 0, u32::MAX, u32::MAX]),
        ];
        p.filter_cpuid(&mut entries);
        let ecx1 = entries[0].ecx;
        for bit in [1, 9, 13, 19, 20, 21, 22, 23, 25, 26, 27, 28, 30] {
            assert_eq!(
                ecx1 & (1 << bit),
                0,
                "leaf 1 ecx bit {bit} should be cleared"
            );
        }
        assert_ne!(ecx1 & 1, 0, "sse3 stays");
        assert_ne!(ecx1 & (1 << 31), 0, "hypervisor bit stays");
        assert_eq!(entries[0].edx, u32::MAX, "leaf 1 edx untouched");
        let ebx7 = entries[1].ebx;
        for bit in [0, 3, 5, 7, 8, 9, 18, 20] {
            assert_eq!(
                ebx7 & (1 << bit),
                0,
                "leaf 7 ebx bit {bit} should be cleared"
            );
        }
        assert_eq!(entries[1].ecx & (1 << 22), 0, "rdpid");
        assert_eq!(entries[1].edx & (1 << 4), 0, "fsrm");
        assert_eq!(entries[2].ebx, u32::MAX, "subleaf 1 untouched");
        assert_eq!(
            (entries[3].eax, entries[3].ebx),
            (7, 0x340),
            "XSAVE leaf kept: KVM takes the guest's XCR0 bits from it"
        );
        assert_eq!(entries[4].ebx, 0x4b4d_564b, "KVM signature leaf kept");
        // KVM paravirt features: clocksource kept, PV IPIs/unhalt/TLB flush/yield hidden.
        let mut kvm = vec![entry(KVM_FEATURES_LEAF, 0, [0x0100_7efb, 0, 0, 0])];
        p.filter_cpuid(&mut kvm);
        assert_eq!(
            kvm[0].eax,
            0x0100_7efb & !((1 << 7) | (1 << 9) | (1 << 11) | (1 << 13))
        );
        assert_eq!(entries[5].ecx & 0b100101, 0, "lahf_lm, svm, abm");
    }

    #[test]
    fn hardware_host_leaves_cpuid_alone() {
        let p = HostProfile::for_kind(HostKind::Hardware);
        let mut entries = vec![entry(1, 0, [1, 2, u32::MAX, 4])];
        p.filter_cpuid(&mut entries);
        assert_eq!(entries[0].ecx, u32::MAX);
        assert!(p.cmdline.is_empty());
        assert!(
            !p.vmm_emulation,
            "no extended-state switching on hardware KVM"
        );
    }

    #[test]
    fn pvm_cmdline_lists_removed_features() {
        let p = HostProfile::for_kind(HostKind::Pvm);
        assert_eq!(&p.cmdline[..3], &["noxsave", "nopti", "mitigations=off"]);
        assert!(p.cmdline.iter().any(|o| o == "clocksource=kvm-clock"));
        // The guest kernel's option naming the VMM's extended-state port (kvm::xstate).
        let port = format!("vessel.xstate_port={:#x}", crate::kvm::xstate::XSTATE_PORT);
        assert!(p.cmdline.contains(&port), "{:?}", p.cmdline);
        assert!(
            !p.cmdline.iter().any(|o| o.starts_with("GLIBC_TUNABLES=")),
            "no glibc workaround in containers' environment"
        );
        let clear = p.cmdline.last().expect("clearcpuid");
        assert!(
            clear.starts_with("clearcpuid=cx16,xsave,avx,"),
            "osxsave is skipped: {clear}"
        );
        assert!(
            clear.len() - "clearcpuid=".len() <= CLEARCPUID_MAX_VALUE,
            "{clear}"
        );
        assert!(clear.contains(",popcnt,") && clear.contains(",smep,"));
        assert!(
            !clear.contains("kvm_"),
            "KVM paravirt bits are not kernel flag names: {clear}"
        );
    }

    #[test]
    fn clearcpuid_fits_the_kernel_buffer() {
        assert_eq!(
            clearcpuid_option(&["cx16", "osxsave", "popcnt"]),
            "clearcpuid=cx16,popcnt"
        );
        let many: Vec<&str> = std::iter::repeat_n("abcdefghi", 20).collect();
        let opt = clearcpuid_option(&many);
        let value = opt.trim_start_matches("clearcpuid=");
        assert!(value.len() <= CLEARCPUID_MAX_VALUE);
        assert_eq!(value.split(',').count(), 12, "whole names only: {value}");
    }

    #[test]
    fn topology_sets_apic_ids() {
        let mut entries = vec![
            entry(1, 0, [0, 0xff00_0800, 0, 0]),
            entry(0xb, 0, [0, 0, 0, 0]),
            entry(0xb, 1, [0, 0, 0, 0]),
        ];
        set_vcpu_topology(&mut entries, 3, 4);
        assert_eq!(entries[0].ebx, 0x0304_0800);
        assert_ne!(entries[0].edx & (1 << 28), 0);
        assert_eq!(entries[1].edx, 3);
        assert_eq!(entries[2].edx, 3);
    }
}
