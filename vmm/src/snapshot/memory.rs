//! Guest memory in `memory.bin`: the RAM regions back to back, all-zero pages left as holes
//! (a 128 MiB guest that touched 30 MiB costs 30 MiB of disk). Restore maps the file
//! MAP_PRIVATE: pages come from the page cache, shared by every VM restored from the same
//! snapshot, and are copied only when a guest writes them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemory as _, GuestMemoryRegion, GuestRegionMmap,
};

use crate::arch::layout::ram_regions;
use crate::devices::virtio::device::GuestMemory;

pub const PAGE_SIZE: usize = 4096;
/// Guest memory is copied out in chunks of this size.
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("creating {path}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading guest memory at {addr:#x}")]
    ReadGuest {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("opening memory file {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("memory file {path} has {actual} bytes, the snapshot needs {expected}")]
    Size {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("memory layout in the snapshot {found:?} is not the layout of {mem_size} bytes of RAM {expected:?}")]
    Layout {
        mem_size: u64,
        found: Vec<RegionInfo>,
        expected: Vec<RegionInfo>,
    },
    #[error("mapping {path} at offset {offset:#x}")]
    Map {
        path: PathBuf,
        offset: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("building the guest memory map: {0}")]
    Build(String),
}

/// Where one RAM region lives in the guest and in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// The regions of `mem_size` bytes of RAM, in file order.
pub fn layout(mem_size: u64) -> Vec<RegionInfo> {
    let mut offset = 0;
    ram_regions(mem_size)
        .into_iter()
        .map(|(guest_addr, size)| {
            let r = RegionInfo {
                guest_addr,
                size,
                file_offset: offset,
            };
            offset += size;
            r
        })
        .collect()
}

/// What [`SparseWriter`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparseStats {
    /// Bytes of non-zero pages written.
    pub data_bytes: u64,
    /// Logical size of the file.
    pub file_size: u64,
}

/// Writes pages at their offsets, skipping all-zero ones (they stay holes).
pub struct SparseWriter<'a> {
    file: &'a File,
    path: &'a Path,
    stats: SparseStats,
}

fn is_zero(page: &[u8]) -> bool {
    let mut words = page.chunks_exact(16);
    words.all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

impl<'a> SparseWriter<'a> {
    pub fn new(file: &'a File, path: &'a Path) -> Self {
        Self {
            file,
            path,
            stats: SparseStats::default(),
        }
    }

    /// Writes `data` at `offset`, leaving its all-zero pages out (`offset` page aligned).
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), MemoryFileError> {
        let mut run_start: Option<usize> = None;
        let pages = data.len().div_ceil(PAGE_SIZE);
        for i in 0..=pages {
            let page =
                (i < pages).then(|| &data[i * PAGE_SIZE..((i + 1) * PAGE_SIZE).min(data.len())]);
            let keep = page.is_some_and(|p| !is_zero(p));
            match (keep, run_start) {
                (true, None) => run_start = Some(i * PAGE_SIZE),
                (false, Some(start)) => {
                    let end = (i * PAGE_SIZE).min(data.len());
                    self.file
                        .write_all_at(&data[start..end], offset + start as u64)
                        .map_err(|source| MemoryFileError::Write {
                            path: self.path.to_path_buf(),
                            source,
                        })?;
                    self.stats.data_bytes += (end - start) as u64;
                    run_start = None;
                }
                _ => {}
            }
        }
        self.stats.file_size = self.stats.file_size.max(offset + data.len() as u64);
        Ok(())
    }

    /// Sets the file's length to cover everything (trailing zero pages included).
    pub fn finish(self, size: u64) -> Result<SparseStats, MemoryFileError> {
        self.file
            .set_len(size)
            .map_err(|source| MemoryFileError::Write {
                path: self.path.to_path_buf(),
                source,
            })?;
        Ok(SparseStats {
            file_size: size,
            ..self.stats
        })
    }
}

/// Writes all guest RAM to a new file at `path` (which must not exist: a memory file may be
/// mapped by running VMs and is never rewritten in place). Synced before returning.
pub fn save_memory(
    mem: &GuestMemory,
    mem_size: u64,
    path: &Path,
) -> Result<(Vec<RegionInfo>, SparseStats), MemoryFileError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| MemoryFileError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    let regions = layout(mem_size);
    let mut writer = SparseWriter::new(&file, path);
    let mut buf = vec![0u8; CHUNK];
    for r in &regions {
        let mut done = 0u64;
        while done < r.size {
            let n = (r.size - done).min(CHUNK as u64) as usize;
            let addr = r.guest_addr + done;
            mem.read_slice(&mut buf[..n], GuestAddress(addr))
                .map_err(|source| MemoryFileError::ReadGuest { addr, source })?;
            writer.write_at(&buf[..n], r.file_offset + done)?;
            done += n as u64;
        }
    }
    let total = regions.iter().map(|r| r.size).sum();
    let stats = writer.finish(total)?;
    file.sync_all().map_err(|source| MemoryFileError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((regions, stats))
}

/// Checks the memory file against the snapshot's layout without mapping it.
pub fn check_memory_file(
    path: &Path,
    mem_size: u64,
    regions: &[RegionInfo],
) -> Result<File, MemoryFileError> {
    let expected = layout(mem_size);
    if regions != expected.as_slice() {
        return Err(MemoryFileError::Layout {
            mem_size,
            found: regions.to_vec(),
            expected,
        });
    }
    let file = File::open(path).map_err(|source| MemoryFileError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let actual = file
        .metadata()
        .map_err(|source| MemoryFileError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if actual != mem_size {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            actual,
            expected: mem_size,
        });
    }
    Ok(file)
}

/// Guest RAM mapped copy-on-write from the memory file.
pub fn map_memory_file(
    path: &Path,
    mem_size: u64,
    regions: &[RegionInfo],
) -> Result<GuestMemory, MemoryFileError> {
    let file = Arc::new(check_memory_file(path, mem_size, regions)?);
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let mapping = MmapRegionBuilder::new(r.size as usize)
            .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| MemoryFileError::Map {
                path: path.to_path_buf(),
                offset: r.file_offset,
                source,
            })?;
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr)).ok_or_else(|| {
                MemoryFileError::Build(format!("region at {:#x} overflows", r.guest_addr))
            })?;
        mapped.push(region);
    }
    let mem =
        GuestMemory::from_regions(mapped).map_err(|e| MemoryFileError::Build(e.to_string()))?;
    debug_assert_eq!(
        mem.iter().map(|r| r.len()).sum::<u64>(),
        mem_size,
        "mapped size"
    );
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_writer_skips_zero_pages_and_keeps_content() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.bin");
        let file = File::create(&path).expect("create");
        let size = 64 * PAGE_SIZE;
        let mut data = vec![0u8; size];
        data[5 * PAGE_SIZE + 7] = 1; // one page
        data[10 * PAGE_SIZE..13 * PAGE_SIZE].fill(0xaa); // a run of three
        *data.last_mut().expect("last") = 9; // the last page
        let mut w = SparseWriter::new(&file, &path);
        w.write_at(&data[..size / 2], 0).expect("write");
        w.write_at(&data[size / 2..], (size / 2) as u64)
            .expect("write");
        let stats = w.finish(size as u64).expect("finish");
        assert_eq!(stats.data_bytes, 5 * PAGE_SIZE as u64);
        assert_eq!(stats.file_size, size as u64);
        drop(file);
        assert_eq!(std::fs::read(&path).expect("read"), data);
        // Holes: far fewer 512-byte blocks allocated than the logical size needs.
        let blocks = std::fs::metadata(&path).expect("meta").blocks();
        assert!(
            blocks * 512 < (size as u64) / 2,
            "{blocks} blocks allocated"
        );
    }

    #[test]
    fn partial_last_page_and_all_zero_input() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.bin");
        let file = File::create(&path).expect("create");
        let mut w = SparseWriter::new(&file, &path);
        w.write_at(&[0u8; 3 * PAGE_SIZE], 0).expect("zeros");
        w.write_at(&[1, 2, 3], 3 * PAGE_SIZE as u64).expect("tail");
        let stats = w.finish(3 * PAGE_SIZE as u64 + 3).expect("finish");
        assert_eq!(stats.data_bytes, 3);
        let back = std::fs::read(&path).expect("read");
        assert_eq!(back.len(), 3 * PAGE_SIZE + 3);
        assert_eq!(&back[3 * PAGE_SIZE..], &[1, 2, 3]);
        assert!(back[..3 * PAGE_SIZE].iter().all(|&b| b == 0));
    }

    #[test]
    fn memory_round_trips_through_a_private_mapping() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("memory.bin");
        let size = 32u64 << 20;
        let mem = crate::kvm::vm::create_guest_memory(size).expect("mem");
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1234))
            .expect("write");
        mem.write_obj(0x77u8, GuestAddress(size - 1))
            .expect("write");
        let (regions, stats) = save_memory(&mem, size, &path).expect("save");
        assert_eq!(stats.data_bytes, 2 * PAGE_SIZE as u64);
        assert!(
            matches!(
                save_memory(&mem, size, &path),
                Err(MemoryFileError::Create { .. })
            ),
            "an existing memory file is never overwritten"
        );
        let restored = map_memory_file(&path, size, &regions).expect("map");
        assert_eq!(
            restored
                .read_obj::<u32>(GuestAddress(0x1234))
                .expect("read"),
            0xdead_beef
        );
        assert_eq!(
            restored
                .read_obj::<u8>(GuestAddress(size - 1))
                .expect("read"),
            0x77
        );
        // Writes stay private to this mapping.
        restored
            .write_obj(0x1111_1111_u32, GuestAddress(0x1234))
            .expect("write");
        let again = map_memory_file(&path, size, &regions).expect("map");
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1234)).expect("read"),
            0xdead_beef
        );
    }

    #[test]
    fn short_or_missing_memory_file_and_wrong_layout_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("memory.bin");
        let size = 32u64 << 20;
        let regions = layout(size);
        assert!(matches!(
            map_memory_file(&path, size, &regions),
            Err(MemoryFileError::Open { .. })
        ));
        std::fs::File::create(&path)
            .expect("create")
            .set_len(size - 4096)
            .expect("len");
        let err = map_memory_file(&path, size, &regions).expect_err("short");
        assert!(matches!(err, MemoryFileError::Size { .. }), "{err}");
        assert!(err.to_string().contains("needs 33554432"), "{err}");
        let mut bad = regions.clone();
        bad[0].size -= 4096;
        assert!(matches!(
            map_memory_file(&path, size, &bad),
            Err(MemoryFileError::Layout { .. })
        ));
    }

    #[test]
    fn layout_is_contiguous_in_the_file() {
        let l = layout(4 << 30);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].file_offset, 0);
        assert_eq!(l[1].file_offset, l[0].size);
        assert_eq!(l[1].guest_addr, 1 << 32);
    }
}
