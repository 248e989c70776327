//! `cargo run -p vessel-tests --example vm_run -- [VMM args...] -- CMD...`: boots a vessel VM
//! (VESSEL_KERNEL/VESSEL_INITRD), shares a fresh busybox rootfs over virtio-fs, runs CMD in a
//! container through the agent and prints its output and how long each step took. A
//! debugging and profiling aid (e.g. pass `--profile-rips /tmp/rips` as a VMM argument).
use std::path::Path;
use std::time::Instant;

use vessel_protocol::agent::{CreateSandboxRequest, DestroySandboxRequest, Storage};
use vessel_tests::agent_scenarios as sc;
use vessel_tests::bundle::{ContainerSpec, Rootfs};
use vessel_tests::vm::{agent_timeout, GuestArtifacts, GuestVm};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let vmm_args: Vec<&str> = args[..split].iter().map(String::as_str).collect();
    let cmd: Vec<&str> = args
        .get(split + 1..)
        .unwrap_or(&[])
        .iter()
        .map(String::as_str)
        .collect();
    let cmd = if cmd.is_empty() {
        vec!["/bin/echo", "hello from a vessel VM"]
    } else {
        cmd
    };

    let artifacts = GuestArtifacts::from_env()?;
    sc::scale_timeouts(10);
    let shared = tempfile::Builder::new().prefix("vessel-share-").tempdir()?;
    let rootfs = Rootfs::busybox_in(shared.path())?;
    let guest_rootfs =
        Path::new("/run/vessel/shared").join(rootfs.path().file_name().expect("rootfs dir name"));
    let share = format!("vessel={}", shared.path().display());
    let mut all: Vec<&str> = vec!["--shared-dir", &share];
    all.extend(vmm_args);
    let t = Instant::now();
    let mut vm = GuestVm::boot(&artifacts, 256, &all)?;
    let client = vm.connect_agent(agent_timeout())?;
    eprintln!("vm_run: agent connected after {:.2?}", t.elapsed());

    let t = Instant::now();
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "vm-run".into();
    let mut storage = Storage::new();
    storage.driver = "virtiofs".into();
    storage.source = "vessel".into();
    storage.fstype = "virtiofs".into();
    storage.mount_point = "/run/vessel/shared".into();
    req.storages.push(storage);
    client.create_sandbox(sc::ctx(), &req)?;
    eprintln!("vm_run: CreateSandbox took {:.2?}", t.elapsed());

    // What a fresh connection costs (a restored pod's first call): connect, the first Check
    // on it, a second; and a Check on the connection in use.
    // VM_RUN_CONNECTIONS=N: that many (default 2), to profile connection set-up.
    let connections: usize = std::env::var("VM_RUN_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for _ in 0..connections {
        let t = Instant::now();
        sc::check(&client)?;
        let warm = t.elapsed();
        let t = Instant::now();
        let fresh = vm.connect_agent(agent_timeout())?;
        let connected = t.elapsed();
        sc::check(&fresh)?;
        let first = t.elapsed() - connected;
        let t = Instant::now();
        sc::check(&fresh)?;
        eprintln!(
            "vm_run: Check on the open connection {warm:.2?}; a new connection: connect {connected:.2?}, first Check {first:.2?}, second {:.2?}",
            t.elapsed()
        );
    }

    // The containers stay in the guest's network namespace, as the runtime has them
    // (`vessel_runtime::pod::namespaces`).
    let spec = |args: &[&str]| {
        ContainerSpec::new(&guest_rootfs)
            .args(args)
            .without_namespace(oci_spec::runtime::LinuxNamespaceType::Network)
    };
    for round in 0..2 {
        let t = Instant::now();
        let c = sc::run(&client, "vmrun", &spec(&cmd), false)?;
        let started = t.elapsed();
        let (out, err, status) = c.output("")?;
        eprintln!(
            "vm_run: container {round}: create+start {started:.2?}, until exit and output {:.2?}",
            t.elapsed()
        );
        print!("{out}");
        eprint!("{err}");
        eprintln!("vm_run: exit status {status}");
    }
    // Two execs of CMD into a running container: ExecSync's guest half.
    let t = Instant::now();
    let host = sc::run(&client, "vmrun-exec", &spec(&["/bin/sleep", "600"]), false)?;
    eprintln!("vm_run: exec target running after {:.2?}", t.elapsed());
    for round in 0..2 {
        let exec_id = format!("exec{round}");
        let t = Instant::now();
        host.exec(
            &exec_id,
            &ContainerSpec::new(&guest_rootfs).args(&cmd),
            false,
        )
        .map_err(|e| anyhow::anyhow!("ExecProcess: {e:?}"))?;
        let started = t.elapsed();
        let (out, _err, status) = host.output(&exec_id)?;
        eprintln!(
            "vm_run: exec {round}: ExecProcess {started:.2?}, until exit and output {:.2?} (status {status})",
            t.elapsed()
        );
        print!("{out}");
    }
    drop(host);
    let _ = client.destroy_sandbox(sc::ctx(), &DestroySandboxRequest::new());
    let status = vm.wait_exit(std::time::Duration::from_secs(120))?;
    eprintln!("vm_run: VMM exit {status}");
    for line in vm.vmm_log().lines().filter(|l| l.contains("virtio-fs")) {
        eprintln!("vm_run: vmm: {line}");
    }
    // With `--cmdline vessel.log=debug` these carry the agent's step times.
    for line in vm
        .console()
        .lines()
        .filter(|l| l.contains("vessel-agent") || l.contains("vessel_agent"))
    {
        eprintln!("vm_run: console: {line}");
    }
    Ok(())
}
