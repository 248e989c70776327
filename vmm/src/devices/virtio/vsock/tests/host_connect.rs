//! Host-initiated connections: `CONNECT <port>\n`, REQUEST/RESPONSE, `OK <port>\n`, data, credit.

use std::io::Write;
use std::time::Duration;

use super::*;
use crate::devices::virtio::vsock::packet::{
    OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RST, OP_RW,
};

/// Collects RW payload for `(host_port -> guest_port)` until `want` bytes arrived, keeping the
/// RX queue stocked with `buf_size` buffers. Returns the bytes and the last header seen.
fn guest_receive(vm: &mut TestVm, local: u32, want: usize, buf_size: u32) -> Vec<u8> {
    let mut data = Vec::new();
    vm.run_until("RW data", |vm| {
        let pkts = vm.rx_packets();
        let n = pkts.len();
        for (hdr, payload) in pkts {
            assert_eq!(hdr.src_port, local);
            if hdr.op == OP_RW {
                assert!(!payload.is_empty());
                assert!(payload.len() <= buf_size as usize - HDR_LEN);
                data.extend(payload);
            } else {
                assert_eq!(hdr.op, OP_CREDIT_UPDATE, "unexpected {hdr:?}");
            }
        }
        if n > 0 {
            vm.post_rx(n, buf_size);
        }
        data.len() >= want
    });
    data
}

#[test]
fn connect_and_move_data_both_ways() {
    let mut vm = TestVm::new();
    let (mut host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    assert_eq!(m(&vm.metrics.conns_established), 1);

    // Host -> guest, larger than one RX buffer (4 KiB buffers, 10000 bytes).
    let sent = pattern(10_000, 1);
    host.write_all(&sent).unwrap();
    vm.post_rx(4, 4096);
    let got = guest_receive(&mut vm, local, sent.len(), 4096);
    assert_eq!(got, sent);

    // Guest -> host.
    let reply = pattern(5000, 2);
    let mut hdr = guest_hdr(OP_RW, 1024, local);
    hdr.fwd_cnt = sent.len() as u32;
    vm.send(hdr, &reply);
    let mut at_host = Vec::new();
    vm.run_until("guest data at host", |_| {
        read_some(&mut host, &mut at_host);
        at_host.len() >= reply.len()
    });
    assert_eq!(at_host, reply);
    assert_eq!(m(&vm.metrics.tx_bytes), 5000);
    assert_eq!(m(&vm.metrics.rx_bytes), 10_000);
    assert_eq!(m(&vm.metrics.tx_malformed_chains), 0);
    assert_eq!(vm.live(), (1, 0));
}

#[test]
fn connect_line_in_pieces_and_early_data() {
    let mut vm = TestVm::new();
    let mut host = host_client(&vm, b"CONN");
    vm.post_rx(2, 4096);
    vm.run_for(Duration::from_millis(50));
    assert!(
        vm.rx_packets().is_empty(),
        "REQUEST before the line was complete"
    );
    assert_eq!(vm.live(), (0, 1));
    // The rest of the line, and data the client pipelines before reading OK.
    host.write_all(b"ECT 52\nearly").unwrap();
    let (req, _) = vm.next_rx("REQUEST");
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 52));
    vm.send(
        guest_hdr(super::super::packet::OP_RESPONSE, 52, req.src_port),
        &[],
    );
    let data = guest_receive(&mut vm, req.src_port, 5, 4096);
    assert_eq!(data, b"early");
    let mut ack = Vec::new();
    vm.run_until("OK line", |_| {
        read_some(&mut host, &mut ack);
        ack.ends_with(b"\n")
    });
    assert_eq!(ack, format!("OK {}\n", req.src_port).as_bytes());
}

#[test]
fn host_to_guest_waits_for_credit() {
    let mut vm = TestVm::new();
    // The guest has only an 8 KiB receive buffer.
    let (mut host, local) = establish(&mut vm, 1024, 8192);
    let sent = pattern(20_000, 3);
    host.write_all(&sent).unwrap();
    vm.post_rx(8, 4096 + HDR_LEN as u32);

    let mut got = Vec::new();
    let mut credit_requests = 0;
    let mut collect = |vm: &mut TestVm, got: &mut Vec<u8>| {
        for (hdr, payload) in vm.rx_packets() {
            match hdr.op {
                OP_RW => got.extend(payload),
                OP_CREDIT_REQUEST => credit_requests += 1,
                op => panic!("unexpected op {op}"),
            }
            vm.post_rx(1, 4096 + HDR_LEN as u32);
        }
    };
    vm.run_until("first 8 KiB", |vm| {
        collect(vm, &mut got);
        got.len() >= 8192
    });
    // No credit left: nothing more may come until the guest says it consumed data.
    vm.run_for(Duration::from_millis(200));
    collect(&mut vm, &mut got);
    assert_eq!(got.len(), 8192, "device overran the guest's credit");

    for fwd in [8192u32, 16384] {
        let mut upd = guest_hdr(OP_CREDIT_UPDATE, 1024, local);
        upd.buf_alloc = 8192;
        upd.fwd_cnt = fwd;
        vm.send(upd, &[]);
        let limit = (fwd as usize + 8192).min(sent.len());
        vm.run_until("data after credit update", |vm| {
            collect(vm, &mut got);
            got.len() >= limit
        });
        vm.run_for(Duration::from_millis(50));
        collect(&mut vm, &mut got);
        assert_eq!(got.len(), limit, "device overran the guest's credit");
    }
    assert_eq!(got, sent, "bytes lost or reordered");
    assert!(credit_requests >= 1, "device never asked for credit");
}

#[test]
fn guest_to_host_large_transfer_under_credit() {
    let mut vm = TestVm::new();
    let (mut host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    let total = 700 * 1024;
    let data = pattern(total, 4);
    let (mut sent, mut peer_fwd, mut peer_alloc) = (0usize, 0u32, super::super::CONN_BUF_ALLOC);
    let mut at_host = Vec::new();
    let mut host_reading = false;
    let mut credit_updates = 0;
    let mut max_buffered = 0;
    vm.post_rx(8, 4096);
    vm.run_until("700 KiB at the host", |vm| {
        max_buffered = max_buffered.max(vm.dev.lock().unwrap().muxer.tx_buffered());
        for (hdr, _) in vm.rx_packets() {
            assert_eq!(hdr.op, OP_CREDIT_UPDATE, "unexpected {hdr:?}");
            credit_updates += 1;
            peer_fwd = hdr.fwd_cnt;
            peer_alloc = hdr.buf_alloc;
            vm.post_rx(1, 4096);
        }
        let credit = peer_alloc as usize - (sent - peer_fwd as usize);
        if credit > 0 && sent < total {
            let n = credit.min(64 * 1024).min(total - sent);
            vm.send(guest_hdr(OP_RW, 1024, local), &data[sent..sent + n]);
            sent += n;
        } else if credit == 0 {
            // Only start reading once the guest filled its whole credit: the device must
            // have buffered what the host socket did not take.
            host_reading = true;
        }
        if host_reading {
            read_some(&mut host, &mut at_host);
        }
        at_host.len() >= total
    });
    assert_eq!(at_host.len(), total);
    assert!(at_host == data, "bytes lost or reordered");
    assert!(credit_updates > 0, "device never returned credit");
    // The host socket alone cannot hold 256 KiB: the device must have buffered (EAGAIN path),
    // never more than it advertised.
    assert!(max_buffered > 0, "EAGAIN buffering was not exercised");
    assert!(max_buffered <= super::super::CONN_BUF_ALLOC as usize);
    assert_eq!(m(&vm.metrics.credit_violations), 0);
    assert_eq!(m(&vm.metrics.tx_bytes), total as u64);
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let mut vm = TestVm::new();
    let (mut host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    vm.post_rx(4, 4096);
    let chunk = pattern(64 * 1024, 5);
    let mut rst = None;
    let mut sent = 0;
    // The host never reads; a well-behaved guest would stop after 256 KiB.
    vm.run_until("RST after overrun", |vm| {
        for (hdr, _) in vm.rx_packets() {
            if hdr.op == OP_RST {
                rst = Some(hdr);
            }
            vm.post_rx(1, 4096);
        }
        if rst.is_none() && sent < 4 << 20 {
            vm.send(guest_hdr(OP_RW, 1024, local), &chunk);
            sent += chunk.len();
        }
        rst.is_some()
    });
    let rst = rst.unwrap();
    assert_eq!((rst.src_port, rst.dst_port), (local, 1024));
    assert_eq!(m(&vm.metrics.credit_violations), 1);
    // The host stream is closed after what the socket already held.
    let mut sink = Vec::new();
    vm.run_until("host EOF", |_| read_some(&mut host, &mut sink).is_none());
    assert_eq!(vm.live(), (0, 0));
}

#[test]
fn garbage_connect_lines_close_the_client() {
    let mut vm = TestVm::new();
    let lines: [&[u8]; 6] = [
        b"HELLO\n",
        b"CONNECT abc\n",
        b"CONNECT -1\n",
        b"CONNECT 1024 5\n",
        b"\xff\xfe\n",
        // Overlong, no newline at all.
        b"CONNECT 0000000000000000000000000000000000001024",
    ];
    let mut clients: Vec<_> = lines.iter().map(|l| host_client(&vm, l)).collect();
    vm.post_rx(4, 4096);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut sink = Vec::new();
        vm.run_until(&format!("client {i} closed"), |_| {
            read_some(c, &mut sink).is_none()
        });
        assert!(sink.is_empty(), "client {i} got {sink:?}");
    }
    assert_eq!(m(&vm.metrics.connect_line_rejected), lines.len() as u64);
    assert!(vm.rx_packets().is_empty(), "garbage produced a REQUEST");
    assert_eq!(vm.live(), (0, 0));
    // The next client is served normally.
    let (_host, _) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
}

#[test]
fn guest_rst_closes_the_host_stream() {
    let mut vm = TestVm::new();
    let mut host = host_client(&vm, b"CONNECT 2000\n");
    vm.post_rx(1, 4096);
    let (req, _) = vm.next_rx("REQUEST");
    // No listener in the guest.
    vm.send(guest_hdr(OP_RST, 2000, req.src_port), &[]);
    let mut sink = Vec::new();
    vm.run_until("host EOF", |_| read_some(&mut host, &mut sink).is_none());
    assert!(sink.is_empty(), "host got {sink:?} instead of EOF");
    assert_eq!(m(&vm.metrics.resets_from_guest), 1);
    assert_eq!(vm.live(), (0, 0));
    // The port is free again and a retry works.
    let (_host, _) = establish(&mut vm, 2000, GUEST_BUF_ALLOC);
}

#[test]
fn unanswered_request_and_silent_client_time_out() {
    let mut vm = TestVm::with_timeouts(super::Timeouts {
        connect_line: Duration::from_millis(100),
        response: Duration::from_millis(100),
        shutdown_drain: Duration::from_millis(100),
    });
    let mut silent = host_client(&vm, b"");
    let mut waiting = host_client(&vm, b"CONNECT 3000\n");
    vm.post_rx(4, 4096);
    let (req, _) = vm.next_rx("REQUEST");
    // The guest never answers: the host stream is closed and the guest told to forget it.
    let mut sink = Vec::new();
    vm.run_until("waiting client closed", |_| {
        read_some(&mut waiting, &mut sink).is_none()
    });
    let (rst, _) = vm.next_rx("RST after timeout");
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (OP_RST, req.src_port, 3000)
    );
    vm.run_until("silent client closed", |_| {
        read_some(&mut silent, &mut sink).is_none()
    });
    assert_eq!(m(&vm.metrics.timeouts), 2);
    assert_eq!(vm.live(), (0, 0));
    // A late RESPONSE for the dead connection is answered with RST.
    vm.send(
        guest_hdr(super::super::packet::OP_RESPONSE, 3000, req.src_port),
        &[],
    );
    let (rst, _) = vm.next_rx("RST for late RESPONSE");
    assert_eq!(rst.op, OP_RST);
}

#[test]
fn header_only_rx_buffer_does_not_block_data() {
    let mut vm = TestVm::new();
    let (mut host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    host.write_all(b"payload").unwrap();
    // A buffer with no room for payload, then a normal one behind it.
    vm.post_rx(1, HDR_LEN as u32);
    vm.post_rx(1, 4096);
    let mut pkts = Vec::new();
    vm.run_until("data behind the tiny buffer", |vm| {
        pkts.extend(vm.rx_packets());
        pkts.iter().any(|(h, _)| h.op == OP_RW)
    });
    assert_eq!(pkts.len(), 2, "{pkts:?}");
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.src_port),
        (OP_CREDIT_UPDATE, local)
    );
    assert_eq!(pkts[1].1, b"payload");
}
