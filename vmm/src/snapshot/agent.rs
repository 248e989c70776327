//! "The guest is ready": its agent answers `Check` over the VMM's hybrid vsock socket. A
//! snapshot taken after this restores into a VM whose agent is listening.
//!
//! The connection of the `Check` that answered stays open while the snapshot is taken: the
//! vsock device keeps it (idle) in the snapshot, and in each restored VM the first host client
//! for the agent's port takes it over, so a restored pod's first call skips the agent's
//! per-connection set-up (`devices/virtio/vsock/parked.rs`).

use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vessel_protocol::agent::CheckRequest;
use vessel_protocol::agent_ttrpc::AgentClient;
use vessel_protocol::{hybrid_vsock, AGENT_VSOCK_PORT};

/// Bound on one Check call (the first one in a fresh guest is slow on KVM-PVM: seconds).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
const RETRY_PAUSE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
#[error("the agent behind {uds} did not answer Check within {waited:?} (last error: {last_error})")]
pub struct AgentWaitError {
    pub uds: String,
    pub waited: Duration,
    pub last_error: String,
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

fn check_once(uds: &Path, deadline: Instant) -> Result<(AgentReady, CheckConnection), String> {
    let started = Instant::now();
    let stream = hybrid_vsock::connect_with_retry(uds, AGENT_VSOCK_PORT, deadline, RETRY_PAUSE)
        .map_err(|e| e.to_string())?;
    // Our own handle on the socket, to shut it down for sure when done (ttrpc closes its fd
    // only when its threads let go of it); the snapshot waits for the connection to be gone.
    let own: UnixStream = stream.try_clone().map_err(|e| e.to_string())?;
    let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(|e| e.to_string())?;
    let agent = AgentClient::new(client);
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout = left.clamp(Duration::from_secs(1), CHECK_TIMEOUT);
    let result = agent.check(
        ttrpc::context::with_timeout(timeout.as_nanos() as i64),
        &CheckRequest::new(),
    );
    let conn = CheckConnection { _agent: agent, own };
    let r = result.map_err(|e| format!("Check: {e}"))?;
    let ready = AgentReady {
        waited: started.elapsed(),
        guest_uptime_ms: r.uptime_ms,
        version: r.version,
    };
    Ok((ready, conn))
}

/// Waits until the agent behind `uds` answers Check; returns the answer and its connection,
/// still open.
pub fn wait_for_agent(
    uds: &Path,
    timeout: Duration,
) -> Result<(AgentReady, CheckConnection), AgentWaitError> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        match check_once(uds, deadline) {
            Ok((mut ready, conn)) => {
                ready.waited = started.elapsed();
                return Ok((ready, conn));
            }
            Err(e) if Instant::now() + RETRY_PAUSE < deadline => {
                log::debug!("agent not ready yet: {e}");
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(last_error) => {
                return Err(AgentWaitError {
                    uds: uds.display().to_string(),
                    waited: started.elapsed(),
                    last_error,
                })
            }
        }
    }
}
