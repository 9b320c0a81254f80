//! What the user wrote: serde types mirroring the YAML file, one strict convention for all of them.
//!
//! Every type here denies unknown fields and uses snake_case keys. These types hold no runtime
//! state and do no I/O; [`crate::compile`] turns a [`Config`] into the immutable runtime
//! [`crate::compile::Gateway`]. Loading (YAML parsing, `${VAR}` interpolation, error locations)
//! lives in [`load`]; units (durations, sizes) in [`units`].

pub mod auth;
pub mod load;
pub mod traffic;
pub mod units;
pub mod upstream;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

pub use auth::{AuthConfig, ConsumerConfig};
pub use load::{load_file, load_str, load_str_partial, Diagnostic, Diagnostics, Loaded, SourceMap};
pub use units::{Dur, Size};
pub use upstream::{
    BalanceConfig, CircuitBreakerConfig, DiscoverConfig, HealthConfig, QueueConfig, RetryConfig,
    SplitConfig, UpstreamTlsConfig,
};

/// The whole file. Only `routes` is required.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    pub defaults: Defaults,
    pub server: ServerConfig,
    pub access_log: AccessLogConfig,
    pub tracing: TracingConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// Known callers and their credentials (issue 4).
    pub consumers: Vec<ConsumerConfig>,
    /// Identity providers that routes refer to by name (issue 4).
    pub auth: AuthConfig,
    /// Where rate-limit counters live (issue 5).
    pub state: traffic::StateConfig,
    /// Worker threads of the async runtime; defaults to the number of CPUs.
    pub workers: Option<usize>,
}

/// `listeners[]`: where the gateway accepts client connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Position in the file, for diagnostics (set by the loader).
    #[serde(skip)]
    pub index: usize,
    /// A name for logs; defaults to the bind address.
    #[serde(default)]
    pub name: Option<String>,
    /// `host:port`; port 0 picks a free port (tests).
    pub bind: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `listeners[].tls`: certificates for TLS termination. `cert`/`key` give the default
/// certificate; `certificates` adds more, chosen by the client's SNI against each
/// certificate's DNS names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub certificates: Vec<CertPair>,
    /// mTLS: PEM file of the CAs that client certificates must chain to.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// With `client_ca`: `required` (default; no certificate, no handshake) or `optional`.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

/// `listeners[].tls.client_auth`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    Optional,
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: String,
    pub key: String,
}

/// `admin`: the operator's listener: the admin API, `/metrics` and `/openapi.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub bind: String,
    /// Bearer token; required when `bind` is not a loopback address.
    #[serde(default)]
    pub token: Option<String>,
}

/// `defaults`: values every route and upstream inherits unless it sets its own.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Largest request body accepted (413 beyond). Default 10MiB.
    #[serde(default)]
    pub max_body: Option<Size>,
}

/// Connect and request timeouts. `request` is the total: from sending the request upstream
/// until the response headers arrive, over every try. `per_try` bounds each try when
/// retries are on.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default)]
    pub connect: Option<Dur>,
    #[serde(default)]
    pub request: Option<Dur>,
    #[serde(default)]
    pub per_try: Option<Dur>,
}

/// `server`: connection-level settings that are not per route.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default)]
    pub request_id: RequestIdConfig,
    /// Proxies (CIDRs) whose `X-Forwarded-For` / `-Proto` / `-Host` are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest request head (request line + headers) accepted; 431 beyond. Default 32KiB.
    #[serde(default)]
    pub max_header_size: Option<Size>,
    /// How long in-flight requests may take to finish on SIGTERM/SIGINT. Default 30s.
    #[serde(default)]
    pub shutdown_grace: Option<Dur>,
    /// The pseudonym in the `Via` header; `""` turns `Via` off. Default `portcullis`.
    #[serde(default)]
    pub via: Option<String>,
}

/// `server.request_id`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// Header name; default `X-Request-Id`.
    #[serde(default)]
    pub header: Option<String>,
    /// Keep a well-formed id sent by the client instead of generating one. Default false.
    #[serde(default)]
    pub trust_incoming: bool,
}

/// `access_log`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default)]
    pub format: AccessLogFormat,
    /// Append to this file instead of stdout. Reopened on SIGUSR1 (log rotation).
    #[serde(default)]
    pub path: Option<String>,
    /// The keys of a JSON line, in this order. Default: all of them.
    #[serde(default)]
    pub fields: Option<Vec<AccessLogField>>,
}

/// One key of a JSON access-log line. There is deliberately no field for headers, query
/// strings or bodies: what is not logged cannot leak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogField {
    Time,
    RequestId,
    TraceId,
    Client,
    Method,
    Host,
    Path,
    Protocol,
    Route,
    Upstream,
    Status,
    BytesIn,
    BytesOut,
    DurationMs,
    UpstreamMs,
}

/// `tracing`: OpenTelemetry traces of requests and upstream tries.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where spans are exported; without it no spans are recorded (W3C trace headers from
    /// clients still pass through to upstreams unchanged).
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

/// `tracing.otlp`: an OTLP collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector, `http://host:4318`; spans are POSTed to `{endpoint}/v1/traces` (an
    /// endpoint that already ends in `/v1/traces` is used as written).
    pub endpoint: String,
    /// `http/json` (default; `http` is the same). `http/protobuf` and `grpc` are recognised
    /// but not built in.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Share of new traces recorded, 0.0 to 1.0 (default 1.0). A request that arrives with a
    /// `traceparent` follows its parent's sampled flag instead.
    #[serde(default, deserialize_with = "opt_float_or_string")]
    pub sample_ratio: Option<f64>,
    /// `service.name` of the spans. Default `portcullis`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Extra headers on every export request (a collector's API key, for example).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccessLogFormat {
    #[default]
    Json,
    Text,
    Off,
}

/// `json`, `text` or `off`. YAML reads an unquoted `off` as the boolean `false`, so that is
/// accepted as `off` too.
impl<'de> Deserialize<'de> for AccessLogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["json", "text", "off"];
        struct V;
        impl Visitor<'_> for V {
            type Value = AccessLogFormat;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("one of `json`, `text`, `off`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AccessLogFormat, E> {
                match v {
                    "json" => Ok(AccessLogFormat::Json),
                    "text" => Ok(AccessLogFormat::Text),
                    "off" => Ok(AccessLogFormat::Off),
                    _ => Err(E::unknown_variant(v, NAMES)),
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<AccessLogFormat, E> {
                if v {
                    Err(E::invalid_value(de::Unexpected::Bool(v), &self))
                } else {
                    Ok(AccessLogFormat::Off)
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `upstreams.NAME`: a pool of HTTP targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Fixed targets; or `discover` them.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// `http1` (default), `http2` (h2c prior knowledge, or ALPN h2 over TLS), or `auto`
    /// (https only: ALPN offers h2 and http/1.1).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub discover: Option<DiscoverConfig>,
    #[serde(default)]
    pub balance: BalanceConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub retries: Option<RetryConfig>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Bulkhead: requests in flight to this upstream at most; beyond it 503 at once (or
    /// a wait in `queue`).
    #[serde(default, deserialize_with = "opt_usize")]
    pub max_concurrent: Option<usize>,
    #[serde(default)]
    pub queue: Option<QueueConfig>,
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Idle keep-alive connections are closed after this long. Default 90s.
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// Idle keep-alive connections kept per target. Default 256.
    #[serde(default)]
    pub max_idle_per_target: Option<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
    Auto,
}

fn opt_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    int_or_string(d).map(Some)
}

/// `upstreams.NAME.targets[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `http://host:port` with an optional base path that prefixes every forwarded path.
    pub url: String,
    /// Share of requests relative to the other targets (smooth weighted round robin). Default 1.
    #[serde(default = "one", deserialize_with = "int_or_string")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `routes[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Position in the file, for diagnostics (set by the loader).
    #[serde(skip)]
    pub index: usize,
    /// Used in logs and `portcullis routes`; defaults to `route-N`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub respond: Option<RespondConfig>,
    /// Weighted choice among upstreams (canaries), instead of `upstream`.
    #[serde(default)]
    pub split: Option<SplitConfig>,
    #[serde(default)]
    pub rewrite: Option<RewriteConfig>,
    #[serde(default)]
    pub deprecation: Option<DeprecationConfig>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub max_body: Option<Size>,
    /// Send the client's `Host` upstream instead of the target's. Default false.
    #[serde(default)]
    pub preserve_host: bool,
    #[serde(default)]
    pub policies: Vec<crate::policy::PolicyConfig>,
}

/// `routes[].match`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Path template: `/users/{id}`, `/files/{*rest}`. Default `/{*rest}` (everything).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// Exact hosts or `*.example.com` wildcards; empty = any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Header name → accepted value(s); `"*"` = present with any value.
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    /// Query parameter → accepted value(s); `"*"` = present with any value.
    #[serde(default)]
    pub query: BTreeMap<String, OneOrMany>,
}

/// `routes[].rewrite`: applied to the normalised path before it goes upstream.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub add_prefix: Option<String>,
    /// A template using the route's captured params: `/v2/users/{id}/{*rest}`.
    #[serde(default)]
    pub path: Option<String>,
}

/// `routes[].respond`: an answer made by the gateway itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    #[serde(default = "ok_status", deserialize_with = "int_or_string")]
    pub status: u16,
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn ok_status() -> u16 {
    200
}

/// `routes[].deprecation`: RFC 9745 `Deprecation`, RFC 8594 `Sunset`, and `Link` headers; after
/// `sunset` the route answers 410 by itself. Dates are `YYYY-MM-DD` or RFC 3339 timestamps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeprecationConfig {
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub sunset: Option<String>,
    #[serde(default)]
    pub link: Option<String>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Accepts `8` or `"8"`: values that came through `${VAR}` interpolation are strings.
fn int_or_string<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + std::str::FromStr,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<T: TryFrom<u64> + std::str::FromStr> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            u64::try_from(v)
                .ok()
                .and_then(|v| T::try_from(v).ok())
                .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            v.trim()
                .parse()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// Accepts `0.25` or `"0.25"` (interpolated values are strings).
fn opt_float_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<f64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.trim()
                .parse()
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// `workers` accepts a number or an interpolated numeric string.
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct Workers(#[serde(deserialize_with = "int_or_string")] pub usize);
