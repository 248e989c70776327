//! Loading the kernel (ELF `vmlinux`) and the initrd into guest memory.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, ReadVolatile};

use super::params::InitrdRegion;
use crate::arch::layout::{low_mem_end, HIMEM_START};
use crate::arch::regs::BootEntry;

const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot open kernel {path}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {0} is not an ELF vmlinux (bad magic); a bzImage is not supported")]
    NotElf(PathBuf),
    #[error("loading kernel {path}")]
    LoadKernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error(
        "kernel {path} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); use --boot-entry linux64"
    )]
    NoPvhEntry { path: PathBuf },
    #[error("kernel ends at {kernel_end:#x}, beyond guest RAM below 4 GiB ({low_end:#x})")]
    KernelTooLarge { kernel_end: u64, low_end: u64 },
    #[error("cannot open initrd {path}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit between the kernel end ({kernel_end:#x}) and the end of low memory ({low_end:#x})")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        low_end: u64,
    },
    #[error("reading initrd {path} into guest memory")]
    ReadInitrd {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
}

/// Where the kernel went and how to enter it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// ELF entry point (the 64-bit `startup_64` for Linux).
    pub elf_entry: u64,
    /// PVH 32-bit entry, if the ELF has the note.
    pub pvh_entry: Option<u64>,
    /// First byte past the loaded image (including bss).
    pub end: u64,
}

impl LoadedKernel {
    /// The address to start the vCPU at for `entry`.
    pub fn entry_addr(&self, entry: BootEntry, path: &Path) -> Result<u64, LoaderError> {
        match entry {
            BootEntry::Linux64 => Ok(self.elf_entry),
            BootEntry::Pvh => self.pvh_entry.ok_or_else(|| LoaderError::NoPvhEntry {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Loads the ELF kernel at its physical addresses.
pub fn load_kernel<M: GuestMemory>(
    mem: &M,
    path: &Path,
    mem_size: u64,
) -> Result<LoadedKernel, LoaderError> {
    let open_err = |source| LoaderError::OpenKernel {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return Err(LoaderError::NotElf(path.to_path_buf()));
    }
    let result =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            LoaderError::LoadKernel {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let low_end = low_mem_end(mem_size);
    if result.kernel_end > low_end {
        return Err(LoaderError::KernelTooLarge {
            kernel_end: result.kernel_end,
            low_end,
        });
    }
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.raw_value()),
        _ => None,
    };
    Ok(LoadedKernel {
        elf_entry: result.kernel_load.raw_value(),
        pvh_entry,
        end: result.kernel_end,
    })
}

/// Where an initrd of `size` bytes goes: page aligned, at the top of RAM below 4 GiB.
pub fn initrd_placement(size: u64, kernel_end: u64, mem_size: u64) -> Option<u64> {
    let low_end = low_mem_end(mem_size);
    let addr = low_end.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Copies the initrd to the top of low memory.
pub fn load_initrd<M: GuestMemory>(
    mem: &M,
    path: &Path,
    kernel_end: u64,
    mem_size: u64,
) -> Result<InitrdRegion, LoaderError> {
    let open_err = |source| LoaderError::OpenInitrd {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let addr = initrd_placement(size, kernel_end, mem_size).ok_or_else(|| {
        LoaderError::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
            kernel_end,
            low_end: low_mem_end(mem_size),
        }
    })?;
    read_into_guest(mem, &mut file, addr, size as usize).map_err(|source| {
        LoaderError::ReadInitrd {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(InitrdRegion { addr, size })
}

fn read_into_guest<M: GuestMemory, F: ReadVolatile>(
    mem: &M,
    file: &mut F,
    addr: u64,
    size: usize,
) -> Result<(), vm_memory::GuestMemoryError> {
    if size == 0 {
        return Ok(());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), file, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn initrd_goes_to_top_of_low_memory_page_aligned() {
        let mem = 64u64 << 20;
        assert_eq!(initrd_placement(4096, 0x200_0000, mem), Some(mem - 4096));
        assert_eq!(initrd_placement(100, 0x200_0000, mem), Some(mem - 4096));
        // Does not fit above the kernel.
        assert_eq!(initrd_placement(mem - 0x100_0000, 0x200_0000, mem), None);
        assert_eq!(initrd_placement(mem + 1, 0, mem), None);
        // Large guests keep it below the MMIO hole.
        let big = 8u64 << 30;
        assert_eq!(
            initrd_placement(4096, 0x200_0000, big),
            Some(0xd000_0000 - 4096)
        );
    }

    #[test]
    fn non_elf_kernel_is_rejected() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(b"MZ this is a bzImage, not an ELF")
            .expect("write");
        assert!(matches!(
            load_kernel(&mem, f.path(), 4 << 20),
            Err(LoaderError::NotElf(_))
        ));
        assert!(matches!(
            load_kernel(&mem, Path::new("/nonexistent/vmlinux"), 4 << 20),
            Err(LoaderError::OpenKernel { .. })
        ));
    }

    #[test]
    fn initrd_bytes_are_copied() {
        let size = 4u64 << 20;
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).expect("mem");
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(b"070701initrd-bytes").expect("write");
        let region = load_initrd(&mem, f.path(), 0x20_0000, size).expect("initrd");
        assert_eq!(region.size, 18);
        assert_eq!(region.addr, size - 4096);
        let mut buf = [0u8; 18];
        mem.read_slice(&mut buf, GuestAddress(region.addr))
            .expect("read");
        assert_eq!(&buf, b"070701initrd-bytes");
    }
}
