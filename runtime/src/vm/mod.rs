//! How a sandbox gets a machine to run in and a connection to its agent.
//!
//! [`VmBackend`] is the narrow seam: the real backend is [`vmm::VmmBackend`] (one `vessel-vmm`
//! process per pod, agent reached over hybrid vsock). [`host_agent::HostAgentBackend`] runs the
//! real agent binary on the host instead (`vessel-agent --listen unix://...`), so the sandbox's
//! agent-driving code can be exercised where no guest can boot.

pub mod child;
pub mod host_agent;
pub mod launch;
pub mod vmm;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vessel_protocol::agent::Storage;

use crate::config::Config;
use crate::state::SandboxPaths;
pub use child::{ChildProcess, ExitInfo};

/// Console bytes quoted in errors (guest-controlled: bounded and sanitised).
const CONSOLE_TAIL_BYTES: u64 = 4096;
const VMM_LOG_TAIL_BYTES: u64 = 2048;

/// Starting the VM or reaching its agent failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("sandbox {sandbox}: {what} not found at {path} (see `vessel check`)")]
    MissingFile {
        sandbox: String,
        what: &'static str,
        path: PathBuf,
    },
    #[error("sandbox {sandbox}: spawning {program}")]
    Spawn {
        sandbox: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("sandbox {sandbox}: preparing {path}")]
    Prepare {
        sandbox: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sandbox {sandbox}: {process} {status} before the agent answered\n{diagnostics}")]
    Exited {
        sandbox: String,
        process: String,
        status: ExitInfo,
        diagnostics: String,
    },
    #[error("sandbox {sandbox}: agent did not answer within {waited:?} (last error: {last_error})\n{diagnostics}")]
    AgentTimeout {
        sandbox: String,
        waited: Duration,
        last_error: String,
        diagnostics: String,
    },
}

/// What a backend needs to start a sandbox's machine.
pub struct LaunchRequest<'a> {
    pub sandbox_id: &'a str,
    pub paths: &'a SandboxPaths,
    pub config: &'a Config,
    /// The pod's host cgroup, for a backend that runs in it (joined before exec).
    pub cgroup: Option<&'a crate::host_cgroup::HostCgroup>,
    /// The tap of the pod's network, for the VM's NIC (kept open until the VMM is spawned).
    pub tap: Option<std::os::fd::BorrowedFd<'a>>,
}

/// The backend `[hypervisor] backend` names.
pub fn backend_from_config(config: &Config) -> std::sync::Arc<dyn VmBackend> {
    if config.hypervisor.backend == "host-agent" {
        std::sync::Arc::new(host_agent::HostAgentBackend {
            agent_binary: config.hypervisor.agent_path.clone(),
        })
    } else {
        std::sync::Arc::new(vmm::VmmBackend::default())
    }
}

/// Starts machines for sandboxes.
pub trait VmBackend: Send + Sync {
    fn launch(&self, req: &LaunchRequest<'_>) -> Result<Box<dyn VmInstance>, VmError>;
    /// Whether the machine's process belongs in the pod's host cgroup (`cgroupsPath`).
    fn runs_in_pod_cgroup(&self) -> bool {
        true
    }
    /// Whether the machine has a NIC a pod's network can be wired to.
    fn has_nic(&self) -> bool {
        false
    }
}

/// A started machine.
pub trait VmInstance: Send + Sync {
    /// The process that is the machine (VMM, or host agent).
    fn process(&self) -> &ChildProcess;
    /// Connects to the agent, retrying until `deadline`; fails early if the process exits.
    fn connect_agent(&self, deadline: Instant) -> Result<UnixStream, VmError>;
    /// Storages for CreateSandbox (the shared directory's mount in the guest).
    fn sandbox_storages(&self) -> Vec<Storage>;
    /// Where the host's shared directory appears for the agent.
    fn guest_shared_dir(&self) -> PathBuf;
    /// Where the runtime puts pod-level guest things (the pod's shm tmpfs).
    fn guest_pod_dir(&self) -> PathBuf;
    /// Console and VMM log tails, for error messages.
    fn diagnostics(&self) -> String;
    /// Whether the machine was restored from a snapshot (false: a cold boot).
    fn restored(&self) -> bool {
        false
    }
    /// Killing the process ends everything of the sandbox (a VM: its guest processes die
    /// with it); false when processes outlive it (the host agent's containers).
    fn kill_ends_everything(&self) -> bool {
        true
    }
    /// Whether the machine's root network namespace is the pod's alone (a VM's is, so a
    /// pod's first container stays in it: `crate::pod::namespaces`); the host agent's is
    /// the host's.
    fn network_is_the_pods(&self) -> bool {
        true
    }
}

/// Retries `attempt` until it succeeds, the child exits or `deadline` passes.
pub(crate) fn connect_until(
    sandbox: &str,
    child: &ChildProcess,
    deadline: Instant,
    diagnostics: &dyn Fn() -> String,
    attempt: &mut dyn FnMut() -> Result<UnixStream, String>,
) -> Result<UnixStream, VmError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(status) = child.exit_status() {
            return Err(VmError::Exited {
                sandbox: sandbox.to_string(),
                process: child.name().to_string(),
                status,
                diagnostics: diagnostics(),
            });
        }
        let last_error = match attempt() {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(VmError::AgentTimeout {
                sandbox: sandbox.to_string(),
                waited: now - started,
                last_error,
                diagnostics: diagnostics(),
            });
        }
        // Sleep in the child's exit condvar so a crash is noticed at once.
        if child.wait_timeout(pause.min(deadline - now)).is_some() {
            continue;
        }
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

pub use crate::diagnostics::tail_file;

/// Standard diagnostics: tails of the console and of the VMM's own log.
pub(crate) fn standard_diagnostics(paths: &SandboxPaths) -> String {
    let console = tail_file(&paths.console(), CONSOLE_TAIL_BYTES);
    let vmm_log = tail_file(&paths.vmm_log(), VMM_LOG_TAIL_BYTES);
    format!(
        "--- console tail ({}) ---\n{}\n--- vmm log tail ({}) ---\n{}",
        paths.console().display(),
        if console.is_empty() {
            "(empty)"
        } else {
            console.trim_end()
        },
        paths.vmm_log().display(),
        if vmm_log.is_empty() {
            "(empty)"
        } else {
            vmm_log.trim_end()
        },
    )
}

/// Opens a log file for a child's output (created, appended).
pub(crate) fn open_log(sandbox: &str, path: &Path) -> Result<std::fs::File, VmError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| VmError::Prepare {
            sandbox: sandbox.to_string(),
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_bounded_and_sanitised() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("console.log");
        let mut data = vec![b'a'; 10_000];
        data.extend_from_slice(b"\x1b[0mend\n");
        std::fs::write(&f, &data).unwrap();
        let t = tail_file(&f, 100);
        assert_eq!(t.len(), 100);
        assert!(t.ends_with("?[0mend\n"), "{t:?}");
        assert_eq!(tail_file(&dir.path().join("none"), 100), "");
        std::fs::write(&f, b"serial line\r\n").unwrap();
        assert_eq!(tail_file(&f, 100), "serial line\n");
    }

    #[test]
    fn connect_until_notices_a_dead_process() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "default", "sb").unwrap();
        paths.create().unwrap();
        std::fs::write(paths.console(), "Kernel panic - not syncing\n").unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 0.2; exit 3"]);
        let child = ChildProcess::spawn(cmd, "vessel-vmm").unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let err = connect_until(
            "sb",
            &child,
            deadline,
            &|| standard_diagnostics(&paths),
            &mut || Err("connection refused".into()),
        )
        .unwrap_err();
        match &err {
            VmError::Exited {
                status,
                diagnostics,
                ..
            } => {
                assert_eq!(*status, ExitInfo::Exited(3));
                assert!(diagnostics.contains("Kernel panic"), "{diagnostics}");
            }
            other => panic!("expected Exited, got {other}"),
        }
        assert!(Instant::now() < deadline);
    }

    #[test]
    fn connect_until_times_out_with_last_error() {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("1000");
        let child = ChildProcess::spawn(cmd, "sleep").unwrap();
        let deadline = Instant::now() + Duration::from_millis(300);
        let err = connect_until("sb", &child, deadline, &|| String::new(), &mut || {
            Err("no listener".into())
        })
        .unwrap_err();
        assert!(
            matches!(&err, VmError::AgentTimeout { last_error, .. } if last_error == "no listener"),
            "{err}"
        );
        child.kill_and_wait(Duration::from_secs(30)).unwrap();
    }
}
