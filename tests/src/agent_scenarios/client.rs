//! Client-side helpers for the scenarios: request contexts, unique ids, status codes, and
//! [`Running`], a started container that is removed when dropped.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ttrpc::context::{self, Context as TtrpcContext};
use vessel_protocol::agent::*;
use vessel_protocol::agent_ttrpc::AgentClient;

use crate::bundle::ContainerSpec;

/// Client-side bound on any single request (the agent answers long polls before it), in ms.
static REQUEST_TIMEOUT_MS: AtomicU64 = AtomicU64::new(30_000);
/// Bound on how long a scenario waits for something that must happen, in ms.
static SCENARIO_TIMEOUT_MS: AtomicU64 = AtomicU64::new(120_000);

/// Raises both bounds by `factor`: inside a VM on an emulating host (KVM-PVM) one container
/// create takes tens of seconds, more when the machine is loaded. A bound, not a speed check.
pub fn scale_timeouts(factor: u64) {
    REQUEST_TIMEOUT_MS.store(30_000 * factor, Ordering::Relaxed);
    SCENARIO_TIMEOUT_MS.store(120_000 * factor, Ordering::Relaxed);
}

pub fn request_timeout() -> Duration {
    Duration::from_millis(REQUEST_TIMEOUT_MS.load(Ordering::Relaxed))
}

pub fn scenario_timeout() -> Duration {
    Duration::from_millis(SCENARIO_TIMEOUT_MS.load(Ordering::Relaxed))
}

pub fn ctx() -> TtrpcContext {
    context::with_duration(request_timeout())
}

static N: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static THREAD_TAG: u32 = N.fetch_add(1, Ordering::SeqCst);
}

/// The part of [`unique_id`] shared by every id made on this thread (each test runs on its
/// own thread), so a test can find what its containers left behind.
pub fn thread_marker() -> String {
    format!("-{}t{}-", std::process::id(), THREAD_TAG.with(|t| *t))
}

/// A unique container id for this test process and thread.
pub fn unique_id(name: &str) -> String {
    format!(
        "{name}{}{}",
        thread_marker(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The gRPC code of a failed call.
pub fn code_of(err: &ttrpc::Error) -> Option<ttrpc::Code> {
    match err {
        ttrpc::Error::RpcStatus(s) => Some(s.code()),
        _ => None,
    }
}

pub fn expect_code<T: std::fmt::Debug>(
    r: ttrpc::Result<T>,
    code: ttrpc::Code,
    what: &str,
) -> Result<String> {
    match r {
        Ok(v) => bail!("{what}: expected {code:?}, got success {v:?}"),
        Err(e) => {
            ensure!(
                code_of(&e) == Some(code),
                "{what}: expected {code:?}, got {e:?}"
            );
            Ok(format!("{e:?}"))
        }
    }
}

pub fn check(client: &AgentClient) -> Result<()> {
    let r = client.check(ctx(), &CheckRequest::new()).context("Check")?;
    ensure!(r.status == "SERVING", "Check status {:?}", r.status);
    ensure!(!r.version.is_empty(), "Check has no version");
    Ok(())
}

/// A container that is removed (killed, cgroup removed) when dropped.
pub struct Running<'a> {
    pub client: &'a AgentClient,
    pub id: String,
    pub pid: u32,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut req = RemoveContainerRequest::new();
        req.container_id = self.id.clone();
        req.timeout_secs = 10;
        if let Err(e) = self.client.remove_container(ctx(), &req) {
            if code_of(&e) != Some(ttrpc::Code::NOT_FOUND) {
                eprintln!("removing container {}: {e:?}", self.id);
            }
        }
    }
}

pub fn create(
    client: &AgentClient,
    id: &str,
    spec: &ContainerSpec,
    stdin: bool,
) -> ttrpc::Result<Empty> {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.to_string();
    req.oci_spec = spec.to_json();
    req.stdin = stdin;
    client.create_container(ctx(), &req)
}

/// Creates and starts a container.
pub fn run<'a>(
    client: &'a AgentClient,
    name: &str,
    spec: &ContainerSpec,
    stdin: bool,
) -> Result<Running<'a>> {
    let id = unique_id(name);
    create(client, &id, spec, stdin).with_context(|| format!("CreateContainer {id}"))?;
    let mut running = Running {
        client,
        id: id.clone(),
        pid: 0,
    };
    let mut req = StartContainerRequest::new();
    req.container_id = id.clone();
    running.pid = client
        .start_container(ctx(), &req)
        .with_context(|| format!("StartContainer {id}"))?
        .pid;
    Ok(running)
}

impl Running<'_> {
    /// Reads a stream to its end.
    pub fn read_all(&self, exec_id: &str, stderr: bool) -> Result<Vec<u8>> {
        let mut req = ReadStreamRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.to_string();
        req.len = 64 * 1024;
        let mut out = Vec::new();
        let start = Instant::now();
        loop {
            ensure!(
                start.elapsed() < scenario_timeout(),
                "stream of {}/{exec_id} did not end",
                self.id
            );
            let r = if stderr {
                self.client.read_stderr(ctx(), &req)
            } else {
                self.client.read_stdout(ctx(), &req)
            }
            .context("ReadStdout/ReadStderr")?;
            if r.eof {
                return Ok(out);
            }
            out.extend_from_slice(&r.data);
        }
    }

    pub fn wait(&self, exec_id: &str) -> Result<i32> {
        let mut req = WaitProcessRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.to_string();
        let start = Instant::now();
        loop {
            match self.client.wait_process(ctx(), &req) {
                Ok(r) => return Ok(r.status),
                Err(e)
                    if code_of(&e) == Some(ttrpc::Code::DEADLINE_EXCEEDED)
                        && start.elapsed() < scenario_timeout() =>
                {
                    continue
                }
                Err(e) => return Err(anyhow!("WaitProcess {}/{exec_id}: {e:?}", self.id)),
            }
        }
    }

    pub fn exec(
        &self,
        exec_id: &str,
        process: &ContainerSpec,
        stdin: bool,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let mut req = ExecProcessRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.to_string();
        req.process = process.process_json();
        req.stdin = stdin;
        self.client.exec_process(ctx(), &req)
    }

    pub fn signal(&self, exec_id: &str, signal: i32, all: bool) -> ttrpc::Result<Empty> {
        let mut req = SignalProcessRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.to_string();
        req.signal = signal as u32;
        req.all = all;
        self.client.signal_process(ctx(), &req)
    }

    pub fn write_stdin(&self, exec_id: &str, data: &[u8]) -> Result<()> {
        let mut req = WriteStreamRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.to_string();
        req.data = data.to_vec();
        let r = self.client.write_stdin(ctx(), &req).context("WriteStdin")?;
        ensure!(
            r.len as usize == data.len(),
            "WriteStdin wrote {} of {}",
            r.len,
            data.len()
        );
        Ok(())
    }

    pub fn close_stdin(&self, exec_id: &str) -> Result<()> {
        let mut req = CloseStdinRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = exec_id.to_string();
        self.client.close_stdin(ctx(), &req).context("CloseStdin")?;
        Ok(())
    }

    /// Stdout (to its end), then exit status.
    pub fn output(&self, exec_id: &str) -> Result<(String, String, i32)> {
        let out = self.read_all(exec_id, false)?;
        let err = self.read_all(exec_id, true)?;
        let status = self.wait(exec_id)?;
        Ok((
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
            status,
        ))
    }
}
