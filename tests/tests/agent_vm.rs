//! The agent scenarios of `agent_host.rs`, run against the agent inside a real vessel VM:
//! our kernel + initramfs in `vessel-vmm`, the agent reached over the hybrid vsock, the
//! container rootfs (busybox) shared into the guest with virtio-fs (`--shared-dir`), and
//! cgroup v2 inside the guest.
//!
//! One VM for all scenarios (a cold boot takes about a minute on KVM-PVM, and every guest
//! fork/exec seconds); each scenario's failure is collected and reported together. Needs
//! root, /dev/kvm, `VESSEL_KERNEL`, `VESSEL_INITRD` (scripts/test.sh sets them).

use std::path::Path;
use std::time::Instant;

use vessel_protocol::agent::{CreateSandboxRequest, DestroySandboxRequest, Storage};
use vessel_protocol::agent_ttrpc::AgentClient;
use vessel_tests::agent_scenarios as sc;
use vessel_tests::bundle::Rootfs;
use vessel_tests::vm::{agent_timeout, GuestArtifacts, GuestVm};

/// Where the agent mounts the shared directory in the guest (as the runtime asks it to).
const GUEST_SHARED: &str = "/run/vessel/shared";

type Scenario = fn(&AgentClient, &Path) -> anyhow::Result<()>;

#[test]
fn agent_scenarios_inside_a_vm() {
    let artifacts = GuestArtifacts::from_env().unwrap_or_else(|e| panic!("{e:#}"));
    sc::scale_timeouts(20);
    let shared = tempfile::Builder::new()
        .prefix("vessel-share-")
        .tempdir()
        .expect("shared dir");
    let rootfs = Rootfs::busybox_in(shared.path()).expect("busybox rootfs");
    let guest_rootfs =
        Path::new(GUEST_SHARED).join(rootfs.path().file_name().expect("rootfs dir has a name"));
    let share_arg = format!("vessel={}", shared.path().display());
    let mut vm = GuestVm::boot(&artifacts, 256, &["--shared-dir", &share_arg])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let client = vm
        .connect_agent(agent_timeout())
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("agent reachable after {:.2?}", vm.started().elapsed());

    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "vm-scenarios".into();
    req.hostname = "vessel-test".into();
    let mut storage = Storage::new();
    storage.driver = "virtiofs".into();
    storage.source = "vessel".into();
    storage.fstype = "virtiofs".into();
    storage.mount_point = GUEST_SHARED.into();
    req.storages.push(storage);
    client
        .create_sandbox(sc::ctx(), &req)
        .unwrap_or_else(|e| panic!("CreateSandbox with virtio-fs: {e}\n{}", vm.diagnostics()));

    // Each scenario starts at least one container, and a container start costs 30 s and more
    // in a guest on KVM-PVM. The scenarios that `shim_containerd.rs`'s vm_* tests already
    // drive through the same vsock path into a VM (exit codes and streams, signals, 1 MiB of
    // output, exec, pty) run here only with VESSEL_TEST_AGENT_VM_ALL=1, to keep CI in its
    // time; the rest exist only here and always run.
    let vm_only: &[(&str, Scenario)] = &[
        ("pid_namespace", sc::pid_namespace),
        ("user_and_capabilities", sc::user_and_capabilities),
        ("seccomp_errno", sc::seccomp_errno),
        ("seccomp_kill", sc::seccomp_kill),
        ("tail_not_lost", sc::tail_not_lost),
        ("oom_event (16 MiB)", |c, r| {
            sc::oom_event_with_limit(c, r, 16 << 20)
        }),
        ("bad_input", sc::bad_input),
        ("builtin_pause_pod", sc::builtin_pause_pod),
    ];
    let also_through_the_shim: &[(&str, Scenario)] = &[
        ("exit_code_and_streams", sc::exit_code_and_streams),
        ("signal_kill", sc::signal_kill),
        ("big_stdout", sc::big_stdout),
        ("exec_in_container", sc::exec_in_container),
        ("pty_exec", sc::pty_exec),
    ];
    let all = std::env::var("VESSEL_TEST_AGENT_VM_ALL").is_ok_and(|v| v == "1");
    let mut scenarios: Vec<(&str, Scenario)> = vm_only.to_vec();
    if all {
        scenarios.extend_from_slice(also_through_the_shim);
    } else {
        eprintln!(
            "agent_vm: {} scenarios also covered by shim_containerd vm_* not run here \
             (VESSEL_TEST_AGENT_VM_ALL=1 runs them)",
            also_through_the_shim.len()
        );
    }
    let mut failures = Vec::new();
    for (name, scenario) in &scenarios {
        let t = Instant::now();
        let result = scenario(&client, &guest_rootfs);
        eprintln!(
            "{name}: {} in {:.2?}",
            if result.is_ok() { "ok" } else { "FAILED" },
            t.elapsed()
        );
        if let Err(e) = result {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    // A file a container wrote through virtio-fs lands in the host directory (in the root:
    // /tmp is a tmpfs in these specs). The same container, without a cgroup namespace of its
    // own, shows where the guest put its cgroup: flat below the root whatever the spec's
    // path (the agent's `cgroup_placement`; this VM took no snapshot, so has no spares). It
    // asks for a CPU quota, the first container here to ask for CPU settings: the agent
    // enables the `cpu` controller for it (`cgroup_cpu`). Its nice value is 0 although the
    // agent runs at -10 (`priority`).
    let probe = sc::run(
        &client,
        "writes",
        &vessel_tests::bundle::ContainerSpec::new(&guest_rootfs)
            .writable_root()
            .without_namespace(oci_spec::runtime::LinuxNamespaceType::Cgroup)
            .cgroups_path("/kubepods/besteffort/pod1/writes")
            .cpu_quota(50_000, 100_000)
            .shell(
                "echo written-in-guest > /from-guest; cat /proc/self/cgroup; \
                 own=$(sed -n 's/^0:://p' /proc/self/cgroup); \
                 cat /sys/fs/cgroup$own/cpu.max /sys/fs/cgroup/cgroup.subtree_control; \
                 read s < /proc/self/stat; set -- $s; echo \"nice ${19}\"",
            ),
        false,
    )
    .and_then(|c| c.output("").map(|(out, _, status)| (out, status)));
    match probe {
        Ok((out, 0)) => {
            // The id carries the test's marker: `writes-<marker>`.
            let lines: Vec<&str> = out.lines().collect();
            let flat = lines
                .first()
                .is_some_and(|l| l.starts_with("0::/vessel-writes-") && !l[4..].contains('/'));
            let cpu_on = lines
                .get(2)
                .is_some_and(|l| l.split_whitespace().any(|c| c == "cpu"));
            let nice = lines.get(3) == Some(&"nice 0");
            if !flat || lines.get(1) != Some(&"50000 100000") || !cpu_on || !nice {
                failures.push(format!(
                    "the container's guest cgroup, CPU quota and nice value: {out:?}"
                ));
            }
            let host = rootfs.path().join("from-guest");
            match std::fs::read_to_string(&host) {
                Ok(s) if s == "written-in-guest\n" => {}
                other => failures.push(format!("guest write not on the host: {other:?}")),
            }
        }
        other => failures.push(format!("writing container: {other:?}")),
    }

    let _ = client.destroy_sandbox(sc::ctx(), &DestroySandboxRequest::new());
    let status = vm.wait_exit(std::time::Duration::from_secs(180));
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed in the VM:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        vm.diagnostics()
    );
    let status = status.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "VMM exit {status}\n{}", vm.diagnostics());
}
