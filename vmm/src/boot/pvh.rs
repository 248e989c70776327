//! PVH boot: `hvm_start_info`, the module list (initrd) and the memory map.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::params::{memory_map, InitrdRegion};
use crate::arch::layout::{
    CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START,
};

pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    #[error("{0} memory map entries do not fit the PVH memmap area")]
    TooManyEntries(usize),
    #[error("writing PVH boot data to guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Writes the PVH start info for a guest of `mem_size` bytes.
pub fn write_start_info<M: GuestMemory>(
    mem: &M,
    mem_size: u64,
    initrd: Option<InitrdRegion>,
) -> Result<hvm_start_info, PvhError> {
    let map = memory_map(mem_size);
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(PvhError::TooManyEntries(map.len()));
    }
    for (i, entry) in map.iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        };
        let addr = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(e, GuestAddress(addr))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn start_info_memmap_and_initrd_module() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let initrd = InitrdRegion {
            addr: 0x0700_0000,
            size: 4096,
        };
        write_start_info(&mem, 256 << 20, Some(initrd)).expect("pvh");
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).expect("read");
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_entries, 2);
        let m: hvm_modlist_entry = mem
            .read_obj(GuestAddress(info.modlist_paddr))
            .expect("read");
        assert_eq!((m.paddr, m.size), (0x0700_0000, 4096));
        let e: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 24))
            .expect("read");
        assert_eq!(
            (e.addr, e.size, e.type_),
            (0x10_0000, (256 << 20) - 0x10_0000, 1)
        );
    }

    #[test]
    fn no_initrd_means_no_modules() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let info = write_start_info(&mem, 64 << 20, None).expect("pvh");
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }
}
