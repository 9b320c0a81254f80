//! Sliding-window counters on atomics, and the millisecond clock they count in.
//!
//! Used wherever a decision needs "how many of the last N seconds' requests failed": the
//! circuit breaker, passive health by failure ratio, the retry budget. A window is a ring of
//! ten buckets; each bucket remembers which time slice (epoch) it holds and is reset by the
//! first writer of a new slice. A write is two atomic operations and no lock; concurrent
//! writers at a slice boundary can lose a count or two, which these decisions tolerate.
//!
//! The window length is passed on every call rather than stored, so a reload that changes
//! it keeps the object (and its owner's state) alive; buckets of the old length simply age
//! out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Milliseconds on the tokio clock since the first call in this process. Tests that pause
/// tokio time move it. What counts in them (windows of seconds, breaker and ejection times)
/// needs no fresh clock read: the thread's recent reading ([`crate::clock::recent_tokio`]),
/// which saved two reads a proxied request.
pub fn now_ms() -> u64 {
    static BASE: OnceLock<tokio::time::Instant> = OnceLock::new();
    let base = *BASE.get_or_init(tokio::time::Instant::now);
    crate::clock::recent_tokio()
        .saturating_duration_since(base)
        .as_millis() as u64
        // 0 means "never" in several atomics; start at 1.
        + 1
}

const BUCKETS: u64 = 10;

struct Bucket {
    epoch: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

/// Two counters (`a`, `b`: successes and failures, or requests and retries) over a sliding
/// window.
pub struct Window {
    buckets: [Bucket; BUCKETS as usize],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            buckets: std::array::from_fn(|_| Bucket {
                epoch: AtomicU64::new(u64::MAX),
                a: AtomicU64::new(0),
                b: AtomicU64::new(0),
            }),
        }
    }
}

fn slice_ms(window: Duration) -> u64 {
    (window.as_millis() as u64 / BUCKETS).max(1)
}

impl Window {
    /// Adds to the bucket of `now`.
    pub fn add(&self, now: u64, window: Duration, a: u64, b: u64) {
        let epoch = now / slice_ms(window);
        let bucket = &self.buckets[(epoch % BUCKETS) as usize];
        let seen = bucket.epoch.load(Ordering::Acquire);
        if seen != epoch
            && bucket
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.a.store(0, Ordering::Relaxed);
            bucket.b.store(0, Ordering::Relaxed);
        }
        if a > 0 {
            bucket.a.fetch_add(a, Ordering::Relaxed);
        }
        if b > 0 {
            bucket.b.fetch_add(b, Ordering::Relaxed);
        }
    }

    /// Sums of `a` and `b` over the window ending at `now`.
    pub fn totals(&self, now: u64, window: Duration) -> (u64, u64) {
        let current = now / slice_ms(window);
        let oldest = current.saturating_sub(BUCKETS - 1);
        let (mut a, mut b) = (0, 0);
        for bucket in &self.buckets {
            let e = bucket.epoch.load(Ordering::Acquire);
            if e != u64::MAX && e >= oldest && e <= current {
                a += bucket.a.load(Ordering::Relaxed);
                b += bucket.b.load(Ordering::Relaxed);
            }
        }
        (a, b)
    }

    pub fn reset(&self) {
        for bucket in &self.buckets {
            bucket.epoch.store(u64::MAX, Ordering::Release);
            bucket.a.store(0, Ordering::Relaxed);
            bucket.b.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slides() {
        let w = Window::default();
        let len = Duration::from_secs(10);
        w.add(1_000, len, 3, 1);
        w.add(5_500, len, 0, 2);
        assert_eq!(w.totals(5_500, len), (3, 3));
        // At 10.9s the slice of 1.0s is still inside the last ten; at 11s it is not.
        assert_eq!(w.totals(10_999, len), (3, 3));
        assert_eq!(w.totals(11_000, len), (0, 2));
        assert_eq!(w.totals(16_000, len), (0, 0));
        // A bucket reused for a later slice starts from zero.
        w.add(21_000, len, 1, 0);
        assert_eq!(w.totals(21_000, len), (1, 0));
        w.reset();
        assert_eq!(w.totals(21_000, len), (0, 0));
    }
}
