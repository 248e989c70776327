//! The guest's memory map and the Linux zero page (`boot_params`) for the 64-bit entry.

use linux_loader::loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::arch::layout::{
    low_mem_end, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, FIRST_ADDR_PAST_32BITS, HIMEM_START,
    MMIO_GAP_START, ZERO_PAGE_START,
};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Alignment the kernel may be relocated to (16 MiB), as Firecracker sets it.
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// One memory map entry, shared by the e820 table and the PVH memmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// RAM as the guest sees it: base memory below the EBDA, then from 1 MiB to the MMIO hole,
/// then anything past 4 GiB.
pub fn memory_map(mem_size: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![MemoryMapEntry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    let low_end = low_mem_end(mem_size);
    if low_end > HIMEM_START {
        map.push(MemoryMapEntry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(MemoryMapEntry {
            addr: FIRST_ADDR_PAST_32BITS,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

/// Where the initrd was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    pub addr: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("too many memory map entries ({0})")]
    TooManyEntries(usize),
    #[error("command line of {0} bytes exceeds {CMDLINE_MAX_SIZE}")]
    CmdlineTooLong(usize),
    #[error("writing boot data to guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// The zero page for `cmdline_len` bytes of command line (without NUL).
pub fn build_boot_params(
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = u32::try_from(cmdline_len)
        .ok()
        .filter(|len| (*len as usize) < CMDLINE_MAX_SIZE)
        .ok_or(BootParamsError::CmdlineTooLong(cmdline_len))?;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = memory_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyEntries(map.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.type_ = entry.kind;
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page at `ZERO_PAGE_START`.
pub fn write_boot_params<M: GuestMemory>(
    mem: &M,
    params: &boot_params,
) -> Result<(), BootParamsError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

/// Writes the NUL-terminated command line at `CMDLINE_START`.
pub fn write_cmdline<M: GuestMemory>(mem: &M, cmdline: &str) -> Result<(), BootParamsError> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(BootParamsError::CmdlineTooLong(cmdline.len()));
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn memory_map_for_small_guest() {
        let map = memory_map(128 << 20);
        assert_eq!(
            map,
            vec![
                MemoryMapEntry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                MemoryMapEntry {
                    addr: HIMEM_START,
                    size: (128 << 20) - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn memory_map_for_large_guest_has_high_ram() {
        let size = 5u64 << 30;
        let map = memory_map(size);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(map[2].addr, 1 << 32);
        assert_eq!(map[2].size, size - MMIO_GAP_START);
        let ram: u64 = map.iter().map(|e| e.size).sum();
        assert_eq!(ram, size - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn zero_page_fields() {
        let initrd = InitrdRegion {
            addr: 0x7f0_0000,
            size: 0x1234,
        };
        let p = build_boot_params(128 << 20, 42, Some(initrd)).expect("params");
        let hdr = p.hdr;
        // Copy fields out of the packed struct before comparing.
        let (flag, magic, loader) = ({ hdr.boot_flag }, { hdr.header }, { hdr.type_of_loader });
        assert_eq!((flag, magic, loader), (0xaa55, 0x5372_6448, 0xff));
        let (ptr, size) = ({ hdr.cmd_line_ptr }, { hdr.cmdline_size });
        assert_eq!((ptr, size), (CMDLINE_START as u32, 42));
        let (image, len) = ({ hdr.ramdisk_image }, { hdr.ramdisk_size });
        assert_eq!((image, len), (0x7f0_0000, 0x1234));
        assert_eq!(p.e820_entries, 2);
        let e1 = p.e820_table[1];
        assert_eq!(
            (e1.addr, e1.size, e1.type_),
            (HIMEM_START, (128 << 20) - HIMEM_START, 1)
        );
    }

    #[test]
    fn zero_page_lands_at_its_address() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let p = build_boot_params(64 << 20, 10, None).expect("params");
        write_boot_params(&mem, &p).expect("write");
        // boot_flag lives at offset 0x1fe of the zero page.
        let flag: u16 = mem
            .read_obj(GuestAddress(ZERO_PAGE_START + 0x1fe))
            .expect("read");
        assert_eq!(flag, 0xaa55);
        let entries: u8 = mem
            .read_obj(GuestAddress(ZERO_PAGE_START + 0x1e8))
            .expect("read");
        assert_eq!(entries, 2);
    }

    #[test]
    fn overlong_cmdline_is_rejected() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_cmdline(&mem, &long),
            Err(BootParamsError::CmdlineTooLong(_))
        ));
        assert!(build_boot_params(64 << 20, CMDLINE_MAX_SIZE, None).is_err());
        write_cmdline(&mem, "console=ttyS0").expect("write");
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .expect("read");
        assert_eq!(&buf, b"console=ttyS0\0");
    }
}
