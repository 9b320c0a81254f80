//! The three rate-limit algorithms as pure functions over one key's counter cell.
//!
//! The memory store runs them under its shard lock; the Redis Lua script in
//! [`super::redis`] is a line-by-line port of the same arithmetic (in microseconds, with Redis'
//! own clock), so both backends admit the same requests. Keeping the math free of locks,
//! clocks and I/O is what lets the unit tests below walk window edges to the nanosecond.
//!
//! Time is nanoseconds since the Unix epoch, so fixed windows of `1d` end at midnight UTC on
//! every node.

use super::{Algorithm, Decision, LimitSpec};
use std::time::Duration;

/// One key's counter state. 24 bytes, so a million keys stay small (see the memory figure
/// in the README).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cell {
    /// Token bucket: the theoretical arrival time (ns). Windows: the window index.
    pub a: u64,
    /// Windows: requests counted in window `a`.
    pub count: u32,
    /// Sliding window: requests counted in window `a - 1`.
    pub prev: u32,
    /// When the cell is worth nothing any more (ns); the sweeper drops it after that.
    pub expires: u64,
}

/// What an admitted request changed, so that it can be taken back when another limit of the
/// same request says no (a rejected request counts against none of its limits).
#[derive(Debug, Clone, Copy)]
pub enum Undo {
    /// Token bucket: move the arrival time back by this much.
    Tat(u64),
    /// Windows: one request less in this window.
    Count(u64),
}

/// Checks one request against `spec` at `now` and, if admitted, counts it in `cell`.
pub fn apply(spec: &LimitSpec, cell: &mut Cell, now: u64) -> (Decision, Option<Undo>) {
    match spec.algorithm {
        Algorithm::TokenBucket => gcra(spec, cell, now),
        Algorithm::FixedWindow => fixed(spec, cell, now),
        Algorithm::SlidingWindow => sliding(spec, cell, now),
    }
}

/// Takes back what [`apply`] counted.
pub fn undo(cell: &mut Cell, undo: Undo) {
    match undo {
        Undo::Tat(t) => cell.a = cell.a.saturating_sub(t),
        Undo::Count(w) => {
            if cell.a == w {
                cell.count = cell.count.saturating_sub(1);
            }
        }
    }
}

fn ns(d: u64) -> Duration {
    Duration::from_nanos(d)
}

fn period_ns(spec: &LimitSpec) -> u64 {
    (spec.period.as_nanos().min(u64::MAX as u128) as u64).max(1)
}

/// Token bucket as GCRA: one timestamp per key. Each request pushes the theoretical arrival
/// time `tat` forward by the emission interval `T = period / requests`; a request is admitted
/// while `tat` stays within `burst × T` of now, so a full bucket holds `burst` requests and
/// refills one every `T`.
fn gcra(spec: &LimitSpec, cell: &mut Cell, now: u64) -> (Decision, Option<Undo>) {
    let t = (period_ns(spec) / spec.requests.max(1)).max(1);
    let tau = t.saturating_mul(spec.burst.max(1));
    let tat = cell.a.max(now);
    let new_tat = tat.saturating_add(t);
    let limit = spec.burst.max(1);
    if new_tat > now.saturating_add(tau) {
        return (
            Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset: ns(tat - now),
                retry_after: ns(new_tat - tau - now),
            },
            None,
        );
    }
    cell.a = new_tat;
    cell.expires = new_tat;
    (
        Decision {
            allowed: true,
            limit,
            remaining: (now + tau - new_tat) / t,
            reset: ns(new_tat - now),
            retry_after: Duration::ZERO,
        },
        Some(Undo::Tat(t)),
    )
}

/// Fixed window: a counter per aligned window (`now / period`); it starts again at zero on
/// every boundary.
fn fixed(spec: &LimitSpec, cell: &mut Cell, now: u64) -> (Decision, Option<Undo>) {
    let p = period_ns(spec);
    let w = now / p;
    let end = (w + 1).saturating_mul(p);
    if cell.a != w {
        *cell = Cell {
            a: w,
            count: 0,
            prev: 0,
            expires: end,
        };
    }
    let count = u64::from(cell.count);
    if count >= spec.requests {
        let left = ns(end - now);
        return (
            Decision {
                allowed: false,
                limit: spec.requests,
                remaining: 0,
                reset: left,
                retry_after: left,
            },
            None,
        );
    }
    cell.count += 1;
    cell.expires = end;
    (
        Decision {
            allowed: true,
            limit: spec.requests,
            remaining: spec.requests - count - 1,
            reset: ns(end - now),
            retry_after: Duration::ZERO,
        },
        Some(Undo::Count(w)),
    )
}

/// Sliding window (the two-window counter): the previous window's count weighted by how much
/// of it still overlaps the sliding window, plus the current window's count. Smooths the
/// double burst a fixed window allows at its boundary, with two counters per key instead of a
/// log of timestamps.
fn sliding(spec: &LimitSpec, cell: &mut Cell, now: u64) -> (Decision, Option<Undo>) {
    let p = period_ns(spec);
    let w = now / p;
    let elapsed = now - w * p;
    let (curr, prev) = if cell.a == w {
        (u64::from(cell.count), u64::from(cell.prev))
    } else if cell.a + 1 == w {
        (0, u64::from(cell.count))
    } else {
        (0, 0)
    };
    let until_boundary = p - elapsed;
    let weight = until_boundary as f64 / p as f64;
    let estimate = prev as f64 * weight + curr as f64;
    let limit = spec.requests;
    if estimate + 1.0 > limit as f64 {
        // How long until the estimate has room for one more request.
        let wait = if curr < limit && prev > 0 {
            // Within this window, as the previous window's weight fades.
            let room = (limit - 1 - curr) as f64;
            let t = p as f64 * (1.0 - room / prev as f64) - elapsed as f64;
            t.max(0.0).ceil() as u64
        } else {
            // Only once this window has become the previous one and faded enough.
            let t_next = if curr == 0 {
                0.0
            } else {
                p as f64 * (1.0 - (limit as f64 - 1.0) / curr as f64)
            };
            until_boundary + t_next.max(0.0).ceil() as u64
        };
        return (
            Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset: ns(until_boundary),
                retry_after: ns(wait.max(1)),
            },
            None,
        );
    }
    *cell = Cell {
        a: w,
        count: (curr + 1) as u32,
        prev: prev as u32,
        expires: (w + 2).saturating_mul(p),
    };
    (
        Decision {
            allowed: true,
            limit,
            remaining: (limit as f64 - estimate - 1.0).floor().max(0.0) as u64,
            reset: ns(until_boundary),
            retry_after: Duration::ZERO,
        },
        Some(Undo::Count(w)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S; // on a whole second, so windows of 1s/10s start here

    fn spec(algorithm: Algorithm, requests: u64, period: Duration, burst: u64) -> LimitSpec {
        LimitSpec {
            algorithm,
            requests,
            period,
            burst,
        }
    }

    /// Runs `n` requests at `now`; returns how many were admitted.
    fn admit(spec: &LimitSpec, cell: &mut Cell, now: u64, n: usize) -> usize {
        (0..n).filter(|_| apply(spec, cell, now).0.allowed).count()
    }

    #[test]
    fn token_bucket_burst_then_refill() {
        // 10 per second, bucket of 20.
        let s = spec(Algorithm::TokenBucket, 10, Duration::from_secs(1), 20);
        let mut c = Cell::default();
        let first = apply(&s, &mut c, T0).0;
        assert!(first.allowed);
        assert_eq!(first.limit, 20);
        assert_eq!(first.remaining, 19);
        assert_eq!(admit(&s, &mut c, T0, 30), 19, "a full bucket holds `burst`");
        let no = apply(&s, &mut c, T0).0;
        assert!(!no.allowed);
        assert_eq!(
            no.retry_after,
            Duration::from_millis(100),
            "one token per 100ms"
        );
        assert_eq!(
            no.reset,
            Duration::from_secs(2),
            "empty → full takes burst × T"
        );
        // One nanosecond before the next token: still no. On it: yes, exactly one.
        assert!(!apply(&s, &mut c, T0 + 100_000_000 - 1).0.allowed);
        assert_eq!(admit(&s, &mut c, T0 + 100_000_000, 5), 1);
        // After 1s, 10 more tokens.
        assert_eq!(admit(&s, &mut c, T0 + 1_100_000_000, 50), 10);
        // After a long idle time the bucket is full again, never fuller.
        assert_eq!(admit(&s, &mut c, T0 + 100 * S, 50), 20);
    }

    #[test]
    fn token_bucket_without_burst_is_smooth() {
        // burst 1: one request per T, no bunching at all.
        let s = spec(Algorithm::TokenBucket, 5, Duration::from_secs(1), 1);
        let mut c = Cell::default();
        assert_eq!(admit(&s, &mut c, T0, 5), 1);
        assert!(!apply(&s, &mut c, T0 + 199_999_999).0.allowed);
        assert!(apply(&s, &mut c, T0 + 200_000_000).0.allowed);
        assert_eq!(c.expires, T0 + 400_000_000, "idle once the bucket is full");
    }

    #[test]
    fn fixed_window_boundaries() {
        let s = spec(Algorithm::FixedWindow, 3, Duration::from_secs(10), 3);
        let mut c = Cell::default();
        let d = apply(&s, &mut c, T0 + 4 * S).0;
        assert_eq!((d.allowed, d.remaining), (true, 2));
        assert_eq!(d.reset, Duration::from_secs(6), "the window ends at T0+10s");
        assert_eq!(admit(&s, &mut c, T0 + 5 * S, 5), 2);
        let no = apply(&s, &mut c, T0 + 10 * S - 1).0;
        assert!(!no.allowed, "last nanosecond of the window");
        assert_eq!(no.retry_after, Duration::from_nanos(1));
        // The boundary: a fresh window, full quota — the double burst fixed windows allow.
        assert_eq!(admit(&s, &mut c, T0 + 10 * S, 5), 3);
        assert_eq!(c.expires, T0 + 20 * S);
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let s = spec(Algorithm::SlidingWindow, 10, Duration::from_secs(10), 10);
        let mut c = Cell::default();
        assert_eq!(admit(&s, &mut c, T0 + 9 * S, 20), 10);
        // At the boundary the previous window still counts fully: nothing.
        let no = apply(&s, &mut c, T0 + 10 * S).0;
        assert!(!no.allowed);
        // 10 × (1 - e/10) + 0 + 1 <= 10  ⇔  e >= 1s.
        assert_eq!(no.retry_after, Duration::from_secs(1));
        assert!(!apply(&s, &mut c, T0 + 11 * S - 1).0.allowed);
        assert_eq!(admit(&s, &mut c, T0 + 11 * S, 5), 1);
        // Half-way: 10 × 0.5 + 1 = 6 so far, room for 4 more.
        assert_eq!(admit(&s, &mut c, T0 + 15 * S, 10), 4);
        // Two windows later nothing of it is left.
        assert_eq!(admit(&s, &mut c, T0 + 30 * S, 20), 10);
        assert_eq!(c.expires, T0 + 50 * S);
    }

    #[test]
    fn sliding_window_retry_after_when_the_current_window_is_full() {
        let s = spec(Algorithm::SlidingWindow, 4, Duration::from_secs(10), 4);
        let mut c = Cell::default();
        assert_eq!(admit(&s, &mut c, T0 + 2 * S, 10), 4);
        let no = apply(&s, &mut c, T0 + 2 * S).0;
        // Next window: 4 × (1 - t/10) + 1 <= 4 ⇔ t >= 2.5s; 8s to the boundary first.
        assert_eq!(no.retry_after, Duration::from_millis(10_500));
        assert!(!apply(&s, &mut c, T0 + 12 * S + 499_999_999).0.allowed);
        assert!(apply(&s, &mut c, T0 + 12 * S + 500_000_000).0.allowed);
    }

    #[test]
    fn undo_takes_back_exactly_one() {
        for algorithm in [
            Algorithm::TokenBucket,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
        ] {
            let s = spec(algorithm, 2, Duration::from_secs(1), 2);
            let mut c = Cell::default();
            assert!(apply(&s, &mut c, T0).0.allowed);
            let (d, u) = apply(&s, &mut c, T0);
            assert!(d.allowed);
            undo(&mut c, u.unwrap());
            assert!(apply(&s, &mut c, T0).0.allowed, "{algorithm:?}");
            assert!(!apply(&s, &mut c, T0).0.allowed, "{algorithm:?}");
        }
    }
}
