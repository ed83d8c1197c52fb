//! Warnings that an attacker or a broken peer can trigger over and over
//! (refused connections, accept failures, bad input) are rate-limited: at
//! most one line per interval per call site, which says how many were
//! suppressed since the last one, so every event is still counted in the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since the first throttled event of the process, never 0.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// One call site's limiter; a `static` next to the warning it guards:
///
/// ```
/// use session_proxy_frontend::logs::Throttle;
/// static REFUSED: Throttle = Throttle::new(std::time::Duration::from_secs(1));
/// for _ in 0..1000 {
///     if let Some(suppressed) = REFUSED.allow() {
///         eprintln!("refused ({suppressed} more since the last line)");
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Throttle {
    every_ms: u64,
    /// When the last line was let through (0: never).
    last_ms: AtomicU64,
    /// Events since the last line let through.
    suppressed: AtomicU64,
}

impl Throttle {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every_ms: every.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Counts one event. `Some(n)` when it should be logged now, `n` being
    /// how many were suppressed since the last line; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(self.every_ms) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Another thread logs this interval's line.
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::AcqRel))
    }
}

/// `tracing::warn!` through a [`Throttle`]: at most one line per second per
/// call site, with a `suppressed` field.
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::logs::Throttle =
            $crate::logs::Throttle::new(std::time::Duration::from_secs(1));
        if let Some(suppressed) = THROTTLE.allow() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}
pub(crate) use warn_throttled;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.allow(), Some(0));
        for _ in 0..99 {
            assert_eq!(t.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.allow(), Some(99));
        assert_eq!(t.allow(), None);
    }
}
