//! OAuth2 token introspection (RFC 7662): opaque bearer tokens are checked by asking the
//! authorization server, with the gateway's client credentials (HTTP Basic, RFC 6749 §2.3.1).
//!
//! Active results are cached (bounded; keyed by the token's SHA-256) until the token's `exp`
//! or `cache_for` (default 60s), whichever comes first. Concurrent requests with the same
//! uncached token wait for one introspection call. Inactive answers are not cached: a token
//! is asked about again, so one that becomes valid is not refused from memory.

use super::client::{self, AuthClient};
use super::jwt::{claim_rules, token_source};
use super::{sha256, ClaimRules, Identity, Outcome, ProviderEnv, TokenInfo, TokenSource};
use crate::config::auth::IntrospectionConfig;
use crate::error::GatewayError;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Uri};
use http_body_util::Full;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DEFAULT_CACHE_FOR: Duration = Duration::from_secs(60);
const DEFAULT_CACHE: usize = 10_000;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Active {
    info: Arc<TokenInfo>,
    until: Instant,
}

pub struct Introspector {
    pub name: Arc<str>,
    url: Uri,
    /// `Basic base64(client_id:client_secret)`, built once.
    credentials: HeaderValue,
    client: AuthClient,
    timeout: Duration,
    cache_for: Duration,
    cache: Option<quick_cache::sync::Cache<[u8; 32], Active>>,
    rules: ClaimRules,
    pub source: TokenSource,
}

impl Introspector {
    pub fn build(
        name: &str,
        cfg: &IntrospectionConfig,
        env: &ProviderEnv<'_>,
    ) -> Result<Introspector, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let url: Option<Uri> = match cfg.url.parse::<Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                Some(u)
            }
            _ => {
                errs.push((
                    "url".to_owned(),
                    format!("{:?}: expected an http:// or https:// URL", cfg.url),
                ));
                None
            }
        };
        if cfg.client_id.is_empty() {
            errs.push(("client_id".to_owned(), "cannot be empty".to_owned()));
        }
        // RFC 6749 §2.3.1: both parts are form-encoded before the Basic encoding.
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(&cfg.client_id),
            enc(&cfg.client_secret)
        ));
        let mut credentials = HeaderValue::from_str(&format!("Basic {basic}"))
            .unwrap_or(HeaderValue::from_static(""));
        credentials.set_sensitive(true);
        let ca = cfg.ca.as_ref().map(|c| env.base.join(c));
        let client = client::client(ca.as_deref())
            .map_err(|e| errs.push(("ca".to_owned(), e)))
            .ok();
        let cache_for = cfg.cache_for.map_or(DEFAULT_CACHE_FOR, |d| d.0);
        let cache_size = cfg.cache_size.unwrap_or(DEFAULT_CACHE);
        let timeout = cfg.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        if timeout.is_zero() {
            errs.push(("timeout".to_owned(), "must be more than 0".to_owned()));
        }
        let source = token_source(cfg.bearer, &cfg.cookie, &cfg.query, &mut errs);
        let rules = claim_rules(
            cfg.consumer_claim.as_deref(),
            cfg.roles_claim.as_deref(),
            &cfg.forward_claims,
            env,
            &mut errs,
        );
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Introspector {
            name: name.into(),
            url: url.expect("no errors"),
            credentials,
            client: client.expect("no errors"),
            timeout,
            cache_for,
            cache: (cache_size > 0 && !cache_for.is_zero())
                .then(|| quick_cache::sync::Cache::new(cache_size)),
            rules,
            source,
        })
    }

    pub async fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<Outcome, GatewayError> {
        let Some(token) = self.source.find(headers, uri)? else {
            return Ok(Outcome::Absent);
        };
        if token.is_empty() {
            return Ok(Outcome::Invalid);
        }
        let Some(cache) = &self.cache else {
            return Ok(match self.introspect(&token).await {
                Ok(Some(a)) => self.identity(a.info),
                Ok(None) => Outcome::Invalid,
                Err(()) => Outcome::Unavailable,
            });
        };
        let key = sha256(&[token.as_bytes()]);
        // Twice at most: the second round after removing an expired entry.
        for _ in 0..2 {
            match cache.get_value_or_guard_async(&key).await {
                Ok(a) if Instant::now() < a.until => return Ok(self.identity(a.info)),
                Ok(_) => {
                    cache.remove(&key);
                }
                Err(guard) => {
                    return Ok(match self.introspect(&token).await {
                        Ok(Some(a)) => {
                            let _ = guard.insert(a.clone());
                            self.identity(a.info)
                        }
                        Ok(None) => Outcome::Invalid,
                        Err(()) => Outcome::Unavailable,
                    });
                }
            }
        }
        Ok(Outcome::Invalid)
    }

    fn identity(&self, info: Arc<TokenInfo>) -> Outcome {
        Outcome::Valid(Identity {
            consumer: info.consumer.clone(),
            method: self.name.clone(),
            token: Some(info),
            key_id: None,
        })
    }

    /// `Ok(None)` for an inactive (or unmappable) token, `Err` when the server could not be
    /// asked.
    async fn introspect(&self, token: &str) -> Result<Option<Active>, ()> {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let req = Request::post(self.url.clone())
            .header(header::AUTHORIZATION, self.credentials.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "portcullis")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| ())?;
        let (status, body) = match client::send(&self.client, req, self.timeout).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(provider = &*self.name, url = %self.url, error = %e, "token introspection failed");
                return Err(());
            }
        };
        if status != http::StatusCode::OK {
            tracing::warn!(provider = &*self.name, url = %self.url, %status, "token introspection refused the gateway's request");
            return Err(());
        }
        let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(&body) else {
            tracing::warn!(provider = &*self.name, url = %self.url, "token introspection answered something that is not a JSON object");
            return Err(());
        };
        Ok(self.active(claims))
    }

    fn active(&self, claims: Map<String, Value>) -> Option<Active> {
        if claims.get("active") != Some(&Value::Bool(true)) {
            return None;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let exp = claims.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|e| e <= now) {
            return None;
        }
        if claims
            .get("nbf")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > now)
        {
            return None;
        }
        let left = exp.map_or(self.cache_for, |e| {
            Duration::from_secs(e - now).min(self.cache_for)
        });
        let info = self.rules.token_info(claims)?;
        Some(Active {
            info: Arc::new(info),
            until: Instant::now() + left,
        })
    }
}
