//! The buffers of one descriptor chain, checked before any byte moves: every descriptor of
//! one direction, inside guest memory, the chain properly ended. Shared by the devices
//! (vsock packets, net frames); what a chain must hold beyond that is each device's rule.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as GuestMemoryTrait};

use super::device::GuestMemory;

/// Why a descriptor chain could not be walked or accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SegmentError {
    #[error("descriptor chain is empty or broken (loop, longer than the queue, bad index)")]
    Broken,
    #[error("{} chain has a {} descriptor", if *.want_writable { "device-writable" } else { "device-readable" }, if *.want_writable { "read-only" } else { "write-only" })]
    WrongDirection { want_writable: bool },
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("guest memory access failed")]
    Memory,
}

/// The buffers of one descriptor chain, all of one direction, all inside guest memory.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    segs: Vec<(GuestAddress, usize)>,
    total: usize,
}

impl Segments {
    /// Walks `chain`, requiring every descriptor to be device-writable (`writable`) or
    /// device-readable (`!writable`) and to lie inside guest memory. The queue bounds how many
    /// descriptors a chain has (a loop ends the walk as a broken chain).
    pub(crate) fn collect<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemory,
        writable: bool,
    ) -> Result<Self, SegmentError>
    where
        M: Deref<Target = GuestMemory>,
    {
        let mut out = Segments::default();
        let mut last_has_next = true;
        for desc in chain {
            last_has_next = desc.has_next();
            if desc.is_write_only() != writable {
                return Err(SegmentError::WrongDirection {
                    want_writable: writable,
                });
            }
            let len = desc.len();
            if len == 0 {
                continue;
            }
            let addr = desc.addr();
            let in_memory =
                addr.checked_add(u64::from(len)).is_some() && mem.check_range(addr, len as usize);
            if !in_memory {
                return Err(SegmentError::OutsideMemory {
                    addr: addr.raw_value(),
                    len,
                });
            }
            out.segs.push((addr, len as usize));
            out.total += len as usize;
        }
        if last_has_next {
            return Err(SegmentError::Broken);
        }
        Ok(out)
    }

    /// Bytes the chain holds.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// Copies `buf.len()` bytes from offset `offset` of the chain.
    pub(crate) fn read_at(
        &self,
        mem: &GuestMemory,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), SegmentError> {
        self.for_each_piece(offset, buf.len(), |addr, range| {
            mem.read_slice(&mut buf[range], addr)
                .map_err(|_| SegmentError::Memory)
        })
    }

    /// Copies `buf` to offset `offset` of the chain.
    pub(crate) fn write_at(
        &self,
        mem: &GuestMemory,
        offset: usize,
        buf: &[u8],
    ) -> Result<(), SegmentError> {
        self.for_each_piece(offset, buf.len(), |addr, range| {
            mem.write_slice(&buf[range], addr)
                .map_err(|_| SegmentError::Memory)
        })
    }

    fn for_each_piece(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), SegmentError>,
    ) -> Result<(), SegmentError> {
        if offset.checked_add(len).is_none_or(|end| end > self.total) {
            return Err(SegmentError::Memory);
        }
        let mut skip = offset;
        let mut done = 0;
        for &(addr, seg_len) in &self.segs {
            if done == len {
                break;
            }
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            let n = (seg_len - skip).min(len - done);
            let at = addr.unchecked_add(skip as u64);
            f(at, done..done + n)?;
            done += n;
            skip = 0;
        }
        Ok(())
    }
}
