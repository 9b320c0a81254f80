//! Prometheus metrics: one long-lived registry per server, per-route handles resolved when a
//! config snapshot is installed, and a few atomic adds per request.
//!
//! Layout:
//! - [`Metrics`] lives in the server state next to the connection pools and survives reloads,
//!   so counters keep counting across them. It owns the prometheus-client [`Registry`] that
//!   `GET /metrics` encodes.
//! - [`RouteTable`] is built from a compiled gateway at install time (one [`RouteMetrics`] per
//!   route, plus one for requests no route took) and sits in the snapshot. Label values are
//!   config names (route, upstream, listener), a fixed method set and the status class, never
//!   raw paths or client-chosen strings, so the number of series stays bounded.
//! - Per-target state (health, in-flight, circuit) is the upstream code's long-lived state; a
//!   collector reads the installed targets at scrape time.
//! - Counters that policies bump (auth failures, rate-limit rejections, cache hits) are
//!   process-wide free functions ([`auth_failure`], [`rate_limited`], [`cache_hit`],
//!   [`cache_miss`]) so a policy needs neither the request context nor a handle to call them.
//!
//! Nothing here takes a lock per request: request counters are `OnceLock`ed handles into a
//! family (the family's lock is taken once per route, method and status class, the first
//! time), histograms are arrays of atomics ([`AtomicHistogram`]), and the policy counters are
//! read through an `ArcSwap`.

use crate::backend::Backend;
use crate::compile::Gateway;
use arc_swap::ArcSwap;
use http::Method;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

/// The `route` label of requests that no route took (404, 405, 400 before routing).
pub const UNMATCHED: &str = "(unmatched)";

/// Methods get their own label value; anything else is `OTHER` (clients choose methods, and
/// label values must stay bounded).
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Latency buckets in seconds: 0.5 ms to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

fn class_index(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

// === labels ===

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    route: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

// === impl AtomicHistogram ===

/// A histogram with fixed buckets made of atomics: `observe` is two atomic adds and never
/// locks (prometheus-client's own `Histogram` takes a mutex per observation).
#[derive(Clone, Debug)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One count per bound plus the `+Inf` bucket; not cumulative.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        AtomicHistogram {
            inner: Arc::new(HistogramInner {
                bounds,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    fn latency() -> Self {
        Self::new(LATENCY_BUCKETS)
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.inner.bounds.partition_point(|b| *b < secs);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner
            .sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type HistogramFamily<L> = Family<L, AtomicHistogram, fn() -> AtomicHistogram>;

// === impl Metrics ===

/// The server's metrics. Created once per server; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<RouteLabels>,
    upstream_duration: HistogramFamily<UpstreamLabels>,
    bytes_in: Family<RouteLabels, Counter>,
    bytes_out: Family<RouteLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections: Family<ListenerLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    last_reload_ok: Gauge,
    generation: Gauge,
    targets: Arc<ArcSwap<Vec<TargetRow>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(AtomicHistogram::latency);
        let upstream_duration: HistogramFamily<UpstreamLabels> =
            Family::new_with_constructor(AtomicHistogram::latency);
        let bytes_in = Family::<RouteLabels, Counter>::default();
        let bytes_out = Family::<RouteLabels, Counter>::default();
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        let connections = Family::<ListenerLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let last_reload_ok = Gauge::default();
        let generation = Gauge::default();
        let targets = Arc::new(ArcSwap::from_pointee(Vec::new()));

        registry.register(
            "requests",
            "Requests answered, by route, method and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from receiving the request head to the end of the response body, by route",
            duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response head, by route and upstream",
            upstream_duration.clone(),
        );
        registry.register(
            "request_bytes",
            "Request body bytes received from clients, by route",
            bytes_in.clone(),
        );
        registry.register(
            "response_bytes",
            "Response body bytes sent to clients, by route",
            bytes_out.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open now, by listener",
            connections_open.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted, by listener",
            connections.clone(),
        );
        for result in ["ok", "failed"] {
            // Both series exist from the start, so `increase()` sees the first failure.
            let _ = reloads.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        registry.register(
            "config_reloads",
            "Config reloads, by result (a failed reload keeps the previous config serving)",
            reloads.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 if the last reload attempt succeeded (or none was tried yet), 0 if it failed",
            last_reload_ok.clone(),
        );
        last_reload_ok.set(1);
        registry.register(
            "config_generation",
            "Generation of the running config: 1 after start, +1 per successful reload",
            generation.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            }),
        );
        registry.register_collector(Box::new(TargetCollector {
            rows: targets.clone(),
        }));
        registry.register_collector(Box::new(PolicyCollector));
        Metrics {
            registry,
            requests,
            duration,
            upstream_duration,
            bytes_in,
            bytes_out,
            connections_open,
            connections,
            reloads,
            last_reload_ok,
            generation,
            targets,
        }
    }

    /// Resolves the handles of every route of `gw` (at install time, off the request path)
    /// and records its targets for the per-target gauges.
    pub fn install(&self, gw: &Gateway, generation: u64) -> RouteTable {
        let routes = gw
            .routes
            .iter()
            .map(|r| {
                let upstream = match &r.backend {
                    Backend::Http(u) => Some(&*u.name),
                    _ => None,
                };
                self.route(&r.name, upstream)
            })
            .collect();
        let rows = gw
            .upstreams
            .values()
            .flat_map(|u| {
                let set = u.targets();
                set.targets
                    .iter()
                    .map(|t| TargetRow {
                        upstream: u.name.to_string(),
                        target: t.target.label.to_string(),
                        state: t.state.clone(),
                        upstream_state: u.state.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        self.targets.store(Arc::new(rows));
        self.generation.set(generation as i64);
        RouteTable {
            routes,
            unmatched: self.route(UNMATCHED, None),
        }
    }

    fn route(&self, name: &str, upstream: Option<&str>) -> RouteMetrics {
        let label = RouteLabels { route: name.into() };
        RouteMetrics {
            name: name.into(),
            requests: Default::default(),
            family: self.requests.clone(),
            duration: self.duration.get_or_create_owned(&label),
            upstream_duration: upstream.map(|u| {
                self.upstream_duration.get_or_create_owned(&UpstreamLabels {
                    route: name.into(),
                    upstream: u.into(),
                })
            }),
            bytes_in: self.bytes_in.get_or_create_owned(&label),
            bytes_out: self.bytes_out.get_or_create_owned(&label),
        }
    }

    /// A handle for one listener's connection gauges; `listener` is the listener's bind text
    /// (or `admin`).
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let l = ListenerLabels {
            listener: listener.into(),
        };
        ListenerMetrics {
            open: self.connections_open.get_or_create_owned(&l),
            total: self.connections.get_or_create_owned(&l),
        }
    }

    /// Counts a reload attempt.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.last_reload_ok.set(ok as i64);
    }

    /// The Prometheus text exposition (OpenMetrics 1.0 text).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

// === per route ===

/// One route's handles. The request counter handles are looked up in the family the first
/// time a (method, status class) pair is seen, then kept.
#[derive(Debug)]
pub struct RouteMetrics {
    name: String,
    requests: [[OnceLock<Counter>; 5]; 10],
    family: Family<RequestLabels, Counter>,
    duration: AtomicHistogram,
    upstream_duration: Option<AtomicHistogram>,
    bytes_in: Counter,
    bytes_out: Counter,
}

/// What one finished request contributes.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub status: u16,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl RouteMetrics {
    pub fn record(&self, method: &Method, f: Finished) {
        let (m, c) = (method_index(method), class_index(f.status));
        self.requests[m][c]
            .get_or_init(|| {
                self.family.get_or_create_owned(&RequestLabels {
                    route: self.name.clone(),
                    method: METHODS[m].into(),
                    status_class: CLASSES[c].into(),
                })
            })
            .inc();
        self.duration.observe(f.duration);
        if let (Some(h), Some(u)) = (&self.upstream_duration, f.upstream) {
            h.observe(u);
        }
        if f.bytes_in > 0 {
            self.bytes_in.inc_by(f.bytes_in);
        }
        if f.bytes_out > 0 {
            self.bytes_out.inc_by(f.bytes_out);
        }
    }
}

/// Every route's handles, indexed like `Gateway::routes`; lives in the snapshot.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<RouteMetrics>,
    unmatched: RouteMetrics,
}

impl RouteTable {
    /// The handles of route `index`, or of unmatched requests.
    pub fn route(&self, index: usize) -> &RouteMetrics {
        self.routes.get(index).unwrap_or(&self.unmatched)
    }
}

impl Metrics {
    #[cfg(test)]
    fn install_empty(&self) -> RouteTable {
        RouteTable {
            routes: Vec::new(),
            unmatched: self.route(UNMATCHED, None),
        }
    }
}

// === per listener ===

/// Connection gauges of one listener.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    open: Gauge,
    total: Counter,
}

impl ListenerMetrics {
    /// Counts a connection as open until the guard drops.
    pub fn connection(&self) -> ConnectionGuard {
        self.open.inc();
        self.total.inc();
        ConnectionGuard(self.open.clone())
    }
}

pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === per target ===

/// One target as `/metrics` reports it: its long-lived state (kept across reloads by the
/// upstream code, `upstream::state`) and its upstream's, read at scrape time.
struct TargetRow {
    upstream: String,
    target: String,
    state: Arc<crate::upstream::state::TargetState>,
    upstream_state: Arc<crate::upstream::state::UpstreamState>,
}

impl std::fmt::Debug for TargetRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetRow")
            .field("upstream", &self.upstream)
            .field("target", &self.target)
            .finish()
    }
}

/// The gauge value of a circuit breaker state.
fn circuit_value(s: crate::upstream::breaker::BreakerState) -> i64 {
    use crate::upstream::breaker::BreakerState::*;
    match s {
        Closed => 0,
        HalfOpen => 1,
        Open => 2,
    }
}

/// Encodes the installed targets' state at scrape time, so removed targets disappear with
/// the reload that removed them.
#[derive(Debug)]
struct TargetCollector {
    rows: Arc<ArcSwap<Vec<TargetRow>>>,
}

impl prometheus_client::collector::Collector for TargetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.rows.load();
        let now = crate::upstream::window::now_ms();
        type Read = fn(&TargetRow, u64) -> i64;
        let gauges: [(&str, &str, Read); 3] = [
            (
                "upstream_target_healthy",
                "1 if the target takes traffic, 0 if health checks or outlier detection ejected it",
                |r, now| r.state.health.available(now) as i64,
            ),
            (
                "upstream_target_in_flight",
                "Requests to the target waiting for or streaming a response",
                |r, _| r.state.in_flight.load(Ordering::Relaxed) as i64,
            ),
            (
                "upstream_target_circuit_state",
                "Circuit breaker state of the target's upstream: 0 closed, 1 half-open, 2 open",
                |r, _| circuit_value(r.upstream_state.breaker.state()),
            ),
        ];
        for (name, help, read) in gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for r in rows.iter() {
                let labels = [
                    ("upstream", r.upstream.as_str()),
                    ("target", r.target.as_str()),
                ];
                m.encode_family(&labels)?.encode_gauge(&read(r, now))?;
            }
        }
        Ok(())
    }
}

// === policy counters (process-wide) ===

/// Why a request failed authentication or authorization. A fixed set, so the label stays
/// bounded; add variants as authentication methods arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials where the route needs some (401).
    Missing,
    /// Credentials present but wrong: unknown key, bad password, bad signature (401).
    Invalid,
    /// A token past its expiry (401).
    Expired,
    /// Authenticated, but not allowed on this route (403).
    Forbidden,
}

impl AuthFailure {
    const ALL: [AuthFailure; 4] = [
        AuthFailure::Missing,
        AuthFailure::Invalid,
        AuthFailure::Expired,
        AuthFailure::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
            AuthFailure::Forbidden => "forbidden",
        }
    }
}

/// Counters keyed by route name, read without locks; a new route name copies the map once.
#[derive(Default)]
struct ByRoute(ArcSwap<HashMap<Box<str>, Arc<AtomicU64>>>);

impl ByRoute {
    fn inc(&self, route: &str) {
        if let Some(c) = self.0.load().get(route) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // First time for this route: insert (copy-on-write), then count.
        self.0.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(route.into()).or_default();
            m
        });
        if let Some(c) = self.0.load().get(route) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn get(&self, route: &str) -> u64 {
        self.0
            .load()
            .get(route)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn encode(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
    ) -> Result<(), std::fmt::Error> {
        let map = self.0.load();
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        for (route, c) in rows {
            m.encode_family(&[("route", &**route)])?
                .encode_counter::<NoLabelSet, _, u64>(&c.load(Ordering::Relaxed), None)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct PolicyCounters {
    auth: [AtomicU64; AuthFailure::ALL.len()],
    rate_limited: ByRoute,
    cache_hits: ByRoute,
    cache_misses: ByRoute,
}

static POLICY: LazyLock<PolicyCounters> = LazyLock::new(PolicyCounters::default);

/// Counts a failed authentication or authorization (called by the auth policies).
pub fn auth_failure(reason: AuthFailure) {
    POLICY.auth[reason as usize].fetch_add(1, Ordering::Relaxed);
}

/// Counts a request rejected by a rate limit on `route` (called by the rate-limit policy).
pub fn rate_limited(route: &str) {
    POLICY.rate_limited.inc(route);
}

/// Counts a response served from the cache on `route`. No cache exists yet: this is the seam
/// for it, and the metric family is exported (empty) until then.
pub fn cache_hit(route: &str) {
    POLICY.cache_hits.inc(route);
}

/// Counts a cacheable request on `route` that the cache could not answer.
pub fn cache_miss(route: &str) {
    POLICY.cache_misses.inc(route);
}

/// Current auth failure count for `reason` (tests, admin).
pub fn auth_failures(reason: AuthFailure) -> u64 {
    POLICY.auth[reason as usize].load(Ordering::Relaxed)
}

/// Current rate-limit rejection count for `route`.
pub fn rate_limited_count(route: &str) -> u64 {
    POLICY.rate_limited.get(route)
}

#[derive(Debug)]
struct PolicyCollector;

impl prometheus_client::collector::Collector for PolicyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut m = encoder.encode_descriptor(
                "auth_failures",
                "Failed authentications and authorizations, by reason",
                None,
                MetricType::Counter,
            )?;
            for r in AuthFailure::ALL {
                let v = POLICY.auth[r as usize].load(Ordering::Relaxed);
                m.encode_family(&[("reason", r.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        POLICY.rate_limited.encode(
            &mut encoder,
            "rate_limited",
            "Requests rejected by a rate limit (429), by route",
        )?;
        POLICY.cache_hits.encode(
            &mut encoder,
            "cache_hits",
            "Responses served from the cache, by route",
        )?;
        POLICY.cache_misses.encode(
            &mut encoder,
            "cache_misses",
            "Cacheable requests the cache could not answer, by route",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let h = AtomicHistogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(100)); // le is inclusive
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        assert_eq!(h.count(), 4);
        let mut reg = Registry::default();
        reg.register("h", "help", h);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("h_bucket{le=\"0.1\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"1.0\"} 3\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("h_count 4\n"), "{out}");
        assert!(out.contains("h_sum 5.65\n"), "{out}");
    }

    #[test]
    fn request_counters_use_bounded_labels() {
        let m = Metrics::new();
        let t = m.install_empty();
        let f = Finished {
            status: 404,
            duration: Duration::from_millis(1),
            upstream: None,
            bytes_in: 0,
            bytes_out: 10,
        };
        t.route(0).record(&Method::GET, f);
        t.route(0).record(&Method::from_bytes(b"BREW").unwrap(), f);
        let text = m.encode();
        assert!(
            text.contains(
                "portcullis_requests_total{route=\"(unmatched)\",method=\"GET\",status_class=\"4xx\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("method=\"OTHER\""), "{text}");
        assert!(!text.contains("BREW"), "{text}");
        assert!(
            text.contains("portcullis_response_bytes_total{route=\"(unmatched)\"} 20"),
            "{text}"
        );
        assert!(text.contains("portcullis_build_info{version="), "{text}");
        assert!(text.contains("portcullis_auth_failures_total{reason=\"missing\"}"));
    }

    #[test]
    fn policy_counters() {
        let route = "policy-counters-unit-test";
        rate_limited(route);
        rate_limited(route);
        assert_eq!(rate_limited_count(route), 2);
        let before = auth_failures(AuthFailure::Expired);
        auth_failure(AuthFailure::Expired);
        assert!(auth_failures(AuthFailure::Expired) > before);
        let text = Metrics::new().encode();
        assert!(
            text.contains(&format!(
                "portcullis_rate_limited_total{{route=\"{route}\"}} 2"
            )),
            "{text}"
        );
    }
}
