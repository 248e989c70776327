//! KVM_EXIT_INTERNAL_ERROR reports: suberror, guest RIP, the instruction bytes at RIP (read
//! through the guest's own page tables) — enough to find the instruction with `addr2line`.

use kvm_bindings::{
    kvm_regs, kvm_run, kvm_sregs, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT: u64 = 1;
const PTE_PAGE_SIZE: u64 = 1 << 7;
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// What KVM said, plus what we found in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalErrorReport {
    pub vcpu: u8,
    pub suberror: u32,
    /// Raw `internal.data[..ndata]`.
    pub data: Vec<u64>,
    pub rip: u64,
    pub rsp: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// Linear address of the instruction (CS base + RIP).
    pub linear_rip: u64,
    /// Guest physical address of RIP, if the page walk succeeded.
    pub rip_gpa: Option<u64>,
    /// Bytes at RIP read from guest memory (up to 15).
    pub insn_bytes: Vec<u8>,
    /// Bytes KVM's emulator reported, if it did.
    pub kvm_insn_bytes: Option<Vec<u8>>,
}

pub fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
        KVM_INTERNAL_ERROR_SIMUL_EX => "simultaneous exceptions",
        KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failure",
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl std::fmt::Display for InternalErrorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vcpu{} KVM_EXIT_INTERNAL_ERROR suberror {} ({}), rip {:#x}",
            self.vcpu,
            self.suberror,
            suberror_name(self.suberror),
            self.rip
        )?;
        match self.rip_gpa {
            Some(gpa) => write!(f, " (gpa {gpa:#x})")?,
            None => write!(f, " (not mapped)")?,
        }
        write!(f, ", insn bytes [{}]", hex(&self.insn_bytes))?;
        if let Some(kvm_bytes) = &self.kvm_insn_bytes {
            write!(f, ", kvm insn bytes [{}]", hex(kvm_bytes))?;
        }
        write!(
            f,
            ", rsp {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}, data {:x?}; find it with: addr2line -f -i -e vmlinux {:#x}",
            self.rsp, self.cr0, self.cr3, self.cr4, self.efer, self.data, self.rip
        )
    }
}

/// An instruction KVM's emulator gave up on that the VMM completes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmEmulation {
    pub mnemonic: &'static str,
    /// Bytes the instruction occupies: completing it means moving RIP past it.
    pub skip: u8,
}

/// Instructions completed by the VMM when KVM-PVM's emulator lacks them, keyed by their
/// leading bytes. Only instructions that are no-ops in the guest kernel's context belong
/// here:
/// - `fwait` (9b): waits for pending unmasked x87 exceptions; Linux uses it in
///   `fpu__drop()` with an exception-table fixup, so skipping it is what happens anyway.
pub const VMM_EMULATED: &[(&[u8], VmmEmulation)] = &[(
    &[0x9b],
    VmmEmulation {
        mnemonic: "fwait",
        skip: 1,
    },
)];

/// The VMM emulation for the instruction starting with `bytes`, if any.
pub fn vmm_emulation(bytes: &[u8]) -> Option<VmmEmulation> {
    VMM_EMULATED
        .iter()
        .find(|(prefix, _)| bytes.starts_with(prefix))
        .map(|(_, e)| *e)
}

/// The `internal` member of `kvm_run` after a KVM_EXIT_INTERNAL_ERROR.
pub fn internal_error_data(run: &kvm_run) -> (u32, Vec<u64>) {
    // SAFETY: the caller only passes a kvm_run whose exit_reason is KVM_EXIT_INTERNAL_ERROR, for
    // which `internal` is the active union member; all its fields are plain integers.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    (internal.suberror, internal.data[..n].to_vec())
}

/// Instruction bytes KVM attached to an emulation failure (`flags` bit 0 set).
pub fn kvm_insn_bytes(suberror: u32, data: &[u64]) -> Option<Vec<u8>> {
    if suberror != KVM_INTERNAL_ERROR_EMULATION || data.len() < 3 {
        return None;
    }
    if data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) == 0 {
        return None;
    }
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&data[1].to_le_bytes());
    raw[8..].copy_from_slice(&data[2].to_le_bytes());
    let len = usize::from(raw[0]).min(MAX_INSN_LEN);
    Some(raw[1..1 + len].to_vec())
}

fn read_entry<M: GuestMemory>(mem: &M, addr: u64) -> Option<u64> {
    mem.read_obj::<u64>(GuestAddress(addr)).ok()
}

/// Translates a linear address to guest physical by walking the guest's page tables as the
/// CPU would (4- or 5-level long mode, PAE, or 32-bit paging). `None` if not mapped.
pub fn translate<M: GuestMemory>(mem: &M, sregs: &kvm_sregs, linear: u64) -> Option<u64> {
    if sregs.cr0 & CR0_PG == 0 {
        return Some(linear & 0xffff_ffff);
    }
    if sregs.efer & EFER_LMA != 0 {
        let levels = if sregs.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        let mut table = sregs.cr3 & PTE_ADDR_MASK;
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (level - 1);
            let index = (linear >> shift) & 0x1ff;
            let entry = read_entry(mem, table + index * 8)?;
            if entry & PTE_PRESENT == 0 {
                return None;
            }
            // 1 GiB (level 3) and 2 MiB (level 2) pages.
            if (level == 2 || level == 3) && entry & PTE_PAGE_SIZE != 0 {
                let page_mask = (1u64 << shift) - 1;
                return Some((entry & PTE_ADDR_MASK & !page_mask) | (linear & page_mask));
            }
            table = entry & PTE_ADDR_MASK;
        }
        return Some(table | (linear & 0xfff));
    }
    let linear = linear & 0xffff_ffff;
    if sregs.cr4 & CR4_PAE != 0 {
        let pdpte = read_entry(mem, (sregs.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8)?;
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        let pde = read_entry(mem, (pdpte & PTE_ADDR_MASK) + ((linear >> 21) & 0x1ff) * 8)?;
        if pde & PTE_PRESENT == 0 {
            return None;
        }
        if pde & PTE_PAGE_SIZE != 0 {
            return Some((pde & PTE_ADDR_MASK & !0x1f_ffff) | (linear & 0x1f_ffff));
        }
        let pte = read_entry(mem, (pde & PTE_ADDR_MASK) + ((linear >> 12) & 0x1ff) * 8)?;
        return (pte & PTE_PRESENT != 0).then_some((pte & PTE_ADDR_MASK) | (linear & 0xfff));
    }
    let read32 = |addr: u64| mem.read_obj::<u32>(GuestAddress(addr)).ok().map(u64::from);
    let pde = read32((sregs.cr3 & 0xffff_f000) + ((linear >> 22) & 0x3ff) * 4)?;
    if pde & PTE_PRESENT == 0 {
        return None;
    }
    if sregs.cr4 & CR4_PSE != 0 && pde & PTE_PAGE_SIZE != 0 {
        return Some((pde & 0xffc0_0000) | (linear & 0x3f_ffff));
    }
    let pte = read32((pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4)?;
    (pte & PTE_PRESENT != 0).then_some((pte & 0xffff_f000) | (linear & 0xfff))
}

/// Reads up to 15 bytes at `linear`, translating each page separately.
pub fn read_insn_bytes<M: GuestMemory>(mem: &M, sregs: &kvm_sregs, linear: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_INSN_LEN);
    let mut addr = linear;
    while out.len() < MAX_INSN_LEN {
        let Some(gpa) = translate(mem, sregs, addr) else {
            break;
        };
        let in_page = (0x1000 - (addr & 0xfff)) as usize;
        let n = in_page.min(MAX_INSN_LEN - out.len());
        let mut buf = vec![0u8; n];
        if mem.read_slice(&mut buf, GuestAddress(gpa)).is_err() {
            break;
        }
        out.extend_from_slice(&buf);
        addr = addr.wrapping_add(n as u64);
    }
    out
}

/// Builds the report from the exit data and the vCPU's registers.
pub fn build_report<M: GuestMemory>(
    mem: &M,
    vcpu: u8,
    suberror: u32,
    data: Vec<u64>,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
) -> InternalErrorReport {
    let long_mode = sregs.efer & EFER_LMA != 0 && sregs.cs.l == 1;
    let linear_rip = if long_mode {
        regs.rip
    } else {
        sregs.cs.base.wrapping_add(regs.rip)
    };
    InternalErrorReport {
        vcpu,
        suberror,
        kvm_insn_bytes: kvm_insn_bytes(suberror, &data),
        data,
        rip: regs.rip,
        rsp: regs.rsp,
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
        linear_rip,
        rip_gpa: translate(mem, sregs, linear_rip),
        insn_bytes: read_insn_bytes(mem, sregs, linear_rip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).expect("mem")
    }

    fn put(m: &GuestMemoryMmap<()>, addr: u64, v: u64) {
        m.write_obj(v, GuestAddress(addr)).expect("write");
    }

    fn long_mode_sregs(cr3: u64) -> kvm_sregs {
        let mut s = kvm_sregs {
            cr0: CR0_PG | 1,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | 0x100,
            ..Default::default()
        };
        s.cs.l = 1;
        s
    }

    /// Maps 0xffffffff81000000 the way Linux does: PML4[511] -> PDPT[510] -> PD[8] (2 MiB).
    #[test]
    fn kernel_virtual_address_with_2m_pages() {
        let m = mem();
        put(&m, 0x1000 + 511 * 8, 0x2000 | 3);
        put(&m, 0x2000 + 510 * 8, 0x3000 | 3);
        put(&m, 0x3000 + 8 * 8, 0x100_0000 | 0x83);
        let s = long_mode_sregs(0x1000);
        assert_eq!(translate(&m, &s, 0xffff_ffff_8100_0000), Some(0x100_0000));
        assert_eq!(translate(&m, &s, 0xffff_ffff_8112_3456), Some(0x112_3456));
        assert_eq!(translate(&m, &s, 0xffff_ffff_8120_0000), None);
        assert_eq!(translate(&m, &s, 0x1000), None);
    }

    #[test]
    fn four_k_and_one_g_pages() {
        let m = mem();
        // PML4[0] -> PDPT at 0x2000; PDPT[0] -> PD at 0x3000; PD[1] -> PT at 0x4000.
        put(&m, 0x1000, 0x2000 | 3);
        put(&m, 0x2000, 0x3000 | 3);
        put(&m, 0x3000 + 8, 0x4000 | 3);
        put(&m, 0x4000 + 5 * 8, 0x7000 | 3);
        // PDPT[1] is a 1 GiB page at 0x4000_0000 -> phys 0 (aliasing is fine for the test).
        put(&m, 0x2000 + 8, 0x83);
        let s = long_mode_sregs(0x1000);
        assert_eq!(translate(&m, &s, 0x20_5abc), Some(0x7abc));
        assert_eq!(translate(&m, &s, 0x4000_1234), Some(0x1234));
        assert_eq!(translate(&m, &s, 0x20_6000), None);
    }

    #[test]
    fn unpaged_and_32bit_pse() {
        let m = mem();
        let flat = kvm_sregs {
            cr0: 1,
            ..Default::default()
        };
        assert_eq!(translate(&m, &flat, 0x10_0000), Some(0x10_0000));
        let s = kvm_sregs {
            cr0: CR0_PG | 1,
            cr3: 0x5000,
            cr4: CR4_PSE,
            ..Default::default()
        };
        m.write_obj(0x0040_0083u32, GuestAddress(0x5000 + 4 * 0x300))
            .expect("write");
        assert_eq!(translate(&m, &s, 0xc000_1234), Some(0x40_1234));
    }

    #[test]
    fn instruction_bytes_cross_pages_and_stop_at_unmapped() {
        let m = mem();
        let flat = kvm_sregs {
            cr0: 1,
            ..Default::default()
        };
        m.write_slice(&[0x0f, 0xc7, 0x0e, 0x90], GuestAddress(0x1ffe))
            .expect("write");
        let bytes = read_insn_bytes(&m, &flat, 0x1ffe);
        assert_eq!(bytes.len(), 15);
        assert_eq!(&bytes[..4], &[0x0f, 0xc7, 0x0e, 0x90]);
        let paged = long_mode_sregs(0x1000);
        assert!(read_insn_bytes(&m, &paged, 0xdead_0000).is_empty());
    }

    #[test]
    fn only_listed_instructions_are_emulated_by_the_vmm() {
        let e = vmm_emulation(&[0x9b, 0x65, 0x48]).expect("fwait");
        assert_eq!((e.mnemonic, e.skip), ("fwait", 1));
        assert_eq!(
            vmm_emulation(&[0xf3, 0x48, 0x0f, 0xb8, 0xc3]),
            None,
            "popcnt is not"
        );
        assert_eq!(vmm_emulation(&[]), None);
    }

    #[test]
    fn kvm_reported_instruction_bytes() {
        // flags = 1, insn_size = 3, bytes 0f 0b 90.
        let data = vec![1, u64::from_le_bytes([3, 0x0f, 0x0b, 0x90, 0, 0, 0, 0]), 0];
        assert_eq!(kvm_insn_bytes(1, &data), Some(vec![0x0f, 0x0b, 0x90]));
        assert_eq!(kvm_insn_bytes(1, &[0, 0, 0]), None);
        assert_eq!(kvm_insn_bytes(3, &data), None);
        // Size above 15 is clamped.
        let huge = vec![1, 0xff, u64::MAX];
        assert_eq!(kvm_insn_bytes(1, &huge).map(|b| b.len()), Some(15));
    }

    #[test]
    fn report_text_has_what_addr2line_needs() {
        let m = mem();
        put(&m, 0x1000 + 511 * 8, 0x2000 | 3);
        put(&m, 0x2000 + 510 * 8, 0x3000 | 3);
        put(&m, 0x3000 + 8 * 8, 0x100_0000 | 0x83);
        m.write_slice(&[0xcc], GuestAddress(0x100_0010))
            .expect("write");
        let s = long_mode_sregs(0x1000);
        let regs = kvm_regs {
            rip: 0xffff_ffff_8100_0010,
            ..Default::default()
        };
        let r = build_report(&m, 0, 1, vec![0], &regs, &s);
        assert_eq!(r.rip_gpa, Some(0x100_0010));
        assert_eq!(r.insn_bytes[0], 0xcc);
        let text = r.to_string();
        assert!(text.contains("suberror 1 (emulation failure)"), "{text}");
        assert!(
            text.contains("rip 0xffffffff81000010 (gpa 0x1000010)"),
            "{text}"
        );
        assert!(text.contains("insn bytes [cc 00"), "{text}");
        assert!(
            text.contains("addr2line -f -i -e vmlinux 0xffffffff81000010"),
            "{text}"
        );
    }
}
