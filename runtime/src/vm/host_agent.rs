//! A backend that runs the real agent binary on the host (`vessel-agent --listen unix://...`)
//! instead of booting a VM. It exercises the sandbox's agent-driving code (containers, stdio,
//! exit ordering, cleanup) where no guest can boot; the agent sees host paths directly, so the
//! shared directory needs no virtio-fs.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use vessel_protocol::agent::Storage;

use super::{
    connect_until, open_log, standard_diagnostics, ChildProcess, LaunchRequest, VmBackend, VmError,
    VmInstance,
};
use crate::state::SandboxPaths;

/// Runs `agent_binary --listen unix://<state>/<sid>/agent.sock` per sandbox.
#[derive(Debug, Clone)]
pub struct HostAgentBackend {
    pub agent_binary: PathBuf,
}

impl VmBackend for HostAgentBackend {
    /// No: the agent on the host makes each container's cgroup at the spec's `cgroupsPath`
    /// itself (as runc would), so the pod is accounted there already; the agent process in
    /// that same cgroup would be frozen and killed with its containers.
    fn runs_in_pod_cgroup(&self) -> bool {
        false
    }

    fn launch(&self, req: &LaunchRequest<'_>) -> Result<Box<dyn VmInstance>, VmError> {
        if !self.agent_binary.is_file() {
            return Err(VmError::MissingFile {
                sandbox: req.sandbox_id.to_string(),
                what: "agent binary",
                path: self.agent_binary.clone(),
            });
        }
        let socket = req.paths.agent_socket();
        let _ = std::fs::remove_file(&socket);
        // The agent's output plays the part of the console.
        let log = open_log(req.sandbox_id, &req.paths.console())?;
        let log2 = log.try_clone().map_err(|source| VmError::Prepare {
            sandbox: req.sandbox_id.to_string(),
            path: req.paths.console(),
            source,
        })?;
        let mut cmd = Command::new(&self.agent_binary);
        cmd.arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--state-dir")
            .arg(req.paths.dir().join("agent"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .current_dir(req.paths.dir());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let process =
            ChildProcess::spawn(cmd, "vessel-agent").map_err(|source| VmError::Spawn {
                sandbox: req.sandbox_id.to_string(),
                program: self.agent_binary.clone(),
                source,
            })?;
        Ok(Box::new(HostAgentInstance {
            sandbox: req.sandbox_id.to_string(),
            paths: req.paths.clone(),
            process,
        }))
    }
}

struct HostAgentInstance {
    sandbox: String,
    paths: SandboxPaths,
    process: ChildProcess,
}

impl VmInstance for HostAgentInstance {
    fn process(&self) -> &ChildProcess {
        &self.process
    }

    fn connect_agent(&self, deadline: Instant) -> Result<UnixStream, VmError> {
        let socket = self.paths.agent_socket();
        connect_until(
            &self.sandbox,
            &self.process,
            deadline,
            &|| self.diagnostics(),
            &mut || UnixStream::connect(&socket).map_err(|e| format!("{}: {e}", socket.display())),
        )
    }

    fn sandbox_storages(&self) -> Vec<Storage> {
        Vec::new()
    }

    fn guest_shared_dir(&self) -> PathBuf {
        self.paths.shared()
    }

    fn guest_pod_dir(&self) -> PathBuf {
        self.paths.dir().join("pod")
    }

    fn kill_ends_everything(&self) -> bool {
        false
    }

    fn network_is_the_pods(&self) -> bool {
        false
    }

    fn diagnostics(&self) -> String {
        standard_diagnostics(&self.paths)
    }
}
