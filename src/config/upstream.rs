//! What the user wrote about upstream resilience: balancers, health checks, discovery,
//! retries, circuit breakers, bulkheads, upstream TLS, and a route's canary `split:`.
//!
//! Same conventions as the rest of [`crate::config`]: `deny_unknown_fields`, snake_case,
//! durations and sizes as types. Two values take a short or a long form (a string or a
//! mapping: `balance`, and a list or a mapping: `split`); each has its own small visitor so
//! errors still name the field and what was expected, instead of serde's "did not match any
//! variant". Semantic checks (ranges, "one of dns or srv") happen in
//! [`crate::upstream::build`] and become located diagnostics.

use super::{int_or_string, Dur, RespondConfig, Size};
use serde::de::{self, value::MapAccessDeserializer, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

// === balance ===

/// `upstreams.NAME.balance`: `round_robin`, `weighted` (default), `least_connections`, `p2c`,
/// `ip_hash`, or `{ hash: header:X-User-Id | cookie:NAME | client_ip, algorithm: ketama | maglev }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BalanceConfig {
    RoundRobin,
    #[default]
    Weighted,
    LeastConnections,
    P2c,
    IpHash,
    Hash(HashBalanceConfig),
}

/// `balance: { hash: ..., algorithm: ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashBalanceConfig {
    /// `header:NAME`, `cookie:NAME` or `client_ip`.
    pub hash: String,
    #[serde(default)]
    pub algorithm: HashAlgorithm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgorithm {
    /// A ring with 160 points per unit of weight (nginx/ketama style).
    #[default]
    Ketama,
    /// Google's Maglev lookup table (65537 entries): faster picks, slightly more churn.
    Maglev,
}

const BALANCERS: &str =
    "round_robin, weighted, least_connections, p2c, ip_hash or { hash: header:NAME | cookie:NAME | client_ip }";

impl<'de> Deserialize<'de> for BalanceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BalanceConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(BALANCERS)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BalanceConfig, E> {
                Ok(match v {
                    "round_robin" => BalanceConfig::RoundRobin,
                    "weighted" => BalanceConfig::Weighted,
                    "least_connections" => BalanceConfig::LeastConnections,
                    "p2c" => BalanceConfig::P2c,
                    "ip_hash" => BalanceConfig::IpHash,
                    _ => return Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<BalanceConfig, A::Error> {
                HashBalanceConfig::deserialize(MapAccessDeserializer::new(map))
                    .map(BalanceConfig::Hash)
            }
        }
        d.deserialize_any(V)
    }
}

// === health ===

/// `upstreams.NAME.health`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default)]
    pub active: Option<ActiveHealthConfig>,
    #[serde(default)]
    pub passive: Option<PassiveHealthConfig>,
    /// When no target is healthy: `false` (default) answers 503; `true` sends to all targets
    /// anyway (Envoy's "panic mode").
    #[serde(default)]
    pub fallback_to_all: bool,
}

/// `health.active`: the gateway probes every target on a timer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthConfig {
    /// Path of the probe (`GET`). Default `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// Default 10s.
    #[serde(default)]
    pub interval: Option<Dur>,
    /// Default 1s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Consecutive passing probes that make an unhealthy target healthy. Default 2.
    #[serde(default, deserialize_with = "opt_int")]
    pub healthy: Option<u32>,
    /// Consecutive failing probes that make a healthy target unhealthy. Default 3.
    #[serde(default, deserialize_with = "opt_int")]
    pub unhealthy: Option<u32>,
    /// Statuses that pass: codes or classes (`200`, `"2xx"`). Default 200-399.
    #[serde(default)]
    pub expect: Vec<StatusPattern>,
}

/// `health.passive`: real traffic decides; a failing target is ejected for a while.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthConfig {
    /// Eject after this many failures in a row.
    #[serde(default, deserialize_with = "opt_int")]
    pub consecutive_failures: Option<u32>,
    /// Eject when this share of requests in `window` failed (with at least `min_requests`).
    #[serde(default, deserialize_with = "opt_ratio")]
    pub failure_ratio: Option<f64>,
    /// Default 10.
    #[serde(default, deserialize_with = "opt_int")]
    pub min_requests: Option<u32>,
    /// Default 10s.
    #[serde(default)]
    pub window: Option<Dur>,
    /// How long an ejected target gets no traffic. Default 30s.
    #[serde(default)]
    pub eject_for: Option<Dur>,
    /// Response statuses that count as failures (besides connect errors, resets and
    /// timeouts). Default `5xx`.
    #[serde(default)]
    pub failure_statuses: Vec<StatusPattern>,
}

/// A status code (`503`) or class (`"5xx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPattern {
    Code(u16),
    /// The hundreds digit: `5` for `5xx`.
    Class(u16),
}

impl StatusPattern {
    pub fn matches(&self, status: u16) -> bool {
        match *self {
            StatusPattern::Code(c) => c == status,
            StatusPattern::Class(c) => status / 100 == c,
        }
    }
}

const STATUS_EXPECTED: &str = "a status code like 503 or a class like \"5xx\"";

fn parse_status_pattern(s: &str) -> Option<StatusPattern> {
    let s = s.trim();
    if let Some(d) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
        let c: u16 = d.parse().ok()?;
        return (1..=5).contains(&c).then_some(StatusPattern::Class(c));
    }
    let c: u16 = s.parse().ok()?;
    (100..=599).contains(&c).then_some(StatusPattern::Code(c))
}

impl<'de> Deserialize<'de> for StatusPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusPattern;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(STATUS_EXPECTED)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusPattern, E> {
                u16::try_from(v)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .map(StatusPattern::Code)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusPattern, E> {
                Err(E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusPattern, E> {
                parse_status_pattern(v)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

// === discovery ===

/// `upstreams.NAME.discover`: targets from DNS instead of a fixed list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverConfig {
    /// A name whose A/AAAA records are the targets (needs `port`).
    #[serde(default)]
    pub dns: Option<String>,
    /// An SRV name (`_http._tcp.users.internal`): targets and ports from its records.
    #[serde(default)]
    pub srv: Option<String>,
    #[serde(default, deserialize_with = "opt_int")]
    pub port: Option<u16>,
    /// How often the name is resolved again. Default 10s.
    #[serde(default)]
    pub refresh: Option<Dur>,
    /// `http` (default) or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Which addresses of a `dns` name: `any` (default), `ipv4`, `ipv6`.
    #[serde(default)]
    pub family: AddressFamily,
    /// Name servers for `srv` (`ip:port`); default: those in /etc/resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressFamily {
    #[default]
    Any,
    Ipv4,
    Ipv6,
}

// === retries, breaker, bulkhead ===

/// `upstreams.NAME.retries`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first try (so `attempts: 2` is up to three tries), as in Istio.
    #[serde(deserialize_with = "int_or_string")]
    pub attempts: u32,
    /// What is retried: `connect_error`, `timeout`, `reset`, `5xx`, `gateway_error`
    /// (502, 503, 504) and status codes. Default: connect_error, reset, timeout, 502, 503, 504.
    #[serde(default)]
    pub on: Vec<RetryOnConfig>,
    /// First backoff; doubles per retry, with full jitter. Default 25ms.
    #[serde(default)]
    pub backoff: Option<Dur>,
    /// Cap of the backoff. Default 10 × backoff.
    #[serde(default)]
    pub max_backoff: Option<Dur>,
    /// Methods that are retried. Default the idempotent ones: GET, HEAD, OPTIONS, TRACE, PUT,
    /// DELETE. Listing POST or PATCH opts them in. Connect errors are retried for any method
    /// (the request never left the gateway).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Request bodies up to this size are kept so that a retry can send them again; larger
    /// (or unknown-length) bodies are streamed and never retried. Default 64KiB.
    #[serde(default)]
    pub buffer: Option<Size>,
    #[serde(default)]
    pub budget: Option<RetryBudgetConfig>,
}

/// One entry of `retries.on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOnConfig {
    ConnectError,
    Timeout,
    Reset,
    Status(StatusPattern),
    GatewayError,
}

impl<'de> Deserialize<'de> for RetryOnConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RetryOnConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("connect_error, timeout, reset, gateway_error, 5xx or a status code")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOnConfig, E> {
                u16::try_from(v)
                    .ok()
                    .filter(|c| (400..=599).contains(c))
                    .map(|c| RetryOnConfig::Status(StatusPattern::Code(c)))
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOnConfig, E> {
                Err(E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOnConfig, E> {
                Ok(match v {
                    "connect_error" => RetryOnConfig::ConnectError,
                    "timeout" => RetryOnConfig::Timeout,
                    "reset" => RetryOnConfig::Reset,
                    "gateway_error" => RetryOnConfig::GatewayError,
                    other => match parse_status_pattern(other) {
                        Some(p) if !matches!(p, StatusPattern::Code(c) if c < 400) => {
                            RetryOnConfig::Status(p)
                        }
                        _ => return Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                    },
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `retries.budget`: retries may add at most `ratio` of the upstream's requests in `window`,
/// but `min_per_second` are always allowed so that quiet upstreams can still retry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Default 0.2.
    #[serde(default, deserialize_with = "opt_ratio")]
    pub ratio: Option<f64>,
    /// Default 10.
    #[serde(default, deserialize_with = "opt_int")]
    pub min_per_second: Option<u32>,
    /// Default 10s.
    #[serde(default)]
    pub window: Option<Dur>,
}

/// `upstreams.NAME.circuit_breaker`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Opens when this share of requests in `window` failed.
    #[serde(deserialize_with = "ratio")]
    pub failure_ratio: f64,
    /// ... and at least this many requests were seen in `window`. Default 20.
    #[serde(default, deserialize_with = "opt_int")]
    pub min_requests: Option<u32>,
    /// Default 10s.
    #[serde(default)]
    pub window: Option<Dur>,
    /// How long it stays open before letting probes through. Default 30s.
    #[serde(default)]
    pub open_for: Option<Dur>,
    /// Requests let through while half-open; all must succeed to close. Default 3.
    #[serde(default, deserialize_with = "opt_int")]
    pub half_open_probes: Option<u32>,
    /// Statuses that count as failures (besides connect errors, resets, timeouts). Default 5xx.
    #[serde(default)]
    pub failure_statuses: Vec<StatusPattern>,
    /// Answer this instead of a 503 problem while open.
    #[serde(default)]
    pub fallback: Option<RespondConfig>,
}

/// `upstreams.NAME.queue`: requests beyond `max_concurrent` wait here, up to `size` of them,
/// for at most `timeout`; then 503.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(deserialize_with = "int_or_string")]
    pub size: usize,
    /// Default 100ms.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

/// `upstreams.NAME.tls`: how the gateway talks to `https://` targets.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file with the CA certificates to trust instead of the system's.
    #[serde(default)]
    pub ca: Option<String>,
    /// Server name sent (SNI) and verified; default the target's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Client certificate (PEM chain) and key for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
}

// === split ===

/// `routes[].split`: a weighted choice among upstreams (canaries). Either a list of
/// `{ upstream, weight }`, or a mapping with that list under `upstreams` plus `override`
/// and `sticky`.
#[derive(Debug, Clone)]
pub struct SplitConfig {
    pub upstreams: Vec<SplitEntry>,
    pub override_by: Option<SplitOverride>,
    /// `client_ip`, `consumer` (falls back to the client address), `header:NAME`,
    /// `cookie:NAME`. Without it each request is drawn at random.
    pub sticky: Option<String>,
    /// Written as a mapping (the list is then under `upstreams`), for diagnostics.
    pub long_form: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitEntry {
    pub upstream: String,
    #[serde(deserialize_with = "int_or_string")]
    pub weight: u32,
}

/// `split.override`: a header or cookie whose value names one of the split's upstreams
/// picks it directly (testers reaching the canary on purpose).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitOverride {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitLong {
    upstreams: Vec<SplitEntry>,
    #[serde(default, rename = "override")]
    override_by: Option<SplitOverride>,
    #[serde(default)]
    sticky: Option<String>,
}

impl<'de> Deserialize<'de> for SplitConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SplitConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a list of { upstream, weight }, or a mapping with `upstreams`, `override`, `sticky`",
                )
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<SplitConfig, A::Error> {
                let upstreams =
                    Vec::<SplitEntry>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(SplitConfig {
                    upstreams,
                    override_by: None,
                    sticky: None,
                    long_form: false,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<SplitConfig, A::Error> {
                let l = SplitLong::deserialize(MapAccessDeserializer::new(map))?;
                Ok(SplitConfig {
                    upstreams: l.upstreams,
                    override_by: l.override_by,
                    sticky: l.sticky,
                    long_form: true,
                })
            }
        }
        d.deserialize_any(V)
    }
}

// === number helpers ===

fn opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + std::str::FromStr,
{
    int_or_string(d).map(Some)
}

/// A share between 0 and 1: `0.5`, `1`, or an interpolated `"0.5"`.
fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a share between 0 and 1, like 0.5")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            self.visit_f64(v as f64)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            self.visit_f64(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v.trim().parse::<f64>() {
                Ok(f) => self.visit_f64(f),
                Err(_) => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(V)
}

fn opt_ratio<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    ratio(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn de<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> Result<T, String> {
        serde_path_to_error::deserialize::<_, T>(json).map_err(|e| format!("{}: {}", e.path(), e))
    }

    #[test]
    fn balance_forms() {
        assert_eq!(
            de::<BalanceConfig>(serde_json::json!("p2c")).unwrap(),
            BalanceConfig::P2c
        );
        assert_eq!(
            de::<BalanceConfig>(
                serde_json::json!({"hash": "header:X-User", "algorithm": "maglev"})
            )
            .unwrap(),
            BalanceConfig::Hash(HashBalanceConfig {
                hash: "header:X-User".into(),
                algorithm: HashAlgorithm::Maglev
            })
        );
        let e = de::<BalanceConfig>(serde_json::json!("fastest")).unwrap_err();
        assert!(e.contains("round_robin, weighted"), "{e}");
        let e =
            de::<BalanceConfig>(serde_json::json!({"hash": "client_ip", "ring": 1})).unwrap_err();
        assert!(e.contains("unknown field `ring`"), "{e}");
    }

    #[test]
    fn statuses_and_retry_conditions() {
        let s: Vec<StatusPattern> = de(serde_json::json!([503, "5xx", "404"])).unwrap();
        assert_eq!(
            s,
            vec![
                StatusPattern::Code(503),
                StatusPattern::Class(5),
                StatusPattern::Code(404)
            ]
        );
        assert!(s[1].matches(599) && !s[1].matches(600) && !s[0].matches(502));
        assert!(de::<StatusPattern>(serde_json::json!(99)).is_err());
        let on: Vec<RetryOnConfig> = de(serde_json::json!([
            "connect_error",
            502,
            "gateway_error",
            "5xx"
        ]))
        .unwrap();
        assert_eq!(on[1], RetryOnConfig::Status(StatusPattern::Code(502)));
        assert!(de::<RetryOnConfig>(serde_json::json!(200)).is_err());
        assert!(de::<RetryOnConfig>(serde_json::json!("sometimes")).is_err());
    }

    #[test]
    fn split_forms() {
        let s: SplitConfig = de(serde_json::json!([{"upstream": "a", "weight": 1}])).unwrap();
        assert_eq!(s.upstreams.len(), 1);
        let s: SplitConfig = de(serde_json::json!({
            "upstreams": [{"upstream": "a", "weight": "3"}],
            "override": {"header": "X-Canary"},
            "sticky": "client_ip"
        }))
        .unwrap();
        assert_eq!(s.upstreams[0].weight, 3);
        assert_eq!(s.sticky.as_deref(), Some("client_ip"));
        let e = de::<SplitConfig>(serde_json::json!({"upstreams": [], "stick": 1})).unwrap_err();
        assert!(e.contains("unknown field `stick`"), "{e}");
        let e = de::<SplitConfig>(serde_json::json!([{"upstream": "a", "wieght": 1}])).unwrap_err();
        assert!(e.starts_with("[0]"), "{e}");
    }

    #[test]
    fn ratios() {
        #[derive(Deserialize)]
        struct R {
            #[serde(deserialize_with = "ratio")]
            r: f64,
        }
        assert_eq!(de::<R>(serde_json::json!({"r": "0.25"})).unwrap().r, 0.25);
        assert_eq!(de::<R>(serde_json::json!({"r": 1})).unwrap().r, 1.0);
        assert!(de::<R>(serde_json::json!({"r": 1.5})).is_err());
    }
}
