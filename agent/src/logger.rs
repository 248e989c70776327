//! A small stderr logger for the `log` crate. In the guest stderr is the serial console,
//! where every byte costs a VM exit: the default level is warn, and lines are rate-limited
//! (a request cannot flood the console). Each line carries the time since the guest booted
//! (`CLOCK_MONOTONIC`, as `/proc/uptime` and the kernel's own lines), so agent steps line up
//! with what a container measures in the guest.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use log::{LevelFilter, Log, Metadata, Record};

/// Lines allowed per second before dropping.
const LINES_PER_SECOND: u64 = 50;

struct StderrLogger {
    window: Mutex<(u64, u64)>, // (second, lines in that second)
    dropped: AtomicU64,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let elapsed = since_boot();
        let second = elapsed.as_secs();
        {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            if w.0 != second {
                let dropped = self.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    let _ = writeln!(
                        std::io::stderr(),
                        "vessel-agent: {dropped} log lines dropped"
                    );
                }
                *w = (second, 0);
            }
            w.1 += 1;
            if w.1 > LINES_PER_SECOND {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let _ = writeln!(
            std::io::stderr(),
            "[{:>5}.{:03} {:5} {}] {}",
            second,
            elapsed.subsec_millis(),
            record.level(),
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger at `level`.
pub fn init(level: LevelFilter) {
    let logger = Box::leak(Box::new(StderrLogger {
        window: Mutex::new((0, 0)),
        dropped: AtomicU64::new(0),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// `CLOCK_MONOTONIC`: the time since boot (a restored VM continues its snapshot's clock).
fn since_boot() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(Duration::ZERO, Duration::from)
}

/// Parses "error", "warn", "info", "debug", "trace", "off".
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    s.parse().ok()
}
