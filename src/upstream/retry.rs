//! Retry policy: which failures are retried, for which methods, how long to wait between
//! tries, and the budget that keeps retries from multiplying load on a struggling upstream.
//!
//! The loop itself lives in [`crate::backend::http`] (it needs the request); this module
//! holds the decisions so they can be tested without a network:
//!
//! - **Conditions**: connect errors (the request never left: safe for every method), resets
//!   (the connection died before a response), per-try timeouts, and chosen statuses.
//! - **Methods**: only idempotent ones unless the config lists others.
//! - **Backoff**: exponential from `backoff`, capped at `max_backoff`, with full jitter.
//! - **Budget**: over a sliding window, retries may add at most `ratio` of the requests,
//!   with `min_per_second` always allowed so that a quiet upstream can still retry.

use super::window::Window;
use crate::config::upstream::StatusPattern;
use http::Method;
use std::time::Duration;

/// Why a try failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connecting (TCP or TLS) failed: nothing was sent.
    Connect,
    /// The connection broke before a response arrived.
    Reset,
    /// No response within the per-try timeout.
    Timeout,
    /// A response arrived with this status.
    Status(u16),
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on_connect: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    pub statuses: Vec<StatusPattern>,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub methods: Vec<Method>,
    /// Largest request body kept for replay.
    pub buffer: u64,
    pub budget: BudgetSettings,
}

#[derive(Debug, Clone)]
pub struct BudgetSettings {
    pub ratio: f64,
    pub min_per_second: u32,
    pub window: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

pub const IDEMPOTENT: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::PUT,
    Method::DELETE,
];

impl RetryPolicy {
    /// Whether this failure of a request with this method may be tried again.
    pub fn retries(&self, failure: Failure, method: &Method) -> bool {
        let condition = match failure {
            Failure::Connect => self.on_connect,
            Failure::Reset => self.on_reset,
            Failure::Timeout => self.on_timeout,
            Failure::Status(s) => self.statuses.iter().any(|p| p.matches(s)),
        };
        // A connect error never sent anything, so any method is safe to send again.
        condition && (failure == Failure::Connect || self.methods.contains(method))
    }

    /// Whether a request with this method could be retried for some failure: decides if its
    /// body is worth keeping.
    pub fn may_retry(&self, method: &Method) -> bool {
        self.attempts > 0 && (self.on_connect || self.methods.contains(method))
    }

    /// The wait before retry number `n` (1-based): a random duration up to
    /// `backoff × 2^(n-1)`, capped at `max_backoff` ("full jitter").
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = self
            .backoff
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(20))
            .min(self.max_backoff);
        let ms = ceiling.as_millis() as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(fastrand::u64(0..=ms))
    }
}

/// The long-lived budget counters of an upstream: requests and retries in a window.
#[derive(Default)]
pub struct Budget {
    window: Window,
}

impl Budget {
    pub fn record_request(&self, s: &BudgetSettings, now: u64) {
        self.window.add(now, s.window, 1, 0);
    }

    /// Takes one retry from the budget, or says there is none left.
    pub fn try_retry(&self, s: &BudgetSettings, now: u64) -> bool {
        let (requests, retries) = self.window.totals(now, s.window);
        let floor = u64::from(s.min_per_second) * s.window.as_secs().max(1);
        let allowed = floor.max((s.ratio * requests as f64) as u64);
        if retries >= allowed {
            return false;
        }
        self.window.add(now, s.window, 0, 1);
        true
    }

    /// (requests, retries) in the current window.
    pub fn totals(&self, s: &BudgetSettings, now: u64) -> (u64, u64) {
        self.window.totals(now, s.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            on_connect: true,
            on_reset: true,
            on_timeout: false,
            statuses: vec![StatusPattern::Code(503)],
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            methods: IDEMPOTENT.to_vec(),
            buffer: 1024,
            budget: BudgetSettings::default(),
        }
    }

    #[test]
    fn conditions_and_methods() {
        let p = policy();
        assert!(p.retries(Failure::Reset, &Method::GET));
        assert!(p.retries(Failure::Status(503), &Method::PUT));
        assert!(!p.retries(Failure::Status(502), &Method::GET));
        assert!(!p.retries(Failure::Timeout, &Method::GET));
        // POST is not idempotent: only a connect error (nothing sent) is retried.
        assert!(!p.retries(Failure::Reset, &Method::POST));
        assert!(!p.retries(Failure::Status(503), &Method::POST));
        assert!(p.retries(Failure::Connect, &Method::POST));
        let mut opted = policy();
        opted.methods.push(Method::POST);
        assert!(opted.retries(Failure::Status(503), &Method::POST));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = policy();
        for _ in 0..200 {
            assert!(p.backoff(1) <= Duration::from_millis(10));
            assert!(p.backoff(2) <= Duration::from_millis(20));
            assert!(p.backoff(9) <= Duration::from_millis(50));
        }
        // Jitter: not always the same value.
        let set: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(3)).collect();
        assert!(set.len() > 5);
    }

    #[test]
    fn budget_limits_the_share_of_retries() {
        let s = BudgetSettings {
            ratio: 0.2,
            min_per_second: 1,
            window: Duration::from_secs(10),
        };
        let b = Budget::default();
        // Quiet upstream: the floor (1/s over 10s) allows ten retries.
        let granted = (0..20).filter(|_| b.try_retry(&s, 1_000)).count();
        assert_eq!(granted, 10);
        // Busy upstream: 1000 requests allow 200 retries in the window, not more.
        let b = Budget::default();
        for _ in 0..1000 {
            b.record_request(&s, 2_000);
        }
        let granted = (0..1000).filter(|_| b.try_retry(&s, 2_000)).count();
        assert_eq!(granted, 200);
        // The window slides: later, the old requests and retries no longer count.
        assert!(b.try_retry(&s, 30_000));
    }
}
