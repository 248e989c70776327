//! The VMM's threads really run under their seccomp filters (own test binary, so the only
//! VMM threads in this process are this VM's).

mod common;

use std::time::{Duration, Instant};

use common::{require_kvm, wait, TestGuest};
use vessel_vmm::seccomp::thread_mode_from_status;
use vessel_vmm::{BootEntry, ExitReason, Vm, VsockConfig};

/// `cli ; 1: hlt ; jmp 1b`
const PARK: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];

/// (thread name, seccomp mode) for every thread of this process.
fn thread_modes() -> Vec<(String, Option<u32>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        out.push((comm.trim().to_string(), thread_mode_from_status(&status)));
    }
    out
}

#[test]
fn vcpu_and_event_threads_are_filtered_and_vsock_is_wired() {
    require_kvm();
    let g = TestGuest::new(PARK, false);
    let mut config = g.config(BootEntry::Linux64);
    config.vcpus = 2;
    let uds = g.dir.path().join("vsock.sock");
    config.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    let vm = Vm::start(config).expect("VM starts");

    // vsock got the first virtio-mmio slot and the host socket is listening.
    assert!(
        vm.info()
            .cmdline
            .contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{}",
        vm.info().cmdline
    );
    assert!(uds.exists(), "vsock host socket {} missing", uds.display());

    let wanted = ["vcpu0", "vcpu1", "vmm-events"];
    let deadline = Instant::now() + Duration::from_secs(10);
    let modes = loop {
        let modes = thread_modes();
        let all_filtered = wanted
            .iter()
            .all(|name| modes.iter().any(|(n, m)| n == name && *m == Some(2)));
        if all_filtered || Instant::now() > deadline {
            break modes;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for name in wanted {
        let found: Vec<_> = modes.iter().filter(|(n, _)| n == name).collect();
        assert_eq!(
            found.len(),
            1,
            "thread {name} not found exactly once: {modes:?}"
        );
        assert_eq!(
            found[0].1,
            Some(2),
            "thread {name} is not under a seccomp filter: {modes:?}"
        );
    }
    // The caller's thread is not filtered by the library.
    let me = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    assert_eq!(thread_mode_from_status(&me), Some(0));

    vm.stopper().stop();
    assert_eq!(wait(vm), ExitReason::Stopped);
    // The device was dropped at teardown and removed its socket.
    assert!(!uds.exists(), "vsock socket {} left behind", uds.display());
}
