//! Running one VMM process until its guest is up: the console marker, the agent's `Check` over
//! the hybrid vsock, the VMM's memory at that point; then stopping it. Everything is bounded
//! by a deadline; a VMM that dies early is reported with its console and log tails.

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

use super::qemu::VmmChoices;
use crate::procmem::{read_rollup, Rollup};

/// Longest console/log line kept (guest-controlled text).
const MAX_LINE: usize = 4096;
/// Lines of console/log kept for error messages.
const TAIL_LINES: usize = 25;

/// What "up" means for one run.
#[derive(Debug, Clone)]
pub struct Wait<'a> {
    /// A console line containing this (the agent serves).
    pub marker: Option<&'a str>,
    /// Ask `Check` over this hybrid vsock socket.
    pub check: Option<&'a Path>,
    /// Ask from the start (a restore) instead of once the marker is out (a boot: attempts
    /// during the boot would be work for the emulated guest kernel while it is timed).
    pub check_from_start: bool,
    /// Pause between connection attempts.
    pub poll: Duration,
}

/// What one run saw (times from spawning the VMM).
#[derive(Debug, Default)]
pub struct VmRun {
    pub marker: Option<Duration>,
    pub check: Option<Duration>,
    /// The VMM's memory when it was up (at the marker, else at Check).
    pub rollup: Option<Rollup>,
    pub choices: VmmChoices,
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
fn check_agent(
    sock: PathBuf,
    poll: Duration,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Event>,
) {
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
                Err(_) => std::thread::sleep(poll),
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

/// SIGTERM, then SIGKILL after `grace`; reaps. Only ever our own child.
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

/// Runs `program args` until `wait` is satisfied (or `timeout`), then stops it. On failure
/// returns the reason (with console/log tails) and whatever choices the VMM logged.
pub fn run_vm(
    program: &Path,
    args: &[String],
    wait: &Wait<'_>,
    timeout: Duration,
    what: &str,
) -> Result<VmRun, (String, VmmChoices)> {
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
    let mut check_tx = wait.check.map(|_| tx.clone());
    drop(tx);
    let start_check = |check_tx: &mut Option<mpsc::Sender<Event>>| {
        if let (Some(s), Some(tx)) = (wait.check, check_tx.take()) {
            check_agent(s.to_path_buf(), wait.poll, deadline, stop.clone(), tx);
        }
    };
    if wait.check_from_start {
        start_check(&mut check_tx);
    }
    let mut run = VmRun::default();
    let (mut console, mut log) = (Vec::new(), Vec::new());
    let mut failure = None;
    loop {
        let done = (wait.marker.is_none() || run.marker.is_some())
            && (wait.check.is_none() || run.check.is_some());
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
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Console(at, line)) => {
                if let (None, Some(m)) = (run.marker, wait.marker) {
                    if line.contains(m) {
                        run.marker = Some(at.duration_since(t0));
                        run.rollup = read_rollup(Path::new("/proc"), child.id()).ok();
                        start_check(&mut check_tx);
                    }
                }
                push_tail(&mut console, line);
            }
            Ok(Event::Log(line)) => {
                run.choices.absorb(&line);
                push_tail(&mut log, line);
            }
            Ok(Event::Check(Ok(at))) => {
                run.check = Some(at.duration_since(t0));
                if run.rollup.is_none() {
                    run.rollup = read_rollup(Path::new("/proc"), child.id()).ok();
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".to_string(), script.to_string()]
    }

    fn marker_wait(m: &str) -> Wait<'_> {
        Wait {
            marker: Some(m),
            check: None,
            check_from_start: false,
            poll: Duration::from_millis(10),
        }
    }

    #[test]
    fn a_vmm_that_dies_is_reported_with_its_output() {
        // A stand-in VMM that logs and exits: the failure must name it and quote its output.
        let args = sh("echo 'kernel command line: x y' >&2; echo boot-line; exit 7");
        let Err((e, choices)) = run_vm(
            Path::new("/bin/sh"),
            &args,
            &marker_wait("never"),
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
    fn the_marker_is_timed_and_memory_read() {
        let args = sh("sleep 0.3; echo '[ 1.0 INFO agent] serving on vsock://-1:1024'; sleep 30");
        let start = Instant::now();
        let run = run_vm(
            Path::new("/bin/sh"),
            &args,
            &marker_wait("serving on vsock://"),
            Duration::from_secs(20),
            "fake",
        )
        .ok()
        .unwrap();
        let m = run.marker.unwrap();
        assert!(m >= Duration::from_millis(300), "{m:?}");
        assert!(run.rollup.unwrap().pss_kib > 0);
        // The stand-in was stopped at once, not waited for.
        assert!(start.elapsed() < Duration::from_secs(15));
    }

    #[test]
    fn a_silent_vmm_times_out() {
        let Err((e, _)) = run_vm(
            Path::new("/bin/sh"),
            &sh("sleep 30"),
            &marker_wait("x"),
            Duration::from_millis(300),
            "quiet",
        ) else {
            panic!("must time out");
        };
        assert!(e.contains("quiet: guest not up within"), "{e}");
    }

    #[test]
    fn check_without_an_agent_fails_at_the_deadline() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("none.sock");
        let wait = Wait {
            marker: None,
            check: Some(&sock),
            check_from_start: true,
            poll: Duration::from_millis(10),
        };
        let Err((e, _)) = run_vm(
            Path::new("/bin/sh"),
            &sh("sleep 30"),
            &wait,
            Duration::from_millis(500),
            "nocheck",
        ) else {
            panic!("no agent, no success");
        };
        assert!(
            e.contains("no agent on the hybrid vsock") || e.contains("not up within"),
            "{e}"
        );
    }
}
