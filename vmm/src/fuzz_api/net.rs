//! The virtio-net device fed what a guest driver can write — TX chains of any shape (split
//! headers, device-writable parts, sizes around every bound), RX buffers of any size, raw
//! descriptors and ring indices gone wrong, resets — with frames from the host side (a
//! datagram socket standing for the tap) arriving in between, all on a real event loop.
//!
//! Checks beyond "no panic and no spin": while the rings are the driver's own, every frame
//! the host receives is one the driver posted whose header passed the offload checks (header
//! and bytes intact), and every filled RX buffer holds a `virtio_net_hdr_v1` with
//! `num_buffers` = 1 followed by a frame the host sent, in order.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};

use super::driver::{DriverQueue, Part};
use super::input::{Enc, Input};
use super::{guest_memory, lock};
use crate::devices::virtio::device::{GuestMemory, VirtioDevice};
use crate::devices::virtio::net::offload::{self, MAX_GSO_FRAME};
use crate::devices::virtio::net::{Net, Tap, MAX_FRAME, NET_HDR_LEN, RXQ_INDEX, TXQ_INDEX};

const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = 128;
const MAX_OPS: usize = 512;

pub const OP_TX: u8 = 0;
pub const OP_RX_BUFFER: u8 = 1;
pub const OP_HOST_FRAME: u8 = 2;
pub const OP_KICK: u8 = 3;
pub const OP_RAW: u8 = 4;
pub const OP_AVAIL_IDX: u8 = 5;
pub const OP_RESET: u8 = 6;
pub const OP_RUN: u8 = 7;
const OPS: u8 = 8;

/// What a run did (for tests of the harness and the seeds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub frames_to_host: usize,
    pub frames_to_guest: usize,
    pub resets: usize,
}

struct Run {
    mem: GuestMemory,
    net: Arc<Mutex<Net>>,
    em: EventManager<Arc<Mutex<Net>>>,
    rx: DriverQueue,
    tx: DriverQueue,
    host: UnixDatagram,
    /// Frames the driver posted (trusted TX queue), not yet seen on the host side.
    sent: VecDeque<Vec<u8>>,
    /// Frames the host sent, not yet seen in an RX buffer.
    received: VecDeque<Vec<u8>>,
    /// Ring layouts used so far (each activation gets fresh rings).
    generation: u64,
    summary: Summary,
}

fn queues(generation: u64) -> (DriverQueue, DriverQueue) {
    let q = |i: u64| {
        let base = 0x1_0000 * (i + 1);
        DriverQueue::new(
            base,
            base + 0x1000,
            base + 0x2000,
            QSIZE,
            0x10_0000 + i * 0xc_0000,
            0xc_0000,
        )
    };
    let g = generation % 2;
    (q(2 * g), q(2 * g + 1))
}

impl Run {
    fn new() -> Run {
        let (host, dev) = UnixDatagram::pair().expect("socket pair");
        host.set_nonblocking(true).expect("non-blocking");
        let net = Net::new(Some(Tap::from_fd_unchecked(OwnedFd::from(dev)))).expect("net");
        let mut em = EventManager::<Arc<Mutex<Net>>>::new().expect("event manager");
        let net = Arc::new(Mutex::new(net));
        em.add_subscriber(Arc::clone(&net));
        let (rx, tx) = queues(0);
        let mut run = Run {
            mem: guest_memory(MEM_SIZE),
            net,
            em,
            rx,
            tx,
            host,
            sent: VecDeque::new(),
            received: VecDeque::new(),
            generation: 0,
            summary: Summary::default(),
        };
        run.activate();
        run
    }

    fn activate(&mut self) {
        self.rx.zero_rings(&self.mem);
        self.tx.zero_rings(&self.mem);
        let mut net = lock(&self.net);
        self.rx.configure(&mut net.queues_mut()[RXQ_INDEX]);
        self.tx.configure(&mut net.queues_mut()[TXQ_INDEX]);
        let features = net.avail_features();
        net.set_acked_features(features);
        net.activate(self.mem.clone()).expect("activate");
    }

    fn trusted(&self) -> bool {
        self.rx.trusted && self.tx.trusted
    }

    fn kick(&self, q: usize) {
        lock(&self.net).queue_events()[q].write(1).expect("notify");
    }

    /// Runs the loop until idle; a device that keeps it busy is spinning.
    fn run_loop(&mut self) {
        let mut idle = false;
        for _ in 0..64 {
            if self.em.run_with_timeout(0).expect("event loop") == 0 {
                idle = true;
                break;
            }
        }
        assert!(idle, "the event loop never went idle: the device spins");
        self.check();
    }

    fn check(&mut self) {
        let mut buf = vec![0u8; NET_HDR_LEN + MAX_GSO_FRAME + 64];
        while let Ok(n) = self.host.recv(&mut buf) {
            self.summary.frames_to_host += 1;
            if self.trusted() {
                // Frames may have been dropped (the host side full, a reset): find this one.
                let at = self.sent.iter().position(|f| f[..] == buf[..n]);
                assert!(
                    at.is_some(),
                    "the host got a frame the driver did not send (or out of order)"
                );
                self.sent.drain(..=at.unwrap_or(0));
            }
        }
        for u in self.tx.harvest(&self.mem) {
            if self.trusted() {
                assert_eq!(u.len, 0, "a TX chain came back with a used length");
            }
        }
        for u in self.rx.harvest(&self.mem) {
            let Some(chain) = &u.chain else { continue };
            if u.len == 0 {
                continue;
            }
            self.summary.frames_to_guest += 1;
            if !self.trusted() {
                continue;
            }
            let got = chain.written(&self.mem, u.len);
            assert!(
                got.len() > NET_HDR_LEN,
                "RX used length {} without a frame",
                u.len
            );
            let mut hdr = [0u8; NET_HDR_LEN];
            hdr[10] = 1;
            assert_eq!(
                got[..NET_HDR_LEN],
                hdr,
                "virtio_net_hdr_v1 with num_buffers 1"
            );
            // Frames may have been dropped (too big for their buffer): find this one.
            let frame = &got[NET_HDR_LEN..];
            let at = self.received.iter().position(|f| f == frame);
            assert!(at.is_some(), "the guest got a frame the host did not send");
            self.received.drain(..=at.unwrap_or(0));
        }
    }

    fn op(&mut self, i: &mut Input<'_>) {
        match i.u8() % OPS {
            OP_TX => {
                let n = 1 + i.below(4);
                let parts: Vec<(Vec<u8>, bool)> = (0..n)
                    .map(|_| {
                        let len = usize::from(i.u16()) % 1600;
                        let writable = i.u8() & 0x80 != 0;
                        let fill = i.u8();
                        (vec![fill; len], writable)
                    })
                    .collect();
                let chain: Vec<Part<'_>> = parts
                    .iter()
                    .map(|(b, w)| Part {
                        bytes: Some(b),
                        len: b.len() as u32,
                        writable: *w,
                    })
                    .collect();
                if self.tx.add_chain(&self.mem, &chain, 0).is_some() {
                    let all: Vec<u8> = parts.iter().flat_map(|(b, _)| b.clone()).collect();
                    let readable = parts.iter().all(|(_, w)| !w);
                    let acked = lock(&self.net).acked_features();
                    if readable && offload::check_tx(&all, acked).is_ok() {
                        self.sent.push_back(all);
                    }
                }
            }
            OP_RX_BUFFER => {
                let len = u32::from(i.u16()) % 2048;
                let parts = [Part {
                    bytes: None,
                    len: len.max(1),
                    writable: true,
                }];
                let _ = self.rx.add_chain(&self.mem, &parts, 0);
            }
            OP_HOST_FRAME => {
                let len = usize::from(i.u16()) % (MAX_FRAME + 8);
                let seed = i.u8();
                let frame: Vec<u8> = (0..len).map(|k| (k as u8) ^ seed).collect();
                // Behind a header with nothing to offload, as the tap sends most frames.
                let mut sent = vec![0u8; NET_HDR_LEN];
                sent.extend_from_slice(&frame);
                if self.host.send(&sent).is_ok() && (14..=MAX_FRAME).contains(&len) {
                    self.received.push_back(frame);
                }
            }
            OP_KICK => self.kick(if i.u8() & 1 == 0 {
                RXQ_INDEX
            } else {
                TXQ_INDEX
            }),
            OP_RAW => {
                let q = i.u8() & 1;
                let idx = i.u16() % QSIZE;
                let desc = (
                    idx,
                    i.u64() % (MEM_SIZE as u64 + 4096),
                    i.u32() % 8192,
                    i.u16() & 7,
                    i.u16(),
                );
                let queue = if q == 0 { &mut self.rx } else { &mut self.tx };
                queue.add_raw(&self.mem, &[desc], idx);
            }
            OP_AVAIL_IDX => {
                let idx = i.u16();
                if i.u8() & 1 == 0 {
                    self.rx.set_avail_idx(&self.mem, idx);
                } else {
                    self.tx.set_avail_idx(&self.mem, idx);
                }
            }
            OP_RESET => {
                {
                    // What the transport does on a status write of 0: the device, then the
                    // queues' own state.
                    let mut net = lock(&self.net);
                    assert!(net.reset(), "the NIC can always be reset");
                    for q in net.queues_mut() {
                        virtio_queue::QueueT::reset(q);
                    }
                }
                self.run_loop();
                self.generation += 1;
                (self.rx, self.tx) = queues(self.generation);
                // What was in flight is lost with the old rings; frames still in the host
                // socket arrive later (the checks skip lost ones).
                self.activate();
                self.summary.resets += 1;
            }
            _ => self.run_loop(),
        }
    }
}

/// Runs one program (any bytes).
pub fn run(data: &[u8]) -> Summary {
    let mut i = Input::new(data);
    let mut run = Run::new();
    let mut ops = 0;
    while !i.is_empty() && ops < MAX_OPS {
        run.op(&mut i);
        ops += 1;
    }
    run.kick(TXQ_INDEX);
    run.kick(RXQ_INDEX);
    run.run_loop();
    run.summary
}

/// The committed seeds: (file name, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    // Frames both ways: buffers first, two host frames, one guest frame in two parts.
    let mut e = Enc::new();
    for _ in 0..2 {
        e.u8(OP_RX_BUFFER).u16(1600);
    }
    e.u8(OP_KICK).u8(0);
    e.u8(OP_HOST_FRAME).u16(60).u8(1);
    e.u8(OP_HOST_FRAME).u16(1514).u8(2);
    e.u8(OP_TX).u8(1).u16(12).u8(0).u8(0).u16(98).u8(0).u8(0x42);
    e.u8(OP_KICK).u8(1).u8(OP_RUN);
    out.push(("both-ways", e.finish()));
    // Hostile: a writable TX part, a short and a long chain, a buffer too small, raw
    // descriptors outside memory, a wild available index, then a reset and traffic again.
    let mut e = Enc::new();
    e.u8(OP_TX).u8(1).u16(12).u8(0).u8(0).u16(60).u8(0x80).u8(1);
    e.u8(OP_TX).u8(0).u16(20).u8(0).u8(0);
    e.u8(OP_TX).u8(3).u16(12).u8(0).u8(0);
    for _ in 0..3 {
        e.u16(1200).u8(0).u8(7);
    }
    e.u8(OP_RX_BUFFER).u16(100).u8(OP_HOST_FRAME).u16(400).u8(3);
    e.u8(OP_KICK).u8(1).u8(OP_KICK).u8(0).u8(OP_RUN);
    e.u8(OP_RAW)
        .u8(1)
        .u16(90)
        .u64(MEM_SIZE as u64 - 8)
        .u32(64)
        .u16(0)
        .u16(0);
    e.u8(OP_KICK).u8(1);
    e.u8(OP_AVAIL_IDX)
        .u16(0xfff0)
        .u8(0)
        .u8(OP_KICK)
        .u8(0)
        .u8(OP_RUN);
    e.u8(OP_RESET);
    e.u8(OP_RX_BUFFER).u16(1600).u8(OP_HOST_FRAME).u16(80).u8(9);
    e.u8(OP_KICK).u8(0).u8(OP_RUN);
    out.push(("hostile", e.finish()));
    out
}
