//! Guest-initiated connections to `<uds>_<port>`, and packets that belong to no connection.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use super::*;
use crate::devices::virtio::vsock::packet::{
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
};

fn port_path(vm: &TestVm, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", vm.uds.display()))
}

#[test]
fn guest_connects_to_host_listener() {
    let mut vm = TestVm::new();
    let listener = UnixListener::bind(port_path(&vm, 5000)).unwrap();
    vm.post_rx(4, 4096);
    let mut req = guest_hdr(OP_REQUEST, 3000, 5000);
    req.buf_alloc = 64 * 1024;
    vm.send(req, &[]);
    let (resp, _) = vm.next_rx("RESPONSE");
    assert_eq!(resp.op, OP_RESPONSE);
    assert_eq!((resp.src_cid, resp.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!((resp.src_port, resp.dst_port), (5000, 3000));
    assert_eq!(resp.buf_alloc, super::super::CONN_BUF_ALLOC);
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();

    // Guest -> host, including a maximal 64 KiB payload.
    let big = pattern(64 * 1024, 9);
    vm.send(guest_hdr(OP_RW, 3000, 5000), b"ping");
    vm.send(guest_hdr(OP_RW, 3000, 5000), &big);
    let mut at_host = Vec::new();
    vm.run_until("guest bytes at host", |_| {
        read_some(&mut host, &mut at_host);
        at_host.len() >= 4 + big.len()
    });
    assert_eq!(&at_host[..4], b"ping");
    assert!(at_host[4..] == big[..]);

    // Host -> guest.
    host.write_all(b"pong").unwrap();
    let (rw, payload) = vm.next_rx("host bytes in RX");
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (OP_RW, 5000, 3000));
    assert_eq!(payload, b"pong");
    assert_eq!(m(&vm.metrics.conns_established), 1);
    assert_eq!(m(&vm.metrics.host_connect_failed), 0);
}

#[test]
fn guest_connect_without_listener_gets_rst() {
    let mut vm = TestVm::new();
    vm.post_rx(2, 4096);
    vm.send(guest_hdr(OP_REQUEST, 3001, 5001), &[]);
    let (rst, _) = vm.next_rx("RST");
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 5001, 3001));
    assert_eq!(m(&vm.metrics.host_connect_failed), 1);
    assert_eq!(vm.live(), (0, 0));

    // A stale socket file (nobody listening) is refused too.
    drop(UnixListener::bind(port_path(&vm, 5002)).unwrap());
    vm.send(guest_hdr(OP_REQUEST, 3002, 5002), &[]);
    let (rst, _) = vm.next_rx("RST for stale socket");
    assert_eq!((rst.op, rst.dst_port), (OP_RST, 3002));
    assert_eq!(m(&vm.metrics.host_connect_failed), 2);
}

#[test]
fn packets_outside_any_connection() {
    let mut vm = TestVm::new();
    vm.post_rx(4, 4096);
    // Data for a connection that does not exist: RST.
    vm.send(guest_hdr(OP_RW, 3003, 5003), b"stray");
    let (rst, _) = vm.next_rx("RST for stray RW");
    assert_eq!((rst.op, rst.dst_port), (OP_RST, 3003));
    // An RST for an unknown connection is ignored (no RST ping-pong).
    vm.send(guest_hdr(OP_RST, 3004, 5004), &[]);
    // Wrong source CID: dropped and counted, no answer.
    let mut spoofed = guest_hdr(OP_REQUEST, 3005, 5005);
    spoofed.src_cid = 99;
    vm.send(spoofed, &[]);
    // Unsupported type (SEQPACKET): RST.
    let mut seq = guest_hdr(OP_REQUEST, 3006, 5006);
    seq.type_ = 2;
    vm.send(seq, &[]);
    // Unknown op: RST, counted as malformed.
    let mut weird = guest_hdr(42, 3007, 5007);
    weird.op = 42;
    vm.send(weird, &[]);
    let mut got = Vec::new();
    vm.run_until("two RSTs", |vm| {
        got.extend(vm.rx_packets());
        got.len() >= 2
    });
    vm.run_for(std::time::Duration::from_millis(50));
    got.extend(vm.rx_packets());
    let ports: Vec<_> = got.iter().map(|(h, _)| (h.op, h.dst_port)).collect();
    assert_eq!(ports, vec![(OP_RST, 3006), (OP_RST, 3007)]);
    assert_eq!(m(&vm.metrics.malformed_packets), 3);
    assert_eq!(m(&vm.metrics.tx_packets), 5);
}

#[test]
fn guest_credit_request_is_answered() {
    let mut vm = TestVm::new();
    let listener = UnixListener::bind(port_path(&vm, 5010)).unwrap();
    vm.post_rx(4, 4096);
    vm.send(guest_hdr(OP_REQUEST, 3010, 5010), &[]);
    let (resp, _) = vm.next_rx("RESPONSE");
    assert_eq!(resp.op, OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    vm.send(guest_hdr(OP_RW, 3010, 5010), b"abc");
    let mut sink = Vec::new();
    vm.run_until("bytes at host", |_| {
        read_some(&mut host, &mut sink);
        sink.len() == 3
    });
    vm.send(
        guest_hdr(
            crate::devices::virtio::vsock::packet::OP_CREDIT_REQUEST,
            3010,
            5010,
        ),
        &[],
    );
    let (upd, _) = vm.next_rx("CREDIT_UPDATE");
    assert_eq!(upd.op, OP_CREDIT_UPDATE);
    assert_eq!(upd.fwd_cnt, 3);
    assert_eq!(upd.buf_alloc, super::super::CONN_BUF_ALLOC);
}
