//! Counters of the vsock device, and a rate limit for the logs the guest can trigger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(crate) use crate::log_limit::LogLimiter;

/// Counters of one vsock device. Shared (`Arc`) so the VMM and tests can read them while the
/// device runs on the event loop.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// TX chains the guest handed us that were parsed into a packet.
    pub tx_packets: AtomicU64,
    /// RX chains we filled with a packet for the guest.
    pub rx_packets: AtomicU64,
    /// Payload bytes written to host streams.
    pub tx_bytes: AtomicU64,
    /// Payload bytes delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// TX chains that were unusable (direction, length, address, loop); returned with len 0.
    pub tx_malformed_chains: AtomicU64,
    /// RX chains that were unusable; returned with len 0.
    pub rx_malformed_chains: AtomicU64,
    /// Well-formed chains carrying a packet we cannot accept (type, CID, operation, state).
    pub malformed_packets: AtomicU64,
    /// Connections that reached the established state.
    pub conns_established: AtomicU64,
    /// Connections kept from a snapshot that a host client took over.
    pub conns_resumed: AtomicU64,
    /// Connections removed, for whatever reason.
    pub conns_closed: AtomicU64,
    /// Connections refused because [`super::MAX_CONNECTIONS`] was reached.
    pub conns_over_limit: AtomicU64,
    /// Host clients dropped because their `CONNECT <port>` line was invalid.
    pub connect_line_rejected: AtomicU64,
    /// Guest connection requests whose `<uds>_<port>` socket could not be connected.
    pub host_connect_failed: AtomicU64,
    /// RST packets sent to the guest.
    pub resets_to_guest: AtomicU64,
    /// RST packets received from the guest.
    pub resets_from_guest: AtomicU64,
    /// Connections reset because the guest sent more than the credit we gave it.
    pub credit_violations: AtomicU64,
    /// Connections or handshakes that hit a timeout.
    pub timeouts: AtomicU64,
    /// Times we had something for the guest but it had posted no RX buffer.
    pub rx_queue_empty: AtomicU64,
    /// Failures of host-side I/O on connection streams (other than EAGAIN/EPIPE-like closes).
    pub host_io_errors: AtomicU64,
    /// Failures to add to a used ring, signal an interrupt or (de)register an fd.
    pub internal_errors: AtomicU64,
}

impl VsockMetrics {
    /// The counters by name, for the VMM's metrics file.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("tx_packets", g(&self.tx_packets)),
            ("rx_packets", g(&self.rx_packets)),
            ("tx_bytes", g(&self.tx_bytes)),
            ("rx_bytes", g(&self.rx_bytes)),
            ("conns_established", g(&self.conns_established)),
            ("conns_closed", g(&self.conns_closed)),
            ("conns_over_limit", g(&self.conns_over_limit)),
            ("resets_to_guest", g(&self.resets_to_guest)),
            ("resets_from_guest", g(&self.resets_from_guest)),
            (
                "malformed",
                g(&self.tx_malformed_chains)
                    + g(&self.rx_malformed_chains)
                    + g(&self.malformed_packets),
            ),
            ("rx_queue_empty", g(&self.rx_queue_empty)),
            ("timeouts", g(&self.timeouts)),
            ("host_io_errors", g(&self.host_io_errors)),
            ("internal_errors", g(&self.internal_errors)),
        ]
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter (convenience for callers that do not care about ordering).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The vsock device's limit on the warnings a guest can trigger (one per device and muxer).
pub(crate) fn log_limiter() -> LogLimiter {
    LogLimiter::new(10, Duration::from_secs(5))
}

/// `warn!` through a [`LogLimiter`].
macro_rules! limited_warn {
    ($limiter:expr, $($arg:tt)+) => {
        $crate::log_limited!($limiter, log::Level::Warn, $($arg)+)
    };
}
pub(crate) use limited_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_limiter_caps_a_burst() {
        let l = log_limiter();
        let allowed = (0..30).filter(|_| l.check().is_some()).count();
        assert_eq!(allowed, 10);
    }
}
