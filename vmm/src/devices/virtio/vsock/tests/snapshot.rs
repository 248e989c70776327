//! What a snapshot needs from the device: it refuses while host streams are open, and its
//! saved state (host port allocation) carries over to a new device.

use super::*;
use crate::devices::virtio::vsock::packet::{OP_RST, OP_SHUTDOWN};

#[test]
fn open_connections_block_a_snapshot_until_closed() {
    let mut vm = TestVm::new();
    assert_eq!(vm.dev.lock().unwrap().snapshot_blocker(), None);
    let (host, local) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    let why = vm.dev.lock().unwrap().snapshot_blocker().expect("blocked");
    assert!(why.contains("1 connection"), "{why}");
    // The host closes; the device tells the guest, which answers with RST.
    drop(host);
    vm.post_rx(1, 4096);
    let (shutdown, _) = vm.next_rx("SHUTDOWN");
    assert_eq!(shutdown.op, OP_SHUTDOWN);
    vm.send(guest_hdr(OP_RST, 1024, local), &[]);
    vm.run_until("connection gone", |vm| {
        vm.dev.lock().unwrap().snapshot_blocker().is_none()
    });
    assert_eq!(vm.live(), (0, 0));
}

#[test]
fn saved_port_allocation_carries_over() {
    let mut vm = TestVm::new();
    let (_host, first) = establish(&mut vm, 1024, GUEST_BUF_ALLOC);
    let state = vm.dev.lock().unwrap().save_state().expect("state");
    assert_eq!(
        state,
        crate::devices::virtio::device::DeviceState::Vsock {
            local_port_last: first
        }
    );

    let mut fresh = TestVm::new();
    fresh
        .dev
        .lock()
        .unwrap()
        .restore_state(&state)
        .expect("restore");
    let (_h, next) = establish(&mut fresh, 1024, GUEST_BUF_ALLOC);
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
        r#"{"device":"fs"}"#,
        r#""x""#,
    ] {
        assert!(
            serde_json::from_str::<crate::devices::virtio::device::DeviceState>(bad).is_err(),
            "{bad} accepted"
        );
    }
}
