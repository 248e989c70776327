//! Connections kept across a snapshot ("parked").
//!
//! `snapshot-create` asks the agent `Check` over a hybrid-vsock connection and leaves that
//! connection open while the snapshot is taken. The connection's host-side state (ports and
//! credit counters) goes into the snapshot; the guest's side of it (the agent's accepted
//! socket, its ttrpc threads waiting for the next request) is in guest memory anyway. In a VM
//! restored from it, the first host client whose `CONNECT` line names the same guest port
//! takes that connection over: it gets `OK <port>\n` at once and talks to an agent that has
//! nothing to set up. On KVM-PVM hosts a new connection's first call costs 0.6-0.9 s of
//! emulated guest kernel work (accept, socket and thread creation); this is how a restored pod
//! skips it.
//!
//! Only an idle connection can be parked (nothing buffered either way, no control packet
//! owed, neither side shut down), so the saved counters describe the stream exactly. A
//! parked connection that the guest touches before a host client takes it over (anything but
//! a credit update) is reset: it goes away as any guest-closed connection would.

use serde::{Deserialize, Serialize};

use super::LOCAL_PORT_BASE;

/// Most connections one snapshot keeps (the VMM parks one; the bound is for the manifest,
/// which is read back from a file).
pub const MAX_PARKED: usize = 4;

/// What a restored device needs to continue an idle connection: its ports and the credit
/// counters of both directions (virtio spec 5.10.6.3), as the connection had them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkedConnection {
    /// The host-side port (allocated by the device for the host client's `CONNECT`).
    pub local_port: u32,
    /// The guest's port (the agent's listener).
    pub peer_port: u32,
    /// Guest bytes received and forwarded to the host stream (equal: nothing is buffered).
    pub fwd_cnt: u32,
    /// The `fwd_cnt` the guest was last told.
    pub last_fwd_cnt_to_peer: u32,
    /// The guest's receive buffer and consumed count, as its last packet said.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Host bytes sent to the guest.
    pub rx_cnt: u32,
}

/// Checks a manifest's parked connections (they come from a file): a bounded count, host
/// ports from the device's allocation range, no key twice.
pub(crate) fn validate(parked: &[ParkedConnection]) -> Result<(), String> {
    if parked.len() > MAX_PARKED {
        return Err(format!(
            "{} parked vsock connections, at most {MAX_PARKED}",
            parked.len()
        ));
    }
    for (i, p) in parked.iter().enumerate() {
        if !(LOCAL_PORT_BASE..1 << 31).contains(&p.local_port) {
            return Err(format!(
                "parked vsock connection with host port {} outside [2^30, 2^31)",
                p.local_port
            ));
        }
        if parked[..i].iter().any(|q| q.local_port == p.local_port) {
            return Err(format!(
                "host port {} parked twice in the vsock state",
                p.local_port
            ));
        }
    }
    Ok(())
}
