//! What a snapshot needs from the device: it refuses while host streams are busy, keeps idle
//! ones (parked) for the first host client of a restored device, and its saved state (host
//! port allocation) carries over to a new device.

use std::io::Write;

use super::*;
use crate::devices::virtio::device::DeviceState;
use crate::devices::virtio::vsock::packet::{
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RST, OP_RW, OP_SHUTDOWN,
};
use crate::devices::virtio::vsock::{ParkedConnection, MAX_PARKED};

fn blocker(vm: &TestVm) -> Option<String> {
    vm.dev.lock().unwrap().snapshot_blocker()
}

fn saved(vm: &TestVm) -> DeviceState {
    vm.dev.lock().unwrap().save_state().expect("state")
}

fn parked_of(state: &DeviceState) -> &[ParkedConnection] {
    match state {
        DeviceState::Vsock { parked, .. } => parked,
    }
}

/// A fresh device with `state` restored into it.
fn restored(state: &DeviceState) -> TestVm {
    let fresh = TestVm::new();
    fresh
        .dev
        .lock()
        .unwrap()
        .restore_state(state)
        .expect("restore");
    fresh
}

/// Reads from `host` until `want` bytes came.
fn host_read(vm: &mut TestVm, host: &mut UnixStream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    vm.run_until("bytes at the host", |_| {
        read_some(host, &mut got);
        got.len() >= want
    });
    got
}

#[test]
fn busy_connections_block_a_snapshot_until_closed() {
    let mut vm = TestVm::new();
    assert_eq!(blocker(&vm), None);
    // A connection the guest has not answered yet is not idle.
    let _pending = host_client(&vm, b"CONNECT 1024\n");
    vm.post_rx(1, 4096);
    let (req, _) = vm.next_rx("REQUEST");
    let why = blocker(&vm).expect("blocked");
    assert!(why.contains("1 busy connection"), "{why}");
    // Answered: idle, so no longer a blocker.
    vm.send(guest_hdr(OP_RST, 1024, req.src_port), &[]);
    vm.run_until("request gone", |vm| vm.live() == (0, 0));

    let (mut host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    assert_eq!(
        blocker(&vm),
        None,
        "an idle connection is kept, not waited for"
    );
    // Host bytes the guest has not taken yet (no RX buffer posted) make it busy.
    host.write_all(b"not yet delivered").unwrap();
    vm.run_until("busy", |vm| blocker(vm).is_some());
    // The host closes; the device tells the guest, which answers with RST.
    drop(host);
    vm.post_rx(2, 4096);
    let mut ops = Vec::new();
    vm.run_until("SHUTDOWN", |vm| {
        ops.extend(vm.rx_packets().into_iter().map(|(h, _)| h.op));
        ops.contains(&OP_SHUTDOWN)
    });
    vm.send(guest_hdr(OP_RST, 1024, local), &[]);
    vm.run_until("connection gone", |vm| blocker(vm).is_none());
    assert_eq!(vm.live(), (0, 0));
    assert!(parked_of(&saved(&vm)).is_empty());
}

#[test]
fn an_idle_connection_is_taken_over_by_the_restored_devices_first_client() {
    let mut vm = TestVm::new();
    let (mut host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    // One request and one reply, as the VMM's Check before a snapshot.
    host.write_all(b"request").unwrap();
    vm.post_rx(1, 4096);
    let (rw, payload) = vm.next_rx("request");
    assert_eq!((rw.op, payload.as_slice()), (OP_RW, &b"request"[..]));
    let mut reply = guest_hdr(OP_RW, 1024, local);
    reply.fwd_cnt = 7;
    vm.send(reply, b"reply!");
    assert_eq!(host_read(&mut vm, &mut host, 6), b"reply!");
    assert_eq!(blocker(&vm), None);
    let state = saved(&vm);
    assert_eq!(
        parked_of(&state),
        [ParkedConnection {
            local_port: local,
            peer_port: 1024,
            fwd_cnt: 6,
            last_fwd_cnt_to_peer: 0,
            peer_buf_alloc: GUEST_BUF_ALLOC,
            peer_fwd_cnt: 7,
            rx_cnt: 7,
        }]
    );
    // The state survives the manifest's JSON.
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<DeviceState>(&json).unwrap(), state);

    let mut fresh = restored(&state);
    fresh.post_rx(4, 4096);
    let mut client = host_client(&fresh, b"CONNECT 1024\n");
    let expected = format!("OK {local}\n");
    assert_eq!(
        host_read(&mut fresh, &mut client, expected.len()),
        expected.as_bytes()
    );
    assert!(
        fresh.rx_packets().is_empty(),
        "the guest got a packet for a connection it already has"
    );
    assert_eq!(m(&fresh.metrics.conns_resumed), 1);
    assert_eq!(fresh.live(), (1, 0));
    // Data flows on with the saved counters: our fwd_cnt is 6 (bytes taken from the guest).
    client.write_all(b"next").unwrap();
    let (rw, payload) = fresh.next_rx("next request");
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (OP_RW, local, 1024));
    assert_eq!((payload.as_slice(), rw.fwd_cnt), (&b"next"[..], 6));
    let mut answer = guest_hdr(OP_RW, 1024, local);
    answer.fwd_cnt = 11;
    fresh.send(answer, b"answer");
    assert_eq!(host_read(&mut fresh, &mut client, 6), b"answer");

    // A second client for the same port gets a new connection, as usual.
    let _other = host_client(&fresh, b"CONNECT 1024\n");
    let (req, _) = fresh.next_rx("REQUEST");
    assert_eq!(req.op, OP_REQUEST);
    assert!(
        req.src_port > local,
        "port {} reused or below the kept one",
        req.src_port
    );
}

#[test]
fn a_parked_connection_the_guest_touches_is_reset() {
    let mut vm = TestVm::new();
    let (_host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    let state = saved(&vm);
    assert_eq!(parked_of(&state).len(), 1);

    let mut fresh = restored(&state);
    // A credit update is just noted.
    let mut credit = guest_hdr(OP_CREDIT_UPDATE, 1024, local);
    credit.fwd_cnt = 0;
    fresh.send(credit, &[]);
    assert_eq!(parked_of(&saved(&fresh)).len(), 1);
    // Data on it (the guest wrote while nobody was connected): RST, and it is gone.
    fresh.post_rx(1, 4096);
    fresh.send(guest_hdr(OP_RW, 1024, local), b"stray");
    let (rst, _) = fresh.next_rx("RST");
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, local, 1024));
    assert!(parked_of(&saved(&fresh)).is_empty());
    // The next client gets a fresh connection.
    let _client = host_client(&fresh, b"CONNECT 1024\n");
    fresh.post_rx(1, 4096);
    let (req, _) = fresh.next_rx("REQUEST");
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(m(&fresh.metrics.conns_resumed), 0);
}

#[test]
fn saved_port_allocation_carries_over() {
    let mut vm = TestVm::new();
    let (host, first) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    let state = saved(&vm);
    match &state {
        DeviceState::Vsock {
            local_port_last, ..
        } => assert_eq!(*local_port_last, first),
    }
    drop(host);

    let mut fresh = restored(&state);
    // Port 2048 has nothing parked: a new connection, on the port after the saved one.
    let (_h, next) = establish(&mut fresh, 2048, GUEST_BUF_ALLOC);
    assert_eq!(
        next,
        first + 1,
        "the restored device does not reuse port {first}"
    );

    // A manifest's state that is not a vsock state of ours does not even parse.
    for bad in [
        "{}",
        r#"{"device":"vsock","local_port_last":-1}"#,
        r#"{"device":"vsock","local_port_last":18446744073709551615}"#,
        r#"{"device":"vsock","local_port_last":1,"extra":2}"#,
        r#"{"device":"vsock","local_port_last":1,"parked":[{"local_port":1073741824}]}"#,
        r#"{"device":"fs"}"#,
        r#""x""#,
    ] {
        assert!(
            serde_json::from_str::<DeviceState>(bad).is_err(),
            "{bad} accepted"
        );
    }
}

#[test]
fn parked_connections_from_a_manifest_are_checked() {
    let conn = |local_port: u32, peer_port: u32| ParkedConnection {
        local_port,
        peer_port,
        fwd_cnt: 0,
        last_fwd_cnt_to_peer: 0,
        peer_buf_alloc: 0,
        peer_fwd_cnt: 0,
        rx_cnt: 0,
    };
    let base = 1 << 30;
    let too_many = (0..=MAX_PARKED as u32)
        .map(|i| conn(base + i, 1024))
        .collect();
    for (what, parked) in [
        ("host port below the range", vec![conn(5, 1024)]),
        ("host port above the range", vec![conn(1 << 31, 1024)]),
        (
            "the same host port twice",
            vec![conn(base, 1024), conn(base, 1025)],
        ),
        ("more than MAX_PARKED", too_many),
    ] {
        let state = DeviceState::Vsock {
            local_port_last: base,
            parked,
        };
        let fresh = TestVm::new();
        let err = fresh.dev.lock().unwrap().restore_state(&state);
        assert!(err.is_err(), "{what} accepted");
    }
}
