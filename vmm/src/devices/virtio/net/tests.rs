//! The NIC on mock guest memory, run by a real `EventManager` as the VMM's event loop runs it,
//! with a datagram socket pair standing for the tap (one read or write = one header + frame,
//! as on a tap with `IFF_VNET_HDR`).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};

use super::super::device::{VirtioDevice, VIRTIO_F_VERSION_1};
use super::*;
use crate::devices::virtio::device::GuestMemory;
use crate::fuzz_api::driver::{DriverQueue, Part};
use crate::fuzz_api::guest_memory;

const MEM_SIZE: usize = 8 << 20;
const QSIZE: u16 = 256;

struct Rig {
    mem: GuestMemory,
    net: Arc<Mutex<Net>>,
    em: EventManager<Arc<Mutex<Net>>>,
    rx: DriverQueue,
    tx: DriverQueue,
    /// The host side of the "tap".
    host: UnixDatagram,
    metrics: Arc<NetMetrics>,
}

fn queue(q: u64) -> DriverQueue {
    let base = 0x1_0000 * (q + 1);
    DriverQueue::new(
        base,
        base + 0x1000,
        base + 0x2000,
        QSIZE,
        0x10_0000 + q * 0x10_0000,
        0x10_0000,
    )
}

impl Rig {
    fn new(with_tap: bool) -> Rig {
        Rig::acking(with_tap, None)
    }

    /// A rig whose driver acks `acked` (all the device offers when `None`).
    fn acking(with_tap: bool, acked: Option<u64>) -> Rig {
        let (host, dev) = UnixDatagram::pair().expect("socket pair");
        host.set_nonblocking(true).expect("non-blocking");
        let tap = with_tap.then(|| Tap::from_fd_unchecked(OwnedFd::from(dev)));
        let mut net = Net::new(tap).expect("net device");
        let metrics = net.metrics();
        let mem = guest_memory(MEM_SIZE);
        let (rx, tx) = (queue(0), queue(1));
        rx.configure(&mut net.queues_mut()[RXQ_INDEX]);
        tx.configure(&mut net.queues_mut()[TXQ_INDEX]);
        net.set_acked_features(acked.unwrap_or(net.avail_features()));
        net.activate(mem.clone()).expect("activate");
        let net = Arc::new(Mutex::new(net));
        let mut em = EventManager::<Arc<Mutex<Net>>>::new().expect("event manager");
        em.add_subscriber(Arc::clone(&net));
        let mut rig = Rig {
            mem,
            net,
            em,
            rx,
            tx,
            host,
            metrics,
        };
        rig.run();
        rig
    }

    /// Runs the event loop until nothing is ready.
    fn run(&mut self) {
        for _ in 0..64 {
            if self.em.run_with_timeout(0).expect("event loop") == 0 {
                return;
            }
        }
        panic!("the event loop never went idle");
    }

    fn kick(&self, q: usize) {
        self.net.lock().unwrap().queue_events()[q]
            .write(1)
            .expect("notify");
    }

    /// Posts a TX chain of `parts` and kicks.
    fn send(&mut self, parts: &[Part<'_>]) {
        self.tx
            .add_chain(&self.mem, parts, 0)
            .expect("TX chain posted");
        self.kick(TXQ_INDEX);
    }

    fn post_rx(&mut self, len: u32) {
        let parts = [Part {
            bytes: None,
            len,
            writable: true,
        }];
        self.rx
            .add_chain(&self.mem, &parts, 0)
            .expect("RX buffer posted");
    }

    /// What reached the host side.
    fn host_frames(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 70000];
        while let Ok(n) = self.host.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    fn get(&self, c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

/// `frame` behind a header with nothing to offload (as the guest or the tap sends it).
fn with_hdr(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; NET_HDR_LEN];
    v.extend_from_slice(frame);
    v
}

fn readable(b: &[u8]) -> Part<'_> {
    Part {
        bytes: Some(b),
        len: b.len() as u32,
        writable: false,
    }
}

#[test]
fn features_and_config_space() {
    let net = Net::new(None).expect("net");
    assert_eq!(net.device_type(), VIRTIO_ID_NET);
    assert_eq!(
        net.avail_features(),
        VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_MTU
            | offload::VIRTIO_NET_F_CSUM
            | offload::VIRTIO_NET_F_GUEST_CSUM
            | offload::VIRTIO_NET_F_HOST_TSO4
            | offload::VIRTIO_NET_F_HOST_TSO6,
        "checksums both ways and TSO on transmit; no receive GSO, no mergeable buffers, no \
         control queue"
    );
    let mut cfg = [0u8; 12];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg[..6], DEFAULT_MAC);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), DEFAULT_MTU);
    let mut past = [0xffu8; 4];
    net.read_config(10, &mut past);
    assert_eq!(
        past, [0xff; 4],
        "a read past the end leaves the buffer untouched"
    );
}

#[test]
fn a_guest_frame_reaches_the_tap_whole() {
    let mut rig = Rig::new(true);
    let f = frame(98, 1);
    let hdr = [0u8; NET_HDR_LEN];
    // Header and frame split over three descriptors, as a guest may.
    rig.send(&[readable(&hdr[..8]), readable(&hdr[8..]), readable(&f)]);
    rig.run();
    assert_eq!(rig.host_frames(), vec![with_hdr(&f)]);
    let used = rig.tx.harvest(&rig.mem);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].len, 0, "TX buffers are only read");
    assert_eq!(rig.get(&rig.metrics.tx_frames), 1);
}

#[test]
fn a_host_frame_reaches_the_guest_with_its_header() {
    let mut rig = Rig::new(true);
    rig.post_rx(NET_HDR_LEN as u32 + MAX_FRAME as u32);
    rig.kick(RXQ_INDEX);
    rig.run();
    let f = frame(342, 9);
    rig.host.send(&with_hdr(&f)).expect("host frame");
    rig.run();
    let used = rig.rx.harvest(&rig.mem);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].len as usize, NET_HDR_LEN + f.len());
    let got = used[0]
        .chain
        .as_ref()
        .expect("chain")
        .written(&rig.mem, used[0].len);
    let mut want_hdr = [0u8; NET_HDR_LEN];
    want_hdr[10] = 1; // num_buffers
    assert_eq!(got[..NET_HDR_LEN], want_hdr);
    assert_eq!(got[NET_HDR_LEN..], f[..]);
}

#[test]
fn a_frame_waits_for_an_rx_buffer_without_spinning() {
    let mut rig = Rig::new(true);
    let (a, b) = (frame(60, 1), frame(61, 2));
    rig.host.send(&with_hdr(&a)).expect("host frame");
    rig.host.send(&with_hdr(&b)).expect("host frame");
    // No buffer posted: the loop goes idle (run() panics if it spins) with the frame kept.
    rig.run();
    assert!(rig.get(&rig.metrics.rx_no_buffer) >= 1);
    assert!(
        !rig.net.lock().unwrap().tap_polled,
        "tap left the interest list"
    );
    rig.post_rx(2048);
    rig.post_rx(2048);
    rig.kick(RXQ_INDEX);
    rig.run();
    let used = rig.rx.harvest(&rig.mem);
    let frames: Vec<Vec<u8>> = used
        .iter()
        .map(|u| u.chain.as_ref().expect("chain").written(&rig.mem, u.len)[NET_HDR_LEN..].to_vec())
        .collect();
    assert_eq!(frames, vec![a, b], "both frames, in order, nothing lost");
    assert!(rig.net.lock().unwrap().tap_polled, "tap polled again");
}

#[test]
fn a_frame_larger_than_the_buffer_is_dropped_and_the_buffer_kept() {
    let mut rig = Rig::new(true);
    rig.post_rx(512);
    rig.kick(RXQ_INDEX);
    rig.run();
    rig.host
        .send(&with_hdr(&frame(1000, 3)))
        .expect("big frame");
    rig.run();
    assert!(
        rig.rx.harvest(&rig.mem).is_empty(),
        "the small buffer was not used"
    );
    assert_eq!(rig.get(&rig.metrics.rx_dropped), 1);
    let small = frame(100, 4);
    rig.host.send(&with_hdr(&small)).expect("small frame");
    rig.run();
    let used = rig.rx.harvest(&rig.mem);
    assert_eq!(used.len(), 1);
    assert_eq!(
        used[0]
            .chain
            .as_ref()
            .expect("chain")
            .written(&rig.mem, used[0].len)[NET_HDR_LEN..],
        small[..]
    );
    // Longer than any frame the guest's MTU allows: dropped even with room.
    rig.post_rx(4096);
    rig.host
        .send(&with_hdr(&frame(MAX_FRAME + 1, 5)))
        .expect("oversized frame");
    rig.kick(RXQ_INDEX);
    rig.run();
    assert!(rig.rx.harvest(&rig.mem).is_empty());
    assert_eq!(rig.get(&rig.metrics.rx_dropped), 2);
}

#[test]
fn malformed_tx_chains_are_returned_unsent() {
    let mut rig = Rig::new(true);
    let hdr = [0u8; NET_HDR_LEN];
    let f = frame(64, 6);
    let too_short = [0u8; NET_HDR_LEN + ETH_HDR_LEN - 1];
    let too_long = vec![0u8; NET_HDR_LEN + MAX_FRAME + 1];
    rig.send(&[readable(&too_short)]);
    rig.send(&[readable(&too_long)]);
    // A device-writable descriptor in a TX chain.
    rig.send(&[
        readable(&hdr),
        Part {
            bytes: None,
            len: 64,
            writable: true,
        },
    ]);
    // A descriptor pointing outside guest memory.
    rig.tx
        .add_raw(&rig.mem, &[(200, MEM_SIZE as u64 - 8, 64, 0, 0)], 200);
    rig.kick(TXQ_INDEX);
    // A header with a flag the guest may not set on transmit.
    let mut bad_hdr = hdr;
    bad_hdr[0] = offload::HDR_F_DATA_VALID;
    rig.send(&[readable(&bad_hdr), readable(&f)]);
    // And a good one after them.
    rig.send(&[readable(&hdr), readable(&f)]);
    rig.run();
    assert_eq!(
        rig.host_frames(),
        vec![with_hdr(&f)],
        "only the well-formed frame"
    );
    assert_eq!(rig.get(&rig.metrics.tx_malformed), 5);
    assert_eq!(rig.tx.harvest(&rig.mem).len(), 6, "every chain returned");
}

#[test]
fn a_tx_burst_yields_to_the_loop_and_finishes() {
    let mut rig = Rig::new(true);
    let frames: Vec<Vec<u8>> = (0..(3 * BURST + 5)).map(|i| frame(60, i as u8)).collect();
    for f in &frames {
        let mut chain = vec![0u8; NET_HDR_LEN];
        chain.extend_from_slice(f);
        rig.tx
            .add_chain(&rig.mem, &[readable(&chain)], 0)
            .expect("posted");
    }
    rig.kick(TXQ_INDEX);
    // One event: one burst.
    rig.em.run_with_timeout(0).expect("event loop");
    assert_eq!(rig.get(&rig.metrics.tx_frames), BURST as u64);
    rig.run();
    let got = rig.host_frames();
    assert_eq!(got.len(), frames.len());
    let sent: Vec<Vec<u8>> = frames.iter().map(|f| with_hdr(f)).collect();
    assert_eq!(got, sent, "all frames, in order");
    assert_eq!(
        rig.get(&rig.metrics.tx_kicks),
        1,
        "the device's own re-kicks are not counted as the guest's"
    );
}

#[test]
fn without_a_tap_frames_are_dropped() {
    let mut rig = Rig::new(false);
    let hdr = [0u8; NET_HDR_LEN];
    rig.send(&[readable(&hdr), readable(&frame(60, 1))]);
    rig.post_rx(2048);
    rig.kick(RXQ_INDEX);
    rig.run();
    assert_eq!(rig.get(&rig.metrics.tx_dropped), 1);
    assert_eq!(rig.tx.harvest(&rig.mem).len(), 1);
    assert!(rig.rx.harvest(&rig.mem).is_empty());
}

#[test]
fn reset_stops_the_device_and_it_can_start_again() {
    let mut rig = Rig::new(true);
    {
        // What the transport does on a status write of 0.
        let mut net = rig.net.lock().unwrap();
        assert!(net.reset(), "the NIC can be reset");
        for q in net.queues_mut() {
            virtio_queue::QueueT::reset(q);
        }
    }
    rig.host.send(&with_hdr(&frame(60, 1))).expect("host frame");
    rig.run();
    assert!(
        !rig.net.lock().unwrap().tap_polled,
        "an inactive device does not poll the tap"
    );
    // The driver sets the device up again with fresh rings.
    let (rx, tx) = (queue(2), queue(3));
    {
        let mut net = rig.net.lock().unwrap();
        assert!(!net.is_activated());
        rx.configure(&mut net.queues_mut()[RXQ_INDEX]);
        tx.configure(&mut net.queues_mut()[TXQ_INDEX]);
        net.activate(rig.mem.clone()).expect("activate again");
    }
    rig.rx = rx;
    rig.tx = tx;
    rig.post_rx(2048);
    rig.kick(RXQ_INDEX);
    rig.run();
    let used = rig.rx.harvest(&rig.mem);
    assert_eq!(
        used.len(),
        1,
        "the frame sent while reset arrives after reactivation"
    );
}

/// A TSO frame as the guest's stack hands it over: up to 64 KiB with the checksum to fill.
fn tso_chain(frame_len: usize) -> Vec<u8> {
    let mut h = vec![offload::HDR_F_NEEDS_CSUM, offload::GSO_TCPV4];
    for v in [54u16, 1448, 34, 16, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&frame(frame_len, 8));
    h
}

#[test]
fn a_tso_frame_reaches_the_tap_whole_with_its_header() {
    let mut rig = Rig::new(true);
    let chain = tso_chain(60_000);
    // Header alone, then the frame in pieces, as the guest's scatter-gather list does.
    let parts: Vec<Part<'_>> = std::iter::once(&chain[..NET_HDR_LEN])
        .chain(chain[NET_HDR_LEN..].chunks(4096))
        .map(readable)
        .collect();
    rig.send(&parts);
    rig.run();
    assert_eq!(rig.host_frames(), vec![chain]);
    assert_eq!(rig.get(&rig.metrics.tx_bytes), 60_000);
    assert_eq!(rig.get(&rig.metrics.tx_malformed), 0);
}

#[test]
fn offloads_follow_what_the_guest_acked() {
    let basic = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU;
    let mut rig = Rig::acking(true, Some(basic));
    // A guest that did not ack TSO or CSUM may not use them.
    rig.send(&[readable(&tso_chain(9000))]);
    let mut csum_only = tso_chain(100);
    csum_only[1] = offload::GSO_NONE;
    rig.send(&[readable(&csum_only)]);
    rig.run();
    assert!(rig.host_frames().is_empty());
    assert_eq!(rig.get(&rig.metrics.tx_malformed), 2);
    // The tap's partial checksum is filled in for it, and no flag reaches it.
    rig.post_rx(2048);
    rig.kick(RXQ_INDEX);
    rig.run();
    let mut from_tap = with_hdr(&frame(80, 2));
    from_tap[0] = offload::HDR_F_NEEDS_CSUM;
    from_tap[6..8].copy_from_slice(&34u16.to_le_bytes());
    from_tap[8..10].copy_from_slice(&16u16.to_le_bytes());
    rig.host.send(&from_tap).expect("host frame");
    rig.run();
    let used = rig.rx.harvest(&rig.mem);
    assert_eq!(used.len(), 1);
    let got = used[0]
        .chain
        .as_ref()
        .expect("chain")
        .written(&rig.mem, used[0].len);
    assert_eq!(got[0], 0, "no NEEDS_CSUM for a guest without GUEST_CSUM");
    let mut want = from_tap[NET_HDR_LEN..].to_vec();
    offload::fill_checksum(&mut want, 34, 16).expect("inside");
    assert_ne!(
        want,
        from_tap[NET_HDR_LEN..],
        "the checksum changed the frame"
    );
    assert_eq!(got[NET_HDR_LEN..], want[..]);
    // A GSO frame from the tap (never allowed to send one) is dropped.
    let mut gso = with_hdr(&frame(200, 3));
    gso[1] = offload::GSO_TCPV4;
    rig.host.send(&gso).expect("host frame");
    rig.run();
    assert!(rig.rx.harvest(&rig.mem).is_empty());
    assert_eq!(rig.get(&rig.metrics.rx_dropped), 1);
}
