//! Bounds: the connection limit, and back-pressure when the guest gives no RX buffers.

use std::time::Duration;

use super::*;
use crate::devices::virtio::vsock::packet::{OP_REQUEST, OP_RST, OP_RW};
use crate::devices::virtio::vsock::MAX_CONNECTIONS;

#[test]
fn connection_limit_refuses_then_recovers() {
    let mut vm = TestVm::new();
    // Clients that never send their CONNECT line occupy slots too.
    let mut idle: Vec<_> = (0..MAX_CONNECTIONS)
        .map(|_| host_client(&vm, b""))
        .collect();
    vm.run_until("all clients accepted", |vm| {
        vm.live() == (0, MAX_CONNECTIONS)
    });
    // One more host client is closed at once.
    let mut extra = host_client(&vm, b"CONNECT 1024\n");
    let mut sink = Vec::new();
    vm.run_until("extra client closed", |_| {
        read_some(&mut extra, &mut sink).is_none()
    });
    // A guest connection is refused too, even with a listener.
    let _listener =
        std::os::unix::net::UnixListener::bind(format!("{}_6000", vm.uds.display())).unwrap();
    vm.post_rx(2, 4096);
    vm.send(guest_hdr(OP_REQUEST, 4000, 6000), &[]);
    let (rst, _) = vm.next_rx("RST at the limit");
    assert_eq!((rst.op, rst.dst_port), (OP_RST, 4000));
    assert_eq!(m(&vm.metrics.conns_over_limit), 2);
    assert_eq!(vm.live(), (0, MAX_CONNECTIONS));

    // A slot frees up when a client leaves; the next one is served.
    drop(idle.pop());
    vm.run_until("slot freed", |vm| vm.live() == (0, MAX_CONNECTIONS - 1));
    let (_host, _) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    assert_eq!(vm.live(), (1, MAX_CONNECTIONS - 1));
    drop(idle);
    vm.run_until("idle clients gone", |vm| vm.live() == (1, 0));
}

#[test]
fn resets_wait_for_rx_buffers_and_none_is_lost() {
    let mut vm = TestVm::new();
    // Stray packets each deserve an RST, but the guest posts no RX buffer yet.
    let total = 296u32;
    for port in 0..200 {
        vm.send(guest_hdr(OP_RW, port, 1), &[]);
    }
    vm.run_until("first batch consumed", |vm| {
        m(&vm.metrics.tx_packets) == 200
    });
    for port in 200..total {
        vm.send(guest_hdr(OP_RW, port, 1), &[]);
    }
    // The device stops taking TX packets once 256 RSTs are waiting.
    vm.run_for(Duration::from_millis(100));
    assert_eq!(m(&vm.metrics.tx_packets), 256);
    assert_eq!(m(&vm.metrics.internal_errors), 0);

    let mut rsts = Vec::new();
    vm.post_rx(200, 64);
    vm.run_until("all RSTs", |vm| {
        let got = vm.rx_packets();
        if !got.is_empty() {
            vm.post_rx(got.len().min(100), 64);
        }
        rsts.extend(got);
        vm.reap_tx();
        rsts.len() == total as usize
    });
    let ports: Vec<u32> = rsts.iter().map(|(h, _)| h.dst_port).collect();
    assert_eq!(
        ports,
        (0..total).collect::<Vec<_>>(),
        "RSTs lost or reordered"
    );
    assert!(rsts.iter().all(|(h, _)| h.op == OP_RST));
    assert_eq!(m(&vm.metrics.tx_packets), u64::from(total));
}
