//! Upstreams: named pools of HTTP targets with their connection pool and balancer.
//!
//! Built from `upstreams.NAME` at compile time. Connection pools live outside the config
//! snapshot in [`Pools`], keyed by their settings, so a reload keeps warm keep-alive
//! connections. Balancing is smooth weighted round robin, precomputed at compile time into a
//! rotation so a pick is one atomic increment.

use crate::body::Body;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type HttpClient = Client<HttpConnector, Body>;

/// One backend server.
#[derive(Debug)]
pub struct Target {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Prefix for every forwarded path (from the target URL), without a trailing slash.
    pub base_path: String,
    /// `host:port`, for logs.
    pub label: Arc<str>,
    /// The `Host` header for this target, built once.
    pub host_header: http::HeaderValue,
    /// Live state (in-flight, health, circuit) for metrics and the admin API.
    pub stats: Arc<crate::observe::metrics::TargetStats>,
}

pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    /// Target indexes in smooth-weighted order; one full cycle.
    rotation: Vec<usize>,
    next: AtomicUsize,
    pub client: HttpClient,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub protocol: UpstreamProtocol,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .finish()
    }
}

impl Upstream {
    /// Round-robin pick. `None` only for an upstream without targets (refused at compile).
    pub fn pick(&self) -> Option<&Target> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let i = *self.rotation.get(n % self.rotation.len().max(1))?;
        self.targets.get(i)
    }
}

/// Settings that decide whether two upstreams may share a connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    h2: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

/// Connection pools kept across reloads. Only touched at compile time.
#[derive(Default)]
pub struct Pools {
    clients: Mutex<HashMap<PoolKey, HttpClient>>,
}

impl Pools {
    fn client(&self, key: PoolKey) -> HttpClient {
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key)
            .or_insert_with(|| {
                let mut conn = HttpConnector::new();
                conn.set_connect_timeout(Some(key.connect_timeout));
                conn.set_nodelay(true);
                conn.set_keepalive(Some(Duration::from_secs(60)));
                let mut b = Client::builder(TokioExecutor::new());
                b.pool_idle_timeout(key.idle_timeout)
                    .pool_max_idle_per_host(key.max_idle)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .set_host(false);
                if key.h2 {
                    b.http2_only(true);
                }
                b.build(conn)
            })
            .clone()
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
    if scheme != Scheme::HTTP {
        return Err(format!(
            "{url:?}: only http:// targets are supported so far (upstream TLS is not built yet)"
        ));
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
    let label: Arc<str> = match authority.port_u16() {
        Some(_) => authority.as_str().into(),
        None => format!("{}:80", authority.host()).into(),
    };
    let host_header = http::HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("{url:?}: the host cannot be sent as a Host header"))?;
    Ok(Target {
        scheme,
        authority,
        base_path,
        label,
        host_header,
        stats: Default::default(),
    })
}

/// Builds the smooth weighted round-robin sequence (nginx's algorithm) for one full cycle.
pub fn smooth_rotation(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

pub struct Defaults {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// Largest sum of weights; the rotation is precomputed, so this bounds its memory.
pub const MAX_TOTAL_WEIGHT: u32 = 100_000;

/// Builds an upstream; `Err` carries (field path suffix, message) pairs.
pub fn build(
    name: &str,
    cfg: &UpstreamConfig,
    defaults: &Defaults,
    pools: &Pools,
) -> Result<Upstream, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut targets = Vec::new();
    let mut weights = Vec::new();
    if cfg.targets.is_empty() {
        errors.push((
            "targets".to_owned(),
            "an upstream needs at least one target".to_owned(),
        ));
    }
    for (i, t) in cfg.targets.iter().enumerate() {
        match parse_target(&t.url) {
            Ok(target) => targets.push(target),
            Err(e) => errors.push((format!("targets[{i}].url"), e)),
        }
        if t.weight == 0 {
            errors.push((
                format!("targets[{i}].weight"),
                "weight must be at least 1".to_owned(),
            ));
        }
        weights.push(t.weight.max(1));
    }
    if weights.iter().map(|&w| w as u64).sum::<u64>() > MAX_TOTAL_WEIGHT as u64 {
        errors.push((
            "targets".to_owned(),
            format!("the weights add up to more than {MAX_TOTAL_WEIGHT}"),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let connect_timeout = cfg
        .timeouts
        .connect
        .map(|d| d.0)
        .unwrap_or(defaults.connect_timeout);
    let request_timeout = cfg
        .timeouts
        .request
        .map(|d| d.0)
        .unwrap_or(defaults.request_timeout);
    let client = pools.client(PoolKey {
        h2: cfg.protocol == UpstreamProtocol::Http2,
        connect_timeout,
        idle_timeout: cfg
            .idle_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(90)),
        max_idle: cfg.max_idle_per_target.unwrap_or(256),
    });
    Ok(Upstream {
        name: name.into(),
        targets,
        rotation: smooth_rotation(&weights),
        next: AtomicUsize::new(0),
        client,
        connect_timeout,
        request_timeout,
        protocol: cfg.protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weights() {
        assert_eq!(smooth_rotation(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_rotation(&[1, 1]), vec![0, 1]);
        let r = smooth_rotation(&[3, 2]);
        assert_eq!(r.iter().filter(|&&i| i == 0).count(), 3);
    }

    #[test]
    fn targets() {
        let t = parse_target("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!(t.authority.as_str(), "127.0.0.1:8080");
        assert_eq!(t.base_path, "/base");
        assert_eq!(&*parse_target("http://svc").unwrap().label, "svc:80");
        assert!(parse_target("https://x")
            .unwrap_err()
            .contains("only http://"));
        assert!(parse_target("ftp://x").is_err());
        assert!(parse_target("x:80").is_err());
        assert!(parse_target("http://u:p@x").is_err());
    }
}
