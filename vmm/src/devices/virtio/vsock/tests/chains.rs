//! Hostile descriptor chains: each is consumed (returned with length 0), counted, and the device
//! keeps working afterwards.

use std::time::Duration;

use super::*;
use crate::devices::virtio::vsock::packet::{OP_REQUEST, OP_RST, OP_RW};

/// A REQUEST to a host port nobody listens on: the device answers RST (a cheap "it parsed").
fn probe_request(src_port: u32) -> PacketHeader {
    guest_hdr(OP_REQUEST, src_port, 7777)
}

/// The device still parses good chains: REQUEST to a closed port yields an RST.
fn assert_still_works(vm: &mut TestVm, src_port: u32) {
    vm.post_rx(1, 256);
    vm.send(probe_request(src_port), &[]);
    let (rst, _) = vm.next_rx("RST after a good REQUEST");
    assert_eq!(rst.op, OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (7777, src_port));
}

/// Sends a bad TX chain and checks it is returned with len 0 and counted.
fn assert_tx_rejected(vm: &mut TestVm, head: u16) {
    let before = m(&vm.metrics.tx_malformed_chains);
    assert_eq!(vm.wait_tx_used(head), 0);
    assert_eq!(m(&vm.metrics.tx_malformed_chains), before + 1);
    assert_eq!(
        m(&vm.metrics.tx_packets),
        0,
        "a bad chain was taken as a packet"
    );
}

#[test]
fn header_split_across_descriptors_is_parsed() {
    let mut vm = TestVm::new();
    vm.post_rx(1, 256);
    let hdr = probe_request(1500).to_bytes();
    // 10 + 1 + 33 bytes: no descriptor boundary at a field boundary.
    let head = vm.send_parts(&[
        (Some(&hdr[..10]), 10, 0),
        (Some(&hdr[10..11]), 1, 0),
        (Some(&hdr[11..]), 33, 0),
    ]);
    assert_eq!(vm.wait_tx_used(head), 0);
    let (rst, _) = vm.next_rx("RST for the split REQUEST");
    assert_eq!(rst.op, OP_RST);
    assert_eq!(rst.dst_port, 1500);
    assert_eq!(m(&vm.metrics.tx_malformed_chains), 0);
    assert_eq!(m(&vm.metrics.tx_packets), 1);
}

#[test]
fn header_too_short() {
    let mut vm = TestVm::new();
    let hdr = probe_request(1).to_bytes();
    let head = vm.send_parts(&[(Some(&hdr[..20]), 20, 0), (Some(&hdr[20..30]), 10, 0)]);
    assert_tx_rejected(&mut vm, head);
    vm.post_rx(1, 256);
    vm.run_for(Duration::from_millis(50));
    assert!(
        vm.rx_packets().is_empty(),
        "a truncated REQUEST was answered"
    );
    assert_still_works(&mut vm, 2);
}

#[test]
fn payload_len_beyond_chain() {
    let mut vm = TestVm::new();
    let mut hdr = guest_hdr(OP_RW, 5, 6);
    hdr.len = 100;
    let h = hdr.to_bytes();
    let head = vm.send_parts(&[(Some(&h), HDR_LEN as u32, 0), (Some(&[1u8; 10]), 10, 0)]);
    assert_tx_rejected(&mut vm, head);
    assert_still_works(&mut vm, 7);
}

#[test]
fn payload_over_64k() {
    let mut vm = TestVm::new();
    let payload = vec![0xabu8; 64 * 1024 + 1];
    let mut hdr = guest_hdr(OP_RW, 5, 6);
    hdr.len = payload.len() as u32;
    let h = hdr.to_bytes();
    let head = vm.send_parts(&[
        (Some(&h), HDR_LEN as u32, 0),
        (Some(&payload), payload.len() as u32, 0),
    ]);
    assert_tx_rejected(&mut vm, head);
    assert_still_works(&mut vm, 8);
}

#[test]
fn tx_chain_write_only() {
    let mut vm = TestVm::new();
    let hdr = probe_request(9).to_bytes();
    let head = vm.send_parts(&[(Some(&hdr), HDR_LEN as u32, VRING_DESC_F_WRITE)]);
    assert_tx_rejected(&mut vm, head);
    vm.post_rx(1, 256);
    vm.run_for(Duration::from_millis(50));
    assert!(vm.rx_packets().is_empty());
    assert_still_works(&mut vm, 10);
}

#[test]
fn tx_descriptor_outside_guest_memory() {
    let mut vm = TestVm::new();
    let idx = vm.free_idx(TXQ_INDEX, 2);
    // Straddles the end of guest memory.
    vm.send_raw(TXQ_INDEX, &[(idx[0], MEM_SIZE - 10, 44, 0, 0)], idx[0]);
    assert_tx_rejected(&mut vm, idx[0]);
    // Entirely outside, and an address that overflows u64.
    vm.send_raw(TXQ_INDEX, &[(idx[1], u64::MAX - 4, 44, 0, 0)], idx[1]);
    assert_tx_rejected(&mut vm, idx[1]);
    assert_still_works(&mut vm, 11);
}

#[test]
fn tx_chain_loop_and_bad_next_index() {
    let mut vm = TestVm::new();
    let idx = vm.free_idx(TXQ_INDEX, 3);
    let (a, b, c) = (idx[0], idx[1], idx[2]);
    let hdr = probe_request(12).to_bytes();
    vm.write_mem(vm.slot(TXQ_INDEX, a), &hdr);
    // a -> b -> a -> ...
    vm.send_raw(
        TXQ_INDEX,
        &[
            (a, vm.slot(TXQ_INDEX, a), 44, VRING_DESC_F_NEXT, b),
            (b, vm.slot(TXQ_INDEX, b), 8, VRING_DESC_F_NEXT, a),
        ],
        a,
    );
    assert_tx_rejected(&mut vm, a);
    // `next` beyond the descriptor table.
    vm.write_mem(vm.slot(TXQ_INDEX, c), &hdr);
    vm.send_raw(
        TXQ_INDEX,
        &[(c, vm.slot(TXQ_INDEX, c), 44, VRING_DESC_F_NEXT, 300)],
        c,
    );
    assert_tx_rejected(&mut vm, c);
    vm.post_rx(1, 256);
    vm.run_for(Duration::from_millis(50));
    assert!(vm.rx_packets().is_empty(), "a looping chain was answered");
    assert_still_works(&mut vm, 13);
}

/// Makes an RST pending (REQUEST to a closed port) without giving the device an RX buffer.
fn make_rx_pending(vm: &mut TestVm, src_port: u32) {
    vm.send(probe_request(src_port), &[]);
    vm.run_until("REQUEST consumed", |vm| m(&vm.metrics.tx_packets) >= 1);
}

fn assert_rx_rejected_then_delivered(vm: &mut TestVm, src_port: u32) {
    let mut rejected = 0;
    vm.run_until("bad RX chain returned", |vm| {
        rejected += vm.rx_rejected();
        rejected > 0
    });
    assert_eq!(rejected, 1);
    assert_eq!(m(&vm.metrics.rx_malformed_chains), 1);
    // The pending packet was not lost: it goes into the next good buffer.
    vm.post_rx(1, 256);
    let (rst, _) = vm.next_rx("RST in a good RX buffer");
    assert_eq!((rst.op, rst.dst_port), (OP_RST, src_port));
}

#[test]
fn rx_chain_read_only() {
    let mut vm = TestVm::new();
    make_rx_pending(&mut vm, 20);
    vm.post_rx_chain(&[(256, 0)]);
    assert_rx_rejected_then_delivered(&mut vm, 20);
}

#[test]
fn rx_chain_mixed_direction() {
    let mut vm = TestVm::new();
    make_rx_pending(&mut vm, 21);
    vm.post_rx_chain(&[(44, VRING_DESC_F_WRITE), (256, 0)]);
    assert_rx_rejected_then_delivered(&mut vm, 21);
}

#[test]
fn rx_chain_too_small_for_a_header() {
    let mut vm = TestVm::new();
    make_rx_pending(&mut vm, 22);
    vm.post_rx_chain(&[(20, VRING_DESC_F_WRITE), (20, VRING_DESC_F_WRITE)]);
    assert_rx_rejected_then_delivered(&mut vm, 22);
}

#[test]
fn rx_descriptor_outside_guest_memory() {
    let mut vm = TestVm::new();
    make_rx_pending(&mut vm, 23);
    let idx = vm.free_idx(RXQ_INDEX, 1)[0];
    vm.send_raw(
        RXQ_INDEX,
        &[(idx, MEM_SIZE + 0x1000, 256, VRING_DESC_F_WRITE, 0)],
        idx,
    );
    assert_rx_rejected_then_delivered(&mut vm, 23);
}

#[test]
fn rx_chain_loop() {
    let mut vm = TestVm::new();
    make_rx_pending(&mut vm, 24);
    let idx = vm.free_idx(RXQ_INDEX, 1)[0];
    let flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
    vm.send_raw(
        RXQ_INDEX,
        &[(idx, vm.slot(RXQ_INDEX, idx), 256, flags, idx)],
        idx,
    );
    assert_rx_rejected_then_delivered(&mut vm, 24);
}

#[test]
fn header_and_payload_in_one_descriptor() {
    let mut vm = TestVm::new();
    let (mut host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    let mut hdr = guest_hdr(OP_RW, 1024, local);
    hdr.len = 5;
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(b"hello");
    // Trailing bytes beyond `len` in the chain are ignored.
    bytes.extend_from_slice(b"junk");
    let head = vm.send_parts(&[(Some(&bytes), bytes.len() as u32, 0)]);
    assert_eq!(vm.wait_tx_used(head), 0);
    let mut at_host = Vec::new();
    vm.run_until("payload at host", |_| {
        read_some(&mut host, &mut at_host);
        at_host.len() >= 5
    });
    vm.run_for(Duration::from_millis(20));
    read_some(&mut host, &mut at_host);
    assert_eq!(at_host, b"hello");
    assert_eq!(m(&vm.metrics.tx_malformed_chains), 0);
}
