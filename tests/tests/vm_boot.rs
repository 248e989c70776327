//! The full boot: our guest kernel + initramfs boot in `vessel-vmm` on this machine's KVM,
//! the agent (PID 1) answers `Check` over the hybrid vsock, and `DestroySandbox` powers the
//! VM off (exit status 0, socket removed).
//!
//! Slow on KVM-PVM (a cold boot is about a minute there), so this is one boot. Needs root,
//! /dev/kvm, `VESSEL_KERNEL` and `VESSEL_INITRD` (scripts/test.sh sets them).

use std::time::{Duration, Instant};

use vessel_protocol::agent::{CheckRequest, DestroySandboxRequest};
use vessel_tests::agent_scenarios::ctx;
use vessel_tests::vm::{agent_timeout, GuestArtifacts, GuestVm};

#[test]
fn guest_boots_to_agent_and_powers_off() {
    let artifacts = GuestArtifacts::from_env().unwrap_or_else(|e| panic!("{e:#}"));
    let mut vm = GuestVm::boot(&artifacts, 128, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let client = vm
        .connect_agent(agent_timeout())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let connected = vm.started().elapsed();
    let check = client
        .check(ctx(), &CheckRequest::new())
        .unwrap_or_else(|e| panic!("Check over vsock: {e}\n{}", vm.diagnostics()));
    let answered = vm.started().elapsed();
    assert_eq!(check.status, "SERVING", "{check:?}");
    assert!(!check.version.is_empty());
    assert!(check.uptime_ms > 0, "guest uptime reported: {check:?}");
    // Reported, not asserted: speed is measured by the bench, never by tests.
    eprintln!(
        "boot-to-agent: vsock connected after {connected:.2?}, Check answered after \
         {answered:.2?} (guest uptime {} ms)",
        check.uptime_ms
    );

    // A second call on the same connection: the stream stays usable.
    let t = Instant::now();
    let again = client
        .check(ctx(), &CheckRequest::new())
        .expect("second Check");
    assert!(again.uptime_ms >= check.uptime_ms);
    eprintln!("second Check took {:.2?}", t.elapsed());

    // DestroySandbox ends with the guest's reboot, which the VMM treats as power-off. The
    // reply may or may not make it out before the VM stops; the exit status is the contract.
    let _ = client.destroy_sandbox(ctx(), &DestroySandboxRequest::new());
    let status = vm
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "VMM exit {status}\n{}", vm.diagnostics());
    assert!(
        !vm.vsock_path().exists(),
        "the VMM removes its vsock socket on exit"
    );
    let console = vm.console();
    assert!(
        !console.contains("Kernel panic"),
        "guest panicked:\n{console}"
    );
}
