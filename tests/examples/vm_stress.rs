//! `cargo run -p vessel-tests --example vm_stress -- [VMM args...] -- SCRIPT`: boots a vessel
//! VM (VESSEL_KERNEL/VESSEL_INITRD), shares a fresh busybox rootfs over virtio-fs (writable),
//! runs `/bin/sh -c SCRIPT` in one container through the agent, and prints its output and
//! every guest console line that reports a process killed by a signal (run with
//! `--cmdline "loglevel=7 print-fatal-signals=1"` for the faulting ip and code bytes).
//!
//! A tool for long runs (crash-frequency counts, probes): `VESSEL_STRESS_OPT=DIR` copies the
//! files of DIR into the rootfs's `/opt` (static probe binaries), the request timeouts are
//! raised a hundredfold, and the guest console path is printed at once so a run can be
//! followed with `tail -f` (the script can also write progress under `/out`, which is on the
//! host, in the printed rootfs directory). `VESSEL_STRESS_CONSOLE=1` prints the whole console.
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use vessel_protocol::agent::{CreateSandboxRequest, DestroySandboxRequest, Storage};
use vessel_tests::agent_scenarios as sc;
use vessel_tests::bundle::{ContainerSpec, Rootfs};
use vessel_tests::vm::{agent_timeout, GuestArtifacts, GuestVm};

/// Console lines that tell a process died of a signal or the kernel complained.
const VERDICTS: &[&str] = &[
    "segfault",
    "traps:",
    "potentially unexpected fatal signal",
    "invalid opcode",
    "general protection",
    "Attempted to kill init",
    "Kernel panic",
    "Oops",
    "BUG:",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let vmm_args: Vec<&str> = args[..split].iter().map(String::as_str).collect();
    let script = args
        .get(split + 1..)
        .unwrap_or(&[])
        .join(" ")
        .trim()
        .to_string();
    anyhow::ensure!(!script.is_empty(), "usage: vm_stress [VMM args] -- SCRIPT");

    let artifacts = GuestArtifacts::from_env()?;
    sc::scale_timeouts(100);
    let shared = tempfile::Builder::new().prefix("vessel-share-").tempdir()?;
    let rootfs = Rootfs::busybox_in(shared.path())?;
    std::fs::create_dir_all(rootfs.path().join("out"))?;
    std::fs::create_dir_all(rootfs.path().join("opt"))?;
    if let Ok(dir) = std::env::var("VESSEL_STRESS_OPT") {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(
                    entry.path(),
                    rootfs.path().join("opt").join(entry.file_name()),
                )?;
            }
        }
    }
    let guest_rootfs =
        Path::new("/run/vessel/shared").join(rootfs.path().file_name().expect("rootfs dir name"));
    let share = format!("vessel={}", shared.path().display());
    let mut all: Vec<&str> = vec!["--shared-dir", &share];
    all.extend(vmm_args);
    let t = Instant::now();
    let mut vm = GuestVm::boot(&artifacts, 256, &all)?;
    let console = vm.vsock_path().with_file_name("console.log");
    eprintln!(
        "vm_stress: console {}, rootfs {}",
        console.display(),
        rootfs.path().display()
    );
    let client = vm.connect_agent(agent_timeout())?;
    eprintln!("vm_stress: agent connected after {:.2?}", t.elapsed());

    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "vm-stress".into();
    let mut storage = Storage::new();
    storage.driver = "virtiofs".into();
    storage.source = "vessel".into();
    storage.fstype = "virtiofs".into();
    storage.mount_point = "/run/vessel/shared".into();
    req.storages.push(storage);
    client.create_sandbox(sc::ctx(), &req)?;

    let t = Instant::now();
    let c = sc::run(
        &client,
        "stress",
        &ContainerSpec::new(&guest_rootfs)
            .writable_root()
            .args(&["/bin/sh", "-c", &script]),
        false,
    )?;
    eprintln!("vm_stress: container started after {:.2?}", t.elapsed());
    let (out, err, status) = c.output("")?;
    eprintln!("vm_stress: container exited after {:.2?}", t.elapsed());
    print!("{out}");
    eprint!("{err}");
    eprintln!("vm_stress: exit status {status}");
    drop(c);
    let _ = client.destroy_sandbox(sc::ctx(), &DestroySandboxRequest::new());
    let _ = vm.wait_exit(std::time::Duration::from_secs(120));
    let text = vm.console();
    let verdicts: Vec<&str> = text
        .lines()
        .filter(|l| VERDICTS.iter().any(|k| l.contains(k)))
        .collect();
    eprintln!(
        "vm_stress: {} console lines about fatal signals",
        verdicts.len()
    );
    for line in verdicts {
        eprintln!("vm_stress: console: {line}");
    }
    for line in vm
        .vmm_log()
        .lines()
        .filter(|l| l.contains("extended register state") || l.contains("emulated"))
    {
        eprintln!("vm_stress: vmm: {line}");
    }
    if std::env::var("VESSEL_STRESS_CONSOLE").is_ok_and(|v| v == "1") {
        eprintln!("--- console ---\n{text}");
    }
    Ok(())
}
