//! The vsock device fed a program of guest and host actions: well-formed and hostile TX
//! packets (header and payload split over any number of descriptors), raw descriptor chains,
//! RX buffers of every size, ring indices gone wrong, and on the host side clients that send
//! `CONNECT` lines (or garbage), listeners for guest connections, writes, reads and closes.
//!
//! Checks beyond "no panic", while the driver is trusted: the device returns only chains it
//! was given, TX chains with used length 0, and RX packets that are well-formed host → guest
//! packets whose used length is header + payload.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};

use super::driver::{DriverQueue, Part, UsedChain};
use super::input::{Enc, Input};
use super::{guest_memory, ScratchDir};
use crate::devices::virtio::device::{GuestMemory, VirtioDevice};
use crate::devices::virtio::vsock::{Vsock, NUM_QUEUES, RXQ_INDEX, TXQ_INDEX};

pub const GUEST_CID: u64 = 3;
const HOST_CID: u64 = 2;
const HDR_LEN: usize = 44;
const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = 256;
const DATA_BASE: u64 = 0x10_0000;
/// Guest ports the programs use, and host ports with (the first two) and without a listener.
const GUEST_PORTS: [u32; 3] = [1000, 1001, 52];
const HOST_PORTS: [u32; 3] = [1024, 1025, 1026];
const LISTENING: usize = 2;
/// Most ops one input runs (inputs are short anyway).
const MAX_OPS: usize = 512;
/// Most host streams at once (below the listener's backlog: `connect` blocks past it).
const MAX_STREAMS: usize = 64;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// Op codes of the program (first byte of each op, modulo the count).
pub mod op {
    pub const TX: u8 = 0;
    pub const TX_RAW: u8 = 1;
    pub const RX_BUFFERS: u8 = 2;
    pub const RX_RAW: u8 = 3;
    pub const KICK: u8 = 4;
    pub const RUN: u8 = 5;
    pub const HOST_CONNECT: u8 = 6;
    pub const HOST_ACCEPT: u8 = 7;
    pub const HOST_WRITE: u8 = 8;
    pub const HOST_READ: u8 = 9;
    pub const HOST_CLOSE: u8 = 10;
    pub const MEM_WRITE: u8 = 11;
    pub const AVAIL_IDX: u8 = 12;
    pub const SNAPSHOT: u8 = 13;
    pub const COUNT: u8 = 14;
}

/// A vsock header, as the guest would lay it out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Self {
        let mut i = Input::new(b);
        Self {
            src_cid: i.u64(),
            dst_cid: i.u64(),
            src_port: i.u32(),
            dst_port: i.u32(),
            len: i.u32(),
            type_: i.u16(),
            op: i.u16(),
            flags: i.u32(),
            buf_alloc: i.u32(),
            fwd_cnt: i.u32(),
        }
    }
}

/// What a run did (for tests of the harness and the seeds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// RX packets by op code (index = op).
    pub rx_ops: [u32; 8],
    /// Bytes host streams received from the guest.
    pub host_bytes_in: usize,
    /// RX payload bytes the guest received.
    pub guest_bytes_in: usize,
    /// Host streams accepted from the per-port listeners (guest-initiated connections).
    pub accepted: usize,
}

struct Run {
    mem: GuestMemory,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    queues: Vec<DriverQueue>,
    uds: std::path::PathBuf,
    listeners: Vec<UnixListener>,
    streams: Vec<UnixStream>,
    /// (host port, guest port) of RX packets seen, newest last (a few).
    seen: Vec<(u32, u32)>,
    summary: Summary,
    // Last: the socket files live in it.
    _dir: ScratchDir,
}

fn ring_layout(q: usize) -> (u64, u64, u64) {
    let base = 0x1_0000 * (q as u64 + 1);
    (base, base + 0x1000, base + 0x2000)
}

impl Run {
    fn new() -> Self {
        let dir = ScratchDir::new("vsock");
        let uds = dir.path().join("v.sock");
        let mem = guest_memory(MEM_SIZE);
        let mut dev = Vsock::new(GUEST_CID, uds.clone()).expect("vsock device");
        let data_len = (MEM_SIZE as u64 - DATA_BASE) / NUM_QUEUES as u64;
        let queues: Vec<DriverQueue> = (0..NUM_QUEUES)
            .map(|q| {
                let (d, a, u) = ring_layout(q);
                DriverQueue::new(d, a, u, QSIZE, DATA_BASE + q as u64 * data_len, data_len)
            })
            .collect();
        for (q, dq) in queues.iter().enumerate() {
            dq.configure(&mut dev.queues_mut()[q]);
        }
        dev.set_acked_features(1 << 32);
        dev.activate(mem.clone()).expect("vsock activation");
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().expect("event manager");
        em.add_subscriber(dev.clone());
        let listeners = HOST_PORTS[..LISTENING]
            .iter()
            .map(|p| {
                let mut path = uds.clone().into_os_string();
                path.push(format!("_{p}"));
                let l = UnixListener::bind(path).expect("host port listener");
                l.set_nonblocking(true).expect("non-blocking listener");
                l
            })
            .collect();
        let mut run = Self {
            mem,
            dev,
            em,
            queues,
            uds,
            listeners,
            streams: Vec::new(),
            seen: Vec::new(),
            summary: Summary::default(),
            _dir: dir,
        };
        run.run_loop();
        run
    }

    fn run_loop(&mut self) {
        self.em.run_with_timeout(0).expect("event loop");
        self.check_used();
    }

    fn kick(&self, q: usize) {
        let dev = self.dev.lock().unwrap_or_else(|e| e.into_inner());
        dev.queue_events()[q].write(1).expect("queue notify");
    }

    /// Reaps used chains and checks them (on trusted queues).
    fn check_used(&mut self) {
        let tx_trusted = self.queues[TXQ_INDEX].trusted;
        for u in self.queues[TXQ_INDEX].harvest(&self.mem) {
            if tx_trusted {
                assert_eq!(u.len, 0, "TX chain {} used with length {}", u.head, u.len);
            }
        }
        let rx_trusted = self.queues[RXQ_INDEX].trusted;
        let used: Vec<UsedChain> = self.queues[RXQ_INDEX].harvest(&self.mem);
        for u in used {
            let Some(chain) = &u.chain else { continue };
            if u.len == 0 {
                continue;
            }
            let bytes = chain.written(&self.mem, u.len);
            if bytes.len() < HDR_LEN {
                assert!(!rx_trusted, "RX packet of {} bytes", u.len);
                continue;
            }
            let hdr = Header::from_bytes(&bytes[..HDR_LEN]);
            if rx_trusted && chain.tag == 1 {
                assert_eq!(
                    (hdr.src_cid, hdr.dst_cid, hdr.type_),
                    (HOST_CID, GUEST_CID, 1),
                    "RX header {hdr:?}"
                );
                assert!(
                    (OP_REQUEST..=OP_CREDIT_REQUEST).contains(&hdr.op),
                    "RX op {}",
                    hdr.op
                );
                assert_eq!(
                    u.len as usize,
                    HDR_LEN + hdr.len as usize,
                    "RX used length vs header {hdr:?}"
                );
                assert!(hdr.op == OP_RW || hdr.len == 0, "payload on {hdr:?}");
            }
            if let Some(n) = self.summary.rx_ops.get_mut(usize::from(hdr.op)) {
                *n += 1;
            }
            self.summary.guest_bytes_in += bytes.len() - HDR_LEN;
            if self.seen.len() >= 8 {
                self.seen.remove(0);
            }
            self.seen.push((hdr.src_port, hdr.dst_port));
        }
    }

    fn tx(&mut self, i: &mut Input<'_>) {
        let sel = i.u8();
        let src_cid = if sel & 1 == 0 { GUEST_CID } else { i.u64() };
        let dst_cid = if sel & 2 == 0 { HOST_CID } else { i.u64() };
        let type_ = if sel & 4 == 0 { 1 } else { i.u16() };
        let (src_port, dst_port) = match i.below(3) {
            0 => (i.choose(&GUEST_PORTS), i.choose(&HOST_PORTS)),
            1 if !self.seen.is_empty() => {
                // Answer a packet the guest received: its ports, swapped.
                let (host, guest) = self.seen[i.below(self.seen.len())];
                (guest, host)
            }
            _ => (i.u32(), i.u32()),
        };
        let op = match i.u8() {
            b @ 0..=239 => u16::from(b % 9),
            _ => i.u16(),
        };
        let flags = u32::from(i.u8() % 4);
        let buf_alloc = match i.below(4) {
            0 => 256 * 1024,
            1 => 0,
            2 => 64,
            _ => i.u32(),
        };
        let fwd_cnt = if sel & 8 == 0 { 0 } else { i.u32() };
        let payload_len = usize::from(i.u16()) % (70 * 1024);
        let fill = i.u8();
        let mut payload = i.bytes(payload_len.min(64)).to_vec();
        payload.resize(payload_len, fill);
        let len = if sel & 16 == 0 {
            payload_len as u32
        } else {
            i.u32()
        };
        let hdr = Header {
            src_cid,
            dst_cid,
            src_port,
            dst_port,
            len,
            type_,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        // Split into up to 4 descriptors at input-chosen points; one may be write-only.
        let pieces = 1 + i.below(4);
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| usize::from(i.u16()) % (bytes.len() + 1))
            .collect();
        cuts.sort_unstable();
        let wrong_dir = if sel & 32 != 0 {
            i.below(pieces)
        } else {
            usize::MAX
        };
        let mut parts = Vec::new();
        let mut start = 0;
        for (k, end) in cuts.into_iter().chain([bytes.len()]).enumerate() {
            let piece = &bytes[start..end];
            parts.push(Part {
                bytes: Some(piece),
                len: piece.len() as u32,
                writable: k == wrong_dir,
            });
            start = end;
        }
        self.queues[TXQ_INDEX].add_chain(&self.mem, &parts, 0);
        self.kick(TXQ_INDEX);
    }

    fn raw(&mut self, q: usize, i: &mut Input<'_>) {
        let n = 1 + i.below(4);
        let mut descs = Vec::new();
        for _ in 0..n {
            let idx = i.u16() % QSIZE;
            let addr = match i.below(3) {
                0 => DATA_BASE + u64::from(i.u16()),
                1 => u64::from(i.u32()),
                _ => i.u64(),
            };
            let len = match i.below(3) {
                0 => HDR_LEN as u32,
                1 => u32::from(i.u16()),
                _ => i.u32(),
            };
            descs.push((idx, addr, len, u16::from(i.u8() % 8), i.u16()));
        }
        let head = descs[0].0;
        self.queues[q].add_raw(&self.mem, &descs, head);
        self.kick(q);
    }

    fn rx_buffers(&mut self, i: &mut Input<'_>) {
        let n = 1 + i.below(8);
        let size = match i.below(6) {
            0 => HDR_LEN as u32,
            1 => HDR_LEN as u32 + 1,
            2 => 4096,
            3 => (HDR_LEN + 64 * 1024) as u32,
            4 => 20,
            _ => u32::from(i.u16()),
        };
        let split = i.u8() & 1 == 1 && size > 2;
        for _ in 0..n {
            let parts: Vec<Part<'_>> = if split {
                vec![
                    Part {
                        bytes: None,
                        len: size / 2,
                        writable: true,
                    },
                    Part {
                        bytes: None,
                        len: size - size / 2,
                        writable: true,
                    },
                ]
            } else {
                vec![Part {
                    bytes: None,
                    len: size,
                    writable: true,
                }]
            };
            self.queues[RXQ_INDEX].add_chain(&self.mem, &parts, 1);
        }
        self.kick(RXQ_INDEX);
    }

    fn host_connect(&mut self, i: &mut Input<'_>) {
        let line = match i.below(4) {
            0 | 1 => format!("CONNECT {}\n", i.choose(&GUEST_PORTS)).into_bytes(),
            2 => format!("connect {}\r\n", i.u32()).into_bytes(),
            _ => {
                let n = i.below(40);
                i.bytes(n).to_vec()
            }
        };
        // A blocking connect would wait forever on a full backlog.
        if self.streams.len() >= MAX_STREAMS {
            return;
        }
        if let Ok(mut s) = UnixStream::connect(&self.uds) {
            let _ = s.write_all(&line);
            let _ = s.set_nonblocking(true);
            self.streams.push(s);
        }
    }

    fn host_accept(&mut self) {
        for l in &self.listeners {
            while self.streams.len() < 4 * MAX_STREAMS {
                let Ok((s, _)) = l.accept() else { break };
                let _ = s.set_nonblocking(true);
                self.streams.push(s);
                self.summary.accepted += 1;
            }
        }
    }

    /// One byte picks a host stream (read even when there is none, so that ops keep their
    /// length).
    fn stream(&mut self, i: &mut Input<'_>) -> Option<usize> {
        let b = i.below(256);
        (!self.streams.is_empty()).then(|| b % self.streams.len())
    }

    fn host_write(&mut self, i: &mut Input<'_>) {
        let Some(k) = self.stream(i) else { return };
        let len = match i.below(3) {
            0 => usize::from(i.u8()),
            1 => usize::from(i.u16()),
            _ => 300 * 1024,
        };
        let fill = i.u8();
        let data = vec![fill; len];
        // Non-blocking: what does not fit stays unwritten.
        let _ = self.streams[k].write(&data);
    }

    fn host_read(&mut self, i: &mut Input<'_>) {
        let Some(k) = self.stream(i) else { return };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.streams[k].read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.summary.host_bytes_in += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }

    fn host_close(&mut self, i: &mut Input<'_>) {
        let Some(k) = self.stream(i) else { return };
        match i.below(4) {
            0 => {
                let _ = self.streams[k].shutdown(Shutdown::Write);
            }
            1 => {
                let _ = self.streams[k].shutdown(Shutdown::Read);
            }
            2 => {
                let _ = self.streams[k].shutdown(Shutdown::Both);
            }
            _ => {
                self.streams.swap_remove(k);
            }
        }
    }

    fn mem_write(&mut self, i: &mut Input<'_>) {
        let addr = u64::from(i.u32()) % MEM_SIZE as u64;
        let n = i.below(64);
        let bytes = i.bytes(n);
        // Rings, descriptor tables or buffers: what comes back can no longer be checked.
        self.queues.iter_mut().for_each(|q| q.trusted = false);
        let _ = vm_memory::Bytes::write_slice(&self.mem, bytes, vm_memory::GuestAddress(addr));
    }

    fn snapshot(&mut self) {
        let dev = self.dev.lock().unwrap_or_else(|e| e.into_inner());
        let _ = dev.snapshot_blocker();
        let state = dev.save_state().expect("vsock saves its port counter");
        drop(dev);
        self.dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore_state(&state)
            .expect("vsock takes back its own state");
    }

    fn op(&mut self, i: &mut Input<'_>) {
        match i.u8() % op::COUNT {
            op::TX => self.tx(i),
            op::TX_RAW => self.raw(TXQ_INDEX, i),
            op::RX_BUFFERS => self.rx_buffers(i),
            op::RX_RAW => self.raw(RXQ_INDEX, i),
            op::KICK => {
                let q = i.below(NUM_QUEUES);
                self.kick(q);
            }
            op::RUN => {}
            op::HOST_CONNECT => self.host_connect(i),
            op::HOST_ACCEPT => self.host_accept(),
            op::HOST_WRITE => self.host_write(i),
            op::HOST_READ => self.host_read(i),
            op::HOST_CLOSE => self.host_close(i),
            op::MEM_WRITE => self.mem_write(i),
            op::AVAIL_IDX => {
                let q = i.below(NUM_QUEUES);
                let v = i.u16();
                self.queues[q].set_avail_idx(&self.mem, v);
                self.kick(q);
            }
            _ => self.snapshot(),
        }
        self.run_loop();
    }
}

/// Runs one program (any bytes).
pub fn run(data: &[u8]) -> Summary {
    let mut run = Run::new();
    let mut i = Input::new(data);
    let mut ops = 0;
    while !i.is_empty() && ops < MAX_OPS {
        run.op(&mut i);
        ops += 1;
    }
    // Let what is in flight settle.
    for _ in 0..4 {
        run.host_accept();
        run.run_loop();
    }
    run.summary
}

/// Encoders of the ops, for seeds and tests.
pub mod enc {
    use super::*;

    /// A well-formed guest packet, header and payload in one descriptor (ports by index into
    /// the guest and host port tables).
    pub fn tx(e: &mut Enc, guest_port: u8, host_port: u8, op: u16, buf_alloc: u32, payload: &[u8]) {
        assert!(payload.len() <= 64 && op < 9);
        e.u8(super::op::TX).u8(0); // sel: default CIDs/type, length = payload
        e.u8(0).u8(guest_port).u8(host_port); // ports from the tables
        e.u8(op as u8);
        e.u8(0); // flags
        e.u8(3).u32(buf_alloc);
        e.u16(payload.len() as u16).u8(0).bytes(payload);
        e.u8(0); // one descriptor
    }

    /// A guest packet answering the `nth` RX packet seen (ports swapped).
    pub fn tx_reply(e: &mut Enc, nth: u8, op: u16, flags: u8, payload: &[u8]) {
        assert!(payload.len() <= 64 && op < 9);
        e.u8(super::op::TX).u8(0);
        e.u8(1).u8(nth);
        e.u8(op as u8).u8(flags);
        e.u8(0); // buf_alloc 256 KiB
        e.u16(payload.len() as u16).u8(0).bytes(payload);
        e.u8(0);
    }

    pub fn rx_buffers(e: &mut Enc, n: u8, size: u16) {
        e.u8(super::op::RX_BUFFERS).u8(n - 1).u8(5).u16(size).u8(0);
    }

    pub fn host_connect(e: &mut Enc, guest_port: u8) {
        e.u8(super::op::HOST_CONNECT).u8(0).u8(guest_port);
    }

    pub fn simple(e: &mut Enc, op: u8) {
        e.u8(op);
    }

    pub fn host_write(e: &mut Enc, stream: u8, len: u8, fill: u8) {
        e.u8(super::op::HOST_WRITE)
            .u8(stream)
            .u8(0)
            .u8(len)
            .u8(fill);
    }

    pub fn host_read(e: &mut Enc, stream: u8) {
        e.u8(super::op::HOST_READ).u8(stream);
    }

    pub fn host_close(e: &mut Enc, stream: u8, how: u8) {
        e.u8(super::op::HOST_CLOSE).u8(stream).u8(how);
    }
}

/// The committed seeds: (file name, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use enc::*;
    let mut out = Vec::new();

    // Guest connects to a listening host port, sends data, the host answers, both close.
    let mut e = Enc::new();
    rx_buffers(&mut e, 8, 4096);
    tx(&mut e, 0, 0, OP_REQUEST, 256 * 1024, b"");
    simple(&mut e, op::HOST_ACCEPT);
    tx(&mut e, 0, 0, OP_RW, 256 * 1024, b"hello host");
    host_read(&mut e, 0);
    host_write(&mut e, 0, 16, b'h');
    tx(&mut e, 0, 0, OP_CREDIT_REQUEST, 256 * 1024, b"");
    tx(&mut e, 0, 0, OP_SHUTDOWN, 256 * 1024, b"");
    host_close(&mut e, 0, 3);
    out.push(("guest-connect", e.finish()));

    // Host connects to a guest port, the guest accepts and both sides talk.
    let mut e = Enc::new();
    rx_buffers(&mut e, 8, 4096);
    host_connect(&mut e, 0);
    simple(&mut e, op::RUN);
    tx_reply(&mut e, 0, OP_RESPONSE, 0, b"");
    host_read(&mut e, 0);
    host_write(&mut e, 0, 100, b'x');
    tx_reply(&mut e, 1, OP_RW, 0, b"from the guest");
    host_read(&mut e, 0);
    tx_reply(&mut e, 1, OP_SHUTDOWN, 3, b"");
    out.push(("host-connect", e.finish()));

    // Connections to a port nobody listens on, packets for no connection, a bad CID.
    let mut e = Enc::new();
    rx_buffers(&mut e, 4, 64);
    tx(&mut e, 1, 2, OP_REQUEST, 0, b"");
    tx(&mut e, 2, 1, OP_RW, 0, b"nobody");
    e.u8(op::TX)
        .u8(1)
        .u64(7)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(OP_RW as u8)
        .u8(0)
        .u8(0);
    e.u16(0).u8(0).u8(0);
    out.push(("refused", e.finish()));

    // Hostile chains: a raw TX chain looping on itself, a header split across descriptors
    // with a length beyond the chain, an RX buffer shorter than a header.
    let mut e = Enc::new();
    e.u8(op::TX_RAW).u8(1);
    e.u16(5).u8(0).u16(0).u8(0).u8(1).u16(6);
    e.u16(6).u8(0).u16(64).u8(0).u8(1).u16(5);
    e.u8(op::TX)
        .u8(16)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(OP_RW as u8)
        .u8(0)
        .u8(0);
    e.u16(8)
        .u8(0)
        .bytes(b"12345678")
        .u32(1 << 20)
        .u8(2)
        .u16(10)
        .u16(30);
    rx_buffers(&mut e, 1, 20);
    e.u8(op::AVAIL_IDX).u8(1).u16(1000);
    host_connect(&mut e, 1);
    e.u8(op::HOST_CONNECT).u8(3).u8(12).bytes(b"CONNECT x\nyy");
    out.push(("hostile-chains", e.finish()));
    out
}
