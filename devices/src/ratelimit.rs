//! Rate-limited warnings for what a guest can trigger at will.
//!
//! A hostile (or broken) guest can make a device fail a request a million
//! times a second; one `warn!` per failure would flood the host's log and
//! cost the worker more than the request. [`warn_limited!`] logs at most
//! [`BURST`] messages per call site per [`WINDOW`], then says how many it
//! held back when the next window opens.
//!
//! Hand-written: `tracing` has no rate limiting of its own, and the crates
//! that add it are layers that limit every event globally (one noisy call
//! site would silence the others) or are not maintained.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Messages logged per call site per window.
pub const BURST: u64 = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One call site's budget: the window it is in and what was logged or held
/// back in it. Two atomics, no lock: a race at a window's edge can let a
/// message more through, never block a worker.
#[derive(Debug)]
pub struct RateLimit {
    window: AtomicU64,
    count: AtomicU64,
}

impl RateLimit {
    /// A budget that has logged nothing.
    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Whether to log a message at `now_ms` (milliseconds on any monotonic
    /// clock, plus one so that 0 means "never"): `Some(n)` with the number
    /// held back in the previous window, or `None` to stay silent.
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let window = now_ms / WINDOW.as_millis() as u64 + 1;
        let current = self.window.load(Ordering::Relaxed);
        if current != window
            && self
                .window
                .compare_exchange(current, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let before = self.count.swap(1, Ordering::Relaxed);
            return Some(before.saturating_sub(BURST));
        }
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        (n < BURST).then_some(0)
    }

    /// [`RateLimit::admit`] now.
    pub fn admit_now(&self) -> Option<u64> {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let epoch = EPOCH.get_or_init(Instant::now);
        self.admit(epoch.elapsed().as_millis() as u64)
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `tracing::warn!`, at most [`BURST`] times per [`WINDOW`] at this call
/// site; the first message of a window says how many were held back.
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if let Some(held) = LIMIT.admit_now() {
            if held > 0 {
                tracing::warn!(
                    "{} ({held} more like it held back in the last minute)",
                    format_args!($($arg)+)
                );
            } else {
                tracing::warn!($($arg)+);
            }
        }
    }};
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_held_back() {
        let l = RateLimit::new();
        let admitted = (0..100).filter(|_| l.admit(1_000).is_some()).count();
        assert_eq!(admitted as u64, BURST);
        let next = WINDOW.as_millis() as u64 + 1_000;
        assert_eq!(l.admit(next), Some(100 - BURST));
        assert_eq!(l.admit(next), Some(0));
    }

    #[test]
    fn a_quiet_window_reports_nothing_held_back() {
        let l = RateLimit::new();
        assert_eq!(l.admit(0), Some(0));
        assert_eq!(l.admit(10 * WINDOW.as_millis() as u64), Some(0));
    }
}
