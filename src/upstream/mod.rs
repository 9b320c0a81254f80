//! Upstreams: named pools of HTTP targets and everything that keeps the gateway serving when
//! they misbehave.
//!
//! Built from `upstreams.NAME` at compile time into an [`Upstream`] (immutable settings, part
//! of the config snapshot) that points at long-lived [`state::UpstreamState`] (health,
//! breaker, budget, bulkhead, in-flight counts, discovered endpoints) kept in [`Pools`] with
//! the connection pools, keyed by name, so a reload loses neither warm connections nor what
//! the gateway learned about its targets.
//!
//! One module per concern:
//!
//! | module | concern |
//! |---|---|
//! | [`balancer`] | round robin, smooth weighted, least connections, p2c, ketama/Maglev hashing |
//! | [`health`] | active probes, passive ejection |
//! | [`discovery`], [`dns`] | targets from DNS A/AAAA or SRV; the `Discover` trait |
//! | [`retry`] | retry conditions, backoff, the retry budget |
//! | [`breaker`] | the circuit breaker |
//! | [`bulkhead`] | `max_concurrent` and its queue |
//! | [`tls`] | https targets: roots, SNI, client certificates, ALPN |
//! | [`state`] | the long-lived state and its admin view |
//! | [`window`] | sliding-window counters and the millisecond clock |
//!
//! The request path (one try after another, in [`crate::backend::http`]) only reads the
//! current target set through an `ArcSwap` and touches atomics.

pub mod balancer;
pub mod breaker;
pub mod bulkhead;
pub mod discovery;
pub mod dns;
pub mod h1pool;
pub mod health;
pub mod retry;
pub mod state;
pub mod tls;
pub mod window;

use crate::backend::DirectResponse;
use crate::body::Body;
use crate::config::upstream::{HashAlgorithm, RetryOnConfig, StatusPattern};
use crate::config::{BalanceConfig, UpstreamConfig, UpstreamProtocol};
use arc_swap::ArcSwap;
use balancer::{Balancer, Candidate, HashOn, Strategy};
use breaker::BreakerSettings;
use bulkhead::Bulkhead;
use discovery::{DiscoverySpec, Endpoint};
use health::{ActiveSettings, HealthSettings, PassiveSettings};
use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use retry::{BudgetSettings, RetryPolicy};
use state::{TargetState, UpstreamState};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// One backend server as written (or discovered).
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Prefix for every forwarded path (from the target URL), without a trailing slash.
    pub base_path: String,
    /// `host:port`, for logs.
    pub label: Arc<str>,
    /// The `Host` header for this target, built once.
    pub host_header: http::HeaderValue,
}

impl Target {
    /// The identity of the target's long-lived state.
    pub fn key(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// A target in a target set: what to send to, with its weight and long-lived state.
pub struct TargetRt {
    pub target: Target,
    pub weight: u32,
    pub state: Arc<TargetState>,
}

impl Candidate for TargetRt {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }
    fn available(&self, now: u64) -> bool {
        self.state.health.available(now)
    }
}

/// The targets of an upstream with a balancer built for exactly them. Replaced as a whole
/// (discovery, reload); requests keep the set they started with.
pub struct TargetSet {
    pub targets: Vec<TargetRt>,
    pub balancer: Balancer,
    /// The discovery answer it was built from (empty for fixed targets).
    pub endpoints: Vec<Endpoint>,
}

/// A compiled upstream: settings from the config snapshot, state from [`Pools`].
pub struct Upstream {
    pub name: Arc<str>,
    set: ArcSwap<TargetSet>,
    pub client: HttpClient,
    /// `http://` targets of an HTTP/1.1 upstream go through their own keep-alive pool
    /// ([`h1pool`]) with these settings; `https`, `h2` and `auto` use `client`.
    pub h1: Option<h1pool::Settings>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    /// The total: until response headers, over all tries.
    pub request_timeout: Duration,
    pub per_try_timeout: Option<Duration>,
    pub strategy: Strategy,
    pub health: HealthSettings,
    /// Statuses that count as a target failure (passive health, target counters).
    pub failure_statuses: Vec<StatusPattern>,
    pub retry: Option<RetryPolicy>,
    pub breaker: Option<BreakerSettings>,
    pub breaker_failures: Vec<StatusPattern>,
    pub breaker_fallback: Option<Arc<DirectResponse>>,
    pub bulkhead: Option<Arc<Bulkhead>>,
    pub discovery: Option<DiscoverySpec>,
    pub state: Arc<UpstreamState>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .finish()
    }
}

impl Upstream {
    /// The current target set.
    pub fn targets(&self) -> Arc<TargetSet> {
        self.set.load_full()
    }

    /// Picks a target for a try: a healthy one not tried yet; else a healthy one tried
    /// before; else, with `fallback_to_all`, any. `None` when nothing qualifies.
    pub fn pick(
        &self,
        set: &TargetSet,
        key: Option<u64>,
        now: u64,
        tried: &[usize],
    ) -> Option<usize> {
        let (b, ts) = (&set.balancer, &set.targets[..]);
        b.pick(ts, key, now, tried, false)
            .or_else(|| {
                (!tried.is_empty())
                    .then(|| b.pick(ts, key, now, &[], false))
                    .flatten()
            })
            .or_else(|| {
                self.health.fallback_to_all.then(|| {
                    b.pick(ts, key, now, tried, true)
                        .or_else(|| b.pick(ts, key, now, &[], true))
                })?
            })
    }

    /// The request's hash key, for hash balancers.
    pub fn hash_key(&self, headers: &http::HeaderMap, client: std::net::IpAddr) -> Option<u64> {
        match &self.strategy {
            Strategy::Hash { on, .. } => on.key(headers, client),
            _ => None,
        }
    }

    pub fn is_failure(&self, status: u16) -> bool {
        self.failure_statuses.iter().any(|p| p.matches(status))
    }

    pub fn is_breaker_failure(&self, status: u16) -> bool {
        self.breaker_failures.iter().any(|p| p.matches(status))
    }

    fn balance_name(&self) -> String {
        match &self.strategy {
            Strategy::RoundRobin => "round_robin".into(),
            Strategy::Weighted => "weighted".into(),
            Strategy::LeastConnections => "least_connections".into(),
            Strategy::P2c => "p2c".into(),
            Strategy::Hash { on, algorithm } => format!(
                "hash {} ({})",
                match on {
                    HashOn::Header(h) => format!("header:{h}"),
                    HashOn::Cookie(c) => format!("cookie:{c}"),
                    HashOn::ClientIp => "client_ip".into(),
                },
                match algorithm {
                    HashAlgorithm::Ketama => "ketama",
                    HashAlgorithm::Maglev => "maglev",
                }
            ),
        }
    }

    /// Builds and swaps in a target set for a discovery answer. A no-op when the answer is
    /// the one the current set was built from.
    pub fn install_endpoints(&self, eps: &[Endpoint]) {
        let Some(spec) = &self.discovery else { return };
        if self.set.load().endpoints == eps {
            return;
        }
        let set = self.endpoint_set(&spec.scheme, eps);
        let keys: Vec<&str> = set.targets.iter().map(|t| &*t.state.key).collect();
        self.state.retain_targets(&keys);
        self.set.store(Arc::new(set));
    }

    fn endpoint_set(&self, scheme: &Scheme, eps: &[Endpoint]) -> TargetSet {
        let targets = eps
            .iter()
            .filter_map(|e| {
                let target = endpoint_target(scheme, e)
                    .map_err(|err| tracing::warn!(upstream = %self.name, endpoint = %e.authority, error = %err, "unusable discovered endpoint"))
                    .ok()?;
                let state = self.state.target(&target.key());
                Some(TargetRt {
                    target,
                    weight: e.weight.max(1),
                    state,
                })
            })
            .collect();
        TargetSet::new(self.strategy.clone(), targets, eps.to_vec())
    }
}

impl TargetSet {
    pub fn new(strategy: Strategy, targets: Vec<TargetRt>, endpoints: Vec<Endpoint>) -> TargetSet {
        let ids: Vec<String> = targets.iter().map(|t| t.state.key.to_string()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        TargetSet {
            balancer: Balancer::new(strategy, &ids, &weights),
            targets,
            endpoints,
        }
    }
}

fn endpoint_target(scheme: &Scheme, e: &Endpoint) -> Result<Target, String> {
    let authority: Authority = e
        .authority
        .parse()
        .map_err(|_| format!("{:?} is not host:port", e.authority))?;
    let host = e.host.as_deref().unwrap_or(authority.as_str());
    Ok(Target {
        scheme: scheme.clone(),
        label: authority.as_str().into(),
        host_header: http::HeaderValue::from_str(host)
            .map_err(|_| format!("{host:?} cannot be sent as a Host header"))?,
        authority,
        base_path: String::new(),
    })
}

/// Settings that decide whether two upstreams may share a connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    h2_only: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Fingerprint of the TLS setup; `None` for plain HTTP.
    tls: Option<u64>,
}

/// What outlives config snapshots: connection pools (by settings) and upstream state (by
/// name). Its maps are touched at compile time, at activation and by background tasks,
/// never per request.
#[derive(Default)]
pub struct Pools {
    clients: Mutex<HashMap<PoolKey, HttpClient>>,
    states: Mutex<HashMap<String, Arc<UpstreamState>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pools {
    fn client(&self, key: PoolKey, tls: Option<&tls::ClientTls>) -> HttpClient {
        lock(&self.clients)
            .entry(key)
            .or_insert_with(|| {
                let mut conn = HttpConnector::new();
                conn.set_connect_timeout(Some(key.connect_timeout));
                conn.set_nodelay(true);
                conn.set_keepalive(Some(Duration::from_secs(60)));
                conn.enforce_http(false);
                let (config, resolver): (
                    Arc<rustls::ClientConfig>,
                    Arc<dyn hyper_rustls::ResolveServerName + Send + Sync>,
                ) = match tls {
                    Some(t) => (
                        t.config.clone(),
                        match &t.sni {
                            Some(name) => {
                                Arc::new(hyper_rustls::FixedServerNameResolver::new(name.clone()))
                            }
                            None => Arc::new(hyper_rustls::DefaultServerNameResolver::default()),
                        },
                    ),
                    None => (
                        tls::plain(),
                        Arc::new(hyper_rustls::DefaultServerNameResolver::default()),
                    ),
                };
                let https = HttpsConnector::new(conn, config, false, resolver);
                let mut b = Client::builder(TokioExecutor::new());
                b.pool_idle_timeout(key.idle_timeout)
                    .pool_max_idle_per_host(key.max_idle)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .set_host(false);
                if key.h2_only {
                    b.http2_only(true);
                }
                b.build(https)
            })
            .clone()
    }

    /// The long-lived state of upstream `name`, created on first use.
    pub fn state(&self, name: &str) -> Arc<UpstreamState> {
        lock(&self.states)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(UpstreamState::new(name)))
            .clone()
    }

    /// Before a new snapshot serves: resolves discovered upstreams that have never been
    /// resolved, so a fresh upstream does not answer 503 until its first refresh.
    pub async fn prepare(&self, upstreams: &BTreeMap<String, Arc<Upstream>>) {
        for up in upstreams.values() {
            let Some(spec) = &up.discovery else { continue };
            if up.state.endpoints().is_none() {
                discovery::refresh_once(&up.state, spec).await;
            }
            if let Some(eps) = up.state.endpoints() {
                up.install_endpoints(&eps);
            }
        }
    }

    /// After a new snapshot is swapped in: points background tasks at its upstreams, starts
    /// the tasks it needs, forgets targets and upstreams it no longer has.
    pub fn activate(&self, upstreams: &BTreeMap<String, Arc<Upstream>>) {
        for up in upstreams.values() {
            let st = &up.state;
            st.set_live(up);
            match up.state.endpoints() {
                // A refresh may have landed between compile and swap.
                Some(eps) if up.discovery.is_some() => up.install_endpoints(&eps),
                _ if up.discovery.is_none() => {
                    let set = up.targets();
                    let keys: Vec<&str> = set.targets.iter().map(|t| &*t.state.key).collect();
                    st.retain_targets(&keys);
                }
                _ => {}
            }
            if up.health.active.is_none() {
                // Without probes nobody would ever mark a target healthy again.
                for t in &up.targets().targets {
                    t.state.health.reset_active();
                }
            }
            let mut tasks = lock(&st.tasks);
            if up.health.active.is_some() && !state::Tasks::running(&tasks.health) {
                tasks.health = Some(tokio::spawn(health::run_active(st.clone())));
            }
            if up.discovery.is_some() && !state::Tasks::running(&tasks.discovery) {
                tasks.discovery = Some(tokio::spawn(discovery::run(st.clone())));
            }
        }
        lock(&self.states).retain(|name, st| {
            let keep = upstreams.contains_key(name);
            if !keep {
                lock(&st.tasks).abort();
            }
            keep
        });
    }

    /// Stops every background task (shutdown).
    pub fn stop(&self) {
        for st in lock(&self.states).values() {
            lock(&st.tasks).abort();
        }
    }
}

/// Parses a target URL; errors are diagnostics messages.
pub fn parse_target(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e}); expected http://host:port"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{url:?} has no scheme; expected http://host:port"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(format!("{url:?}: expected an http:// or https:// URL"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url:?} has no host; expected http://host:port"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{url:?}: credentials in target URLs are not supported"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?}: a target URL cannot have a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
    let label: Arc<str> = match authority.port_u16() {
        Some(_) => authority.as_str().into(),
        None => format!("{}:{default_port}", authority.host()).into(),
    };
    let host_header = http::HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("{url:?}: the host cannot be sent as a Host header"))?;
    Ok(Target {
        scheme,
        authority,
        base_path,
        label,
        host_header,
    })
}

pub use balancer::smooth_rotation;

pub struct Defaults {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub per_try_timeout: Option<Duration>,
    /// Directory that relative paths (CA files, client certificates) are taken from.
    pub base_dir: PathBuf,
}

/// Largest sum of weights; the rotation is precomputed, so this bounds its memory.
pub const MAX_TOTAL_WEIGHT: u32 = 100_000;
/// Most retries per request.
pub const MAX_ATTEMPTS: u32 = 10;

/// The diagnostics of one upstream: (field path under `upstreams.NAME`, message).
struct Errs(Vec<(String, String)>);

impl Errs {
    fn at(&mut self, field: &str, msg: impl Into<String>) {
        self.0.push((field.to_owned(), msg.into()));
    }
    fn positive(&mut self, field: &str, d: Option<crate::config::Dur>) {
        if d.is_some_and(|d| d.0.is_zero()) {
            self.at(field, "must be more than 0");
        }
    }
}

fn dur(d: Option<crate::config::Dur>, default: Duration) -> Duration {
    d.map(|d| d.0).unwrap_or(default)
}

const DEFAULT_FAILURES: [StatusPattern; 1] = [StatusPattern::Class(5)];

/// Builds an upstream; `Err` carries (field path suffix, message) pairs.
pub fn build(
    name: &str,
    cfg: &UpstreamConfig,
    defaults: &Defaults,
    pools: &Pools,
) -> Result<Upstream, Vec<(String, String)>> {
    let mut e = Errs(Vec::new());

    // --- targets or discovery
    let mut targets = Vec::new();
    let mut weights = Vec::new();
    if cfg.targets.is_empty() && cfg.discover.is_none() {
        e.at(
            "targets",
            "an upstream needs at least one target (or `discover`)",
        );
    }
    if !cfg.targets.is_empty() && cfg.discover.is_some() {
        e.at("discover", "give `targets` or `discover`, not both");
    }
    for (i, t) in cfg.targets.iter().enumerate() {
        match parse_target(&t.url) {
            Ok(target) => targets.push(target),
            Err(m) => e.at(&format!("targets[{i}].url"), m),
        }
        if t.weight == 0 {
            e.at(&format!("targets[{i}].weight"), "weight must be at least 1");
        }
        weights.push(t.weight.max(1));
    }
    if weights.iter().map(|&w| u64::from(w)).sum::<u64>() > u64::from(MAX_TOTAL_WEIGHT) {
        e.at(
            "targets",
            format!("the weights add up to more than {MAX_TOTAL_WEIGHT}"),
        );
    }
    let discovery = cfg
        .discover
        .as_ref()
        .and_then(|d| build_discovery(d, &mut e));
    let https = match &discovery {
        Some(d) => d.0.scheme == Scheme::HTTPS,
        None => targets.iter().any(|t| t.scheme == Scheme::HTTPS),
    };
    if cfg.protocol == UpstreamProtocol::Auto && !https {
        e.at(
            "protocol",
            "`auto` negotiates HTTP/2 with TLS (ALPN), so it needs https targets; choose http1 or http2 (h2c) for http",
        );
    }

    // --- balancer
    let strategy = match &cfg.balance {
        BalanceConfig::RoundRobin => {
            if weights.iter().any(|&w| w != 1) {
                e.at(
                    "balance",
                    "round_robin gives every target the same share; use `weighted` to honour target weights",
                );
            }
            Strategy::RoundRobin
        }
        BalanceConfig::Weighted => Strategy::Weighted,
        BalanceConfig::LeastConnections => Strategy::LeastConnections,
        BalanceConfig::P2c => Strategy::P2c,
        BalanceConfig::IpHash => Strategy::Hash {
            on: HashOn::ClientIp,
            algorithm: HashAlgorithm::Ketama,
        },
        BalanceConfig::Hash(h) => match HashOn::parse(&h.hash) {
            Ok(on) => Strategy::Hash {
                on,
                algorithm: h.algorithm,
            },
            Err(m) => {
                e.at("balance.hash", m);
                Strategy::Weighted
            }
        },
    };

    // --- timeouts
    e.positive("timeouts.connect", cfg.timeouts.connect);
    e.positive("timeouts.request", cfg.timeouts.request);
    e.positive("timeouts.per_try", cfg.timeouts.per_try);
    let connect_timeout = dur(cfg.timeouts.connect, defaults.connect_timeout);
    let request_timeout = dur(cfg.timeouts.request, defaults.request_timeout);
    let per_try_timeout = cfg
        .timeouts
        .per_try
        .map(|d| d.0)
        .or(defaults.per_try_timeout);

    // --- health
    let mut health = HealthSettings {
        fallback_to_all: cfg.health.fallback_to_all,
        ..Default::default()
    };
    if let Some(a) = &cfg.health.active {
        let path = a.path.clone().unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            e.at(
                "health.active.path",
                format!("{path:?}: expected a path like /healthz"),
            );
        }
        e.positive("health.active.interval", a.interval);
        e.positive("health.active.timeout", a.timeout);
        for (f, v) in [("healthy", a.healthy), ("unhealthy", a.unhealthy)] {
            if v == Some(0) {
                e.at(&format!("health.active.{f}"), "must be at least 1");
            }
        }
        health.active = Some(ActiveSettings {
            path,
            interval: dur(a.interval, Duration::from_secs(10)),
            timeout: dur(a.timeout, Duration::from_secs(1)),
            healthy: a.healthy.unwrap_or(2),
            unhealthy: a.unhealthy.unwrap_or(3),
            expect: a.expect.clone(),
        });
    }
    let mut failure_statuses = DEFAULT_FAILURES.to_vec();
    if let Some(p) = &cfg.health.passive {
        if p.consecutive_failures.is_none() && p.failure_ratio.is_none() {
            e.at(
                "health.passive",
                "say when to eject: `consecutive_failures` and/or `failure_ratio`",
            );
        }
        if p.consecutive_failures == Some(0) {
            e.at("health.passive.consecutive_failures", "must be at least 1");
        }
        if p.failure_ratio == Some(0.0) {
            e.at("health.passive.failure_ratio", "must be more than 0");
        }
        e.positive("health.passive.window", p.window);
        e.positive("health.passive.eject_for", p.eject_for);
        if !p.failure_statuses.is_empty() {
            failure_statuses = p.failure_statuses.clone();
        }
        health.passive = Some(PassiveSettings {
            consecutive_failures: p.consecutive_failures,
            failure_ratio: p.failure_ratio,
            min_requests: p.min_requests.unwrap_or(10),
            window: dur(p.window, Duration::from_secs(10)),
            eject_for: dur(p.eject_for, Duration::from_secs(30)),
        });
    }

    // --- retries
    let retry = cfg.retries.as_ref().map(|r| {
        if r.attempts > MAX_ATTEMPTS {
            e.at(
                "retries.attempts",
                format!("at most {MAX_ATTEMPTS} retries"),
            );
        }
        let on = if r.on.is_empty() {
            vec![
                RetryOnConfig::ConnectError,
                RetryOnConfig::Reset,
                RetryOnConfig::Timeout,
                RetryOnConfig::GatewayError,
            ]
        } else {
            r.on.clone()
        };
        let mut statuses = Vec::new();
        for o in &on {
            match o {
                RetryOnConfig::Status(s) => statuses.push(*s),
                RetryOnConfig::GatewayError => {
                    statuses.extend([502, 503, 504].map(StatusPattern::Code))
                }
                _ => {}
            }
        }
        let methods = match &r.methods {
            None => retry::IDEMPOTENT.to_vec(),
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| {
                            e.at(
                                &format!("retries.methods[{i}]"),
                                format!("{m:?} is not an HTTP method"),
                            )
                        })
                        .ok()
                })
                .collect(),
        };
        e.positive("retries.max_backoff", r.max_backoff);
        let backoff = dur(r.backoff, Duration::from_millis(25));
        let budget = r.budget.as_ref();
        if let Some(b) = budget {
            e.positive("retries.budget.window", b.window);
        }
        let defaults = BudgetSettings::default();
        RetryPolicy {
            attempts: r.attempts,
            on_connect: on.contains(&RetryOnConfig::ConnectError),
            on_reset: on.contains(&RetryOnConfig::Reset),
            on_timeout: on.contains(&RetryOnConfig::Timeout),
            statuses,
            backoff,
            max_backoff: dur(r.max_backoff, backoff * 10),
            methods,
            buffer: r.buffer.map(|s| s.0).unwrap_or(64 << 10),
            budget: BudgetSettings {
                ratio: budget.and_then(|b| b.ratio).unwrap_or(defaults.ratio),
                min_per_second: budget
                    .and_then(|b| b.min_per_second)
                    .unwrap_or(defaults.min_per_second),
                window: dur(budget.and_then(|b| b.window), defaults.window),
            },
        }
    });

    // --- circuit breaker
    let mut breaker_failures = DEFAULT_FAILURES.to_vec();
    let mut breaker_fallback = None;
    let breaker = cfg.circuit_breaker.as_ref().map(|b| {
        if b.failure_ratio == 0.0 {
            e.at("circuit_breaker.failure_ratio", "must be more than 0");
        }
        for (f, v) in [
            ("min_requests", b.min_requests),
            ("half_open_probes", b.half_open_probes),
        ] {
            if v == Some(0) {
                e.at(&format!("circuit_breaker.{f}"), "must be at least 1");
            }
        }
        e.positive("circuit_breaker.window", b.window);
        e.positive("circuit_breaker.open_for", b.open_for);
        if !b.failure_statuses.is_empty() {
            breaker_failures = b.failure_statuses.clone();
        }
        if let Some(f) = &b.fallback {
            match crate::compile::direct_response(f) {
                Ok(dr) => breaker_fallback = Some(Arc::new(dr)),
                Err((field, m)) => e.at(&format!("circuit_breaker.fallback{field}"), m),
            }
        }
        BreakerSettings {
            failure_ratio: b.failure_ratio,
            min_requests: b.min_requests.unwrap_or(20),
            window: dur(b.window, Duration::from_secs(10)),
            open_for: dur(b.open_for, Duration::from_secs(30)),
            half_open_probes: b.half_open_probes.unwrap_or(3),
        }
    });

    // --- bulkhead
    if cfg.max_concurrent == Some(0) {
        e.at("max_concurrent", "must be at least 1");
    }
    if cfg.queue.is_some() && cfg.max_concurrent.is_none() {
        e.at(
            "queue",
            "a queue needs `max_concurrent` (requests beyond it wait in the queue)",
        );
    }
    if let Some(q) = &cfg.queue {
        e.positive("queue.timeout", q.timeout);
    }

    // --- TLS
    let tls = if https {
        let sni_default = discovery.as_ref().and_then(|d| d.1.clone());
        match tls::client_tls(
            &cfg.tls.clone().unwrap_or_default(),
            &defaults.base_dir,
            cfg.protocol,
            sni_default.as_deref(),
        ) {
            Ok(t) => Some(t),
            Err(errs) => {
                for (f, m) in errs {
                    e.at(
                        &if f.is_empty() {
                            "tls".to_owned()
                        } else {
                            format!("tls.{f}")
                        },
                        m,
                    );
                }
                None
            }
        }
    } else {
        if cfg.tls.is_some() {
            e.at(
                "tls",
                "`tls` applies to https:// targets, and this upstream has none",
            );
        }
        None
    };

    if !e.0.is_empty() {
        return Err(e.0);
    }

    let idle_timeout = dur(cfg.idle_timeout, Duration::from_secs(90));
    let max_idle = cfg.max_idle_per_target.unwrap_or(256);
    let client = pools.client(
        PoolKey {
            h2_only: cfg.protocol == UpstreamProtocol::Http2,
            connect_timeout,
            idle_timeout,
            max_idle,
            tls: tls.as_ref().map(|t| t.fingerprint),
        },
        tls.as_ref(),
    );
    let h1 = (cfg.protocol == UpstreamProtocol::Http1).then_some(h1pool::Settings {
        connect_timeout,
        idle_timeout,
        max_idle,
    });
    let state = pools.state(name);
    let bulkhead = cfg.max_concurrent.map(|max| {
        let queue = cfg
            .queue
            .as_ref()
            .map(|q| (q.size, dur(q.timeout, Duration::from_millis(100))));
        state.bulkhead(max, queue)
    });
    let discovery = discovery.map(|d| d.0);
    let set = match &discovery {
        None => {
            let rts = targets
                .into_iter()
                .zip(&weights)
                .map(|(target, &weight)| TargetRt {
                    state: state.target(&target.key()),
                    target,
                    weight,
                })
                .collect();
            TargetSet::new(strategy.clone(), rts, Vec::new())
        }
        Some(_) => TargetSet::new(strategy.clone(), Vec::new(), Vec::new()),
    };
    let up = Upstream {
        name: name.into(),
        set: ArcSwap::from_pointee(set),
        client,
        h1,
        protocol: cfg.protocol,
        connect_timeout,
        request_timeout,
        per_try_timeout,
        strategy,
        health,
        failure_statuses,
        retry,
        breaker,
        breaker_failures,
        breaker_fallback,
        bulkhead,
        discovery,
        state,
    };
    // Seed a discovered upstream with what is already known, so a reload serves at once.
    if let Some(eps) = up.state.endpoints() {
        up.install_endpoints(&eps);
    }
    Ok(up)
}

/// Compiles `discover`: the spec, and the TLS name its targets answer to.
fn build_discovery(
    d: &crate::config::DiscoverConfig,
    e: &mut Errs,
) -> Option<(DiscoverySpec, Option<String>)> {
    let scheme = match d.scheme.as_deref().unwrap_or("http") {
        "http" => Scheme::HTTP,
        "https" => Scheme::HTTPS,
        other => {
            e.at(
                "discover.scheme",
                format!("{other:?}: expected http or https"),
            );
            return None;
        }
    };
    e.positive("discover.refresh", d.refresh);
    let refresh = dur(d.refresh, Duration::from_secs(10));
    match (&d.dns, &d.srv) {
        (Some(_), Some(_)) | (None, None) => {
            e.at(
                "discover",
                "give one of `dns` (A/AAAA, with `port`) or `srv`",
            );
            None
        }
        (Some(name), None) => {
            if !d.nameservers.is_empty() {
                e.at(
                    "discover.nameservers",
                    "`dns` names go through the system resolver; `nameservers` is for `srv`",
                );
            }
            if name.is_empty() || name.contains(['/', ':', ' ']) {
                e.at("discover.dns", format!("{name:?}: expected a host name"));
                return None;
            }
            let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
            let port = d.port.unwrap_or(default_port);
            let host = if port == default_port {
                name.clone()
            } else {
                format!("{name}:{port}")
            };
            Some((
                DiscoverySpec {
                    source: Arc::new(discovery::Dns {
                        name: name.clone(),
                        port,
                        family: d.family,
                        host,
                    }),
                    refresh,
                    scheme,
                },
                Some(name.clone()),
            ))
        }
        (None, Some(name)) => {
            if d.port.is_some() {
                e.at("discover.port", "SRV records carry their own ports");
            }
            if dns::encode_query(0, name).is_err() {
                e.at("discover.srv", format!("{name:?} is not a DNS name"));
            }
            let mut servers = Vec::new();
            for (i, s) in d.nameservers.iter().enumerate() {
                let parsed = s.parse::<SocketAddr>().or_else(|_| {
                    s.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                });
                match parsed {
                    Ok(a) => servers.push(a),
                    Err(_) => e.at(
                        &format!("discover.nameservers[{i}]"),
                        format!("{s:?}: expected an IP address, optionally with :port"),
                    ),
                }
            }
            Some((
                DiscoverySpec {
                    source: Arc::new(discovery::SrvSource {
                        name: name.clone(),
                        nameservers: servers,
                        timeout: Duration::from_secs(2),
                    }),
                    refresh,
                    scheme,
                },
                None,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!(t.authority.as_str(), "127.0.0.1:8080");
        assert_eq!(t.base_path, "/base");
        assert_eq!(t.key(), "http://127.0.0.1:8080/base");
        assert_eq!(&*parse_target("http://svc").unwrap().label, "svc:80");
        assert_eq!(&*parse_target("https://svc").unwrap().label, "svc:443");
        assert!(parse_target("ftp://x").is_err());
        assert!(parse_target("x:80").is_err());
        assert!(parse_target("http://u:p@x").is_err());
    }
}
