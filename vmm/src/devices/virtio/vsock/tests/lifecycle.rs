//! Device basics (virtio contract, construction, interrupts) and connection shutdown paths.

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use virtio_queue::QueueT;

use super::*;
use crate::devices::virtio::device::ActivateError;
use crate::devices::virtio::vsock::packet::{
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND,
};
use crate::devices::virtio::vsock::VsockError;

#[test]
fn virtio_contract() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Vsock::new(0x1234_5678, dir.path().join("v.sock")).unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.avail_features(), 1 << 32);
    assert_eq!(dev.queues().len(), 3);
    assert!(dev.queues().iter().all(|q| q.max_size() == 256));
    assert_eq!(dev.queue_events().len(), 3);

    let mut cfg = [0u8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 0x1234_5678);
    // Linux may read the le64 as two 32-bit halves.
    let mut hi = [0xffu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    let mut lo = [0u8; 4];
    dev.read_config(0, &mut lo);
    assert_eq!(u32::from_le_bytes(lo), 0x1234_5678);
    // Out of range: untouched.
    let mut out = [0xaau8; 4];
    dev.read_config(6, &mut out);
    assert_eq!(out, [0xaa; 4]);
    dev.read_config(u64::MAX, &mut out);
    assert_eq!(out, [0xaa; 4]);
}

#[test]
fn acked_features_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Vsock::new(3, dir.path().join("v.sock")).unwrap();
    dev.set_acked_features(u64::MAX);
    assert_eq!(dev.acked_features(), 1 << 32);
}

#[test]
fn construction_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let first = Vsock::new(3, path.clone()).unwrap();
    let err = Vsock::new(4, path.clone()).unwrap_err();
    assert!(
        matches!(err, VsockError::PathExists(ref p) if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(matches!(
        Vsock::new(2, dir.path().join("x")),
        Err(VsockError::InvalidCid(2))
    ));
    let err = Vsock::new(3, dir.path().join("missing-dir").join("v.sock")).unwrap_err();
    assert!(matches!(err, VsockError::Bind { .. }), "{err}");
    // Dropping the device removes its socket, so a new VMM can bind the same path.
    drop(first);
    assert!(!path.exists());
    let _again = Vsock::new(3, path).unwrap();
}

#[test]
fn activation_rejects_invalid_queues() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Vsock::new(3, dir.path().join("v.sock")).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    // Queues never configured (not ready).
    let err = dev.activate(mem).unwrap_err();
    assert!(matches!(err, ActivateError::InvalidQueue(0)), "{err}");
    assert!(!dev.is_activated());
}

#[test]
fn interrupts_only_when_a_used_ring_changed() {
    let mut vm = TestVm::new();
    let _ = vm.irq.read();
    // A notification with nothing in the queue: no interrupt.
    vm.kick(TXQ_INDEX);
    vm.kick(RXQ_INDEX);
    vm.run_for(Duration::from_millis(50));
    assert!(vm.irq.read().is_err(), "spurious interrupt");
    // A consumed TX chain: interrupt.
    vm.send(guest_hdr(OP_RST, 1, 2), &[]);
    vm.run_until("TX consumed", |vm| !vm.reap_tx().is_empty());
    assert!(vm.irq.read().is_ok(), "no interrupt for a used TX chain");
    assert_ne!(
        vm.dev
            .lock()
            .unwrap()
            .interrupt_trigger()
            .irq_status
            .load(std::sync::atomic::Ordering::SeqCst)
            & 1,
        0
    );
}

#[test]
fn before_activation_only_the_activate_event_is_watched() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let dev = Arc::new(Mutex::new(Vsock::new(3, uds.clone()).unwrap()));
    let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    // A host client and a queue notification: neither may be handled yet.
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 1\n").unwrap();
    dev.lock().unwrap().queue_events()[TXQ_INDEX]
        .write(1)
        .unwrap();
    assert_eq!(
        em.run_with_timeout(50).unwrap(),
        0,
        "device watched fds before activation"
    );
    assert_eq!(dev.lock().unwrap().muxer.live(), (0, 0));
}

#[test]
fn host_half_close_then_guest_close() {
    let mut vm = TestVm::new();
    let (mut host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    vm.post_rx(4, 4096);
    host.write_all(b"request").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    let mut pkts = Vec::new();
    vm.run_until("data and SHUTDOWN", |vm| {
        pkts.extend(vm.rx_packets());
        pkts.iter().any(|(h, _)| h.op == OP_SHUTDOWN)
    });
    assert_eq!(pkts[0].1, b"request");
    let shut = pkts.last().unwrap().0;
    assert_eq!(shut.op, OP_SHUTDOWN);
    // EOF only: the host can still receive.
    assert_eq!(shut.flags, SHUTDOWN_SEND);
    vm.send(guest_hdr(OP_RW, 1024, local), b"response");
    let mut at_host = Vec::new();
    vm.run_until("response at host", |_| {
        read_some(&mut host, &mut at_host);
        at_host.len() >= 8
    });
    assert_eq!(at_host, b"response");
    // The guest closes (Linux sends SHUTDOWN with both flags): RST back, host sees EOF.
    let mut shut = guest_hdr(OP_SHUTDOWN, 1024, local);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    vm.send(shut, &[]);
    let (rst, _) = vm.next_rx("RST completing the close");
    assert_eq!((rst.op, rst.src_port), (OP_RST, local));
    vm.run_until("host EOF", |_| read_some(&mut host, &mut at_host).is_none());
    assert_eq!(vm.live(), (0, 0));
    assert_eq!(m(&vm.metrics.conns_closed), 1);
}

#[test]
fn host_full_close_tells_guest_both_directions() {
    let mut vm = TestVm::new();
    let (host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    vm.post_rx(2, 4096);
    drop(host);
    let (shut, _) = vm.next_rx("SHUTDOWN");
    assert_eq!(shut.op, OP_SHUTDOWN);
    assert_eq!(shut.flags, SHUTDOWN_SEND | SHUTDOWN_RCV);
    // Linux answers with RST when the peer shut both directions.
    vm.send(guest_hdr(OP_RST, 1024, local), &[]);
    vm.run_until("connection removed", |vm| vm.live() == (0, 0));
    vm.run_for(Duration::from_millis(30));
    assert!(vm.rx_packets().is_empty(), "RST answered with RST");
}

#[test]
fn guest_half_close_gives_host_eof() {
    let mut vm = TestVm::new();
    let (mut host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    vm.send(guest_hdr(OP_RW, 1024, local), b"bye");
    let mut shut = guest_hdr(OP_SHUTDOWN, 1024, local);
    shut.flags = SHUTDOWN_SEND;
    vm.send(shut, &[]);
    let mut at_host = Vec::new();
    vm.run_until("host EOF", |_| read_some(&mut host, &mut at_host).is_none());
    assert_eq!(at_host, b"bye");
    // The other direction still works.
    vm.post_rx(4, 4096);
    host.write_all(b"still here").unwrap();
    let (rw, payload) = vm.next_rx("host data after guest half-close");
    assert_eq!((rw.op, payload.as_slice()), (OP_RW, &b"still here"[..]));
    // Host done too: SHUTDOWN, then RST since neither side can send any more.
    host.shutdown(Shutdown::Write).unwrap();
    let mut pkts = Vec::new();
    vm.run_until("SHUTDOWN and RST", |vm| {
        pkts.extend(vm.rx_packets());
        pkts.len() >= 2
    });
    let ops: Vec<_> = pkts.iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops, vec![OP_SHUTDOWN, OP_RST]);
    vm.run_until("connection removed", |vm| vm.live() == (0, 0));
}

#[test]
fn host_vanishing_while_guest_sends_resets() {
    let mut vm = TestVm::new();
    let (host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    drop(host);
    // The guest has not seen the SHUTDOWN yet (no RX buffers) and keeps sending.
    vm.send(guest_hdr(OP_RW, 1024, local), b"into the void");
    vm.run_until("RW consumed", |vm| m(&vm.metrics.tx_packets) >= 2);
    vm.post_rx(4, 4096);
    let (rst, _) = vm.next_rx("RST");
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, local, 1024));
    vm.run_until("connection removed", |vm| vm.live() == (0, 0));
    vm.run_for(Duration::from_millis(30));
    assert!(vm.rx_packets().is_empty(), "more packets after the RST");
}
