//! virtio-vsock with Firecracker's hybrid Unix-socket backend.
//!
//! The guest sees a virtio-vsock device (ID 19) with one CID. On the host side there is no
//! AF_VSOCK at all: every guest stream is spliced to an AF_UNIX stream.
//!
//! * host → guest: a host process connects to `uds_path`, writes `CONNECT <port>\n`, and once the
//!   guest listener on `<port>` accepted, reads back `OK <host_port>\n`; then the socket is a byte
//!   pipe to the guest.
//! * guest → host: a guest connection to host port `P` is forwarded to the Unix socket
//!   `<uds_path>_<P>`, which some host process must be listening on.
//!
//! Layout: [`packet`] parses/builds headers over descriptor chains, [`connection`] is the
//! per-stream state machine with credit flow control, [`muxer`] owns the Unix sockets and routes
//! packets, [`parked`] keeps an idle connection across a snapshot, [`device`] drives the
//! virtqueues, [`event_handler`] plugs it all into the event loop.

mod connection;
mod device;
mod error;
mod event_handler;
mod handshake;
mod metrics;
mod muxer;
mod packet;
mod parked;
mod uds;

#[cfg(test)]
mod tests;

pub use device::{Vsock, VIRTIO_ID_VSOCK};
pub use error::VsockError;
pub use metrics::VsockMetrics;
pub use parked::{ParkedConnection, MAX_PARKED};

/// Queue indices, as defined by the virtio spec for vsock.
pub const RXQ_INDEX: usize = 0;
pub const TXQ_INDEX: usize = 1;
pub const EVQ_INDEX: usize = 2;
/// Number of virtqueues of the device.
pub const NUM_QUEUES: usize = 3;
/// Largest queue size the device accepts.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Most connections (established, connecting, or waiting for their `CONNECT` line) at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// The receive buffer we advertise to the guest for each connection (bytes the guest may send
/// before we acknowledge them), which also bounds what we buffer when the host end is slow.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Host-initiated connections get local ports in `[2^30, 2^31)` (as in Firecracker).
pub(crate) const LOCAL_PORT_BASE: u32 = 1 << 30;
