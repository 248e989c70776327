//! Activation through the event loop, interrupts, batching, and reset.

use std::mem::size_of;
use std::sync::atomic::Ordering;

use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn, Opcode};
use vm_memory::ByteValued;

use super::{raw_request, Harness, Part, REQUEST_QUEUE};
use crate::devices::virtio::device::{VirtioDevice, VIRTIO_MMIO_INT_VRING};
use crate::devices::virtio::fs::REQUESTS_PER_ROUND;

const ROOT: u64 = 1;
const HDR: usize = size_of::<InHeader>();

fn init_request(unique: u64) -> Vec<u8> {
    let args = InitIn {
        major: 7,
        minor: 36,
        max_readahead: 0,
        flags: 0,
    };
    raw_request(
        (HDR + size_of::<InitIn>()) as u32,
        Opcode::Init as u32,
        unique,
        0,
        args.as_slice(),
    )
}

#[test]
fn requests_queued_before_activation_are_served_once_active() {
    let mut h = Harness::new();
    // The guest notifies before DRIVER_OK: nobody listens yet.
    h.add(REQUEST_QUEUE, &[Part::In(init_request(1)), Part::Out(256)]);
    h.kick(REQUEST_QUEUE);
    h.manager.run_with_timeout(10).unwrap();
    assert_eq!(h.dev().stats().served, 0);
    h.activate();
    let used = h.wait_used(REQUEST_QUEUE, 1);
    assert!(used[0].1.len > 16, "INIT answered: {:?}", used[0].1);
    assert_eq!(h.dev().stats().served, 1);
}

#[test]
fn used_buffers_raise_the_vring_interrupt() {
    let mut h = Harness::new();
    h.activate();
    let irq = h.dev().interrupt_trigger().clone();
    irq.irq_status.store(0, Ordering::SeqCst);
    let _ = irq.irq_evt.read();
    h.client().init();
    assert_eq!(
        irq.irq_status.load(Ordering::SeqCst) & VIRTIO_MMIO_INT_VRING,
        VIRTIO_MMIO_INT_VRING
    );
    assert!(irq.irq_evt.read().expect("irqfd written") >= 1);
}

#[test]
fn a_long_queue_is_served_in_rounds() {
    let mut h = Harness::new();
    std::fs::write(h.shared().join("file"), b"x").unwrap();
    h.activate();
    h.client().init();
    // Two chains of two descriptors each per round and a half: fits the 256-entry ring.
    let count = REQUESTS_PER_ROUND + REQUESTS_PER_ROUND / 2;
    for unique in 0..count as u64 {
        let req = raw_request(
            (HDR + 5) as u32,
            Opcode::Lookup as u32,
            1000 + unique,
            ROOT,
            b"file\0",
        );
        h.add(REQUEST_QUEUE, &[Part::In(req), Part::Out(256)]);
    }
    // One notification for all of them.
    h.kick(REQUEST_QUEUE);
    let used = h.wait_used(REQUEST_QUEUE, count);
    assert_eq!(used.len(), count);
    assert!(used
        .iter()
        .all(|(_, u)| u.len > 16 && u.data[4..8] == [0; 4]));
}

#[test]
fn reset_then_reactivation_starts_a_fresh_session() {
    let mut h = Harness::new();
    std::fs::write(h.shared().join("file"), b"old session").unwrap();
    h.activate();
    let (node, fh) = {
        let mut c = h.client();
        c.init();
        let node = c.lookup(ROOT, "file").unwrap().nodeid;
        (node, c.open(node, libc::O_RDONLY).unwrap())
    };
    {
        let mut dev = h.dev();
        assert!(dev.reset(), "the device supports reset");
        assert!(!dev.is_activated());
        // What the transport does after a successful device reset.
        for q in dev.queues_mut() {
            virtio_queue::QueueT::reset(q);
        }
    }
    h.reset_drivers();
    h.activate();
    let mut c = h.client();
    c.init();
    // Nothing of the old session is left ...
    assert_eq!(c.read(node, fh, 0, 64), Err(libc::EBADF));
    // ... and the new one works.
    let node = c.lookup(ROOT, "file").unwrap().nodeid;
    let fh = c.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(node, fh, 0, 64).unwrap(), b"old session");
}

#[test]
fn a_mounted_share_blocks_snapshots() {
    let mut h = Harness::new();
    h.activate();
    assert_eq!(h.dev().snapshot_blocker(), None, "not mounted yet");
    assert_eq!(
        h.dev().save_state(),
        None,
        "no device state beyond the transport's"
    );
    h.client().init();
    let why = h.dev().snapshot_blocker().expect("mounted");
    assert!(why.contains("vessel") && why.contains("mounted"), "{why}");
}
