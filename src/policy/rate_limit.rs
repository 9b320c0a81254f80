//! `rate_limit`: requests per time per key, with the IETF rate-limit headers.
//!
//! A policy holds one or more limits (`requests` per `per`, each with an algorithm — see
//! [`crate::state::algorithms`]), a key (client address, consumer, API key, header, path
//! parameter, route, or a combination) and a handle on the shared state. Per request it builds
//! one counter key per limit and asks the store once for all of them ([`Store::check`]: one
//! Redis round trip however many limits); a refused request counts against none of them.
//!
//! **Consumers.** A limit keyed by `consumer` counts per authenticated consumer; a consumer's
//! own limits (`consumers[].limits`, compiled into [`ConsumerLimits`]) replace the limits of
//! every `rate_limit` policy whose key includes `consumer`, keeping that policy's key. With no
//! consumer (anonymous request) a `consumer` key counts per client address instead, as Kong
//! does; so do `api_key`, `header:` and `param:` parts whose value is missing — an absent value
//! must not become one bucket that every such client shares (or dodges).
//!
//! **Headers** (on by default, `headers: false` turns them off), following
//! draft-ietf-httpapi-ratelimit-headers-10 (structured fields):
//! `RateLimit-Policy: "10-per-1s";q=10;w=1` (one item per limit; for a token bucket `q` is the
//! bucket size and `w` the time to refill it) and `RateLimit: "10-per-1s";r=9;t=1` (remaining,
//! seconds until the quota is restored), plus `X-RateLimit-Limit/-Remaining/-Reset` (delta
//! seconds) for the limit closest to refusing. A refusal is a 429 problem+json with
//! `Retry-After`.
//!
//! Counter keys: `rl:{route}:{limit name}:{algorithm}:{parts}`; parts are tagged (`ip=`,
//! `c=`, `k=`, `h=`, `p=`) and long or unusual values are replaced by a SHA-256 digest, so no
//! two different callers can share a key by sending crafted values.

use super::concurrency_limit::Held;
use super::{field_error, Build, BuildCx, BuildEnv, BuildError, Ctx, Flow, Policy};
use crate::body::{self, Body};
use crate::config::traffic::{LimitConfig, RateLimitConfig};
use crate::config::OneOrMany;
use crate::error::GatewayError;
use crate::state::memory::Permit;
use crate::state::{Algorithm, Check, Decision, LimitSpec, StateSlot, Unavailable, MAX_REQUESTS};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use sha2::Digest;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

// === keys ===

/// One part of a rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client address (after `server.trusted_proxies`).
    Ip,
    /// The authenticated consumer ([`Ctx::consumer`]); the client address without one.
    Consumer,
    /// The verified API key's identity ([`Ctx::api_key`]); the client address without one.
    ApiKey,
    /// One counter for the whole route.
    Route,
    /// A request header's value; the client address when absent.
    Header(HeaderName),
    /// A path parameter of the route; the client address when absent.
    Param(Arc<str>),
}

/// What a limit counts separately: one part or a combination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec(Arc<[KeyPart]>);

impl Default for KeySpec {
    fn default() -> Self {
        KeySpec(Arc::new([KeyPart::Ip]))
    }
}

impl KeySpec {
    /// Parses `ip`, `consumer`, `api_key`, `route`, `header:NAME`, `param:NAME` (or a list).
    /// `params` are the route's path parameters. Errors name the field (`key` / `key[1]`).
    pub fn parse(
        key: Option<&OneOrMany>,
        field: &str,
        params: &[Box<str>],
    ) -> Result<KeySpec, String> {
        let Some(key) = key else {
            return Ok(KeySpec::default());
        };
        if key.0.is_empty() {
            return Err(field_error(field, "expected at least one key part"));
        }
        let many = key.0.len() > 1;
        let mut parts = Vec::new();
        for (i, s) in key.0.iter().enumerate() {
            let at = if many {
                format!("{field}[{i}]")
            } else {
                field.to_owned()
            };
            let part = match s.as_str() {
                "ip" => KeyPart::Ip,
                "consumer" => KeyPart::Consumer,
                "api_key" => KeyPart::ApiKey,
                "route" => KeyPart::Route,
                other => match other.split_once(':') {
                    Some(("header", name)) => match HeaderName::from_bytes(name.as_bytes()) {
                        Ok(h) => KeyPart::Header(h),
                        Err(_) => {
                            return Err(field_error(&at, format!("{name:?} is not a header name")))
                        }
                    },
                    Some(("param", name)) => {
                        if !params.iter().any(|p| &**p == name) {
                            let known = if params.is_empty() {
                                "the route's path has none".to_owned()
                            } else {
                                format!(
                                    "the route's path has: {}",
                                    params.iter().map(|p| &**p).collect::<Vec<_>>().join(", ")
                                )
                            };
                            return Err(field_error(
                                &at,
                                format!("no path parameter {name:?}; {known}"),
                            ));
                        }
                        KeyPart::Param(name.into())
                    }
                    _ => {
                        return Err(field_error(
                            &at,
                            format!("{other:?}: expected ip, consumer, api_key, route, header:NAME or param:NAME"),
                        ))
                    }
                },
            };
            if !parts.contains(&part) {
                parts.push(part);
            }
        }
        Ok(KeySpec(parts.into()))
    }

    pub fn parts(&self) -> &[KeyPart] {
        &self.0
    }

    fn has_consumer(&self) -> bool {
        self.0.contains(&KeyPart::Consumer)
    }

    /// Appends the request's value of this key to `out`.
    pub fn write(&self, cx: &Ctx, headers: &HeaderMap, out: &mut String) {
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('|');
            }
            let value: Option<(&str, &[u8])> = match part {
                KeyPart::Ip => None,
                KeyPart::Route => {
                    out.push_str("route");
                    continue;
                }
                KeyPart::Consumer => cx.consumer.as_deref().map(|c| ("c=", c.as_bytes())),
                KeyPart::ApiKey => cx.api_key.as_deref().map(|k| ("k=", k.as_bytes())),
                KeyPart::Header(h) => headers.get(h).map(|v| ("h=", v.as_bytes())),
                KeyPart::Param(p) => cx.params.get(p).map(|v| ("p=", v.as_bytes())),
            };
            match value {
                Some((tag, v)) => {
                    out.push_str(tag);
                    push_value(out, v);
                }
                None => push_ip(out, cx.client.ip()),
            }
        }
    }
}

/// `ip=` and the address; IPv4 without `core::fmt`, which costs more than the rest of the key.
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    out.push_str("ip=");
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(o));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Decimal digits of `n` (the hot path avoids `core::fmt`).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// A header value for a number. Values below 4096 (most remaining counts and reset times)
/// come from a table made once, so they cost no allocation per response.
fn number_header(n: u64) -> HeaderValue {
    static SMALL: std::sync::OnceLock<Box<[HeaderValue]>> = std::sync::OnceLock::new();
    let table = SMALL.get_or_init(|| {
        (0..4096u64)
            .map(|i| HeaderValue::from_static(Box::leak(i.to_string().into_boxed_str())))
            .collect()
    });
    usize::try_from(n)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

/// Short plain values go in as they are; anything long or with a separator (`|`), `%`, `#`
/// or a non-printable byte goes in as `#` + a SHA-256 digest, so values cannot be crafted to
/// collide with another key.
fn push_value(out: &mut String, v: &[u8]) {
    let plain = v.len() <= 64
        && v.iter()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'|' | b'%' | b'#'));
    if plain {
        // Checked: ASCII only.
        out.push_str(std::str::from_utf8(v).unwrap_or_default());
    } else {
        out.push('#');
        for b in &sha2::Sha256::digest(v)[..16] {
            let _ = write!(out, "{b:02x}");
        }
    }
}

// === limits ===

/// One compiled limit.
#[derive(Debug, Clone)]
struct Limit {
    /// The name clients see in the headers.
    name: Arc<str>,
    /// `rl:{route}:{name}:{algorithm}:`, the counter key up to the key parts.
    counter: String,
    spec: LimitSpec,
    key: KeySpec,
    /// `X-RateLimit-Limit` when this limit is the tightest.
    limit_header: HeaderValue,
}

/// The limits one request is checked against, with their `RateLimit-Policy` value.
#[derive(Debug, Clone)]
struct LimitSet {
    limits: Box<[Limit]>,
    policy_header: HeaderValue,
}

impl LimitSet {
    fn new(limits: Vec<Limit>) -> Result<LimitSet, String> {
        let mut policy = String::new();
        for l in &limits {
            if !policy.is_empty() {
                policy.push_str(", ");
            }
            let (q, w) = quota_window(&l.spec);
            let _ = write!(policy, "\"{}\";q={q};w={w}", l.name);
        }
        Ok(LimitSet {
            policy_header: HeaderValue::from_str(&policy).map_err(|e| e.to_string())?,
            limits: limits.into(),
        })
    }
}

/// `q` and `w` of `RateLimit-Policy`: windows show `requests` per `per`; a token bucket shows
/// its size and the time it takes to fill, so that `r` never exceeds `q`.
fn quota_window(s: &LimitSpec) -> (u64, u64) {
    let w = match s.algorithm {
        Algorithm::TokenBucket => s.period.mul_f64(s.burst as f64 / s.requests as f64),
        _ => s.period,
    };
    let q = match s.algorithm {
        Algorithm::TokenBucket => s.burst,
        _ => s.requests,
    };
    (q, ceil_secs(w).max(1))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `1s`, `1m`, `1h`, `1d`, `1500ms`: for default limit names.
fn fmt_period(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, n) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms % n == 0 {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// What one limit was written as, whichever form.
struct LimitDraft<'a> {
    field: String,
    requests: Option<u64>,
    per: Option<Duration>,
    algorithm: Option<Algorithm>,
    burst: Option<u64>,
    name: Option<&'a str>,
    key: Option<&'a OneOrMany>,
}

/// Checks a limit's numbers; errors name the field under `field` (`limits[1]`, or nothing).
fn spec_of(d: &LimitDraft<'_>) -> Result<LimitSpec, String> {
    let at = |f: &str| {
        if d.field.is_empty() {
            f.to_owned()
        } else {
            format!("{}.{f}", d.field)
        }
    };
    let requests = d.requests.ok_or_else(|| {
        field_error(
            &at("requests"),
            "a limit needs `requests` and `per` (or a `limits` list)",
        )
    })?;
    let period = d
        .per
        .ok_or_else(|| field_error(&at("per"), "a limit needs `per`, a duration like 1s or 1m"))?;
    if !(1..=MAX_REQUESTS).contains(&requests) {
        return Err(field_error(
            &at("requests"),
            format!("expected a number from 1 to {MAX_REQUESTS}"),
        ));
    }
    if period < Duration::from_millis(1) {
        return Err(field_error(
            &at("per"),
            "expected a duration of at least 1ms, like 1s or 1m",
        ));
    }
    let algorithm = d.algorithm.unwrap_or_default();
    let burst = match (algorithm, d.burst) {
        (Algorithm::TokenBucket, Some(b)) if !(1..=MAX_REQUESTS).contains(&b) => {
            return Err(field_error(
                &at("burst"),
                format!("expected a number from 1 to {MAX_REQUESTS}"),
            ))
        }
        (Algorithm::TokenBucket, b) => b.unwrap_or(requests),
        (_, Some(_)) => {
            return Err(field_error(
                &at("burst"),
                "`burst` applies to `algorithm: token_bucket` only",
            ))
        }
        (_, None) => requests,
    };
    Ok(LimitSpec {
        algorithm,
        requests,
        period,
        burst,
    })
}

fn check_name(name: &str, field: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\'));
    if ok {
        Ok(())
    } else {
        Err(field_error(
            field,
            format!(
                "{name:?}: expected 1 to 64 printable characters without quotes or backslashes"
            ),
        ))
    }
}

fn default_name(spec: &LimitSpec) -> String {
    format!("{}-per-{}", spec.requests, fmt_period(spec.period))
}

fn limit_header(spec: &LimitSpec) -> HeaderValue {
    number_header(quota_window(spec).0)
}

fn counter(route: &str, name: &str, marker: &str, spec: &LimitSpec) -> String {
    format!("rl:{route}:{name}{marker}:{}:", spec.algorithm.tag())
}

// === consumers ===

/// A consumer's own limit as configured (`consumers[].limits[]`, issue 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLimit {
    pub requests: u64,
    pub per: Duration,
    /// Default `token_bucket`.
    pub algorithm: Option<Algorithm>,
    pub burst: Option<u64>,
    pub name: Option<String>,
}

/// Consumers' own limits by consumer name, compiled once per config snapshot and handed to
/// every `rate_limit` policy through [`BuildEnv::consumer_limits`]. Must be filled before the
/// routes are compiled.
#[derive(Debug, Default)]
pub struct ConsumerLimits {
    by_consumer: HashMap<Arc<str>, Vec<(Arc<str>, LimitSpec)>>,
}

impl ConsumerLimits {
    pub fn new() -> ConsumerLimits {
        ConsumerLimits::default()
    }

    /// Compiles one consumer's `limits`. An error names the field under the consumer's
    /// `limits` (`[1].per`) and says what is wrong; an empty list means "no own limits".
    pub fn insert(
        &mut self,
        consumer: &str,
        limits: &[ConsumerLimit],
    ) -> Result<(), (String, String)> {
        let mut out = Vec::new();
        for (i, l) in limits.iter().enumerate() {
            let draft = LimitDraft {
                field: format!("[{i}]"),
                requests: Some(l.requests),
                per: Some(l.per),
                algorithm: l.algorithm,
                burst: l.burst,
                name: l.name.as_deref(),
                key: None,
            };
            let spec = spec_of(&draft).map_err(unfield)?;
            let name = match &l.name {
                Some(n) => {
                    check_name(n, &format!("[{i}].name")).map_err(unfield)?;
                    n.clone()
                }
                None => default_name(&spec),
            };
            if out.iter().any(|(n, _): &(Arc<str>, _)| **n == *name) {
                return Err((
                    format!("[{i}].name"),
                    format!("limit name {name:?} is used twice; give one a `name`"),
                ));
            }
            out.push((Arc::from(name), spec));
        }
        if !out.is_empty() {
            self.by_consumer.insert(consumer.into(), out);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_consumer.is_empty()
    }
}

fn unfield(e: String) -> (String, String) {
    match super::split_field_error(&e) {
        (Some(f), m) => (f.to_owned(), m.to_owned()),
        (None, m) => (String::new(), m.to_owned()),
    }
}

// === the policy ===

pub struct RateLimit {
    own: LimitSet,
    /// Replacement limit sets by consumer (only when the policy's key includes `consumer`).
    per_consumer: HashMap<Arc<str>, LimitSet>,
    headers: bool,
    state: StateSlot,
}

impl Build for RateLimit {
    type Config = RateLimitConfig;

    fn build(cfg: &RateLimitConfig, cx: &BuildCx<'_>) -> Result<Self, BuildError> {
        Self::build_in(cfg, cx.env).map_err(BuildError::from)
    }
}

impl RateLimit {
    /// Without a build environment: a private memory store, no route scope, no consumers
    /// (unit tests).
    /// Built alone: a private memory store, no route scope, no consumers (unit tests).
    pub fn build_alone(cfg: &RateLimitConfig) -> Result<Self, String> {
        let slot = StateSlot::default();
        let consumers = Arc::new(ConsumerLimits::new());
        Self::build_in(
            cfg,
            &BuildEnv {
                route: "",
                params: &[],
                state: &slot,
                consumer_limits: &consumers,
            },
        )
    }

    pub fn build_in(cfg: &RateLimitConfig, env: &BuildEnv<'_>) -> Result<Self, String> {
        let policy_key = KeySpec::parse(cfg.key.as_ref(), "key", env.params)?;
        let mut drafts = Vec::new();
        if cfg.limits.is_empty() {
            drafts.push(LimitDraft {
                field: String::new(),
                requests: cfg.requests,
                per: cfg.per.map(|d| d.0),
                algorithm: cfg.algorithm,
                burst: cfg.burst,
                name: cfg.name.as_deref(),
                key: None,
            });
        } else {
            if cfg.requests.is_some()
                || cfg.per.is_some()
                || cfg.algorithm.is_some()
                || cfg.burst.is_some()
                || cfg.name.is_some()
            {
                return Err(field_error(
                    "limits",
                    "write one limit inline (`requests`, `per`, ...) or several under `limits`, not both",
                ));
            }
            for (i, l) in cfg.limits.iter().enumerate() {
                drafts.push(draft_of(i, l));
            }
        }
        let mut limits: Vec<Limit> = Vec::new();
        for d in &drafts {
            let spec = spec_of(d)?;
            let name_field = if d.field.is_empty() {
                "name".to_owned()
            } else {
                format!("{}.name", d.field)
            };
            let name = match d.name {
                Some(n) => {
                    check_name(n, &name_field)?;
                    n.to_owned()
                }
                None => default_name(&spec),
            };
            if limits.iter().any(|l| *l.name == *name) {
                return Err(field_error(
                    &name_field,
                    format!("limit name {name:?} is used twice in this policy; give one a `name`"),
                ));
            }
            let key = match d.key {
                Some(k) => KeySpec::parse(Some(k), &format!("{}.key", d.field), env.params)?,
                None => policy_key.clone(),
            };
            limits.push(Limit {
                counter: counter(env.route, &name, "", &spec),
                name: name.into(),
                limit_header: limit_header(&spec),
                spec,
                key,
            });
        }
        let mut per_consumer = HashMap::new();
        if policy_key.has_consumer() {
            for (consumer, specs) in &env.consumer_limits.by_consumer {
                let set = specs
                    .iter()
                    .map(|(name, spec)| Limit {
                        name: name.clone(),
                        // Own counters, apart from the route's limits of the same name.
                        counter: counter(env.route, name, "@consumer", spec),
                        limit_header: limit_header(spec),
                        spec: *spec,
                        key: policy_key.clone(),
                    })
                    .collect();
                per_consumer.insert(consumer.clone(), LimitSet::new(set)?);
            }
        }
        Ok(RateLimit {
            own: LimitSet::new(limits)?,
            per_consumer,
            headers: cfg.headers,
            state: env.state.clone(),
        })
    }
}

fn draft_of(i: usize, l: &LimitConfig) -> LimitDraft<'_> {
    LimitDraft {
        field: format!("limits[{i}]"),
        requests: Some(l.requests),
        per: Some(l.per.0),
        algorithm: l.algorithm,
        burst: l.burst,
        name: l.name.as_deref(),
        key: l.key.as_ref(),
    }
}

impl RateLimit {
    /// The limits that apply to this request: the consumer's own, or the policy's.
    fn active(&self, cx: &Ctx) -> &LimitSet {
        if !self.per_consumer.is_empty() {
            if let Some(set) = cx
                .consumer
                .as_deref()
                .and_then(|c| self.per_consumer.get(c))
            {
                return set;
            }
        }
        &self.own
    }
}

impl Policy for RateLimit {
    async fn on_request(
        &self,
        cx: &mut Ctx,
        req: &mut Request<Body>,
    ) -> Result<Flow, GatewayError> {
        let set = self.active(cx);
        let mut decisions = Vec::with_capacity(set.limits.len());
        let checked = if let [l] = &*set.limits {
            // The common case: one limit, one key.
            let mut key = String::with_capacity(l.counter.len() + 40);
            key.push_str(&l.counter);
            l.key.write(cx, req.headers(), &mut key);
            let checks = [Check {
                key: &key,
                spec: &l.spec,
            }];
            self.state.store().check(&checks, &mut decisions).await
        } else {
            // All counter keys of this request in one buffer.
            let mut buf = String::with_capacity(64 * set.limits.len());
            let mut ends = Vec::with_capacity(set.limits.len());
            for l in set.limits.iter() {
                buf.push_str(&l.counter);
                l.key.write(cx, req.headers(), &mut buf);
                ends.push(buf.len());
            }
            let mut start = 0;
            let checks: Vec<Check<'_>> = set
                .limits
                .iter()
                .zip(&ends)
                .map(|(l, &end)| {
                    let c = Check {
                        key: &buf[start..end],
                        spec: &l.spec,
                    };
                    start = end;
                    c
                })
                .collect();
            self.state.store().check(&checks, &mut decisions).await
        };
        match checked {
            Ok(()) => {}
            Err(Unavailable {
                on_error: crate::state::OnError::Deny,
            }) => return Err(GatewayError::StateUnavailable),
            // `allow` (`local` never gets here): unlimited, and no headers that would claim a
            // limit nobody checked.
            Err(_) => return Ok(Flow::Continue),
        }
        if self.headers {
            cx.traffic.add(set, &decisions);
        }
        if let Some((l, d)) = set
            .limits
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| !d.allowed && !d.retry_after.is_zero())
            .max_by_key(|(_, d)| d.retry_after)
        {
            crate::observe::metrics::rate_limited(&cx.route_name);
            return Err(GatewayError::RateLimited {
                policy: l.name.to_string(),
                retry_after: ceil_secs(d.retry_after).max(1),
            });
        }
        Ok(Flow::Continue)
    }

    async fn on_response(
        &self,
        cx: &mut Ctx,
        res: &mut Response<Body>,
    ) -> Result<(), GatewayError> {
        cx.traffic.finish(res);
        Ok(())
    }
}

// === per-request state ===

/// Traffic control's per-request state in [`Ctx`].
#[derive(Debug, Default)]
pub struct Traffic {
    headers: Option<Pending>,
    permits: Vec<Permit>,
}

/// Rate-limit header values waiting for the response.
#[derive(Debug)]
struct Pending {
    policy: HeaderValue,
    /// Of further `rate_limit` policies of the route (rare).
    more_policies: Vec<HeaderValue>,
    ratelimit: String,
    /// The limit closest to refusing.
    tightest: Tightest,
}

#[derive(Debug)]
struct Tightest {
    refused: bool,
    limit: HeaderValue,
    remaining: u64,
    reset: Duration,
}

impl Traffic {
    fn add(&mut self, set: &LimitSet, decisions: &[Decision]) {
        let p = match &mut self.headers {
            Some(p) => {
                p.more_policies.push(set.policy_header.clone());
                p
            }
            None => self.headers.insert(Pending {
                policy: set.policy_header.clone(),
                more_policies: Vec::new(),
                ratelimit: String::with_capacity(48 * set.limits.len()),
                tightest: Tightest {
                    refused: false,
                    limit: HeaderValue::from_static("0"),
                    remaining: u64::MAX,
                    reset: Duration::ZERO,
                },
            }),
        };
        for (l, d) in set.limits.iter().zip(decisions) {
            // `"name";r=R;t=T`, without `core::fmt` (this runs on every request).
            let out = &mut p.ratelimit;
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push('"');
            out.push_str(&l.name);
            out.push_str("\";r=");
            push_u64(out, d.remaining);
            out.push_str(";t=");
            push_u64(out, ceil_secs(d.reset));
            let refused = !d.allowed && !d.retry_after.is_zero();
            let t = &mut p.tightest;
            let tighter = match (refused, t.refused) {
                (true, false) => true,
                (false, true) => false,
                (true, true) => d.retry_after > t.reset,
                (false, false) => {
                    d.remaining < t.remaining || (d.remaining == t.remaining && d.reset > t.reset)
                }
            };
            if tighter {
                *t = Tightest {
                    refused,
                    limit: l.limit_header.clone(),
                    remaining: d.remaining,
                    reset: if refused {
                        d.retry_after.max(d.reset)
                    } else {
                        d.reset
                    },
                };
            }
        }
    }

    /// Keeps an in-flight permit until the response body ends.
    pub(crate) fn hold(&mut self, permit: Permit) {
        self.permits.push(permit);
    }

    /// Writes the headers and hands the permits to the response body. The first response
    /// policy to run does it for all of them.
    pub(crate) fn finish(&mut self, res: &mut Response<Body>) {
        if let Some(p) = self.headers.take() {
            let h = res.headers_mut();
            h.reserve(5);
            h.append(&RATELIMIT_POLICY, p.policy);
            for v in p.more_policies {
                h.append(&RATELIMIT_POLICY, v);
            }
            // Appended, like the policies: an upstream's own limits stay listed beside ours.
            // The string's buffer becomes the header value without a copy.
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(p.ratelimit)) {
                h.append(&RATELIMIT, v);
            }
            let t = p.tightest;
            h.insert(&X_LIMIT, t.limit);
            h.insert(&X_REMAINING, number_header(t.remaining));
            h.insert(&X_RESET, number_header(ceil_secs(t.reset)));
        }
        if !self.permits.is_empty() {
            let permits = std::mem::take(&mut self.permits);
            let b = std::mem::replace(res.body_mut(), body::empty());
            *res.body_mut() = body::boxed(Held::new(b, permits));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn cx() -> Ctx {
        Ctx {
            request_id: HeaderValue::from_static("t"),
            client: "192.0.2.7:5555".parse().unwrap(),
            tls: false,
            started: std::time::Instant::now(),
            route: 0,
            route_name: "r".into(),
            params: Default::default(),
            path: "/".into(),
            target: None,
            upstream_latency: None,
            identity: None,
            client_cert: None,
            consumer: None,
            api_key: None,
            traffic: Default::default(),
            trace: None,
            raw_head: None,
        }
    }

    fn cfg(key: &[&str], requests: u64, per: u64) -> RateLimitConfig {
        RateLimitConfig {
            key: Some(OneOrMany(key.iter().map(|s| s.to_string()).collect())),
            requests: Some(requests),
            per: Some(Dur(Duration::from_secs(per))),
            headers: true,
            ..Default::default()
        }
    }

    fn key_of(spec: &KeySpec, cx: &Ctx, headers: &HeaderMap) -> String {
        let mut s = String::new();
        spec.write(cx, headers, &mut s);
        s
    }

    #[test]
    fn key_parts_and_fallbacks() {
        let params: Vec<Box<str>> = vec!["tenant".into()];
        let one =
            |k: &str| KeySpec::parse(Some(&OneOrMany(vec![k.into()])), "key", &params).unwrap();
        let mut c = cx();
        let mut h = HeaderMap::new();
        assert_eq!(key_of(&one("ip"), &c, &h), "ip=192.0.2.7");
        let mut v6 = cx();
        v6.client = "[2001:db8::7]:443".parse().unwrap();
        assert_eq!(key_of(&one("ip"), &v6, &h), "ip=2001:db8::7");
        assert_eq!(key_of(&one("route"), &c, &h), "route");
        // Absent values fall back to the client address.
        for k in ["consumer", "api_key", "header:x-tenant", "param:tenant"] {
            assert_eq!(key_of(&one(k), &c, &h), "ip=192.0.2.7", "{k}");
        }
        c.consumer = Some("mobile-app".into());
        c.api_key = Some("key-1".into());
        c.params = crate::router::Params {
            names: Arc::from(vec![Box::<str>::from("tenant")]),
            values: vec!["acme".into()],
        };
        h.insert("x-tenant", HeaderValue::from_static("globex"));
        assert_eq!(key_of(&one("consumer"), &c, &h), "c=mobile-app");
        assert_eq!(key_of(&one("api_key"), &c, &h), "k=key-1");
        assert_eq!(key_of(&one("header:X-Tenant"), &c, &h), "h=globex");
        assert_eq!(key_of(&one("param:tenant"), &c, &h), "p=acme");
        let combo = KeySpec::parse(
            Some(&OneOrMany(vec![
                "consumer".into(),
                "header:x-tenant".into(),
            ])),
            "key",
            &params,
        )
        .unwrap();
        assert_eq!(key_of(&combo, &c, &h), "c=mobile-app|h=globex");
        // Crafted values cannot forge another key's shape.
        h.insert("x-tenant", HeaderValue::from_static("a|ip=1.2.3.4"));
        let k = key_of(&one("header:x-tenant"), &c, &h);
        assert!(
            k.starts_with("h=#") && k.len() == 3 + 32 && !k.contains('|'),
            "{k}"
        );
    }

    #[test]
    fn key_errors_name_the_field() {
        let bad = |k: Vec<&str>| {
            let e = KeySpec::parse(
                Some(&OneOrMany(k.into_iter().map(String::from).collect())),
                "key",
                &["id".into()],
            )
            .unwrap_err();
            let (f, m) = super::super::split_field_error(&e);
            (f.unwrap().to_owned(), m.to_owned())
        };
        assert_eq!(bad(vec!["cookie"]).0, "key");
        assert!(bad(vec!["cookie"]).1.contains("expected ip, consumer"));
        let (f, m) = bad(vec!["ip", "param:user"]);
        assert_eq!(f, "key[1]");
        assert!(
            m.contains("no path parameter \"user\"; the route's path has: id"),
            "{m}"
        );
        assert_eq!(bad(vec!["header:bad header"]).0, "key");
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |c: RateLimitConfig| {
            let e = RateLimit::build_alone(&c).err().expect("an error");
            let (f, m) = super::super::split_field_error(&e);
            (f.unwrap_or("").to_owned(), m.to_owned())
        };
        assert_eq!(err(cfg(&["ip"], 0, 1)).0, "requests");
        let mut c = cfg(&["ip"], 1, 1);
        c.per = Some(Dur(Duration::ZERO));
        assert_eq!(err(c).0, "per");
        let mut c = cfg(&["ip"], 1, 1);
        c.algorithm = Some(Algorithm::FixedWindow);
        c.burst = Some(5);
        assert_eq!(
            err(c),
            (
                "burst".into(),
                "`burst` applies to `algorithm: token_bucket` only".into()
            )
        );
        let mut c = cfg(&["ip"], 1, 1);
        c.limits = vec![LimitConfig {
            requests: 1,
            per: Dur(Duration::from_secs(1)),
            algorithm: None,
            burst: None,
            name: None,
            key: None,
        }];
        assert_eq!(err(c).0, "limits");
        let c = RateLimitConfig {
            limits: vec![
                LimitConfig {
                    requests: 1,
                    per: Dur(Duration::from_secs(1)),
                    algorithm: None,
                    burst: None,
                    name: None,
                    key: None,
                },
                LimitConfig {
                    requests: 1,
                    per: Dur(Duration::from_secs(1)),
                    algorithm: Some(Algorithm::SlidingWindow),
                    burst: None,
                    name: Some("bad\"name".into()),
                    key: None,
                },
            ],
            ..Default::default()
        };
        assert_eq!(err(c).0, "limits[1].name");
        assert_eq!(err(RateLimitConfig::default()).0, "requests");
    }

    #[test]
    fn policy_header_values() {
        let mut c = cfg(&["ip"], 10, 1);
        c.burst = Some(20);
        let p = RateLimit::build_alone(&c).unwrap();
        assert_eq!(p.own.policy_header, "\"10-per-1s\";q=20;w=2");
        let c = RateLimitConfig {
            limits: vec![
                LimitConfig {
                    requests: 10,
                    per: Dur(Duration::from_secs(1)),
                    algorithm: None,
                    burst: None,
                    name: None,
                    key: None,
                },
                LimitConfig {
                    requests: 10_000,
                    per: Dur(Duration::from_secs(86_400)),
                    algorithm: Some(Algorithm::FixedWindow),
                    burst: None,
                    name: Some("daily".into()),
                    key: None,
                },
            ],
            headers: true,
            ..Default::default()
        };
        let p = RateLimit::build_alone(&c).unwrap();
        assert_eq!(
            p.own.policy_header,
            "\"10-per-1s\";q=10;w=1, \"daily\";q=10000;w=86400"
        );
    }

    /// Runs the policy on a fresh request; returns (status or 200, headers written).
    async fn run(p: &RateLimit, cx: &mut Ctx) -> (u16, HeaderMap) {
        let mut req = Request::new(body::empty());
        let mut res = match p.on_request(cx, &mut req).await {
            Ok(Flow::Continue) => Response::new(body::empty()),
            Ok(Flow::Respond(r)) => r,
            Err(e) => e.to_response("t"),
        };
        p.on_response(cx, &mut res).await.unwrap();
        (res.status().as_u16(), res.headers().clone())
    }

    #[tokio::test(start_paused = true)]
    async fn headers_and_429() {
        let p = RateLimit::build_alone(&cfg(&["ip"], 2, 10)).unwrap();
        let mut c = cx();
        let (s, h) = run(&p, &mut c).await;
        assert_eq!(s, 200);
        assert_eq!(h["ratelimit-policy"], "\"2-per-10s\";q=2;w=10");
        assert_eq!(h["ratelimit"], "\"2-per-10s\";r=1;t=5");
        assert_eq!(h["x-ratelimit-limit"], "2");
        assert_eq!(h["x-ratelimit-remaining"], "1");
        assert_eq!(h["x-ratelimit-reset"], "5");
        run(&p, &mut c).await;
        let (s, h) = run(&p, &mut c).await;
        assert_eq!(s, 429);
        assert_eq!(h["retry-after"], "5");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["content-type"], "application/problem+json");
    }

    #[tokio::test(start_paused = true)]
    async fn headers_can_be_switched_off() {
        let mut c = cfg(&["ip"], 1, 10);
        c.headers = false;
        let p = RateLimit::build_alone(&c).unwrap();
        let mut cx = cx();
        let (_, h) = run(&p, &mut cx).await;
        assert!(h.get("ratelimit").is_none() && h.get("x-ratelimit-limit").is_none());
        let (s, h) = run(&p, &mut cx).await;
        assert_eq!(s, 429);
        assert!(h.get("ratelimit-policy").is_none());
        assert_eq!(
            h["retry-after"], "10",
            "Retry-After stays: it is plain HTTP"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumers_own_limits_override_the_routes() {
        let mut consumers = ConsumerLimits::new();
        consumers
            .insert(
                "gold",
                &[ConsumerLimit {
                    requests: 5,
                    per: Duration::from_secs(60),
                    algorithm: Some(Algorithm::FixedWindow),
                    burst: None,
                    name: Some("gold-tier".into()),
                }],
            )
            .unwrap();
        consumers.insert("plain", &[]).unwrap();
        let consumers = Arc::new(consumers);
        let slot = StateSlot::default();
        let env = BuildEnv {
            route: "api",
            params: &[],
            state: &slot,
            consumer_limits: &consumers,
        };
        let by_consumer = RateLimit::build_in(&cfg(&["consumer"], 2, 60), &env).unwrap();
        let by_ip = RateLimit::build_in(&cfg(&["ip"], 2, 60), &env).unwrap();

        let mut gold = cx();
        gold.consumer = Some("gold".into());
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(run(&by_consumer, &mut gold).await.0);
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "gold's own 5/min");
        let (_, h) = run(&by_consumer, &mut gold).await;
        assert_eq!(h["ratelimit-policy"], "\"gold-tier\";q=5;w=60");

        // A consumer without own limits gets the route's.
        let mut plain = cx();
        plain.consumer = Some("plain".into());
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(run(&by_consumer, &mut plain).await.0);
        }
        assert_eq!(statuses, [200, 200, 429]);

        // A policy not keyed by consumer keeps its own limits for everyone.
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(run(&by_ip, &mut gold).await.0);
        }
        assert_eq!(statuses, [200, 200, 429]);
    }

    #[test]
    fn consumer_limit_errors_name_the_field() {
        let mut c = ConsumerLimits::new();
        let e = c
            .insert(
                "x",
                &[ConsumerLimit {
                    requests: 0,
                    per: Duration::from_secs(1),
                    algorithm: None,
                    burst: None,
                    name: None,
                }],
            )
            .unwrap_err();
        assert_eq!(e.0, "[0].requests");
        assert!(c.is_empty());
    }

    #[test]
    fn periods_format_compactly() {
        assert_eq!(fmt_period(Duration::from_secs(1)), "1s");
        assert_eq!(fmt_period(Duration::from_secs(90)), "90s");
        assert_eq!(fmt_period(Duration::from_secs(86_400)), "1d");
        assert_eq!(fmt_period(Duration::from_millis(1500)), "1500ms");
    }
}
