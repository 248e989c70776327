//! A real vessel VM for tests: the `vessel-vmm` binary booting our guest kernel and
//! initramfs, with the agent reached over the VMM's hybrid vsock socket.
//!
//! Kernel and initramfs come from `VESSEL_KERNEL` and `VESSEL_INITRD` (set by
//! `scripts/test.sh` from `scripts/artifacts.sh`); a missing one fails the test with the path
//! it looked for. `VESSEL_TEST_AGENT_TIMEOUT` (seconds, default 600) bounds a boot: on KVM-PVM
//! hosts a cold boot to the agent takes about a minute. `VESSEL_TEST_GUEST_CMDLINE` is
//! appended to the guest kernel's command line (e.g. `loglevel=7 print-fatal-signals=1`).

use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vessel_protocol::agent_ttrpc::AgentClient;
use vessel_protocol::{hybrid_vsock, AGENT_VSOCK_PORT};

use crate::containerd::workspace_binary;

/// Guest kernel and initramfs of the build under test.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl GuestArtifacts {
    /// From `VESSEL_KERNEL` / `VESSEL_INITRD`; an error names what is missing and how to
    /// build it.
    pub fn from_env() -> Result<GuestArtifacts> {
        let get = |var: &str| -> Result<PathBuf> {
            let p = std::env::var(var).with_context(|| {
                format!("{var} is not set: run `scripts/artifacts.sh > build/vessel.env` and export it (scripts/test.sh does)")
            })?;
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!("{var}={} does not exist", p.display());
            }
            Ok(p)
        };
        Ok(GuestArtifacts {
            kernel: get("VESSEL_KERNEL")?,
            initrd: get("VESSEL_INITRD")?,
        })
    }
}

/// How long a test waits for a guest agent.
pub fn agent_timeout() -> Duration {
    let secs = std::env::var("VESSEL_TEST_AGENT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// A `vessel-vmm` process; killed (and its files removed) when dropped.
pub struct GuestVm {
    child: Option<Child>,
    dir: tempfile::TempDir,
    started: Instant,
}

impl GuestVm {
    /// Starts `vessel-vmm` with our kernel + initramfs, a hybrid vsock socket and a console
    /// log in a fresh temp dir. `extra` goes to the VMM's command line as is.
    pub fn boot(artifacts: &GuestArtifacts, mem_mib: u32, extra: &[&str]) -> Result<GuestVm> {
        let vmm = workspace_binary("vessel-vmm", "vessel-vmm")?;
        let dir = tempfile::Builder::new().prefix("vessel-vm-").tempdir()?;
        let log = std::fs::File::create(dir.path().join("vmm.log"))?;
        let child = Command::new(vmm)
            .arg("--kernel")
            .arg(&artifacts.kernel)
            .arg("--initrd")
            .arg(&artifacts.initrd)
            .arg("--mem-mib")
            .arg(mem_mib.to_string())
            .arg("--vsock-uds")
            .arg(dir.path().join("vsock.sock"))
            .arg("--console")
            .arg(dir.path().join("console.log"))
            .args(extra)
            // Debugging aid: e.g. VESSEL_TEST_GUEST_CMDLINE="loglevel=7 print-fatal-signals=1".
            .args(
                std::env::var("VESSEL_TEST_GUEST_CMDLINE")
                    .ok()
                    .map(|c| vec!["--cmdline".to_string(), c])
                    .unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting vessel-vmm")?;
        Ok(GuestVm {
            child: Some(child),
            dir,
            started: Instant::now(),
        })
    }

    pub fn vsock_path(&self) -> PathBuf {
        self.dir.path().join("vsock.sock")
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits until the agent accepts a vsock connection and returns a ttrpc client on it.
    /// Fails early, with the console and VMM log tails, if the VMM exits first.
    pub fn connect_agent(&mut self, timeout: Duration) -> Result<AgentClient> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                bail!(
                    "vessel-vmm exited ({status}) before the agent answered\n{}",
                    self.diagnostics()
                );
            }
            let step = (Instant::now() + Duration::from_secs(5)).min(deadline);
            match hybrid_vsock::connect_with_retry(
                &self.vsock_path(),
                AGENT_VSOCK_PORT,
                step,
                Duration::from_millis(250),
            ) {
                Ok(stream) => {
                    let client = ttrpc::Client::new(stream.into_raw_fd())
                        .context("ttrpc client on the vsock stream")?;
                    return Ok(AgentClient::new(client));
                }
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "no agent on vsock port {AGENT_VSOCK_PORT} after {:?}: {e}\n{}",
                        timeout,
                        self.diagnostics()
                    )
                }
                Err(_) => {}
            }
        }
    }

    fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("VMM already reaped"),
        }
    }

    /// Waits for the VMM to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status()? {
                self.child = None;
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "vessel-vmm still running after {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn console(&self) -> String {
        read_lossy(&self.dir.path().join("console.log"))
    }

    pub fn vmm_log(&self) -> String {
        read_lossy(&self.dir.path().join("vmm.log"))
    }

    /// Console and VMM log tails, for failure messages, plus every console line that tells
    /// why a guest process or the guest died (a panic's call trace pushes it out of the tail).
    pub fn diagnostics(&self) -> String {
        let console = self.console();
        let verdicts: Vec<&str> = console
            .lines()
            .filter(|l| {
                [
                    "Kernel panic",
                    "Attempted to kill init",
                    "segfault",
                    "traps:",
                    "Oops",
                    "BUG:",
                    "vessel-agent",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .take(20)
            .collect();
        format!(
            "--- guest console: deaths and agent lines ---\n{}\n--- guest console (tail) ---\n{}\n\
             --- vessel-vmm log (tail) ---\n{}",
            verdicts.join("\n"),
            tail(&console, 30),
            tail(&self.vmm_log(), 30)
        )
    }
}

impl Drop for GuestVm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
