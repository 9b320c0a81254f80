//! Long-lived upstream state: everything about an upstream and its targets that must
//! survive a reload — health, passive counters, the breaker, the retry budget, the bulkhead,
//! in-flight counts, discovered endpoints, last errors.
//!
//! It lives in [`super::Pools`] (which lives as long as the server), keyed by upstream name
//! and, per target, by the target's URL. A compiled [`super::Upstream`] in a config snapshot
//! holds an `Arc` to its state; two snapshots alive at once (requests in flight across a
//! reload) share it. The registries here are touched only at compile time, by discovery and
//! by background tasks — never per request; requests only use the atomics inside.
//!
//! The serialisable views at the end are what the admin API (`GET /upstreams`) and, later,
//! metrics read.

use super::breaker::{Breaker, BreakerState};
use super::bulkhead::Bulkhead;
use super::discovery::Endpoint;
use super::health::Health;
use super::retry::Budget;
use super::Upstream;
use arc_swap::ArcSwapOption;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One target's state, shared by every snapshot and target set that contains the target.
///
/// `repr(C)` with what every pick reads first (in-flight count, then the health verdicts at
/// the start of [`Health`]): a balancer scanning many targets touches one cache line each.
#[repr(C)]
pub struct TargetState {
    pub in_flight: AtomicUsize,
    pub health: Health,
    /// The target's identity: `scheme://authority` (plus base path).
    pub key: Arc<str>,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    last_error: ArcSwapOption<LastError>,
    /// Keep-alive connections for `http://` HTTP/1.1 targets; they outlive reloads with
    /// the rest of this state.
    pub pool: Arc<super::h1pool::Pool>,
}

#[derive(Debug)]
pub struct LastError {
    pub message: String,
    pub at: SystemTime,
}

impl TargetState {
    pub fn new(key: Arc<str>) -> TargetState {
        TargetState {
            key,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            health: Health::default(),
            last_error: ArcSwapOption::empty(),
            pool: Arc::default(),
        }
    }

    /// Failure paths only: one allocation, no lock.
    pub fn set_last_error(&self, message: String) {
        self.last_error.store(Some(Arc::new(LastError {
            message,
            at: SystemTime::now(),
        })));
    }

    pub fn last_error(&self) -> Option<Arc<LastError>> {
        self.last_error.load_full()
    }
}

/// Background tasks of one upstream.
#[derive(Default)]
pub struct Tasks {
    pub health: Option<JoinHandle<()>>,
    pub discovery: Option<JoinHandle<()>>,
}

impl Tasks {
    pub fn running(h: &Option<JoinHandle<()>>) -> bool {
        h.as_ref().is_some_and(|h| !h.is_finished())
    }

    pub fn abort(&mut self) {
        for h in [self.health.take(), self.discovery.take()]
            .into_iter()
            .flatten()
        {
            h.abort();
        }
    }
}

/// What discovery last did, for the admin view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscoveryStatus {
    pub source: String,
    pub last_refresh: Option<String>,
    pub last_error: Option<String>,
    pub endpoints: usize,
}

/// One upstream's state.
pub struct UpstreamState {
    pub name: Arc<str>,
    targets: Mutex<HashMap<Arc<str>, Arc<TargetState>>>,
    pub breaker: Breaker,
    pub budget: Budget,
    bulkhead: Mutex<Option<Arc<Bulkhead>>>,
    /// Requests in flight to this upstream (all targets), for the admin view.
    pub in_flight: AtomicUsize,
    /// The upstream of the serving snapshot: background tasks read its settings.
    live: Mutex<Weak<Upstream>>,
    /// Bumped when a reload installs a new live upstream; background tasks watch it so they
    /// re-read their settings at once (a change during a probe round is not lost).
    changed: watch::Sender<u64>,
    /// The last good discovery answer.
    endpoints: Mutex<Option<Vec<Endpoint>>>,
    pub discovery: Mutex<DiscoveryStatus>,
    pub tasks: Mutex<Tasks>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl UpstreamState {
    pub fn new(name: &str) -> UpstreamState {
        UpstreamState {
            name: name.into(),
            targets: Mutex::default(),
            breaker: Breaker::default(),
            budget: Budget::default(),
            bulkhead: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            live: Mutex::new(Weak::new()),
            changed: watch::channel(0).0,
            endpoints: Mutex::default(),
            discovery: Mutex::default(),
            tasks: Mutex::default(),
        }
    }

    /// The state of the target with this identity, created on first use.
    pub fn target(&self, key: &str) -> Arc<TargetState> {
        let mut map = lock(&self.targets);
        if let Some(t) = map.get(key) {
            return t.clone();
        }
        let key: Arc<str> = key.into();
        let t = Arc::new(TargetState::new(key.clone()));
        map.insert(key, t.clone());
        t
    }

    /// Forgets targets that are no longer in the live set. Requests still holding one keep
    /// their `Arc`; only the registry lets go.
    pub fn retain_targets(&self, keep: &[&str]) {
        lock(&self.targets).retain(|k, _| keep.contains(&&**k));
    }

    /// The bulkhead for these limits: the existing one when they did not change.
    pub fn bulkhead(&self, max: usize, queue: Option<(usize, Duration)>) -> Arc<Bulkhead> {
        let mut b = lock(&self.bulkhead);
        match &*b {
            Some(existing) if existing.same_limits(max, queue) => existing.clone(),
            _ => {
                let fresh = Arc::new(Bulkhead::new(max, queue));
                *b = Some(fresh.clone());
                fresh
            }
        }
    }

    pub fn live(&self) -> Option<Arc<Upstream>> {
        lock(&self.live).upgrade()
    }

    pub fn set_live(&self, up: &Arc<Upstream>) {
        *lock(&self.live) = Arc::downgrade(up);
        self.changed.send_modify(|g| *g += 1);
    }

    /// Wakes when a reload installs a new live upstream.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn endpoints(&self) -> Option<Vec<Endpoint>> {
        lock(&self.endpoints).clone()
    }

    /// Stores a discovery answer; true when it differs from the previous one.
    pub fn set_endpoints(&self, mut eps: Vec<Endpoint>) -> bool {
        eps.sort();
        eps.dedup();
        let mut cur = lock(&self.endpoints);
        if cur.as_ref() == Some(&eps) {
            return false;
        }
        *cur = Some(eps);
        true
    }
}

// === views for the admin API and metrics ===

/// One upstream as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub balance: String,
    pub in_flight: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<BulkheadStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<BudgetStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkheadStatus {
    pub max_concurrent: usize,
    pub in_use: usize,
    pub queued: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakerStatus {
    pub state: BreakerState,
    pub window_requests: u64,
    pub window_failures: u64,
    /// While open: milliseconds until probes are let through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_for_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BudgetStatus {
    pub window_requests: u64,
    pub window_retries: u64,
}

/// `healthy`, `unhealthy` (active checks), or `ejected` (passive checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetHealth {
    Healthy,
    Unhealthy,
    Ejected,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    pub url: String,
    pub weight: u32,
    pub health: TargetHealth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
    pub ejections: u64,
    pub in_flight: usize,
    pub requests: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastErrorStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastErrorStatus {
    pub message: String,
    pub at: String,
}

impl Upstream {
    /// This upstream's state right now.
    pub fn status(&self) -> UpstreamStatus {
        let now = super::window::now_ms();
        let set = self.targets();
        let st = &self.state;
        let targets = set
            .targets
            .iter()
            .map(|t| {
                let h = &t.state.health;
                let ejected = h.ejected_for(now);
                TargetStatus {
                    url: t.state.key.to_string(),
                    weight: t.weight,
                    health: if !h.active_ok() {
                        TargetHealth::Unhealthy
                    } else if ejected.is_some() {
                        TargetHealth::Ejected
                    } else {
                        TargetHealth::Healthy
                    },
                    ejected_for_ms: ejected.map(|d| d.as_millis() as u64),
                    ejections: h.ejections(),
                    in_flight: t.state.in_flight.load(Ordering::Relaxed),
                    requests: t.state.requests.load(Ordering::Relaxed),
                    failures: t.state.failures.load(Ordering::Relaxed),
                    consecutive_failures: h.consecutive_failures(),
                    last_error: t.state.last_error().map(|e| LastErrorStatus {
                        message: e.message.clone(),
                        at: crate::observe::time::rfc3339_millis(e.at),
                    }),
                }
            })
            .collect();
        UpstreamStatus {
            name: self.name.to_string(),
            balance: self.balance_name(),
            in_flight: st.in_flight.load(Ordering::Relaxed),
            bulkhead: self.bulkhead.as_ref().map(|b| BulkheadStatus {
                max_concurrent: b.max,
                in_use: b.in_use(),
                queued: b.waiting(),
            }),
            circuit_breaker: self.breaker.as_ref().map(|s| {
                let (requests, failures) = st.breaker.window_totals(s, now);
                let state = st.breaker.state();
                BreakerStatus {
                    state,
                    window_requests: requests,
                    window_failures: failures,
                    opens_for_ms: (state == BreakerState::Open)
                        .then(|| st.breaker.open_remaining(s, now).as_millis() as u64),
                }
            }),
            retry_budget: self.retry.as_ref().map(|r| {
                let (requests, retries) = st.budget.totals(&r.budget, now);
                BudgetStatus {
                    window_requests: requests,
                    window_retries: retries,
                }
            }),
            discovery: self.discovery.as_ref().map(|_| lock(&st.discovery).clone()),
            targets,
        }
    }
}
