//! Rate limiting for log lines a guest can trigger (it must not be able to flood our logs).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `burst` events per `window`; counts what it drops.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(LimiterState {
                window_start: None,
                in_window: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` if the caller may log now (`n` = lines dropped since the last allowed one).
    pub fn check(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let expired = s
            .window_start
            .is_none_or(|start| now.duration_since(start) >= self.window);
        if expired {
            s.window_start = Some(now);
            s.in_window = 0;
        }
        if s.in_window < self.burst {
            s.in_window += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

/// Logs at `level` through `limiter`, noting how many lines were dropped before.
#[macro_export]
macro_rules! log_limited {
    ($limiter:expr, $level:expr, $($arg:tt)+) => {
        if let Some(dropped) = $limiter.check() {
            if dropped > 0 {
                log::log!($level, "({dropped} similar messages suppressed)");
            }
            log::log!($level, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_drops_and_counts() {
        let l = LogLimiter::new(3, Duration::from_secs(3600));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        let s = l.state.lock().expect("lock");
        assert_eq!(s.suppressed, 2);
    }

    #[test]
    fn new_window_reports_dropped_count() {
        let l = LogLimiter::new(1, Duration::from_millis(1));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.check(), Some(1));
    }
}
