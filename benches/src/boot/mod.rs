//! VM boot: vessel-vmm vs `qemu-system-x86_64 -M microvm` and (given `--firecracker PATH`)
//! Firecracker, same kernel, initrd, memory and vCPUs, and the CPUID and kernel command line
//! vessel-vmm chose for this host; optionally vessel-vmm's restore from a snapshot.
//!
//! Boots are timed from spawning the VMM process to a line on the serial console: the agent
//! (guest PID 1) logs [`MARKER`] once its ttrpc server listens, at info level, which
//! [`AGENT_LOG_OPTION`] on the kernel command line turns on (the default level, warn, prints
//! nothing). qemu has no hybrid vsock, so the serial line is the common end point; for
//! vessel-vmm the time until the agent answers `Check` over the hybrid vsock is reported too.
//! A restored guest prints nothing (its agent already serves): restores are timed to `Check`.

pub mod firecracker;
pub mod qemu;
pub mod vm_run;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::report::{BootResult, Ratio, Series};
use qemu::{qemu_append, qemu_args, qemu_cpu, show_command, VmmChoices};
use vm_run::{run_vm, VmRun, Wait};

/// What the agent prints when it serves (agent/src/agent.rs: "serving on {listen} ...").
pub const MARKER: &str = "serving on vsock://";
/// Turns on the agent's info log (guest-side `vessel.log=` option).
pub const AGENT_LOG_OPTION: &str = "vessel.log=info";

pub struct BootSpec {
    pub vmm: PathBuf,
    pub qemu: PathBuf,
    /// Firecracker, built from its public source; `None`: its series says it was not run.
    pub firecracker: Option<PathBuf>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub mem_mib: u32,
    pub vcpus: u32,
    pub runs: usize,
    pub warmup: usize,
    pub timeout: Duration,
    pub work: PathBuf,
    /// The host is KVM-PVM (qemu needs `-arch-capabilities` there).
    pub pvm: bool,
    /// Also time vessel-vmm restoring a snapshot (made once, by `vessel-vmm snapshot-create`).
    pub restore: bool,
}

fn boot_args(spec: &BootSpec, sock: &Path) -> Vec<String> {
    vec![
        "--kernel".into(),
        spec.kernel.display().to_string(),
        "--initrd".into(),
        spec.initrd.display().to_string(),
        "--mem-mib".into(),
        spec.mem_mib.to_string(),
        "--vcpus".into(),
        spec.vcpus.to_string(),
        "--vsock-uds".into(),
        sock.display().to_string(),
        "--cmdline".into(),
        AGENT_LOG_OPTION.into(),
    ]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One series of times and one of memory for a kind of run.
struct Track {
    time: Series,
    memory: Series,
}

impl Track {
    fn new(runtime: &str, time_metric: &str, memory_metric: &str) -> Track {
        Track {
            time: Series::new(runtime, time_metric, "ms"),
            memory: Series::new(runtime, memory_metric, "MiB"),
        }
    }
    fn failed(&self) -> bool {
        self.time.error.is_some()
    }
    fn fail(&mut self, e: &str) {
        self.time.fail(e);
        self.memory.fail(e);
    }
    fn record(&mut self, measured: bool, time: Option<Duration>, run: &VmRun) {
        if let (true, Some(t)) = (measured, time) {
            self.time.samples.push(ms(t));
            if let Some(r) = run.rollup {
                self.memory.samples.push(mib(r.pss_kib));
            }
        }
    }
}

/// Makes the snapshot restores start from; returns (creation time, notes).
fn create_snapshot(spec: &BootSpec, dir: &Path) -> Result<(Duration, Vec<String>), String> {
    let sock = spec.work.join("snapshot-create.sock");
    let _ = std::fs::remove_file(&sock);
    let mut args = vec![
        "snapshot-create".to_string(),
        "--snapshot-dir".into(),
        dir.display().to_string(),
    ];
    args.extend(boot_args(spec, &sock));
    let log_path = spec.work.join("snapshot-create.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&spec.vmm);
    cmd.args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(log)
        .stderr(log2);
    log::info!("boot: creating the snapshot (one cold boot)");
    let started = std::time::Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running {}: {e}", spec.vmm.display()))?;
    // As the runtime does: the host checks the agent, then tells the VMM to snapshot.
    let result = vessel_protocol::agent_check::snapshot_when_ready(
        &mut child,
        &sock,
        started + spec.timeout,
        Duration::from_secs(60),
    );
    let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
    match result {
        Ok((_, status)) if status.success() => {}
        Ok((_, status)) => return Err(format!("vessel-vmm snapshot-create {status}:\n{stderr}")),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "vessel-vmm snapshot-create: {}:\n{stderr}",
                vessel_protocol::errors::chain(&e)
            ));
        }
    }
    let elapsed = started.elapsed();
    let mut notes = vec![format!(
        "snapshot made once by: {}",
        show_command(&spec.vmm, &args)
    )];
    if let Some(line) = stderr.lines().find(|l| l.contains("saved in")) {
        notes.push(format!(
            "snapshot-create said: {}",
            line.split("INFO").last().unwrap_or(line).trim()
        ));
    }
    if let Ok(m) = std::fs::metadata(dir.join("memory.bin")) {
        notes.push(format!(
            "memory.bin: {} MiB apparent, {} MiB allocated on disk (zero pages are holes)",
            m.len() / (1 << 20),
            m.blocks() * 512 / (1 << 20)
        ));
    }
    Ok((elapsed, notes))
}

/// Runs the comparison: per iteration a vessel-vmm boot, a restore (if asked), then a qemu
/// boot configured from what vessel-vmm chose.
pub fn measure(spec: &BootSpec) -> BootResult {
    let mut vessel = Track::new(
        "vessel-vmm",
        "boot to agent serial marker",
        "VMM PSS at marker",
    );
    let mut vessel_check = Series::new("vessel-vmm", "boot to Check answered", "ms");
    let mut qemu = Track::new(
        "qemu microvm",
        "boot to agent serial marker",
        "VMM PSS at marker",
    );
    let mut restore = Track::new(
        "vessel-vmm restore",
        "restore to Check answered",
        "VMM PSS at Check",
    );
    let mut fc = Track::new(
        "firecracker",
        "boot to agent serial marker",
        "VMM PSS at marker",
    );
    let mut fc_check = Series::new("firecracker", "boot to Check answered", "ms");
    let mut fc_command = None;
    if spec.firecracker.is_none() {
        let why = "not run: no --firecracker PATH (build Firecracker from its public source)";
        fc.fail(why);
        fc_check.fail(why);
    }
    let mut choices = VmmChoices::default();
    let mut qemu_command = String::from("(not run: vessel-vmm's choices unknown)");
    let mut unmapped = Vec::new();
    let mut notes = vec![
        format!("marker: the agent's info line containing {MARKER:?}; both guests get {AGENT_LOG_OPTION}"),
        "vessel-vmm has a virtio-vsock device (hybrid vsock for Check); the qemu guest has no vsock device (no vhost-vsock on this host)".into(),
        "Check is first tried once the marker is out (no connection attempts during the timed boot), so boot-to-Check = marker + the first connect and Check".into(),
        "qemu boots the ELF vmlinux through PVH; vessel-vmm uses its own boot entry (see its log)".into(),
    ];
    if spec.pvm {
        notes.push("qemu runs with -arch-capabilities in addition (KVM-PVM refuses qemu's write of MSR 0x10a and qemu aborts); vessel-vmm leaves that CPUID bit and never writes the MSR".into());
    }
    let sock = spec.work.join("boot-vsock.sock");
    let vessel_command = show_command(&spec.vmm, &boot_args(spec, &sock));
    let snapshot_dir = spec.work.join("snapshot");
    let mut restore_command = None;
    let mut snapshot_create_ms = None;
    if spec.restore {
        match create_snapshot(spec, &snapshot_dir) {
            Ok((took, n)) => {
                snapshot_create_ms = Some(ms(took));
                notes.extend(n);
            }
            Err(e) => restore.fail(&format!("creating the snapshot: {e}")),
        }
    }
    let boot_wait = Wait {
        marker: Some(MARKER),
        check: Some(&sock),
        check_from_start: false,
        poll: Duration::from_millis(50),
    };
    for i in 0..spec.warmup + spec.runs {
        let measured = i >= spec.warmup;
        if !vessel.failed() {
            log::info!("boot: vessel-vmm boot {} (takes a while on KVM-PVM)", i + 1);
            let _ = std::fs::remove_file(&sock);
            let args = boot_args(spec, &sock);
            match run_vm(&spec.vmm, &args, &boot_wait, spec.timeout, "vessel-vmm") {
                Ok(run) => {
                    vessel.record(measured, run.marker, &run);
                    if let (true, Some(c)) = (measured, run.check) {
                        vessel_check.samples.push(ms(c));
                    }
                    choices = run.choices;
                }
                Err((e, seen)) => {
                    vessel.fail(&e);
                    vessel_check.fail(e);
                    if seen.cmdline.is_some() {
                        choices = seen;
                    }
                }
            }
        }
        if spec.restore && !restore.failed() {
            log::info!("boot: vessel-vmm restore {}", i + 1);
            let rsock = spec.work.join("restore-vsock.sock");
            let _ = std::fs::remove_file(&rsock);
            let args = vec![
                "--restore".to_string(),
                snapshot_dir.display().to_string(),
                "--vsock-uds".into(),
                rsock.display().to_string(),
            ];
            restore_command = Some(show_command(&spec.vmm, &args));
            let wait = Wait {
                marker: None,
                check: Some(&rsock),
                check_from_start: true,
                poll: Duration::from_millis(2),
            };
            match run_vm(
                &spec.vmm,
                &args,
                &wait,
                spec.timeout,
                "vessel-vmm --restore",
            ) {
                Ok(run) => restore.record(measured, run.check, &run),
                Err((e, _)) => restore.fail(&e),
            }
        }
        if let (Some(fc_bin), false) = (&spec.firecracker, fc.failed()) {
            match &choices.cmdline {
                Some(cmdline) => {
                    log::info!("boot: firecracker boot {}", i + 1);
                    let run = firecracker_boot(spec, fc_bin, &qemu_append(cmdline));
                    fc_command = Some(run.0);
                    match run.1 {
                        Ok(run) => {
                            fc.record(measured, run.marker, &run);
                            if let (true, Some(c)) = (measured, run.check) {
                                fc_check.samples.push(ms(c));
                            }
                        }
                        Err(e) => {
                            fc.fail(&e);
                            fc_check.fail(e);
                        }
                    }
                }
                None => {
                    let why = "vessel-vmm did not log its kernel command line; cannot give Firecracker the same";
                    fc.fail(why);
                    fc_check.fail(why);
                }
            }
        }
        if qemu.failed() {
            continue;
        }
        let (Some(removed), Some(cmdline)) = (&choices.removed_features, &choices.cmdline) else {
            qemu.fail("vessel-vmm did not log its CPUID/cmdline choices; cannot configure qemu the same way");
            continue;
        };
        let (cpu, skipped) = qemu_cpu(removed, spec.pvm);
        unmapped = skipped;
        let args = qemu_args(
            &spec.kernel,
            &spec.initrd,
            spec.mem_mib,
            spec.vcpus,
            &cpu,
            &qemu_append(cmdline),
        );
        qemu_command = show_command(&spec.qemu, &args);
        log::info!("boot: qemu microvm boot {}", i + 1);
        let wait = Wait {
            marker: Some(MARKER),
            check: None,
            check_from_start: false,
            poll: Duration::from_millis(50),
        };
        match run_vm(&spec.qemu, &args, &wait, spec.timeout, "qemu") {
            Ok(run) => qemu.record(measured, run.marker, &run),
            Err((e, _)) => qemu.fail(&e),
        }
    }
    let _ = std::fs::remove_file(&sock);
    if !unmapped.is_empty() {
        notes.push(format!(
            "CPUID bits with no qemu switch (OS-controlled, follow their base feature): {}",
            unmapped.join(",")
        ));
    }
    let finish = |t: Track| (t.time.finish(), t.memory.finish());
    let (vessel_time, vessel_mem) = finish(vessel);
    let (qemu_time, qemu_mem) = finish(qemu);
    let vessel_check = vessel_check.finish();
    let mut ratios = vec![
        Ratio::of("boot to agent serial marker", &vessel_time, &qemu_time),
        Ratio::of("VMM PSS at marker", &vessel_mem, &qemu_mem),
    ];
    let mut series = vec![vessel_time, qemu_time, vessel_check];
    let mut memory = vec![vessel_mem, qemu_mem];
    if spec.restore {
        let (restore_time, restore_mem) = finish(restore);
        ratios.push(Ratio::of(
            "restore vs boot, to Check answered",
            &restore_time,
            &series[2],
        ));
        series.push(restore_time);
        memory.push(restore_mem);
    }
    let (fc_time, fc_mem) = finish(fc);
    let fc_check = fc_check.finish();
    ratios.push(Ratio::of(
        "boot to agent serial marker, vs firecracker",
        &series[0],
        &fc_time,
    ));
    ratios.push(Ratio::of(
        "boot to Check answered, vs firecracker",
        &series[2],
        &fc_check,
    ));
    ratios.push(Ratio::of(
        "VMM PSS at marker, vs firecracker",
        &memory[0],
        &fc_mem,
    ));
    if let Some(c) = fc_command {
        notes.push(format!("firecracker: {c}"));
    }
    series.push(fc_time);
    series.push(fc_check);
    memory.push(fc_mem);
    BootResult {
        marker: MARKER.into(),
        vessel_command,
        qemu_command,
        restore_command,
        snapshot_create_ms,
        cpuid_removed_by_vessel: choices.removed_features.unwrap_or_default(),
        qemu_cpu_features_not_mappable: unmapped,
        kernel_cmdline: choices.cmdline.unwrap_or_default(),
        notes,
        series,
        memory,
        ratios,
    }
}

/// One Firecracker boot with `boot_args`: its command (for the report) and what it saw.
fn firecracker_boot(
    spec: &BootSpec,
    bin: &Path,
    boot_args: &str,
) -> (String, Result<VmRun, String>) {
    let sock = spec.work.join("firecracker-vsock.sock");
    let config = spec.work.join("firecracker.json");
    let _ = std::fs::remove_file(&sock);
    let text = firecracker::config_json(
        &spec.kernel,
        &spec.initrd,
        spec.mem_mib,
        spec.vcpus,
        boot_args,
        &sock,
    );
    let args = firecracker::args(&config);
    let command = format!("{} with {text}", show_command(bin, &args));
    if let Err(e) = std::fs::write(&config, &text) {
        return (command, Err(format!("writing {}: {e}", config.display())));
    }
    let wait = Wait {
        marker: Some(MARKER),
        check: Some(&sock),
        check_from_start: false,
        poll: Duration::from_millis(50),
    };
    let run = run_vm(bin, &args, &wait, spec.timeout, "firecracker").map_err(|(e, _)| e);
    let _ = std::fs::remove_file(&sock);
    (command, run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vessel_boot_args_name_everything_shared_with_qemu() {
        let spec = BootSpec {
            vmm: "/t/vessel-vmm".into(),
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            firecracker: None,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.cpio".into(),
            mem_mib: 256,
            vcpus: 2,
            runs: 1,
            warmup: 0,
            timeout: Duration::from_secs(1),
            work: "/tmp".into(),
            pvm: false,
            restore: false,
        };
        let v = show_command(&spec.vmm, &boot_args(&spec, Path::new("/tmp/s.sock")));
        assert_eq!(
            v,
            "/t/vessel-vmm --kernel /k/vmlinux --initrd /k/initrd.cpio --mem-mib 256 --vcpus 2 \
             --vsock-uds /tmp/s.sock --cmdline vessel.log=info"
        );
    }

    #[test]
    fn a_missing_vmm_fails_every_series_clearly() {
        let d = tempfile::tempdir().unwrap();
        let spec = BootSpec {
            vmm: d.path().join("no-vessel-vmm"),
            qemu: d.path().join("no-qemu"),
            firecracker: None,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.cpio".into(),
            mem_mib: 128,
            vcpus: 1,
            runs: 2,
            warmup: 0,
            timeout: Duration::from_secs(5),
            work: d.path().to_path_buf(),
            pvm: true,
            restore: true,
        };
        let r = measure(&spec);
        assert_eq!(r.series.len(), 6);
        for s in r.series.iter().chain(&r.memory) {
            assert!(s.summary.is_none() && s.error.is_some(), "{s:?}");
        }
        assert!(r.series[0]
            .error
            .as_deref()
            .unwrap()
            .contains("cannot start"));
        assert!(r.series[3]
            .error
            .as_deref()
            .unwrap()
            .contains("creating the snapshot"));
        assert!(r.series[1]
            .error
            .as_deref()
            .unwrap()
            .contains("cannot configure qemu"));
        for fc in &r.series[4..] {
            assert!(
                fc.error.as_deref().unwrap().contains("no --firecracker"),
                "{fc:?}"
            );
        }
        assert!(r.ratios.iter().all(|x| x.p50.is_none()));
    }
}
