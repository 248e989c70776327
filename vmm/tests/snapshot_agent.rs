//! The real thing: our guest kernel + the agent initramfs, booted once and snapshotted when
//! the agent answers Check (`vessel-vmm snapshot-create`), then restored twice at once into
//! two new VMM processes with their own vsock sockets (`vessel-vmm --restore`), both agents
//! answering Check, the first one on the connection the snapshot kept (the snapshot-time
//! Check's, taken over). Prints restore-to-Check latency and each restored VMM's RSS/PSS (measured,
//! not asserted: the machine is shared).
//!
//! Needs root, /dev/kvm, the kernel (`VESSEL_KERNEL`, default
//! /var/tmp/kbuild/linux-source-6.1/vmlinux) and the agent initramfs (`VESSEL_INITRD`, default
//! `<workspace>/build/initrd.cpio`, made by scripts/artifacts.sh). Slow on KVM-PVM (one cold
//! boot: a minute or more); fails loudly when something is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vessel_protocol::agent_check::{self, AgentReady, CheckConnection, ReadyError};
use vessel_vmm::snapshot::{Manifest, MANIFEST_FILE};

const DEFAULT_KERNEL: &str = "/var/tmp/kbuild/linux-source-6.1/vmlinux";

fn artifact(var: &str, default: PathBuf, how: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or(default, PathBuf::from);
    assert!(
        path.is_file(),
        "{} does not exist: set {var} to it ({how})",
        path.display()
    );
    path
}

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vessel-vmm"))
}

/// `Rss` and `Pss` of a process in KiB, from smaps_rollup.
fn rss_pss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// Waits until the agent behind `uds` answers Check (the VMM is assumed alive).
fn wait_for_agent(
    uds: &Path,
    timeout: Duration,
) -> Result<(AgentReady, CheckConnection), ReadyError> {
    agent_check::wait_for_agent(uds, Instant::now() + timeout, &mut || Ok(()))
}

struct Restored {
    child: Child,
    uds: PathBuf,
    console: PathBuf,
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn restore(snapshot: &Path, dir: &Path, name: &str) -> Restored {
    let uds = dir.join(format!("{name}.sock"));
    let console = dir.join(format!("{name}.console"));
    let child = vmm()
        .arg("--restore")
        .arg(snapshot)
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--console")
        .arg(&console)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("{name}.log"))).expect("log"),
        ))
        .spawn()
        .expect("spawn restore");
    Restored {
        child,
        uds,
        console,
    }
}

#[test]
fn agent_vm_snapshot_restores_twice_and_both_agents_answer() {
    common::require_kvm();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let kernel = artifact(
        "VESSEL_KERNEL",
        PathBuf::from(DEFAULT_KERNEL),
        "bash guest-kernel/build.sh prints its path",
    );
    let initrd = artifact(
        "VESSEL_INITRD",
        workspace.join("build/initrd.cpio"),
        "bash agent/build-static.sh, then cargo run -p vessel-rootfs --bin vessel-mkinitrd -- \
         --agent <agent> --out <initrd>",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let snapshot = dir.path().join("snapshot");

    // One cold boot, snapshotted when the agent answers.
    let started = Instant::now();
    let create_log = dir.path().join("create.log");
    // The test plays the host, as the runtime does: it checks the agent, then tells the VMM.
    let mut create = vmm()
        .arg("snapshot-create")
        .arg("--snapshot-dir")
        .arg(&snapshot)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--vsock-uds")
        .arg(dir.path().join("create.sock"))
        .arg("--console")
        .arg(dir.path().join("create.console"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(&create_log).expect("log"),
        ))
        .spawn()
        .expect("run snapshot-create");
    let result = agent_check::snapshot_when_ready(
        &mut create,
        &dir.path().join("create.sock"),
        started + Duration::from_secs(1200),
        Duration::from_secs(120),
    );
    let log = std::fs::read_to_string(&create_log).unwrap_or_default();
    let (ready, status) = result.unwrap_or_else(|e| {
        let _ = create.kill();
        panic!(
            "snapshot-create: {}:\n{log}",
            vessel_protocol::errors::chain(&e)
        )
    });
    assert!(status.success(), "snapshot-create {status}:\n{log}");
    assert!(log.contains("snapshot requested by the host"), "{log}");
    let boot_time = started.elapsed();
    let snap_uptime = ready.guest_uptime_ms;
    let manifest = Manifest::load(&snapshot).expect("a valid snapshot");
    assert_eq!(manifest.boot.vsock_cid, Some(3));
    assert_eq!(manifest.virtio.len(), 1);
    // The Check's connection was idle and kept, for the restored VMs' first client.
    let kept = match manifest.virtio[0].device.as_ref() {
        Some(vessel_vmm::devices::virtio::device::DeviceState::Vsock { parked, .. }) => parked,
        other => panic!("vsock state expected, the snapshot has {other:?}"),
    };
    assert_eq!(
        kept.iter().map(|p| p.peer_port).collect::<Vec<_>>(),
        [vessel_protocol::AGENT_VSOCK_PORT],
        "the snapshot keeps the agent connection"
    );
    assert!(
        !dir.path().join("create.sock").exists(),
        "the snapshot VMM removed its socket"
    );
    eprintln!(
        "cold boot + snapshot: {boot_time:.1?} (agent ready at guest uptime {snap_uptime} ms), \
         {} KiB of {} MiB guest RAM non-zero",
        manifest.memory.data_bytes >> 10,
        manifest.boot.mem_mib
    );
    assert!(snapshot.join(MANIFEST_FILE).is_file());

    // Two restores at once, each with its own socket.
    let t0 = Instant::now();
    let vms = [
        restore(&snapshot, dir.path(), "a"),
        restore(&snapshot, dir.path(), "b"),
    ];
    let waiters: Vec<_> = vms
        .iter()
        .map(|vm| {
            let uds = vm.uds.clone();
            std::thread::spawn(move || {
                let r = wait_for_agent(&uds, Duration::from_secs(300));
                (r, t0.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = waiters
        .into_iter()
        .map(|w| w.join().expect("waiter"))
        .collect();
    for ((ready, latency), (vm, name)) in results.iter().zip(vms.iter().zip(["a", "b"])) {
        let log = || std::fs::read_to_string(dir.path().join(format!("{name}.log")));
        let (ready, _) = ready
            .as_ref()
            .unwrap_or_else(|e| panic!("restored VM {name}: {e}\nvmm log: {:?}", log()));
        let taken_over = log()
            .unwrap_or_default()
            .matches("took over the connection")
            .count();
        assert_eq!(
            taken_over,
            1,
            "VM {name}: the first Check did not take over the kept connection:\n{:?}",
            log()
        );
        // Restored, not rebooted: the guest has been up at least as long as at the snapshot.
        assert!(
            ready.guest_uptime_ms >= snap_uptime,
            "VM {name}: uptime {} ms < {snap_uptime} ms at the snapshot",
            ready.guest_uptime_ms
        );
        let (rss, pss) = rss_pss_kib(vm.child.id());
        eprintln!(
            "restored VM {name}: agent {} answered Check {latency:.2?} after the restore started \
             (guest uptime {} ms); VMM RSS {rss} KiB, PSS {pss} KiB; console {} bytes",
            ready.version,
            ready.guest_uptime_ms,
            std::fs::metadata(&vm.console).map_or(0, |m| m.len())
        );
    }

    // Both still serve, independently: a second Check on each, on a new connection (the kept
    // one is in use by the first).
    for (vm, name) in vms.iter().zip(["a", "b"]) {
        wait_for_agent(&vm.uds, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("second Check on VM {name}: {e}"));
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert_eq!(log.matches("took over the connection").count(), 1, "{log}");
    }
    drop(results);
    // SIGTERM stops a restored VM cleanly, like a booted one.
    for (mut vm, name) in vms.into_iter().zip(["a", "b"]) {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
        let status = vm.child.wait().expect("wait");
        assert!(status.success(), "VM {name} exited {status}");
        assert!(!vm.uds.exists(), "VM {name} left its socket behind");
    }
}
