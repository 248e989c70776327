//! `cargo run -p vessel-protocol --example agent-check -- /path/vsock.sock [timeout_secs]`:
//! waits for the agent behind a VMM's hybrid vsock socket and prints its health answer.
use std::os::fd::IntoRawFd;
use std::time::{Duration, Instant};

use vessel_protocol::agent::CheckRequest;
use vessel_protocol::agent_ttrpc::AgentClient;
use vessel_protocol::{hybrid_vsock, AGENT_VSOCK_PORT};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: agent-check VSOCK_UDS [TIMEOUT_SECS]");
        std::process::exit(2);
    };
    let timeout = Duration::from_secs(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(600));
    let started = Instant::now();
    let stream = match hybrid_vsock::connect_with_retry(
        path.as_ref(),
        AGENT_VSOCK_PORT,
        started + timeout,
        Duration::from_millis(200),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("agent-check: {e}");
            std::process::exit(1);
        }
    };
    let connected = started.elapsed();
    // ttrpc takes ownership of the fd.
    let client = AgentClient::new(ttrpc::Client::new(stream.into_raw_fd()).expect("ttrpc client"));
    let repeat: usize = std::env::var("AGENT_CHECK_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for i in 0..repeat {
        let call = Instant::now();
        match client.check(
            ttrpc::context::with_timeout(30_000_000_000),
            &CheckRequest::new(),
        ) {
            Ok(r) => println!(
                "agent {} (version {}, guest uptime {} ms); vsock connected after {:.2?}, \
                 call {i} took {:.2?}, {:.2?} since start",
                r.status,
                r.version,
                r.uptime_ms,
                connected,
                call.elapsed(),
                started.elapsed()
            ),
            Err(e) => {
                eprintln!("agent-check: Check failed: {e}");
                std::process::exit(1);
            }
        }
    }
}
