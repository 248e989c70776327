//! Counters of the vsock device, and a rate limit for the logs the guest can trigger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// Lets through at most `burst` log lines per `window`; the guest can trigger these.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) const fn new(window: Duration, burst: u32) -> Self {
        Self {
            window,
            burst,
            window_start: None,
            emitted: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now. When a new window opens after suppressing lines, the
    /// returned count says how many were dropped.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        let expired = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= self.window);
        if expired {
            self.window_start = Some(now);
            self.emitted = 0;
        }
        if self.emitted < self.burst {
            self.emitted += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), 10)
    }
}

/// `warn!` through a [`LogLimiter`].
macro_rules! limited_warn {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(dropped) = $limiter.allow() {
            if dropped > 0 {
                log::warn!("vsock: {} similar messages suppressed", dropped);
            }
            log::warn!($($arg)+);
        }
    };
}
pub(crate) use limited_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_a_burst() {
        let mut l = LogLimiter::new(Duration::from_secs(3600), 3);
        let allowed = (0..10).filter(|_| l.allow().is_some()).count();
        assert_eq!(allowed, 3);
        assert_eq!(l.suppressed, 7);
    }
}
