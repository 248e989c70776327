//! VM boot: vessel-vmm vs `qemu-system-x86_64 -M microvm`, same kernel, initrd, memory and
//! vCPUs, and the CPUID and kernel command line vessel-vmm chose for this host.
//!
//! Both are timed from spawning the VMM process to a line on the serial console: the agent
//! (guest PID 1) logs [`MARKER`] once its ttrpc server listens, at info level, which
//! [`AGENT_LOG_OPTION`] on the kernel command line turns on (the default level, warn, prints
//! nothing). qemu has no hybrid vsock, so the serial line is the common end point; for
//! vessel-vmm the time until the agent answers `Check` over the hybrid vsock is reported too.

use std::io::Read;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use vessel_protocol::agent::CheckRequest;
use vessel_protocol::agent_ttrpc::AgentClient;
use vessel_protocol::{hybrid_vsock, AGENT_VSOCK_PORT};

use crate::procmem::{read_rollup, Rollup};
use crate::report::{BootResult, Ratio, Series};

/// What the agent prints when it serves (agent/src/agent.rs: "serving on {listen} ...").
pub const MARKER: &str = "serving on vsock://";
/// Turns on the agent's info log (guest-side `vessel.log=` option).
pub const AGENT_LOG_OPTION: &str = "vessel.log=info";
/// Longest console/log line kept (guest-controlled text).
const MAX_LINE: usize = 4096;
/// Lines of console/log kept for error messages.
const TAIL_LINES: usize = 25;

pub struct BootSpec {
    pub vmm: PathBuf,
    pub qemu: PathBuf,
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
}

/// What vessel-vmm logged about its choices for this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmmChoices {
    pub removed_features: Option<Vec<String>>,
    pub cmdline: Option<String>,
}

impl VmmChoices {
    /// Takes what a vessel-vmm log line says (`CPUID features removed: [a,b]`,
    /// `kernel command line: ...`).
    pub fn absorb(&mut self, line: &str) {
        if let Some(rest) = line.split("CPUID features removed: [").nth(1) {
            if let Some(list) = rest.split(']').next() {
                self.removed_features = Some(
                    list.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                );
            }
        }
        if let Some(rest) = line.split("kernel command line: ").nth(1) {
            self.cmdline = Some(rest.trim().to_string());
        }
    }
}

/// qemu's `-cpu` value for vessel's removed features: `host,-a,-b,...`, plus the names qemu
/// has no switch for (OS-controlled bits like `osxsave`, which follow `xsave` anyway).
///
/// On KVM-PVM qemu also needs `-arch-capabilities`: with it, qemu aborts at start-up
/// ("failed to set MSR 0x10a", PVM refuses the write). vessel-vmm never writes that MSR.
pub fn qemu_cpu(removed: &[String], pvm: bool) -> (String, Vec<String>) {
    let mut arg = String::from("host");
    if pvm {
        arg.push_str(",-arch-capabilities");
    }
    let mut unmapped = Vec::new();
    for name in removed {
        let q = match name.as_str() {
            "osxsave" | "ospke" => None,
            "sse4_1" => Some("sse4.1".to_string()),
            "sse4_2" => Some("sse4.2".to_string()),
            "kvm_pv_send_ipi" => Some("kvm-pv-ipi".to_string()),
            n => Some(n.replace('_', "-")),
        };
        match q {
            Some(q) => {
                arg.push_str(",-");
                arg.push_str(&q);
            }
            None => unmapped.push(name.clone()),
        }
    }
    (arg, unmapped)
}

/// The kernel command line for qemu: vessel's, without its `virtio_mmio.device=` slots
/// (qemu's microvm announces its own transports).
pub fn qemu_append(vessel_cmdline: &str) -> String {
    vessel_cmdline
        .split_whitespace()
        .filter(|w| !w.starts_with("virtio_mmio.device="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The qemu arguments (PLATFORM.md's microvm line).
pub fn qemu_args(spec: &BootSpec, cpu: &str, append: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off",
        "-enable-kvm",
        "-cpu",
        cpu,
        "-m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(spec.mem_mib.to_string());
    a.push("-smp".into());
    a.push(spec.vcpus.to_string());
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-kernel",
    ] {
        a.push(s.into());
    }
    a.push(spec.kernel.display().to_string());
    a.push("-initrd".into());
    a.push(spec.initrd.display().to_string());
    a.push("-append".into());
    a.push(append.to_string());
    a.push("-no-reboot".into());
    a
}

fn vessel_args(spec: &BootSpec, sock: &Path) -> Vec<String> {
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

/// Shell-style rendering of a command, for the report.
pub fn show_command(program: &Path, args: &[String]) -> String {
    let quote = |s: &str| {
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

enum Event {
    Console(Instant, String),
    Log(String),
    Check(Result<Instant, String>),
}

/// Splits a byte stream into bounded lines and sends them.
fn line_pump(mut r: impl Read + Send + 'static, tx: mpsc::Sender<Event>, console: bool) {
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&line).replace('\r', "");
                    line.clear();
                    let ev = if console {
                        Event::Console(Instant::now(), text)
                    } else {
                        Event::Log(text)
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                } else if line.len() < MAX_LINE {
                    line.push(b);
                }
            }
        }
    });
}

fn push_tail(tail: &mut Vec<String>, line: String) {
    if tail.len() == TAIL_LINES {
        tail.remove(0);
    }
    tail.push(line);
}

/// Asks the agent `Check` over the hybrid vsock, retrying until it answers or `stop`.
fn check_agent(sock: PathBuf, deadline: Instant, stop: Arc<AtomicBool>, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let stream = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if Instant::now() >= deadline {
                let _ = tx.send(Event::Check(Err("no agent on the hybrid vsock".into())));
                return;
            }
            match hybrid_vsock::connect(&sock, AGENT_VSOCK_PORT, Duration::from_secs(5)) {
                Ok(s) => break s,
                // Not too often: every attempt is work for the (emulated) guest kernel.
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        };
        let result = ttrpc::Client::new(stream.into_raw_fd())
            .map_err(|e| format!("ttrpc client: {e}"))
            .and_then(|c| {
                AgentClient::new(c)
                    .check(
                        ttrpc::context::with_timeout(30_000_000_000),
                        &CheckRequest::new(),
                    )
                    .map_err(|e| format!("Check: {e}"))
            })
            .map(|_| Instant::now());
        let _ = tx.send(Event::Check(result));
    });
}

/// SIGTERM, then SIGKILL after `grace`; reaps.
fn stop_child(child: &mut Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::exec::kill_child(child);
}

struct BootRun {
    marker: Option<Duration>,
    /// The VMM process's memory when the marker appeared.
    rollup_at_marker: Option<Rollup>,
    check: Option<Duration>,
    choices: VmmChoices,
}

/// Boots one VM; waits for the console marker and, with `sock`, the Check answer.
fn boot_once(
    program: &Path,
    args: &[String],
    sock: Option<&Path>,
    timeout: Duration,
    what: &str,
) -> Result<BootRun, (String, VmmChoices)> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        (
            format!("{what}: cannot start {}: {e}", program.display()),
            VmmChoices::default(),
        )
    })?;
    let deadline = t0 + timeout;
    let (tx, rx) = mpsc::channel();
    if let Some(o) = child.stdout.take() {
        line_pump(o, tx.clone(), true);
    }
    if let Some(e) = child.stderr.take() {
        line_pump(e, tx.clone(), false);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Check is asked only once the marker is out: polling earlier would make the guest (slow,
    // emulated) answer connection attempts during the boot being timed.
    let mut check_tx = sock.map(|_| tx.clone());
    drop(tx);
    let mut run = BootRun {
        marker: None,
        rollup_at_marker: None,
        check: None,
        choices: VmmChoices::default(),
    };
    let (mut console, mut log) = (Vec::new(), Vec::new());
    let mut failure = None;
    loop {
        let done = run.marker.is_some() && (sock.is_none() || run.check.is_some());
        if done {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Let the pumps deliver the last lines before reporting.
            while let Ok(ev) = rx.recv_timeout(Duration::from_millis(300)) {
                if let Event::Log(l) | Event::Console(_, l) = ev {
                    run.choices.absorb(&l);
                    push_tail(&mut log, l);
                }
            }
            failure = Some(format!("{what}: exited ({status}) before the guest was up"));
            break;
        }
        if Instant::now() >= deadline {
            failure = Some(format!(
                "{what}: guest not up within {} s",
                timeout.as_secs()
            ));
            break;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Console(at, line)) => {
                if run.marker.is_none() && line.contains(MARKER) {
                    run.marker = Some(at.duration_since(t0));
                    run.rollup_at_marker = read_rollup(Path::new("/proc"), child.id()).ok();
                    if let (Some(s), Some(tx)) = (sock, check_tx.take()) {
                        check_agent(s.to_path_buf(), deadline, stop.clone(), tx);
                    }
                }
                push_tail(&mut console, line);
            }
            Ok(Event::Log(line)) => {
                run.choices.absorb(&line);
                push_tail(&mut log, line);
            }
            Ok(Event::Check(Ok(at))) => run.check = Some(at.duration_since(t0)),
            Ok(Event::Check(Err(e))) => {
                failure = Some(format!("{what}: agent Check failed: {e}"));
                break;
            }
            Err(_) => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    stop_child(&mut child, Duration::from_secs(10));
    match failure {
        None => Ok(run),
        Some(f) => Err((
            format!(
                "{f}\n--- console (last lines) ---\n{}\n--- VMM log (last lines) ---\n{}",
                console.join("\n"),
                log.join("\n")
            ),
            run.choices,
        )),
    }
}

/// Runs the comparison: per iteration one vessel-vmm boot, then one qemu boot configured from
/// what vessel-vmm chose.
pub fn measure(spec: &BootSpec) -> BootResult {
    let mut vessel_marker = Series::new("vessel-vmm", "boot to agent serial marker", "ms");
    let mut vessel_check = Series::new("vessel-vmm", "boot to Check answered", "ms");
    let mut qemu_marker = Series::new("qemu microvm", "boot to agent serial marker", "ms");
    let mut vessel_pss = Series::new("vessel-vmm", "VMM PSS at marker", "MiB");
    let mut qemu_pss = Series::new("qemu microvm", "VMM PSS at marker", "MiB");
    let mut choices = VmmChoices::default();
    let mut qemu_command = String::from("(not run: vessel-vmm's choices unknown)");
    let mut unmapped = Vec::new();
    let sock = spec.work.join("boot-vsock.sock");
    let vessel_command = show_command(&spec.vmm, &vessel_args(spec, &sock));
    for i in 0..spec.warmup + spec.runs {
        let measured = i >= spec.warmup;
        if vessel_marker.error.is_none() {
            log::info!("boot: vessel-vmm boot {} (takes a while on KVM-PVM)", i + 1);
            let _ = std::fs::remove_file(&sock);
            let args = vessel_args(spec, &sock);
            match boot_once(&spec.vmm, &args, Some(&sock), spec.timeout, "vessel-vmm") {
                Ok(run) => {
                    if measured {
                        if let Some(m) = run.marker {
                            vessel_marker.samples.push(m.as_secs_f64() * 1e3);
                        }
                        if let Some(c) = run.check {
                            vessel_check.samples.push(c.as_secs_f64() * 1e3);
                        }
                        if let Some(r) = run.rollup_at_marker {
                            vessel_pss.samples.push(r.pss_kib as f64 / 1024.0);
                        }
                    }
                    choices = run.choices;
                }
                Err((e, seen)) => {
                    vessel_marker.fail(e.clone());
                    vessel_check.fail(e.clone());
                    vessel_pss.fail(e);
                    if seen.cmdline.is_some() {
                        choices = seen;
                    }
                }
            }
        }
        if qemu_marker.error.is_some() {
            continue;
        }
        let (Some(removed), Some(cmdline)) = (&choices.removed_features, &choices.cmdline) else {
            let e = "vessel-vmm did not log its CPUID/cmdline choices; cannot configure qemu the same way";
            qemu_marker.fail(e);
            qemu_pss.fail(e);
            continue;
        };
        let (cpu, skipped) = qemu_cpu(removed, spec.pvm);
        unmapped = skipped;
        let args = qemu_args(spec, &cpu, &qemu_append(cmdline));
        qemu_command = show_command(&spec.qemu, &args);
        log::info!("boot: qemu microvm boot {}", i + 1);
        match boot_once(&spec.qemu, &args, None, spec.timeout, "qemu") {
            Ok(run) => {
                if let (true, Some(m)) = (measured, run.marker) {
                    qemu_marker.samples.push(m.as_secs_f64() * 1e3);
                }
                if let (true, Some(r)) = (measured, run.rollup_at_marker) {
                    qemu_pss.samples.push(r.pss_kib as f64 / 1024.0);
                }
            }
            Err((e, _)) => {
                qemu_marker.fail(e.clone());
                qemu_pss.fail(e);
            }
        }
    }
    let _ = std::fs::remove_file(&sock);
    let vessel_marker = vessel_marker.finish();
    let qemu_marker = qemu_marker.finish();
    let vessel_pss = vessel_pss.finish();
    let qemu_pss = qemu_pss.finish();
    let ratios = vec![
        Ratio::of("boot to agent serial marker", &vessel_marker, &qemu_marker),
        Ratio::of("VMM PSS at marker", &vessel_pss, &qemu_pss),
    ];
    let mut notes = vec![
        format!("marker: the agent's info line containing {MARKER:?}; both guests get {AGENT_LOG_OPTION}"),
        "vessel-vmm has a virtio-vsock device (hybrid vsock for Check); the qemu guest has no vsock device (no vhost-vsock on this host)".into(),
        "Check is first tried once the marker is out (no connection attempts during the timed boot), so boot-to-Check = marker + the first connect and Check".into(),
        "qemu boots the ELF vmlinux through PVH; vessel-vmm uses its own boot entry (see its log)".into(),
    ];
    if spec.pvm {
        notes.push("qemu runs with -arch-capabilities in addition (KVM-PVM refuses qemu's write of MSR 0x10a and qemu aborts); vessel-vmm leaves that CPUID bit and never writes the MSR".into());
    }
    if !unmapped.is_empty() {
        notes.push(format!(
            "CPUID bits with no qemu switch (OS-controlled, follow their base feature): {}",
            unmapped.join(",")
        ));
    }
    BootResult {
        marker: MARKER.into(),
        vessel_command,
        qemu_command,
        cpuid_removed_by_vessel: choices.removed_features.unwrap_or_default(),
        qemu_cpu_features_not_mappable: unmapped,
        kernel_cmdline: choices.cmdline.unwrap_or_default(),
        notes,
        series: vec![vessel_marker, qemu_marker, vessel_check.finish()],
        memory: vec![vessel_pss, qemu_pss],
        ratios,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_vmm_choices_from_its_log() {
        let mut c = VmmChoices::default();
        c.absorb("vessel-vmm [main] INFO  host kvm-pvm; CPUID features removed: [cx16,xsave,osxsave,sse4_1,kvm_pv_unhalt]; boot entry linux64 at 0x1000000; 1 vCPU(s), 128 MiB");
        c.absorb("vessel-vmm [main] INFO  kernel command line: console=ttyS0 reboot=k quiet noxsave virtio_mmio.device=4K@0xd0000000:5 vessel.log=info");
        c.absorb("unrelated line");
        assert_eq!(
            c.removed_features.as_deref().unwrap(),
            ["cx16", "xsave", "osxsave", "sse4_1", "kvm_pv_unhalt"]
        );
        let (cpu, unmapped) = qemu_cpu(c.removed_features.as_deref().unwrap(), false);
        assert_eq!(cpu, "host,-cx16,-xsave,-sse4.1,-kvm-pv-unhalt");
        assert_eq!(unmapped, ["osxsave"]);
        let (cpu, _) = qemu_cpu(&["cx16".to_string()], true);
        assert_eq!(cpu, "host,-arch-capabilities,-cx16");
        assert_eq!(
            qemu_append(c.cmdline.as_deref().unwrap()),
            "console=ttyS0 reboot=k quiet noxsave vessel.log=info"
        );
        let mut none = VmmChoices::default();
        none.absorb("host hardware; CPUID features removed: []; boot entry pvh");
        assert_eq!(none.removed_features, Some(vec![]));
        assert_eq!(qemu_cpu(&[], false).0, "host");
    }

    #[test]
    fn commands_render_quoted() {
        let spec = BootSpec {
            vmm: "/t/vessel-vmm".into(),
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.cpio".into(),
            mem_mib: 128,
            vcpus: 1,
            runs: 1,
            warmup: 0,
            timeout: Duration::from_secs(1),
            work: "/tmp".into(),
            pvm: false,
        };
        let q = show_command(
            &spec.qemu,
            &qemu_args(&spec, "host,-cx16", "console=ttyS0 quiet"),
        );
        assert!(q.contains("-cpu host,-cx16 -m 128 -smp 1"), "{q}");
        assert!(
            q.contains("-append 'console=ttyS0 quiet' -no-reboot"),
            "{q}"
        );
        let v = show_command(&spec.vmm, &vessel_args(&spec, Path::new("/tmp/s.sock")));
        assert!(
            v.ends_with("--vsock-uds /tmp/s.sock --cmdline vessel.log=info"),
            "{v}"
        );
    }

    #[test]
    fn a_vmm_that_dies_is_reported_with_its_output() {
        // A stand-in VMM that logs and exits: the failure must name it and quote its output.
        let args = vec![
            "-c".to_string(),
            "echo 'kernel command line: x y' >&2; echo boot-line; exit 7".to_string(),
        ];
        let Err((e, choices)) = boot_once(
            Path::new("/bin/sh"),
            &args,
            None,
            Duration::from_secs(10),
            "fake-vmm",
        ) else {
            panic!("a VMM that exits cannot succeed");
        };
        assert!(e.contains("fake-vmm: exited"), "{e}");
        assert!(e.contains("boot-line"), "{e}");
        assert_eq!(choices.cmdline.as_deref(), Some("x y"));
    }

    #[test]
    fn the_marker_is_timed() {
        let args = vec!["-c".to_string(), format!("sleep 0.3; echo '[ 1.0 INFO vessel_agent::agent] {MARKER}-1:1024 (pid1: true)'; sleep 30")];
        let start = Instant::now();
        let run = boot_once(
            Path::new("/bin/sh"),
            &args,
            None,
            Duration::from_secs(20),
            "fake",
        )
        .ok()
        .unwrap();
        let m = run.marker.unwrap();
        assert!(m >= Duration::from_millis(300), "{m:?}");
        // The VMM stand-in was stopped at once, not waited for.
        assert!(start.elapsed() < Duration::from_secs(15));
    }
}
