//! Identity at the gate: who is calling.
//!
//! `consumers:` and `auth:` compile into one [`Registry`] per config snapshot: the consumers
//! (looked up by name or id), and one verifier per method — API keys ([`api_key`]), Basic
//! passwords ([`basic`]), client certificates ([`mtls`]), and the named JWT ([`jwt`] with
//! [`jwks`]) and OAuth2 introspection ([`introspection`]) providers. The `authenticate` policy
//! asks the methods a route names; the first that accepts the request's credential yields an
//! [`Identity`], which goes into [`crate::policy::Ctx`] for `authorize`, rate limits and the
//! headers forwarded upstream.
//!
//! A method answers an [`Outcome`]: no credential of its kind (`Absent`), a credential it
//! accepts (`Valid`), one it refuses (`Invalid`), or it could not ask its provider
//! (`Unavailable`). Nothing here logs a credential.
//!
//! Caches (all bounded): verified JWTs until they expire, JWKS keys behind an `ArcSwap` shared
//! across reloads, active introspection results, and successful Basic checks for a few seconds.

pub mod api_key;
pub mod basic;
pub mod client;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod mtls;
mod registry;
mod source;

pub use registry::{compile, join, ProviderEnv, Registry};
pub use source::{
    authorization, cookie_value, query_value, remove_cookie, remove_query_param, TokenSource,
};

use crate::body::Body;
use crate::error::GatewayError;
use crate::policy::Ctx;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Uri};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub static X_CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
pub static X_CONSUMER_ROLES: HeaderName = HeaderName::from_static("x-consumer-roles");
pub static X_ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");

/// Method names that are not providers.
pub const BUILTIN: [&str; 4] = ["api_key", "basic", "mtls", "anonymous"];

// === consumers and identities ===

/// A configured consumer, built once per snapshot.
#[derive(Debug)]
pub struct Consumer {
    pub name: Arc<str>,
    pub roles: Vec<String>,
    pub metadata: BTreeMap<String, Value>,
    /// Per-consumer limits, for rate limiting.
    pub limits: Vec<Limit>,
    name_header: HeaderValue,
    roles_header: Option<HeaderValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u64,
    pub per: Duration,
}

/// Consumers by name and by each of their ids.
pub type Lookup = HashMap<String, Arc<Consumer>>;

/// What a verified token (JWT or introspection) said; shared by the caches.
#[derive(Debug, Default)]
pub struct TokenInfo {
    pub claims: Map<String, Value>,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub consumer: Option<Arc<Consumer>>,
    /// Claims to forward upstream, as ready header values.
    pub forward: Vec<(HeaderName, HeaderValue)>,
}

/// Who the caller is, as far as the gateway knows. Lives in [`Ctx::identity`].
#[derive(Debug, Clone)]
pub struct Identity {
    pub consumer: Option<Arc<Consumer>>,
    /// The method that accepted the caller: `api_key`, `basic`, `mtls`, `anonymous` or a
    /// provider name.
    pub method: Arc<str>,
    /// For API keys: a short digest of the key that matched (never the key), so that rate
    /// limits can be keyed per key rather than per consumer.
    pub key_id: Option<Arc<str>>,
    /// Claims, scopes and roles of a token; `None` for keys, passwords and certificates.
    pub token: Option<Arc<TokenInfo>>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            consumer: None,
            method: "anonymous".into(),
            token: None,
            key_id: None,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        &*self.method == "anonymous"
    }

    /// Roles of the consumer and of the token.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        let c = self.consumer.iter().flat_map(|c| c.roles.iter());
        let t = self.token.iter().flat_map(|t| t.roles.iter());
        c.chain(t).map(String::as_str)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles().any(|r| r == role)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| t.scopes.iter().any(|s| s == scope))
    }

    pub fn claims(&self) -> Option<&Map<String, Value>> {
        self.token.as_ref().map(|t| &t.claims)
    }

    /// Sets the identity headers on the request going upstream. The client's copies were
    /// removed before any policy ran.
    pub fn forward(&self, headers: &mut HeaderMap) {
        if let Some(c) = &self.consumer {
            headers.insert(&X_CONSUMER_NAME, c.name_header.clone());
        }
        match (&self.consumer, &self.token) {
            (Some(c), None) => {
                if let Some(r) = &c.roles_header {
                    headers.insert(&X_CONSUMER_ROLES, r.clone());
                }
            }
            _ => {
                let mut seen: Vec<&str> = Vec::new();
                for r in self.roles() {
                    if !seen.contains(&r) {
                        seen.push(r);
                    }
                }
                if let Ok(v) = HeaderValue::from_str(&seen.join(",")) {
                    if !seen.is_empty() {
                        headers.insert(&X_CONSUMER_ROLES, v);
                    }
                }
            }
        }
        if self.is_anonymous() {
            headers.insert(&X_ANONYMOUS_CONSUMER, HeaderValue::from_static("true"));
        }
        if let Some(t) = &self.token {
            for (k, v) in &t.forward {
                headers.insert(k, v.clone());
            }
        }
    }
}

/// A claim by top-level name, or by JSON pointer when it starts with `/` (`/realm_access/roles`).
#[derive(Debug, Clone)]
pub enum ClaimPath {
    Name(String),
    Pointer(String),
}

impl ClaimPath {
    pub fn new(s: &str) -> ClaimPath {
        if s.starts_with('/') {
            ClaimPath::Pointer(s.to_owned())
        } else {
            ClaimPath::Name(s.to_owned())
        }
    }

    pub fn get<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        match self {
            ClaimPath::Name(n) => claims.get(n),
            ClaimPath::Pointer(p) => {
                let (first, rest) = match p[1..].split_once('/') {
                    Some((f, r)) => (f, Some(r)),
                    None => (&p[1..], None),
                };
                let first = first.replace("~1", "/").replace("~0", "~");
                let v = claims.get(&first)?;
                match rest {
                    None => Some(v),
                    Some(r) => v.pointer(&format!("/{r}")),
                }
            }
        }
    }
}

/// Strings of a claim: a string (split on spaces when `split`), a list of strings, or a
/// number or boolean as text.
pub fn claim_strings(v: &Value, split: bool) -> Vec<String> {
    match v {
        Value::String(s) if split => s.split_whitespace().map(str::to_owned).collect(),
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(|x| claim_strings(x, false)).collect(),
        Value::Number(n) => vec![n.to_string()],
        Value::Bool(b) => vec![b.to_string()],
        _ => Vec::new(),
    }
}

/// How a provider turns verified claims into a [`TokenInfo`].
pub struct ClaimRules {
    pub consumer: Option<ClaimPath>,
    pub roles: Option<ClaimPath>,
    pub forward: Vec<(ClaimPath, HeaderName)>,
    pub lookup: Arc<Lookup>,
}

impl ClaimRules {
    /// `None` when `consumer_claim` is set and names no consumer.
    pub fn token_info(&self, claims: Map<String, Value>) -> Option<TokenInfo> {
        let consumer = match &self.consumer {
            None => None,
            Some(p) => {
                let id = match p.get(&claims)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some(self.lookup.get(&id)?.clone())
            }
        };
        let mut scopes = Vec::new();
        for k in ["scope", "scp"] {
            if let Some(v) = claims.get(k) {
                scopes.extend(claim_strings(v, true));
            }
        }
        let roles = self
            .roles
            .as_ref()
            .and_then(|p| p.get(&claims))
            .map(|v| claim_strings(v, true))
            .unwrap_or_default();
        let mut forward = Vec::new();
        for (p, h) in &self.forward {
            let Some(v) = p.get(&claims) else { continue };
            let text = claim_strings(v, false).join(",");
            if let Ok(hv) = HeaderValue::from_str(&text) {
                if !text.is_empty() {
                    forward.push((h.clone(), hv));
                }
            }
        }
        Some(TokenInfo {
            claims,
            scopes,
            roles,
            consumer,
            forward,
        })
    }
}

// === methods ===

/// One way of authenticating, as a route names it.
#[derive(Clone)]
pub enum Method {
    ApiKey(Arc<api_key::ApiKeys>),
    Basic(Arc<basic::BasicAuth>),
    Mtls(Arc<mtls::MtlsAuth>),
    Jwt(Arc<jwt::JwtProvider>),
    Introspection(Arc<introspection::Introspector>),
    Anonymous,
}

/// What a method made of a request.
pub enum Outcome {
    /// No credential of this method's kind.
    Absent,
    Valid(Identity),
    Invalid,
    /// The provider could not be asked (JWKS or introspection endpoint down).
    Unavailable,
}

/// The `WWW-Authenticate` scheme a method answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scheme {
    Bearer,
    Basic,
    /// API keys have no registered scheme; `Key` is what Kong sends.
    Key,
    /// Client certificates: no registered scheme either.
    Certificate,
}

impl Method {
    /// Takes the request's head only: a `&Request` is not `Send` (its body is not `Sync`).
    pub async fn check(
        &self,
        cx: &Ctx,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<Outcome, GatewayError> {
        match self {
            Method::ApiKey(m) => m.check(headers, uri),
            Method::Basic(m) => Ok(m.check(headers).await),
            Method::Mtls(m) => Ok(m.check(cx)),
            Method::Jwt(m) => m.check(headers, uri).await,
            Method::Introspection(m) => m.check(headers, uri).await,
            Method::Anonymous => Ok(Outcome::Absent),
        }
    }

    pub fn scheme(&self) -> Option<Scheme> {
        match self {
            Method::ApiKey(_) => Some(Scheme::Key),
            Method::Basic(_) => Some(Scheme::Basic),
            Method::Mtls(_) => Some(Scheme::Certificate),
            Method::Jwt(_) | Method::Introspection(_) => Some(Scheme::Bearer),
            Method::Anonymous => None,
        }
    }

    /// Removes this method's credential from the request (`hide_credentials`).
    pub fn hide(&self, req: &mut Request<Body>) {
        match self {
            Method::ApiKey(m) => m.hide(req),
            Method::Basic(_) => {
                if authorization(req.headers(), "basic").is_some() {
                    req.headers_mut().remove(header::AUTHORIZATION);
                }
            }
            Method::Jwt(m) => m.source.hide(req),
            Method::Introspection(m) => m.source.hide(req),
            Method::Mtls(_) | Method::Anonymous => {}
        }
    }
}

/// The `WWW-Authenticate` values of a route: without and with `error="invalid_token"`.
#[derive(Clone)]
pub struct Challenges {
    pub missing: Arc<[HeaderValue]>,
    pub invalid_token: Arc<[HeaderValue]>,
    pub realm: Arc<str>,
    pub bearer: bool,
}

impl Challenges {
    pub fn new(methods: &[Method], realm: &str) -> Challenges {
        let mut schemes: Vec<Scheme> = methods.iter().filter_map(Method::scheme).collect();
        schemes.sort();
        schemes.dedup();
        let one = |s: Scheme, invalid: bool| {
            let text = match s {
                Scheme::Bearer if invalid => {
                    format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")
                }
                Scheme::Bearer => format!("Bearer realm=\"{realm}\""),
                Scheme::Basic => format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
                Scheme::Key => format!("Key realm=\"{realm}\""),
                Scheme::Certificate => format!("Certificate realm=\"{realm}\""),
            };
            HeaderValue::from_str(&text).expect("realm checked at compile time")
        };
        Challenges {
            missing: schemes.iter().map(|s| one(*s, false)).collect(),
            invalid_token: schemes.iter().map(|s| one(*s, true)).collect(),
            realm: realm.into(),
            bearer: schemes.contains(&Scheme::Bearer),
        }
    }

    pub fn unauthorized(&self, invalid_token: bool) -> GatewayError {
        GatewayError::Unauthorized {
            challenges: if invalid_token {
                self.invalid_token.clone()
            } else {
                self.missing.clone()
            },
        }
    }
}

/// Hex of bytes, lower case.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 of the parts, in order.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_paths() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "sub": "u1",
            "https://example.com/roles": ["a", "b"],
            "realm_access": { "roles": ["admin"] },
        }))
        .unwrap();
        assert_eq!(ClaimPath::new("sub").get(&claims).unwrap(), "u1");
        assert_eq!(
            claim_strings(
                ClaimPath::new("https://example.com/roles")
                    .get(&claims)
                    .unwrap(),
                true
            ),
            ["a", "b"]
        );
        assert_eq!(
            claim_strings(
                ClaimPath::new("/realm_access/roles").get(&claims).unwrap(),
                true
            ),
            ["admin"]
        );
        assert!(ClaimPath::new("/realm_access/nope").get(&claims).is_none());
    }
}
