//! Initial vCPU register state for the two boot entries, and the boot-time structures in
//! guest memory they point at (GDT, IDT, identity page tables).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt::{kvm_segment_from_gdt, GDT_LINUX64, GDT_PVH};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

pub const X86_CR0_PE: u64 = 0x1;
pub const X86_CR0_PG: u64 = 0x8000_0000;
pub const X86_CR4_PAE: u64 = 0x20;
pub const EFER_LME: u64 = 0x100;
pub const EFER_LMA: u64 = 0x400;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode with identity paging, RSI = zero page.
    Linux64,
}

impl std::fmt::Display for BootEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootEntry::Pvh => "pvh",
            BootEntry::Linux64 => "linux64",
        })
    }
}

impl std::str::FromStr for BootEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pvh" => Ok(BootEntry::Pvh),
            "linux64" => Ok(BootEntry::Linux64),
            other => Err(format!(
                "unknown boot entry {other:?} (expected pvh or linux64)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot structures to guest memory at {addr:#x}")]
    GuestMemory {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

fn write_u64<M: GuestMemory>(mem: &M, addr: u64, val: u64) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError::GuestMemory { addr, source })
}

/// General purpose registers at the kernel's entry point.
pub fn boot_regs(entry: BootEntry, entry_addr: u64) -> kvm_regs {
    match entry {
        BootEntry::Pvh => kvm_regs {
            rflags: 0x2,
            rip: entry_addr,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
        BootEntry::Linux64 => kvm_regs {
            rflags: 0x2,
            rip: entry_addr,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// FPU state as after reset (what Linux expects from a boot loader).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

fn write_gdt_and_idt<M: GuestMemory>(mem: &M, gdt: &[u64; 4]) -> Result<(), RegsError> {
    for (i, entry) in gdt.iter().enumerate() {
        write_u64(mem, BOOT_GDT_START + 8 * i as u64, *entry)?;
    }
    write_u64(mem, BOOT_IDT_START, 0)
}

/// Identity-maps the first 1 GiB with 2 MiB pages (enough for the kernel's early code).
pub fn write_identity_page_tables<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    write_u64(mem, PML4_START, PDPTE_START | 0x03)?;
    write_u64(mem, PDPTE_START, PDE_START | 0x03)?;
    for i in 0..512u64 {
        // Present | writable | page size (2 MiB).
        write_u64(mem, PDE_START + i * 8, (i << 21) | 0x83)?;
    }
    Ok(())
}

/// Fills `sregs` (as read from the fresh vCPU) for `entry` and writes the structures they
/// reference into guest memory.
pub fn setup_sregs<M: GuestMemory>(
    mem: &M,
    entry: BootEntry,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let gdt = match entry {
        BootEntry::Pvh => &GDT_PVH,
        BootEntry::Linux64 => &GDT_LINUX64,
    };
    write_gdt_and_idt(mem, gdt)?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(gdt[3], 3);

    match entry {
        BootEntry::Pvh => {
            sregs.cr0 = X86_CR0_PE;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootEntry::Linux64 => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory")
    }

    #[test]
    fn linux64_sets_long_mode_and_page_tables() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&m, BootEntry::Linux64, &mut sregs).expect("sregs");
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PE, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cs.selector, 8);
        assert_eq!(sregs.ss.selector, 16);
        assert_eq!(sregs.gdt.limit, 31);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).expect("read");
        assert_eq!(pml4, PDPTE_START | 3);
        let pde_last: u64 = m.read_obj(GuestAddress(PDE_START + 511 * 8)).expect("read");
        assert_eq!(pde_last, (511 << 21) | 0x83);
        let gdt1: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 8)).expect("read");
        assert_eq!(gdt1, GDT_LINUX64[1]);
    }

    #[test]
    fn pvh_is_flat_protected_mode_without_paging() {
        let m = mem();
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        setup_sregs(&m, BootEntry::Pvh, &mut sregs).expect("sregs");
        assert_eq!(sregs.cr0, X86_CR0_PE);
        assert_eq!(sregs.cr4, 0);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(sregs.cs.l, 0);
        let regs = boot_regs(BootEntry::Pvh, 0x100_0000);
        assert_eq!(
            (regs.rip, regs.rbx, regs.rflags),
            (0x100_0000, PVH_INFO_START, 2)
        );
    }

    #[test]
    fn linux64_regs_point_at_zero_page() {
        let regs = boot_regs(BootEntry::Linux64, 0x100_0200);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(regs.rsp, BOOT_STACK_POINTER);
        assert_eq!(regs.rip, 0x100_0200);
    }

    #[test]
    fn boot_entry_parses() {
        assert_eq!("pvh".parse::<BootEntry>(), Ok(BootEntry::Pvh));
        assert_eq!("linux64".parse::<BootEntry>(), Ok(BootEntry::Linux64));
        assert!("bios".parse::<BootEntry>().is_err());
    }
}
