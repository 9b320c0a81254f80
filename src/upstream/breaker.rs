//! The circuit breaker of an upstream: closed → open → half-open → closed.
//!
//! - **Closed**: every try's outcome goes into a sliding window. When the window holds at
//!   least `min_requests` and the failed share reaches `failure_ratio`, the breaker opens.
//! - **Open**: requests are answered at once (503 with `Retry-After`, or the configured
//!   fallback) without touching the upstream, for `open_for`.
//! - **Half-open**: `half_open_probes` requests are let through; one failure opens the
//!   breaker again, all of them succeeding closes it (with an empty window).
//!
//! The state is a few atomics in the long-lived upstream state, so it survives reloads and
//! costs no lock per request. Settings come from the current config snapshot on every call.
//! Every change of state is logged.

use super::window::Window;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// The compiled `circuit_breaker` settings.
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub half_open_probes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

fn decode(s: u8) -> BreakerState {
    match s {
        OPEN => BreakerState::Open,
        HALF_OPEN => BreakerState::HalfOpen,
        _ => BreakerState::Closed,
    }
}

/// The long-lived state.
#[derive(Default)]
pub struct Breaker {
    state: AtomicU8,
    opened_at: AtomicU64,
    /// Probes handed out in the current half-open phase.
    probes: AtomicU32,
    /// Probes of the current half-open phase that succeeded.
    probe_ok: AtomicU32,
    window: Window,
}

/// What the breaker says about a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead.
    Pass,
    /// Half-open: go ahead as one of the probes.
    Probe,
    /// Open (or half-open with every probe out): answer at once.
    Reject { retry_after: Duration },
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        decode(self.state.load(Ordering::Acquire))
    }

    /// (requests, failures) in the current window.
    pub fn window_totals(&self, s: &BreakerSettings, now: u64) -> (u64, u64) {
        let (ok, failed) = self.window.totals(now, s.window);
        (ok + failed, failed)
    }

    /// How long until an open breaker lets probes through.
    pub fn open_remaining(&self, s: &BreakerSettings, now: u64) -> Duration {
        let until = self.opened_at.load(Ordering::Acquire) + s.open_for.as_millis() as u64;
        Duration::from_millis(until.saturating_sub(now))
    }

    pub fn admit(&self, s: &BreakerSettings, now: u64, upstream: &str) -> Admit {
        loop {
            match self.state.load(Ordering::Acquire) {
                CLOSED => return Admit::Pass,
                OPEN => {
                    let left = self.open_remaining(s, now);
                    if !left.is_zero() {
                        return Admit::Reject { retry_after: left };
                    }
                    // Reset the probe counters before publishing half-open, so no request
                    // sees half-open with the previous phase's counts.
                    self.probes.store(0, Ordering::Release);
                    self.probe_ok.store(0, Ordering::Release);
                    if self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        tracing::info!(
                            upstream,
                            probes = s.half_open_probes,
                            "circuit breaker half-open: letting probes through"
                        );
                    }
                }
                _ => {
                    let n = self.probes.fetch_add(1, Ordering::AcqRel);
                    if n < s.half_open_probes {
                        return Admit::Probe;
                    }
                    self.probes.fetch_sub(1, Ordering::AcqRel);
                    // Every probe is out; their outcome decides soon.
                    return Admit::Reject {
                        retry_after: Duration::from_secs(1),
                    };
                }
            }
        }
    }

    /// A probe that ended without an outcome (the client went away): its slot is free again.
    pub fn release_probe(&self) {
        if self.state.load(Ordering::Acquire) == HALF_OPEN {
            let _ = self
                .probes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
        }
    }

    /// Records the outcome of one try.
    pub fn record(&self, s: &BreakerSettings, now: u64, ok: bool, probe: bool, upstream: &str) {
        match self.state.load(Ordering::Acquire) {
            CLOSED => {
                self.window
                    .add(now, s.window, u64::from(ok), u64::from(!ok));
                if ok {
                    return;
                }
                let (total, failed) = self.window_totals(s, now);
                if total >= u64::from(s.min_requests.max(1))
                    && failed as f64 >= s.failure_ratio * total as f64
                {
                    self.trip(CLOSED, now, s, upstream, total, failed);
                }
            }
            HALF_OPEN if probe => {
                if !ok {
                    self.trip(HALF_OPEN, now, s, upstream, 0, 0);
                } else if self.probe_ok.fetch_add(1, Ordering::AcqRel) + 1 >= s.half_open_probes
                    && self
                        .state
                        .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.window.reset();
                    tracing::info!(upstream, "circuit breaker closed: the probes succeeded");
                }
            }
            // Outcomes of requests admitted before the breaker opened say nothing new.
            _ => {}
        }
    }

    fn trip(
        &self,
        from: u8,
        now: u64,
        s: &BreakerSettings,
        upstream: &str,
        total: u64,
        failed: u64,
    ) {
        self.opened_at.store(now, Ordering::Release);
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if from == CLOSED {
                tracing::warn!(
                    upstream,
                    requests = total,
                    failed,
                    open_for = ?s.open_for,
                    "circuit breaker opened"
                );
            } else {
                tracing::warn!(upstream, open_for = ?s.open_for, "circuit breaker re-opened: a probe failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failure_ratio: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    #[test]
    fn opens_on_ratio_with_minimum() {
        let (b, s) = (Breaker::default(), settings());
        // Three failures are below the minimum of four requests.
        for t in 0..3 {
            b.record(&s, 1_000 + t, false, false, "u");
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(&s, 1_010, "u"), Admit::Pass);
        b.record(&s, 1_020, false, false, "u");
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.admit(&s, 2_020, "u"),
            Admit::Reject {
                retry_after: Duration::from_millis(4_000)
            }
        );
    }

    #[test]
    fn below_ratio_stays_closed() {
        let (b, s) = (Breaker::default(), settings());
        for t in 0..30 {
            // One failure in three.
            b.record(&s, 1_000 + t, t % 3 != 2, false, "u");
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_probes_then_close_or_reopen() {
        let (b, s) = (Breaker::default(), settings());
        for t in 0..4 {
            b.record(&s, 1_000 + t, false, false, "u");
        }
        assert_eq!(b.state(), BreakerState::Open);
        // After open_for: two probes, the third request is refused.
        assert_eq!(b.admit(&s, 6_100, "u"), Admit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(&s, 6_100, "u"), Admit::Probe);
        assert!(matches!(b.admit(&s, 6_100, "u"), Admit::Reject { .. }));
        // A probe that failed opens again for a full period.
        b.record(&s, 6_200, false, true, "u");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.admit(&s, 11_000, "u"), Admit::Reject { .. }));
        // Next half-open: both probes succeed → closed, with a clean window.
        assert_eq!(b.admit(&s, 11_300, "u"), Admit::Probe);
        assert_eq!(b.admit(&s, 11_300, "u"), Admit::Probe);
        b.record(&s, 11_400, true, true, "u");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(&s, 11_400, true, true, "u");
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.window_totals(&s, 11_400), (0, 0));
        assert_eq!(b.admit(&s, 11_500, "u"), Admit::Pass);
    }

    #[test]
    fn abandoned_probe_frees_its_slot() {
        let (b, s) = (Breaker::default(), settings());
        for t in 0..4 {
            b.record(&s, t, false, false, "u");
        }
        assert_eq!(b.admit(&s, 6_000, "u"), Admit::Probe);
        assert_eq!(b.admit(&s, 6_000, "u"), Admit::Probe);
        b.release_probe();
        assert_eq!(b.admit(&s, 6_000, "u"), Admit::Probe);
    }
}
