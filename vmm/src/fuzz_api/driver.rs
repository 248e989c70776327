//! The driver side of split virtqueues, written straight into guest memory (what the guest's
//! virtio driver does), with enough bookkeeping to check what the device gives back.
//!
//! A queue stays *trusted* while only this driver wrote its rings and descriptors; once the
//! fuzz input wrote raw descriptors or ring indices, what comes back cannot be checked
//! against what was posted, and only "no panic" is left to check.

use std::collections::HashMap;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::devices::virtio::device::GuestMemory;

pub(crate) const VRING_DESC_F_NEXT: u16 = 1;
pub(crate) const VRING_DESC_F_WRITE: u16 = 2;

/// One buffer of a chain to post: contents (or poison for a writable buffer), length and
/// whether the device may write it.
#[derive(Debug, Clone)]
pub(crate) struct Part<'a> {
    pub bytes: Option<&'a [u8]>,
    pub len: u32,
    pub writable: bool,
}

/// A posted chain: its buffers (addr, len, writable).
#[derive(Debug, Clone, Default)]
pub(crate) struct Chain {
    pub descs: Vec<(u64, u32, bool)>,
    /// Its descriptor indices.
    idxs: Vec<u16>,
    /// Caller's note (e.g. the FUSE `unique` or the RX capacity).
    pub tag: u64,
}

impl Chain {
    pub fn writable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.2)
            .map(|d| u64::from(d.1))
            .sum()
    }

    /// The bytes of its writable buffers, in order, cut to `len`.
    pub fn written(&self, mem: &GuestMemory, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, dlen, writable) in &self.descs {
            if !writable {
                continue;
            }
            let mut b = vec![0u8; dlen as usize];
            mem.read_slice(&mut b, GuestAddress(addr))
                .expect("driver buffer in guest memory");
            out.extend_from_slice(&b);
        }
        out.truncate(len as usize);
        out
    }
}

/// A used-ring entry: the head, the used length, and the chain if the driver knows it.
#[derive(Debug)]
pub(crate) struct UsedChain {
    pub head: u32,
    pub len: u32,
    pub chain: Option<Chain>,
}

pub(crate) struct DriverQueue {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    /// Per descriptor index: not held by a chain in flight.
    free: Vec<bool>,
    /// Where the next free-index search starts.
    cursor: u16,
    in_flight: HashMap<u16, Chain>,
    avail_idx: u16,
    last_used: u16,
    data_base: u64,
    data_end: u64,
    data_next: u64,
    pub trusted: bool,
}

impl DriverQueue {
    /// Rings at `desc`/`avail`/`used` for `size` (a power of two) entries; buffers from
    /// `[data_base, data_base + data_len)`.
    pub fn new(desc: u64, avail: u64, used: u64, size: u16, data_base: u64, data_len: u64) -> Self {
        Self {
            desc,
            avail,
            used,
            size,
            free: vec![true; usize::from(size)],
            cursor: 0,
            in_flight: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
            data_base,
            data_end: data_base + data_len,
            data_next: data_base,
            trusted: true,
        }
    }

    /// Zeroes the rings in guest memory, as a driver does when it sets a queue up (rings
    /// reused after a device reset must not show the last session's indices).
    pub fn zero_rings(&self, mem: &GuestMemory) {
        let size = u64::from(self.size);
        for (addr, len) in [
            (self.desc, 16 * size),
            (self.avail, 6 + 2 * size),
            (self.used, 6 + 8 * size),
        ] {
            mem.write_slice(&vec![0u8; len as usize], GuestAddress(addr))
                .expect("rings in guest memory");
        }
    }

    /// Configures the device side of the queue as the MMIO transport does on QueueReady.
    pub fn configure(&self, q: &mut Queue) {
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
    }

    fn alloc(&mut self, len: u32) -> Option<u64> {
        let len = (u64::from(len) + 7) & !7;
        if self.data_next + len > self.data_end {
            if !self.in_flight.is_empty() || self.data_base + len > self.data_end {
                return None;
            }
            self.data_next = self.data_base;
        }
        let addr = self.data_next;
        self.data_next += len;
        Some(addr)
    }

    fn store_desc(&self, mem: &GuestMemory, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        mem.write_obj(
            raw,
            GuestAddress(self.desc + 16 * u64::from(idx % self.size)),
        )
        .expect("descriptor table in guest memory");
    }

    /// Writes and publishes a chain; `None` (nothing posted) when the driver is out of
    /// descriptors or buffer space.
    pub fn add_chain(&mut self, mem: &GuestMemory, parts: &[Part<'_>], tag: u64) -> Option<u16> {
        if parts.is_empty() || parts.len() > self.free.iter().filter(|f| **f).count() {
            return None;
        }
        let mut addrs = Vec::with_capacity(parts.len());
        for p in parts {
            addrs.push(self.alloc(p.len)?);
        }
        let mut idxs = Vec::with_capacity(parts.len());
        while idxs.len() < parts.len() {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % self.size;
            if std::mem::replace(&mut self.free[usize::from(i)], false) {
                idxs.push(i);
            }
        }
        let mut chain = Chain {
            descs: Vec::new(),
            idxs: idxs.clone(),
            tag,
        };
        for (i, p) in parts.iter().enumerate() {
            let addr = addrs[i];
            match p.bytes {
                Some(b) => {
                    let n = b.len().min(p.len as usize);
                    mem.write_slice(&b[..n], GuestAddress(addr))
                        .expect("driver buffer in guest memory");
                }
                // Poison, so a check sees what the device really wrote.
                None if p.writable => mem
                    .write_slice(&vec![0xa5; p.len as usize], GuestAddress(addr))
                    .expect("driver buffer in guest memory"),
                None => {}
            }
            let mut flags = if p.writable { VRING_DESC_F_WRITE } else { 0 };
            let next = if i + 1 < parts.len() {
                flags |= VRING_DESC_F_NEXT;
                idxs[i + 1]
            } else {
                0
            };
            self.store_desc(mem, idxs[i], addr, p.len, flags, next);
            chain.descs.push((addr, p.len, p.writable));
        }
        let head = idxs[0];
        self.in_flight.insert(head, chain);
        self.publish(mem, head);
        Some(head)
    }

    /// Writes raw descriptors (index, addr, len, flags, next) and publishes `head`: the
    /// queue is no longer trusted.
    pub fn add_raw(&mut self, mem: &GuestMemory, descs: &[(u16, u64, u32, u16, u16)], head: u16) {
        self.trusted = false;
        for &(idx, addr, len, flags, next) in descs {
            self.free[usize::from(idx % self.size)] = false;
            self.store_desc(mem, idx, addr, len, flags, next);
        }
        self.publish(mem, head);
    }

    fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot))
            .expect("available ring in guest memory");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("available ring in guest memory");
    }

    /// A driver gone wrong: writes the available index directly.
    pub fn set_avail_idx(&mut self, mem: &GuestMemory, idx: u16) {
        self.trusted = false;
        mem.write_obj(idx, GuestAddress(self.avail + 2))
            .expect("available ring in guest memory");
    }

    /// New used entries since the last call. On a trusted queue, checks the device only
    /// returned chains that were in flight, each once.
    pub fn harvest(&mut self, mem: &GuestMemory) -> Vec<UsedChain> {
        let used_idx: u16 = mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("used ring in guest memory");
        let new = used_idx.wrapping_sub(self.last_used);
        if self.trusted {
            assert!(
                usize::from(new) <= self.in_flight.len(),
                "device published {new} used entries with {} chains in flight",
                self.in_flight.len()
            );
        }
        let mut out = Vec::new();
        for _ in 0..new.min(self.size) {
            let elem = self.used + 4 + 8 * u64::from(self.last_used % self.size);
            let head: u32 = mem.read_obj(GuestAddress(elem)).expect("used ring");
            let len: u32 = mem.read_obj(GuestAddress(elem + 4)).expect("used ring");
            self.last_used = self.last_used.wrapping_add(1);
            let chain = u16::try_from(head)
                .ok()
                .and_then(|h| self.in_flight.remove(&h));
            if self.trusted {
                let Some(chain) = &chain else {
                    panic!("device used head {head}, which is not in flight");
                };
                assert!(
                    u64::from(len) <= chain.writable_len(),
                    "device used {len} bytes of a chain with {} writable",
                    chain.writable_len()
                );
            }
            if let Some(c) = &chain {
                // Its descriptors are the driver's again.
                for &i in &c.idxs {
                    self.free[usize::from(i)] = true;
                }
            }
            out.push(UsedChain { head, len, chain });
        }
        self.last_used = used_idx;
        out
    }
}
