//! Traffic control as the user writes it: the `state:` section and the `rate_limit` and
//! `concurrency_limit` policies. Semantic checks (positive numbers, known key parts, a parseable
//! Redis URL) happen when they are compiled, as located diagnostics.

use super::{int_or_string, Dur, OneOrMany};
use crate::state::{Algorithm, OnError};
use serde::Deserialize;

/// `state`: where counters live.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `memory` (default; one node) or `redis` (shared by every node).
    #[serde(default)]
    pub backend: StateBackend,
    #[serde(default)]
    pub redis: Option<RedisConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    #[default]
    Memory,
    Redis,
}

/// `state.redis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prepended to every key, so several gateways (or other apps) can share one Redis.
    /// Default `portcullis:`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// While Redis is unreachable: `local` (default), `allow` or `deny`.
    #[serde(default)]
    pub on_error: OnError,
    /// Longest wait for Redis before the fallback takes over. Default 200ms.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

/// `rate_limit`: one limit written inline (`requests`, `per`, ...) or several under `limits`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// What is counted separately: `ip` (default), `consumer`, `api_key`, `route`,
    /// `header:NAME`, `param:NAME`, or a list of them (a combination).
    #[serde(default)]
    pub key: Option<OneOrMany>,
    #[serde(default, deserialize_with = "opt_int")]
    pub requests: Option<u64>,
    #[serde(default)]
    pub per: Option<Dur>,
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// Token bucket capacity; default `requests`.
    #[serde(default, deserialize_with = "opt_int")]
    pub burst: Option<u64>,
    /// The policy name in `RateLimit-Policy`/`RateLimit`; default `{requests}-per-{per}`.
    #[serde(default)]
    pub name: Option<String>,
    /// Several limits checked together (one Redis round trip), e.g. per second and per day.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    /// `RateLimit-Policy`, `RateLimit` and `X-RateLimit-*` on responses. Default true.
    #[serde(default = "yes")]
    pub headers: bool,
}

/// `rate_limit.limits[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    #[serde(deserialize_with = "int_or_string")]
    pub requests: u64,
    pub per: Dur,
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    #[serde(default, deserialize_with = "opt_int")]
    pub burst: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
    /// Overrides the policy's `key` for this limit.
    #[serde(default)]
    pub key: Option<OneOrMany>,
}

/// `concurrency_limit`: at most `max` requests in flight per key on this node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitConfig {
    /// As for `rate_limit`; default `ip`.
    #[serde(default)]
    pub key: Option<OneOrMany>,
    #[serde(deserialize_with = "int_or_string")]
    pub max: u64,
}

fn yes() -> bool {
    true
}

fn opt_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    int_or_string(d).map(Some)
}
