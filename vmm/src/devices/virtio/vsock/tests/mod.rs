//! Device-level tests: a hand-driven "guest driver" writing split virtqueues into real guest
//! memory, real Unix sockets on the host side, and a real `event_manager::EventManager` running
//! the device exactly as the VMM's event loop would.

mod chains;
mod guest_connect;
mod host_connect;
mod lifecycle;
mod limits;
mod snapshot;

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::super::device::VirtioDevice;
use super::connection::Timeouts;
use super::packet::{PacketHeader, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::{Vsock, VsockMetrics, NUM_QUEUES, RXQ_INDEX, TXQ_INDEX};

pub(super) const GUEST_CID: u64 = 3;
/// What our fake guest advertises as its receive buffer, unless a test says otherwise.
pub(super) const GUEST_BUF_ALLOC: u32 = 256 * 1024;
pub(super) const MEM_SIZE: u64 = 64 << 20;
const QSIZE: u16 = 256;
/// Each descriptor index of each queue owns one data slot of this size.
const SLOT: u64 = 0x1_2000;
const DATA_BASE: u64 = 0x10_0000;
/// Guest-side wait limit: a test that needs longer than this has found a hang.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

pub(super) const VRING_DESC_F_NEXT: u16 = 1;
pub(super) const VRING_DESC_F_WRITE: u16 = 2;

/// Driver-side ring layout of queue `q`: descriptor table, available ring, used ring.
fn ring_layout(q: usize) -> (u64, u64, u64) {
    let base = 0x1_0000 * (q as u64 + 1);
    (base, base + 0x1000, base + 0x2000)
}

/// The descriptors of a chain: (index, addr, len).
type ChainDescs = Vec<(u16, u64, u32)>;

/// The driver side of one split virtqueue, written straight into guest memory.
///
/// (Not `MockSplitQueue`: it re-zeroes the rings whenever it is constructed, and for a
/// 256-entry queue it places the used ring over the second half of the available ring.)
struct DriverQueue {
    desc: u64,
    avail: u64,
    used: u64,
    data: u64,
    free: VecDeque<u16>,
    /// head -> descriptors of the chain: (index, addr, len)
    inflight: HashMap<u16, ChainDescs>,
    avail_idx: u16,
    last_used: u16,
}

impl DriverQueue {
    fn new(q: usize) -> Self {
        let (desc, avail, used) = ring_layout(q);
        Self {
            desc,
            avail,
            used,
            data: DATA_BASE + q as u64 * u64::from(QSIZE) * SLOT,
            free: (0..QSIZE).collect(),
            inflight: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// The device-side queue, configured the way the MMIO transport does it.
    fn device_queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    fn slot(&self, idx: u16) -> u64 {
        self.data + u64::from(idx) * SLOT
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

    /// Writes and publishes a chain. Each element: (contents or None, len, flags without NEXT).
    /// Returns the head index.
    fn add_chain(&mut self, mem: &GuestMemoryMmap, parts: &[(Option<&[u8]>, u32, u16)]) -> u16 {
        assert!(
            parts.len() <= self.free.len(),
            "test driver out of descriptors"
        );
        let idxs: Vec<u16> = (0..parts.len())
            .map(|_| self.free.pop_front().unwrap())
            .collect();
        let mut descs = Vec::new();
        for (i, (bytes, len, flags)) in parts.iter().enumerate() {
            let idx = idxs[i];
            let addr = self.slot(idx);
            assert!(u64::from(*len) <= SLOT);
            if let Some(b) = bytes {
                mem.write_slice(b, GuestAddress(addr)).unwrap();
            }
            let (flags, next) = if i + 1 < parts.len() {
                (flags | VRING_DESC_F_NEXT, idxs[i + 1])
            } else {
                (*flags, 0)
            };
            self.store_desc(mem, idx, addr, *len, flags, next);
            descs.push((idx, addr, *len));
        }
        let head = idxs[0];
        self.inflight.insert(head, descs);
        self.publish(mem, head);
        head
    }

    /// Writes raw descriptors (index, addr, len, flags, next) and publishes `head`.
    fn add_raw(&mut self, mem: &GuestMemoryMmap, descs: &[(u16, u64, u32, u16, u16)], head: u16) {
        let mut owned = Vec::new();
        for &(idx, addr, len, flags, next) in descs {
            self.free.retain(|&f| f != idx);
            self.store_desc(mem, idx, addr, len, flags, next);
            owned.push((idx, addr, len));
        }
        self.inflight.insert(head, owned);
        self.publish(mem, head);
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// New used entries: (head, used len, chain descriptors). Frees the descriptors.
    fn harvest(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32, ChainDescs)> {
        let used_idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.last_used != used_idx {
            let elem = self.used + 4 + 8 * u64::from(self.last_used % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(elem)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(elem + 4)).unwrap();
            self.last_used = self.last_used.wrapping_add(1);
            let head = u16::try_from(id).unwrap();
            let descs = self
                .inflight
                .remove(&head)
                .unwrap_or_else(|| panic!("device used unknown head {head}"));
            for (idx, _, _) in &descs {
                if !self.free.contains(idx) {
                    self.free.push_back(*idx);
                }
            }
            out.push((head, len, descs));
        }
        out
    }
}

/// A guest-to-host packet header with the fake guest's defaults.
pub(super) fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF_ALLOC,
        fwd_cnt: 0,
    }
}

/// The device on a fake guest, under a real event manager.
pub(super) struct TestVm {
    pub mem: GuestMemoryMmap,
    pub em: EventManager<Arc<Mutex<Vsock>>>,
    pub dev: Arc<Mutex<Vsock>>,
    pub metrics: Arc<VsockMetrics>,
    pub uds: PathBuf,
    _dir: tempfile::TempDir,
    queues: Vec<DriverQueue>,
    kicks: Vec<EventFd>,
    pub irq: EventFd,
}

impl TestVm {
    pub fn new() -> Self {
        Self::build(None)
    }

    pub fn with_timeouts(timeouts: Timeouts) -> Self {
        Self::build(Some(timeouts))
    }

    fn build(timeouts: Option<Timeouts>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let mut dev = Vsock::new(GUEST_CID, uds.clone()).unwrap();
        if let Some(t) = timeouts {
            dev.set_timeouts(t, Duration::from_millis(20));
        }
        let queues: Vec<DriverQueue> = (0..NUM_QUEUES).map(DriverQueue::new).collect();
        for (i, dq) in queues.iter().enumerate() {
            dev.queues_mut()[i] = dq.device_queue();
        }
        let kicks = dev
            .queue_events()
            .iter()
            .map(|e| e.try_clone().unwrap())
            .collect();
        let irq = dev.interrupt_trigger().irq_evt.try_clone().unwrap();
        let metrics = dev.metrics();
        dev.activate(mem.clone()).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut vm = Self {
            mem,
            em,
            dev,
            metrics,
            uds,
            _dir: dir,
            queues,
            kicks,
            irq,
        };
        vm.run_until("activation", |vm| vm.dev.lock().unwrap().subscribed);
        vm
    }

    /// One pass of the event loop (waits at most `ms`).
    pub fn run_once(&mut self, ms: i32) {
        self.em.run_with_timeout(ms).unwrap();
    }

    /// Runs the event loop until `cond` holds; fails the test after [`WAIT_LIMIT`].
    pub fn run_until(&mut self, what: &str, mut cond: impl FnMut(&mut TestVm) -> bool) {
        let start = Instant::now();
        loop {
            if cond(self) {
                return;
            }
            assert!(
                start.elapsed() < WAIT_LIMIT,
                "timed out waiting for {what}; metrics: {:?}",
                self.metrics
            );
            self.run_once(10);
        }
    }

    /// Runs the loop for `d` (to show that something does NOT happen).
    pub fn run_for(&mut self, d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            self.run_once(10);
        }
    }

    pub fn kick(&self, q: usize) {
        self.kicks[q].write(1).unwrap();
    }

    /// Posts `n` single-descriptor RX buffers of `size` bytes and notifies the device.
    pub fn post_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            self.queues[RXQ_INDEX].add_chain(&self.mem, &[(None, size, VRING_DESC_F_WRITE)]);
        }
        self.kick(RXQ_INDEX);
    }

    /// Posts one RX chain made of `parts` (len, flags) and notifies the device.
    pub fn post_rx_chain(&mut self, parts: &[(u32, u16)]) {
        let parts: Vec<_> = parts.iter().map(|&(l, f)| (None, l, f)).collect();
        self.queues[RXQ_INDEX].add_chain(&self.mem, &parts);
        self.kick(RXQ_INDEX);
    }

    /// RX buffers the device has filled since the last call, as (header, payload). Checks the
    /// used length matches the header.
    pub fn rx_packets(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        let used = self.queues[RXQ_INDEX].harvest(&self.mem);
        used.into_iter()
            .filter_map(|(_, len, descs)| {
                if len == 0 {
                    return None;
                }
                let mut bytes = Vec::new();
                for (_, addr, dlen) in descs {
                    let mut b = vec![0u8; dlen as usize];
                    self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                    bytes.extend(b);
                }
                bytes.truncate(len as usize);
                let raw: [u8; HDR_LEN] = bytes[..HDR_LEN].try_into().unwrap();
                let hdr = PacketHeader::from_bytes(&raw);
                assert_eq!(
                    len as usize,
                    HDR_LEN + hdr.len as usize,
                    "used len vs header"
                );
                Some((hdr, bytes[HDR_LEN..].to_vec()))
            })
            .collect()
    }

    /// Used RX entries with length 0 (chains the device rejected).
    pub fn rx_rejected(&mut self) -> usize {
        let used = self.queues[RXQ_INDEX].harvest(&self.mem);
        used.iter().filter(|(_, len, _)| *len == 0).count()
    }

    /// Sends a packet on TX: header and payload in separate descriptors.
    pub fn send(&mut self, mut hdr: PacketHeader, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        let h = hdr.to_bytes();
        let mut parts: Vec<(Option<&[u8]>, u32, u16)> = vec![(Some(&h[..]), HDR_LEN as u32, 0)];
        if !payload.is_empty() {
            parts.push((Some(payload), payload.len() as u32, 0));
        }
        self.reap_tx();
        self.queues[TXQ_INDEX].add_chain(&self.mem, &parts);
        self.kick(TXQ_INDEX);
    }

    /// Publishes a TX chain of (contents, len, flags) parts and notifies the device.
    pub fn send_parts(&mut self, parts: &[(Option<&[u8]>, u32, u16)]) -> u16 {
        self.reap_tx();
        let head = self.queues[TXQ_INDEX].add_chain(&self.mem, parts);
        self.kick(TXQ_INDEX);
        head
    }

    /// Publishes raw descriptors on queue `q` and notifies the device.
    pub fn send_raw(&mut self, q: usize, descs: &[(u16, u64, u32, u16, u16)], head: u16) {
        if q == TXQ_INDEX {
            self.reap_tx();
        }
        self.queues[q].add_raw(&self.mem, descs, head);
        self.kick(q);
    }

    /// `n` descriptor indices of queue `q` that are not in flight (for raw chains).
    pub fn free_idx(&self, q: usize, n: usize) -> Vec<u16> {
        self.queues[q].free.iter().take(n).copied().collect()
    }

    /// Data slot address of descriptor `idx` of queue `q` (for raw chains).
    pub fn slot(&self, q: usize, idx: u16) -> u64 {
        self.queues[q].slot(idx)
    }

    pub fn write_mem(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    /// Frees used TX descriptors; returns the heads the device used (with their lengths).
    pub fn reap_tx(&mut self) -> Vec<(u16, u32)> {
        self.queues[TXQ_INDEX]
            .harvest(&self.mem)
            .into_iter()
            .map(|(h, l, _)| (h, l))
            .collect()
    }

    /// Waits until the device returned TX chain `head`.
    pub fn wait_tx_used(&mut self, head: u16) -> u32 {
        let mut got = None;
        self.run_until("TX chain returned", |vm| {
            for (h, l) in vm.reap_tx() {
                if h == head {
                    got = Some(l);
                }
            }
            got.is_some()
        });
        got.unwrap()
    }

    /// Waits for the next RX packet.
    pub fn next_rx(&mut self, what: &str) -> (PacketHeader, Vec<u8>) {
        let mut pending: VecDeque<_> = VecDeque::new();
        self.run_until(what, |vm| {
            pending.extend(vm.rx_packets());
            !pending.is_empty()
        });
        assert_eq!(
            pending.len(),
            1,
            "expected one packet for {what}, got {pending:?}"
        );
        pending.pop_front().unwrap()
    }

    pub fn live(&self) -> (usize, usize) {
        self.dev.lock().unwrap().muxer.live()
    }
}

/// Connects a host client to guest port `guest_port` through the whole handshake: CONNECT
/// line, REQUEST in RX, RESPONSE from the guest (advertising `guest_buf_alloc`), `OK` line.
/// Returns the host stream (non-blocking) and the host-side port.
pub(super) fn establish(
    vm: &mut TestVm,
    guest_port: u32,
    guest_buf_alloc: u32,
) -> (UnixStream, u32) {
    let mut host = host_client(vm, format!("CONNECT {guest_port}\n").as_bytes());
    vm.post_rx(1, 4096);
    let (req, _) = vm.next_rx("REQUEST");
    assert_eq!(req.op, super::packet::OP_REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(req.dst_port, guest_port);
    assert_eq!(req.type_, TYPE_STREAM);
    assert_eq!(req.buf_alloc, super::CONN_BUF_ALLOC);
    let local = req.src_port;
    assert!(
        local >= 1 << 30,
        "host port {local} outside the allocation range"
    );
    let mut resp = guest_hdr(super::packet::OP_RESPONSE, guest_port, local);
    resp.buf_alloc = guest_buf_alloc;
    vm.send(resp, &[]);
    let expected = format!("OK {local}\n");
    let mut got = Vec::new();
    vm.run_until("OK line", |_| {
        read_some(&mut host, &mut got);
        got.len() >= expected.len()
    });
    assert_eq!(String::from_utf8_lossy(&got), expected);
    (host, local)
}

pub(super) fn m(counter: &std::sync::atomic::AtomicU64) -> u64 {
    VsockMetrics::get(counter)
}

/// Non-blocking read of whatever `s` has; `None` on EOF.
pub(super) fn read_some(s: &mut UnixStream, into: &mut Vec<u8>) -> Option<usize> {
    let mut buf = [0u8; 65536];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return if total == 0 { None } else { Some(total) },
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(total),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("host read: {e}"),
        }
    }
}

/// Connects a host client and writes `line` (not waiting for anything).
pub(super) fn host_client(vm: &TestVm, line: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(&vm.uds).unwrap();
    s.write_all(line).unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

/// Deterministic test data.
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 8) as u8)
        })
        .collect()
}
