//! "The guest is ready": its agent answers `Check` over the VMM's hybrid vsock socket, and
//! driving `vessel-vmm snapshot-create` from there: the host checks the agent, then writes
//! [`SNAPSHOT_NOW`] on the VMM's stdin. The VMM never speaks the agent's API itself.
//!
//! The connection of the `Check` that answered stays open while the snapshot is taken: the
//! VMM's vsock device keeps it (idle) in the snapshot, and in each restored VM the first host
//! client for the agent's port takes it over, so a restored pod's first call skips the agent's
//! per-connection set-up (`vmm/src/devices/virtio/vsock/parked.rs`).

use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::agent::CheckRequest;
use crate::agent_ttrpc::AgentClient;
use crate::vmm_launch::SNAPSHOT_NOW;
use crate::{hybrid_vsock, AGENT_VSOCK_PORT};

/// Bound on one Check call (the first one in a fresh guest is slow on KVM-PVM: seconds).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Why one `Check` attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("connecting to the agent")]
    Connect(#[source] hybrid_vsock::HybridVsockError),
    #[error("duplicating the agent socket")]
    Clone(#[source] std::io::Error),
    #[error("setting up the ttrpc client")]
    Client(#[source] ttrpc::Error),
    #[error("Check")]
    Check(#[source] ttrpc::Error),
}

/// Why the guest never became ready, or the snapshot was not made.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error("the agent behind {uds} did not answer Check within {waited:?}")]
    Timeout {
        uds: String,
        waited: Duration,
        #[source]
        last: CheckError,
    },
    #[error("the VMM exited ({status}) before the agent answered Check")]
    VmmExited { status: ExitStatus },
    #[error("watching the VMM process")]
    Wait(#[source] std::io::Error),
    #[error("telling the VMM to snapshot")]
    Tell(#[source] std::io::Error),
    #[error("vessel-vmm snapshot-create did not finish within {0:?} of being told")]
    SnapshotTimeout(Duration),
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReady {
    pub waited: Duration,
    pub guest_uptime_ms: u64,
    pub version: String,
}

/// The open connection of the `Check` that answered. Hold it until the snapshot is written;
/// dropping it closes the connection.
pub struct CheckConnection {
    _agent: AgentClient,
    own: UnixStream,
}

impl Drop for CheckConnection {
    fn drop(&mut self) {
        let _ = self.own.shutdown(std::net::Shutdown::Both);
        log::debug!("agent check socket fd {} shut down", self.own.as_raw_fd());
    }
}

/// One attempt: connect (retrying until `connect_by`), then one Check bounded by `deadline`.
fn check_once(
    uds: &Path,
    connect_by: Instant,
    deadline: Instant,
) -> Result<(AgentReady, CheckConnection), CheckError> {
    let started = Instant::now();
    let stream = hybrid_vsock::connect_with_retry(uds, AGENT_VSOCK_PORT, connect_by, RETRY_PAUSE)
        .map_err(CheckError::Connect)?;
    // Our own handle on the socket, to shut it down for sure when done (ttrpc closes its fd
    // only when its threads let go of it).
    let own: UnixStream = stream.try_clone().map_err(CheckError::Clone)?;
    let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(CheckError::Client)?;
    let agent = AgentClient::new(client);
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout = left.clamp(Duration::from_secs(1), CHECK_TIMEOUT);
    let result = agent.check(
        ttrpc::context::with_timeout(timeout.as_nanos() as i64),
        &CheckRequest::new(),
    );
    let conn = CheckConnection { _agent: agent, own };
    let r = result.map_err(CheckError::Check)?;
    let ready = AgentReady {
        waited: started.elapsed(),
        guest_uptime_ms: r.uptime_ms,
        version: r.version,
    };
    Ok((ready, conn))
}

/// Waits until the agent behind `uds` answers Check, retrying until `deadline` while
/// `vmm_alive` says the VMM still runs (`Err` ends the wait at once). Returns the answer and
/// its connection, still open.
pub fn wait_for_agent(
    uds: &Path,
    deadline: Instant,
    vmm_alive: &mut dyn FnMut() -> Result<(), ReadyError>,
) -> Result<(AgentReady, CheckConnection), ReadyError> {
    let started = Instant::now();
    loop {
        vmm_alive()?;
        // Short connect attempts, so a VMM that died is noticed within a second or two; the
        // Check itself may take seconds in a fresh guest on KVM-PVM.
        let connect_by = deadline.min(Instant::now() + Duration::from_secs(1));
        match check_once(uds, connect_by, deadline) {
            Ok((mut ready, conn)) => {
                ready.waited = started.elapsed();
                return Ok((ready, conn));
            }
            Err(e) if Instant::now() + RETRY_PAUSE < deadline => {
                log::debug!("agent not ready yet: {}", crate::errors::chain(&e));
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(last) => {
                return Err(ReadyError::Timeout {
                    uds: uds.display().to_string(),
                    waited: started.elapsed(),
                    last,
                })
            }
        }
    }
}

/// Drives a `vessel-vmm snapshot-create` child spawned with a piped stdin: waits until the
/// agent behind `uds` answers Check, tells the VMM to snapshot, and waits (until
/// `deadline` plus `write_grace` for writing the memory file) for it to exit, holding the
/// Check's connection open until then. Returns the agent's answer and the VMM's exit status;
/// on an error the child is left running for the caller to kill.
pub fn snapshot_when_ready(
    child: &mut Child,
    uds: &Path,
    deadline: Instant,
    write_grace: Duration,
) -> Result<(AgentReady, ExitStatus), ReadyError> {
    let mut alive = || match child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => Err(ReadyError::VmmExited { status }),
        Err(e) => Err(ReadyError::Wait(e)),
    };
    let (ready, connection) = wait_for_agent(uds, deadline, &mut alive)?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ReadyError::Tell(std::io::Error::other("stdin is not piped")))?;
    writeln!(stdin, "{SNAPSHOT_NOW}").map_err(ReadyError::Tell)?;
    drop(stdin);
    let until = deadline.max(Instant::now()) + write_grace;
    let status = loop {
        match child.try_wait().map_err(ReadyError::Wait)? {
            Some(status) => break status,
            None if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            None => return Err(ReadyError::SnapshotTimeout(write_grace)),
        }
    };
    drop(connection);
    Ok((ready, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_vmm_that_exits_before_its_agent_answers_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sh")
            .args(["-c", "exit 4"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let err = snapshot_when_ready(
            &mut child,
            &dir.path().join("no.sock"),
            started + Duration::from_secs(60),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            matches!(err, ReadyError::VmmExited { status } if status.code() == Some(4)),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn no_agent_by_the_deadline_is_a_timeout_naming_the_socket_and_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let err = wait_for_agent(
            &uds,
            Instant::now() + Duration::from_millis(600),
            &mut || Ok(()),
        )
        .err()
        .unwrap();
        let text = crate::errors::chain(&err);
        assert!(matches!(err, ReadyError::Timeout { .. }), "{text}");
        assert!(
            text.contains("v.sock") && text.contains("connecting to the agent"),
            "{text}"
        );
    }
}
