//! Typed client for the guest agent's ttrpc API, with errors that name the sandbox and call.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vessel_protocol::agent as pb;
use vessel_protocol::agent_ttrpc::AgentClient;

/// ttrpc status codes the runtime tells apart, as the agent's replies carry them: ttrpc's own
/// `Code` (gRPC numbering), the one definition the agent and the shim use too.
pub mod code {
    pub const NOT_FOUND: i32 = ttrpc::Code::NOT_FOUND as i32;
    pub const ALREADY_EXISTS: i32 = ttrpc::Code::ALREADY_EXISTS as i32;
    pub const FAILED_PRECONDITION: i32 = ttrpc::Code::FAILED_PRECONDITION as i32;
    pub const INVALID_ARGUMENT: i32 = ttrpc::Code::INVALID_ARGUMENT as i32;
    pub const UNIMPLEMENTED: i32 = ttrpc::Code::UNIMPLEMENTED as i32;
}

/// Largest stdio chunk asked of the agent per read.
pub const READ_CHUNK: u32 = 64 * 1024;

/// A call to the agent failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error status.
    #[error("sandbox {sandbox}: agent {call}: {message} (code {code})")]
    Rpc {
        sandbox: String,
        call: &'static str,
        code: i32,
        message: String,
    },
    /// The connection failed (agent gone, VM gone, timeout).
    #[error("sandbox {sandbox}: agent {call}: {detail}")]
    Transport {
        sandbox: String,
        call: &'static str,
        detail: String,
    },
    /// The VM is known to be gone; nothing was sent.
    #[error("sandbox {sandbox}: agent {call}: the VM has exited")]
    VmGone { sandbox: String, call: &'static str },
    #[error("sandbox {sandbox}: agent {call}: encoding request: {detail}")]
    Encode {
        sandbox: String,
        call: &'static str,
        detail: String,
    },
}

impl AgentError {
    /// The agent's status code, if it answered with one.
    pub fn code(&self) -> Option<i32> {
        match self {
            AgentError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
    /// True if the failure was the connection, not an answer.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            AgentError::Transport { .. } | AgentError::VmGone { .. }
        )
    }
}

/// A connected agent. Cloning shares the connection.
#[derive(Clone)]
pub struct Agent {
    client: AgentClient,
    sandbox: String,
    timeout: Duration,
    vm_gone: Arc<AtomicBool>,
}

type Call<'a, T> = &'a dyn Fn(&AgentClient, ttrpc::context::Context) -> ttrpc::Result<T>;

impl Agent {
    /// Wraps a connected stream (hybrid vsock after `OK`, or a Unix socket). `timeout` bounds
    /// control calls; stream reads and waits block until answered or the connection drops.
    pub fn new(
        stream: UnixStream,
        sandbox: &str,
        timeout: Duration,
        vm_gone: Arc<AtomicBool>,
    ) -> Result<Agent, AgentError> {
        let client =
            ttrpc::Client::new(stream.into_raw_fd()).map_err(|e| AgentError::Transport {
                sandbox: sandbox.to_string(),
                call: "connect",
                detail: e.to_string(),
            })?;
        Ok(Agent {
            client: AgentClient::new(client),
            sandbox: sandbox.to_string(),
            timeout,
            vm_gone,
        })
    }

    fn call<T>(
        &self,
        name: &'static str,
        timeout: Option<Duration>,
        f: Call<T>,
    ) -> Result<T, AgentError> {
        if self.vm_gone.load(Ordering::SeqCst) {
            return Err(AgentError::VmGone {
                sandbox: self.sandbox.clone(),
                call: name,
            });
        }
        let ctx = match timeout {
            Some(t) => ttrpc::context::with_duration(t),
            None => ttrpc::context::with_timeout(0),
        };
        f(&self.client, ctx).map_err(|e| match e {
            ttrpc::Error::RpcStatus(s) => AgentError::Rpc {
                sandbox: self.sandbox.clone(),
                call: name,
                code: s.code.value(),
                message: s.message.chars().take(4096).collect(),
            },
            _ if self.vm_gone.load(Ordering::SeqCst) => AgentError::VmGone {
                sandbox: self.sandbox.clone(),
                call: name,
            },
            other => AgentError::Transport {
                sandbox: self.sandbox.clone(),
                call: name,
                detail: other.to_string(),
            },
        })
    }

    fn ctl<T>(&self, name: &'static str, f: Call<T>) -> Result<T, AgentError> {
        self.call(name, Some(self.timeout), f)
    }

    fn json<T: serde::Serialize>(&self, call: &'static str, v: &T) -> Result<Vec<u8>, AgentError> {
        serde_json::to_vec(v).map_err(|e| AgentError::Encode {
            sandbox: self.sandbox.clone(),
            call,
            detail: e.to_string(),
        })
    }

    /// Health check with its own (short) timeout.
    pub fn check(&self, timeout: Duration) -> Result<pb::CheckResponse, AgentError> {
        self.call("Check", Some(timeout), &|c, ctx| {
            c.check(ctx, &pb::CheckRequest::new())
        })
    }

    pub fn create_sandbox(&self, req: &pb::CreateSandboxRequest) -> Result<(), AgentError> {
        self.ctl("CreateSandbox", &|c, ctx| c.create_sandbox(ctx, req))
            .map(drop)
    }

    pub fn destroy_sandbox(&self, timeout: Duration) -> Result<(), AgentError> {
        self.call("DestroySandbox", Some(timeout), &|c, ctx| {
            c.destroy_sandbox(ctx, &pb::DestroySandboxRequest::new())
        })
        .map(drop)
    }

    pub fn create_container(
        &self,
        cid: &str,
        spec: &oci_spec::runtime::Spec,
        stdin: bool,
        pod: &crate::pod::namespaces::Translated,
    ) -> Result<(), AgentError> {
        let req = pb::CreateContainerRequest {
            container_id: cid.to_string(),
            oci_spec: self.json("CreateContainer", spec)?,
            stdin,
            pod_sandbox: pod.pod_sandbox,
            builtin_pause: pod.builtin_pause,
            pod_namespaces: pod.pod_namespaces.iter().map(|n| (*n).into()).collect(),
            ..Default::default()
        };
        self.ctl("CreateContainer", &|c, ctx| c.create_container(ctx, &req))
            .map(drop)
    }

    pub fn start_container(&self, cid: &str) -> Result<u32, AgentError> {
        let req = pb::StartContainerRequest {
            container_id: cid.to_string(),
            ..Default::default()
        };
        self.ctl("StartContainer", &|c, ctx| c.start_container(ctx, &req))
            .map(|r| r.pid)
    }

    pub fn remove_container(&self, cid: &str, timeout_secs: u32) -> Result<(), AgentError> {
        let req = pb::RemoveContainerRequest {
            container_id: cid.to_string(),
            timeout_secs,
            ..Default::default()
        };
        self.ctl("RemoveContainer", &|c, ctx| c.remove_container(ctx, &req))
            .map(drop)
    }

    pub fn exec_process(
        &self,
        cid: &str,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
        stdin: bool,
    ) -> Result<u32, AgentError> {
        let req = pb::ExecProcessRequest {
            container_id: cid.to_string(),
            exec_id: exec_id.to_string(),
            process: self.json("ExecProcess", process)?,
            stdin,
            ..Default::default()
        };
        self.ctl("ExecProcess", &|c, ctx| c.exec_process(ctx, &req))
            .map(|r| r.pid)
    }

    pub fn signal_process(
        &self,
        cid: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        let req = pb::SignalProcessRequest {
            container_id: cid.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.ctl("SignalProcess", &|c, ctx| c.signal_process(ctx, &req))
            .map(drop)
    }

    /// Blocks until the process exits: (status, exited_at in Unix ns).
    pub fn wait_process(&self, cid: &str, exec_id: &str) -> Result<(i32, u64), AgentError> {
        let req = pb::WaitProcessRequest {
            container_id: cid.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call("WaitProcess", None, &|c, ctx| c.wait_process(ctx, &req))
            .map(|r| (r.status, r.exited_at_ns))
    }

    /// Makes the agent forget an exited exec.
    pub fn delete_process(&self, cid: &str, exec_id: &str) -> Result<(), AgentError> {
        let req = pb::DeleteProcessRequest {
            container_id: cid.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.ctl("DeleteProcess", &|c, ctx| c.delete_process(ctx, &req))
            .map(drop)
    }

    pub fn list_processes(&self, cid: &str) -> Result<Vec<u32>, AgentError> {
        let req = pb::ListProcessesRequest {
            container_id: cid.to_string(),
            ..Default::default()
        };
        self.ctl("ListProcesses", &|c, ctx| c.list_processes(ctx, &req))
            .map(|r| r.pids)
    }

    pub fn write_stdin(&self, cid: &str, exec_id: &str, data: &[u8]) -> Result<u32, AgentError> {
        let req = pb::WriteStreamRequest {
            container_id: cid.to_string(),
            exec_id: exec_id.to_string(),
            data: data.to_vec(),
            ..Default::default()
        };
        // No timeout: a process that does not read its stdin legitimately blocks the writer.
        self.call("WriteStdin", None, &|c, ctx| c.write_stdin(ctx, &req))
            .map(|r| r.len)
    }

    pub fn close_stdin(&self, cid: &str, exec_id: &str) -> Result<(), AgentError> {
        let req = pb::CloseStdinRequest {
            container_id: cid.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.ctl("CloseStdin", &|c, ctx| c.close_stdin(ctx, &req))
            .map(drop)
    }

    /// Blocks until output or end of stream; `Ok(None)` is end of stream.
    pub fn read_stream(
        &self,
        cid: &str,
        exec_id: &str,
        stderr: bool,
    ) -> Result<Option<Vec<u8>>, AgentError> {
        let req = pb::ReadStreamRequest {
            container_id: cid.to_string(),
            exec_id: exec_id.to_string(),
            len: READ_CHUNK,
            ..Default::default()
        };
        let r = if stderr {
            self.call("ReadStderr", None, &|c, ctx| c.read_stderr(ctx, &req))?
        } else {
            self.call("ReadStdout", None, &|c, ctx| c.read_stdout(ctx, &req))?
        };
        if r.eof && r.data.is_empty() {
            return Ok(None);
        }
        Ok(Some(r.data))
    }

    pub fn tty_win_resize(
        &self,
        cid: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentError> {
        let req = pb::TtyWinResizeRequest {
            container_id: cid.to_string(),
            exec_id: exec_id.to_string(),
            rows,
            cols,
            ..Default::default()
        };
        self.ctl("TtyWinResize", &|c, ctx| c.tty_win_resize(ctx, &req))
            .map(drop)
    }

    pub fn stats_container(&self, cid: &str) -> Result<pb::StatsContainerResponse, AgentError> {
        let req = pb::StatsContainerRequest {
            container_id: cid.to_string(),
            ..Default::default()
        };
        self.ctl("StatsContainer", &|c, ctx| c.stats_container(ctx, &req))
    }

    pub fn pause_container(&self, cid: &str) -> Result<(), AgentError> {
        let req = pb::ContainerRequest {
            container_id: cid.to_string(),
            ..Default::default()
        };
        self.ctl("PauseContainer", &|c, ctx| c.pause_container(ctx, &req))
            .map(drop)
    }

    pub fn resume_container(&self, cid: &str) -> Result<(), AgentError> {
        let req = pb::ContainerRequest {
            container_id: cid.to_string(),
            ..Default::default()
        };
        self.ctl("ResumeContainer", &|c, ctx| c.resume_container(ctx, &req))
            .map(drop)
    }

    pub fn update_container(
        &self,
        cid: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), AgentError> {
        let req = pb::UpdateContainerRequest {
            container_id: cid.to_string(),
            resources: self.json("UpdateContainer", resources)?,
            ..Default::default()
        };
        self.ctl("UpdateContainer", &|c, ctx| c.update_container(ctx, &req))
            .map(drop)
    }

    /// Blocks until a container in the sandbox hits OOM; returns its id.
    pub fn get_oom_event(&self) -> Result<String, AgentError> {
        self.call("GetOOMEvent", None, &|c, ctx| {
            c.get_oom_event(ctx, &pb::GetOOMEventRequest::new())
        })
        .map(|e| e.container_id)
    }
}
