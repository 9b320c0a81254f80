//! Target health: active probes on a timer, passive outlier detection from real traffic.
//!
//! A target is *available* when its active checks say healthy and no passive ejection is
//! running. Both live in the target's long-lived [`TargetState`], so a reload does not
//! forget that a target is down.
//!
//! - **Active**: every `interval`, `GET path` to each target with `timeout`. `unhealthy`
//!   failures in a row mark it unhealthy, `healthy` passes in a row mark it healthy again. A
//!   passing probe also ends a passive ejection early (as Envoy does). Targets start healthy,
//!   so a reload or a newly discovered target does not black-hole traffic before its first
//!   probe; the first round runs at once.
//! - **Passive**: failures of real requests (connect errors, resets, timeouts, chosen
//!   statuses) eject a target for `eject_for` after `consecutive_failures` in a row, or when
//!   `failure_ratio` of at least `min_requests` in `window` failed. After the period it is
//!   re-admitted with clean counters.
//!
//! The probe loop is one task per upstream, started by [`super::Pools::activate`]; it reads
//! the current config from the live upstream on every round and ends when the upstream or
//! its `health.active` goes away.

use super::state::{TargetState, UpstreamState};
use super::window::Window;
use super::Upstream;
use crate::config::upstream::StatusPattern;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The compiled `health` settings.
#[derive(Debug, Clone, Default)]
pub struct HealthSettings {
    pub active: Option<ActiveSettings>,
    pub passive: Option<PassiveSettings>,
    pub fallback_to_all: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
    /// Empty = 200-399.
    pub expect: Vec<StatusPattern>,
}

impl ActiveSettings {
    pub fn passes(&self, status: u16) -> bool {
        if self.expect.is_empty() {
            (200..400).contains(&status)
        } else {
            self.expect.iter().any(|p| p.matches(status))
        }
    }
}

#[derive(Debug, Clone)]
pub struct PassiveSettings {
    pub consecutive_failures: Option<u32>,
    pub failure_ratio: Option<f64>,
    pub min_requests: u32,
    pub window: Duration,
    pub eject_for: Duration,
}

/// The health part of a target's long-lived state. The two fields every pick reads come
/// first (see [`TargetState`]'s layout).
#[repr(C)]
pub struct Health {
    /// ms on [`super::window::now_ms`]'s clock; 0 = not ejected.
    ejected_until: AtomicU64,
    active_ok: AtomicBool,
    active_passes: AtomicU32,
    active_fails: AtomicU32,
    ejections: AtomicU64,
    consecutive_failures: AtomicU32,
    window: Window,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            active_ok: AtomicBool::new(true),
            active_passes: AtomicU32::new(0),
            active_fails: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            window: Window::default(),
        }
    }
}

/// What a passive record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passive {
    Nothing,
    Ejected,
}

impl Health {
    pub fn available(&self, now: u64) -> bool {
        self.active_ok.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    pub fn active_ok(&self) -> bool {
        self.active_ok.load(Ordering::Relaxed)
    }

    /// Remaining ejection at `now`, if ejected.
    pub fn ejected_for(&self, now: u64) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now).then(|| Duration::from_millis(until - now))
    }

    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Records a real request's outcome for passive detection.
    pub fn record(&self, s: &PassiveSettings, now: u64, ok: bool) -> Passive {
        self.window
            .add(now, s.window, u64::from(ok), u64::from(!ok));
        if ok {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return Passive::Nothing;
        }
        if self.ejected_until.load(Ordering::Relaxed) > now {
            // Already out (a request that was in flight when it was ejected).
            return Passive::Nothing;
        }
        let in_a_row = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let by_count = s.consecutive_failures.is_some_and(|n| in_a_row >= n);
        let by_ratio = s.failure_ratio.is_some_and(|r| {
            let (good, bad) = self.window.totals(now, s.window);
            let total = good + bad;
            total >= u64::from(s.min_requests.max(1)) && bad as f64 >= r * total as f64
        });
        if !(by_count || by_ratio) {
            return Passive::Nothing;
        }
        let until = now + s.eject_for.as_millis() as u64;
        let before = self.ejected_until.swap(until, Ordering::AcqRel);
        if before > now {
            return Passive::Nothing;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.window.reset();
        self.ejections.fetch_add(1, Ordering::Relaxed);
        Passive::Ejected
    }

    /// Forgets the verdict of active checks (they were switched off): the target counts as
    /// healthy again.
    pub fn reset_active(&self) {
        self.active_ok.store(true, Ordering::Relaxed);
        self.active_passes.store(0, Ordering::Relaxed);
        self.active_fails.store(0, Ordering::Relaxed);
    }

    /// Records an active probe; returns the new verdict when it changed.
    pub fn probe_result(&self, s: &ActiveSettings, pass: bool) -> Option<bool> {
        if pass {
            self.active_fails.store(0, Ordering::Relaxed);
            // A passing probe ends a passive ejection early.
            self.ejected_until.store(0, Ordering::Relaxed);
            let n = self.active_passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.active_ok.load(Ordering::Relaxed) && n >= s.healthy.max(1) {
                self.active_ok.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.active_passes.store(0, Ordering::Relaxed);
            let n = self.active_fails.fetch_add(1, Ordering::Relaxed) + 1;
            if self.active_ok.load(Ordering::Relaxed) && n >= s.unhealthy.max(1) {
                self.active_ok.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

// === active probing ===

/// The probe loop of one upstream. Ends when the upstream is gone from the config or has
/// no `health.active` any more.
pub async fn run_active(state: Arc<UpstreamState>) {
    let mut changes = state.changes();
    loop {
        let Some(up) = state.live() else { return };
        let Some(settings) = up.health.active.clone() else {
            // Switched off: without probes nobody would ever mark a target healthy again.
            // (Done here too, not only at activation, in case a probe round was running.)
            for t in &up.targets().targets {
                t.state.health.reset_active();
            }
            return;
        };
        probe_all(&up, &settings).await;
        drop(up);
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            // A reload changed something: re-read the settings now.
            _ = changes.changed() => {}
        }
    }
}

async fn probe_all(up: &Upstream, s: &ActiveSettings) {
    let set = up.targets();
    let probes = set.targets.iter().map(|t| async move {
        let (pass, detail) = probe(up, t, s).await;
        if !pass {
            t.state.set_last_error(format!("health check: {detail}"));
        }
        if let Some(healthy) = t.state.health.probe_result(s, pass) {
            if healthy {
                tracing::info!(upstream = %up.name, target = %t.target.label, "target healthy again (active check)");
            } else {
                tracing::warn!(upstream = %up.name, target = %t.target.label, %detail, "target unhealthy (active check)");
            }
        }
    });
    futures_util::future::join_all(probes).await;
}

async fn probe(up: &Upstream, t: &super::TargetRt, s: &ActiveSettings) -> (bool, String) {
    let uri = format!(
        "{}://{}{}{}",
        t.target.scheme, t.target.authority, t.target.base_path, s.path
    );
    let mut req = http::Request::get(uri);
    if up.protocol == crate::config::UpstreamProtocol::Http2 {
        req = req.version(http::Version::HTTP_2);
    } else {
        req = req.header(http::header::HOST, t.target.host_header.clone());
    }
    let req = match req
        .header(http::header::USER_AGENT, "portcullis-health-check")
        .body(crate::body::empty())
    {
        Ok(r) => r,
        Err(e) => return (false, format!("cannot build the probe: {e}")),
    };
    let checked = async {
        let res = up.client.request(req).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        // Read a little of the body so the connection can be reused; a huge body is cut.
        let mut body = res.into_body();
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > 64 << 10 {
                break;
            }
        }
        Ok::<u16, String>(status)
    };
    match tokio::time::timeout(s.timeout, checked).await {
        Err(_) => (false, format!("no answer within {:?}", s.timeout)),
        Ok(Err(e)) => (false, e),
        Ok(Ok(status)) if s.passes(status) => (true, status.to_string()),
        Ok(Ok(status)) => (false, format!("status {status}")),
    }
}

/// Records a real request's outcome on a target and logs an ejection.
pub fn record_passive(up: &Upstream, t: &TargetState, label: &str, now: u64, ok: bool) {
    let Some(s) = &up.health.passive else { return };
    if t.health.record(s, now, ok) == Passive::Ejected {
        tracing::warn!(upstream = %up.name, target = label, eject_for = ?s.eject_for, "target ejected (passive check)");
    }
}

/// When the first unavailable target of a set may be back: for `Retry-After`.
pub fn next_recovery(up: &Upstream, now: u64) -> Duration {
    let set = up.targets();
    let ejected = set
        .targets
        .iter()
        .filter_map(|t| t.state.health.ejected_for(now))
        .min();
    let probe = up
        .health
        .active
        .as_ref()
        .map(|a| a.interval * a.healthy.max(1));
    match (ejected, probe) {
        (Some(e), Some(p)) => e.min(p),
        (Some(e), None) => e,
        (None, Some(p)) => p,
        (None, None) => Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(count: Option<u32>, ratio: Option<f64>) -> PassiveSettings {
        PassiveSettings {
            consecutive_failures: count,
            failure_ratio: ratio,
            min_requests: 10,
            window: Duration::from_secs(10),
            eject_for: Duration::from_secs(30),
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_then_readmits() {
        let h = Health::default();
        let s = passive(Some(3), None);
        assert_eq!(h.record(&s, 1_000, false), Passive::Nothing);
        assert_eq!(h.record(&s, 1_001, false), Passive::Nothing);
        // A success in between resets the run.
        assert_eq!(h.record(&s, 1_002, true), Passive::Nothing);
        assert_eq!(h.record(&s, 1_003, false), Passive::Nothing);
        assert_eq!(h.record(&s, 1_004, false), Passive::Nothing);
        assert_eq!(h.record(&s, 1_005, false), Passive::Ejected);
        assert!(!h.available(1_006));
        assert_eq!(h.ejected_for(11_005), Some(Duration::from_secs(20)));
        // Failures of requests that were in flight do not extend the ejection.
        assert_eq!(h.record(&s, 2_000, false), Passive::Nothing);
        assert!(!h.available(31_004));
        assert!(h.available(31_005));
        assert_eq!(h.ejections(), 1);
        // Re-admitted with a clean count: one failure does not eject again.
        assert_eq!(h.record(&s, 31_010, false), Passive::Nothing);
        assert!(h.available(31_011));
    }

    #[test]
    fn ejects_on_failure_ratio_with_minimum() {
        let h = Health::default();
        let s = passive(None, Some(0.5));
        // 4 failures in 8 requests: below the minimum of 10.
        for i in 0..8 {
            assert_eq!(h.record(&s, 1_000, i % 2 == 0), Passive::Nothing);
        }
        assert_eq!(h.record(&s, 1_000, true), Passive::Nothing);
        assert_eq!(h.record(&s, 1_000, false), Passive::Ejected);
    }

    #[test]
    fn active_thresholds() {
        let h = Health::default();
        let s = ActiveSettings {
            path: "/h".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
            expect: vec![],
        };
        assert!(h.available(0));
        assert_eq!(h.probe_result(&s, false), None);
        assert_eq!(h.probe_result(&s, false), None);
        assert_eq!(h.probe_result(&s, false), Some(false));
        assert!(!h.available(0));
        assert_eq!(h.probe_result(&s, true), None);
        assert_eq!(h.probe_result(&s, false), None);
        assert_eq!(h.probe_result(&s, true), None);
        assert_eq!(h.probe_result(&s, true), Some(true));
        assert!(h.available(0));
        assert!(s.passes(204) && s.passes(302) && !s.passes(404) && !s.passes(500));
    }
}
