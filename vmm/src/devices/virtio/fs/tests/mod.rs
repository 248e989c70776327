//! Device-level tests: a hand-driven "guest driver" writing split virtqueues and FUSE requests
//! into real guest memory, a real shared directory in a temp dir, and a real
//! `event_manager::EventManager` running the device as the VMM's event loop does.

mod client;
mod escape;
mod lifecycle;
mod malformed;
mod policy;
mod requests;
mod seccomp;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Fs, HIPRIO_QUEUE, NUM_QUEUES, REQUEST_QUEUE};
use crate::devices::virtio::device::VirtioDevice;

pub(super) use client::Client;

pub(super) const MEM_SIZE: u64 = 32 << 20;
/// The queue size our fake driver picks (the device allows up to 1024).
pub(super) const QSIZE: u16 = 256;
/// Each queue's buffers come from its own 8 MiB area, handed out in order, reused once all
/// chains of the queue are back.
const DATA_BASE: u64 = 0x10_0000;
const DATA_AREA: u64 = 8 << 20;
/// A request the device does not answer within this has hung.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

pub(super) const VRING_DESC_F_NEXT: u16 = 1;
pub(super) const VRING_DESC_F_WRITE: u16 = 2;

/// One descriptor of a chain the test builds.
#[derive(Debug, Clone)]
pub(super) enum Part {
    /// Device-readable, with these contents.
    In(Vec<u8>),
    /// Device-writable, this long.
    Out(u32),
}

/// A returned chain: the used length and the bytes of its writable buffers, cut to that
/// length.
#[derive(Debug)]
pub(super) struct Used {
    pub len: u32,
    pub data: Vec<u8>,
}

/// The driver side of one split virtqueue, written straight into guest memory.
struct DriverQueue {
    desc: u64,
    avail: u64,
    used: u64,
    data: u64,
    data_next: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
    inflight: Vec<InFlight>,
}

/// A chain the device has not returned yet.
struct InFlight {
    head: u16,
    /// Its writable buffers: (addr, len).
    writable: Vec<(u64, u32)>,
    descriptors: usize,
}

impl DriverQueue {
    fn new(q: usize) -> Self {
        let base = 0x1_0000 * (q as u64 + 1);
        let data = DATA_BASE + q as u64 * DATA_AREA;
        Self {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            data,
            data_next: data,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            inflight: Vec::new(),
        }
    }

    /// Configures `queue` the way the MMIO transport does.
    fn configure(&self, queue: &mut Queue) {
        use virtio_queue::QueueT;
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        queue.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        queue.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        queue.set_ready(true);
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.data_next;
        // 8-byte aligned, like kernel buffers.
        self.data_next += (u64::from(len) + 7) & !7;
        assert!(
            self.data_next <= self.data + DATA_AREA,
            "test data area full"
        );
        addr
    }

    fn store_desc(
        &self,
        mem: &GuestMemoryMmap,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        mem.write_obj(raw, GuestAddress(self.desc + 16 * u64::from(idx)))
            .unwrap();
    }

    /// Writes a chain of `parts` and makes it available. Returns its head.
    fn add_chain(&mut self, mem: &GuestMemoryMmap, parts: &[Part]) -> u16 {
        assert!(!parts.is_empty());
        let in_flight: usize = self.inflight.iter().map(|c| c.descriptors).sum();
        assert!(
            in_flight + parts.len() <= usize::from(QSIZE),
            "test driver out of descriptors"
        );
        let first = self.next_desc;
        let mut writable = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let idx = (first + i as u16) % QSIZE;
            let (addr, len, flags) = match part {
                Part::In(bytes) => {
                    let len = u32::try_from(bytes.len()).unwrap();
                    let addr = self.alloc(len);
                    mem.write_slice(bytes, GuestAddress(addr)).unwrap();
                    (addr, len, 0)
                }
                Part::Out(len) => {
                    let addr = self.alloc(*len);
                    // Poison, so a test sees what the device really wrote.
                    mem.write_slice(&vec![0xa5; *len as usize], GuestAddress(addr))
                        .unwrap();
                    writable.push((addr, *len));
                    (addr, *len, VRING_DESC_F_WRITE)
                }
            };
            let last = i + 1 == parts.len();
            let (flags, next) = if last {
                (flags, 0)
            } else {
                (flags | VRING_DESC_F_NEXT, (idx + 1) % QSIZE)
            };
            self.store_desc(mem, idx, addr, len, flags, next);
        }
        self.next_desc = (first + parts.len() as u16) % QSIZE;
        self.inflight.push(InFlight {
            head: first,
            writable,
            descriptors: parts.len(),
        });
        self.publish(mem, first);
        first
    }

    /// Writes raw descriptors (index, addr, len, flags, next) and publishes `head`.
    fn add_raw(&mut self, mem: &GuestMemoryMmap, descs: &[(u16, u64, u32, u16, u16)], head: u16) {
        for &(idx, addr, len, flags, next) in descs {
            self.store_desc(mem, idx, addr, len, flags, next);
            self.next_desc = self.next_desc.max((idx + 1) % QSIZE);
        }
        self.inflight.push(InFlight {
            head,
            writable: Vec::new(),
            descriptors: descs.len(),
        });
        self.publish(mem, head);
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// New used entries, in order.
    fn harvest(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, Used)> {
        let used_idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.last_used != used_idx {
            let elem = self.used + 4 + 8 * u64::from(self.last_used % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(elem)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(elem + 4)).unwrap();
            self.last_used = self.last_used.wrapping_add(1);
            let head = u16::try_from(id).unwrap();
            let pos = self
                .inflight
                .iter()
                .position(|c| c.head == head)
                .unwrap_or_else(|| panic!("device used unknown head {head}"));
            let writable = self.inflight.remove(pos).writable;
            let mut data = Vec::new();
            for (addr, blen) in writable {
                let mut buf = vec![0u8; blen as usize];
                mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
                data.extend_from_slice(&buf);
            }
            data.truncate(len as usize);
            out.push((head, Used { len, data }));
        }
        if self.inflight.is_empty() {
            self.data_next = self.data;
        }
        out
    }
}

/// A device with a shared temp dir, activated, run by a real event manager.
pub(super) struct Harness {
    /// The parent of the shared directory (`<dir>/shared`).
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub mem: GuestMemoryMmap,
    pub fs: Arc<Mutex<Fs>>,
    pub manager: EventManager<Arc<Mutex<Fs>>>,
    drivers: Vec<DriverQueue>,
}

impl Harness {
    /// A device sharing a fresh temp dir (created as `shared` inside the returned temp dir,
    /// so tests can put files beside it, outside the share).
    pub fn new() -> Self {
        Self::with_xattr(false)
    }

    /// Like [`Harness::new`], with xattr support as given.
    pub fn with_xattr(xattr: bool) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("shared")).expect("mkdir shared");
        let mut h = Self::in_dir(tmp.path(), xattr);
        h._tmp = Some(tmp);
        h
    }

    /// A device sharing `<dir>/shared`, which exists; `dir` is not removed by the harness.
    pub fn in_dir(dir: &Path, xattr: bool) -> Self {
        let shared = dir.join("shared");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("guest memory");
        let fs = Arc::new(Mutex::new(
            Fs::new("vessel", &shared, xattr).expect("device"),
        ));
        let mut manager = EventManager::new().expect("event manager");
        manager.add_subscriber(fs.clone());
        let drivers: Vec<DriverQueue> = (0..NUM_QUEUES).map(DriverQueue::new).collect();
        Self {
            dir: dir.to_path_buf(),
            _tmp: None,
            mem,
            fs,
            manager,
            drivers,
        }
    }

    pub fn shared(&self) -> std::path::PathBuf {
        self.dir.join("shared")
    }

    pub fn dev(&self) -> MutexGuard<'_, Fs> {
        self.fs.lock().unwrap()
    }

    /// Sets up the queues as the transport does and activates the device.
    pub fn activate(&mut self) {
        {
            let mut fs = self.fs.lock().unwrap();
            for (q, driver) in self.drivers.iter().enumerate() {
                let queue = &mut fs.queues_mut()[q];
                virtio_queue::QueueT::reset(queue);
                driver.configure(queue);
            }
            fs.set_acked_features(1 << 32);
            fs.activate(self.mem.clone()).expect("activate");
        }
        self.manager
            .run_with_timeout(100)
            .expect("event loop (activation)");
        assert!(self.dev().subscribed, "queue events registered");
    }

    /// Restarts the driver side (after a device reset).
    pub fn reset_drivers(&mut self) {
        self.drivers = (0..NUM_QUEUES).map(DriverQueue::new).collect();
        for d in &self.drivers {
            // A driver clears its rings before it sets them up again.
            self.mem
                .write_slice(&[0u8; 0x3000], GuestAddress(d.desc))
                .unwrap();
        }
    }

    /// Publishes a chain on queue `q` without notifying the device.
    pub fn add(&mut self, q: usize, parts: &[Part]) -> u16 {
        self.drivers[q].add_chain(&self.mem, parts)
    }

    /// Writes raw descriptors (index, addr, len, flags, next) on queue `q` and publishes
    /// `head`.
    pub fn add_raw(&mut self, q: usize, descs: &[(u16, u64, u32, u16, u16)], head: u16) {
        self.drivers[q].add_raw(&self.mem, descs, head);
    }

    /// Puts `bytes` in queue `q`'s data area; returns their guest address.
    pub fn put(&mut self, q: usize, bytes: &[u8]) -> u64 {
        let addr = self.drivers[q].alloc(u32::try_from(bytes.len()).unwrap());
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        addr
    }

    /// Writes the available ring's index directly (a driver gone wrong).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let avail = self.drivers[q].avail;
        self.mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    }

    /// Notifies queue `q` (what the guest's QueueNotify write does through the ioeventfd).
    pub fn kick(&self, q: usize) {
        self.dev().queue_events()[q].write(1).expect("kick");
    }

    /// Runs the event loop until `count` chains of queue `q` came back.
    pub fn wait_used(&mut self, q: usize, count: usize) -> Vec<(u16, Used)> {
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut got = Vec::new();
        loop {
            got.extend(self.drivers[q].harvest(&self.mem));
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "device returned {} of {count} chains on queue {q} within {WAIT_LIMIT:?}",
                got.len()
            );
            self.manager.run_with_timeout(50).expect("event loop");
        }
    }

    /// Sends one chain on the request queue and waits for it.
    pub fn send(&mut self, parts: &[Part]) -> Used {
        self.send_on(REQUEST_QUEUE, parts)
    }

    pub fn send_on(&mut self, q: usize, parts: &[Part]) -> Used {
        let head = self.add(q, parts);
        self.kick(q);
        let mut used = self.wait_used(q, 1);
        assert_eq!(used.len(), 1);
        let (h, u) = used.remove(0);
        assert_eq!(h, head, "a different chain came back");
        u
    }

    /// A FUSE client over this harness.
    pub fn client(&mut self) -> Client<'_> {
        Client::new(self)
    }
}

/// Raw fuse_in_header + args, with the given header length (tests of bad lengths).
pub(super) fn raw_request(len: u32, opcode: u32, unique: u64, nodeid: u64, args: &[u8]) -> Vec<u8> {
    use fuse_backend_rs::abi::fuse_abi::InHeader;
    use vm_memory::ByteValued;
    let header = InHeader {
        len,
        opcode,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        padding: 0,
    };
    let mut v = header.as_slice().to_vec();
    v.extend_from_slice(args);
    v
}

/// Fails the test loudly unless it runs as root.
pub(super) fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root ({why})");
}

/// The queue the guest uses for FORGET.
pub(super) const HIPRIO: usize = HIPRIO_QUEUE;
