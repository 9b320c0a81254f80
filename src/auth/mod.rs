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

use crate::body::Body;
use crate::config::auth::CertField;
use crate::config::load::FieldPath;
use crate::config::{Config, SourceMap};
use crate::error::GatewayError;
use crate::policy::Ctx;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Uri};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
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
    /// Claims, scopes and roles of a token; `None` for keys, passwords and certificates.
    pub token: Option<Arc<TokenInfo>>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            consumer: None,
            method: "anonymous".into(),
            token: None,
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

// === where credentials come from ===

/// Where a bearer token is read from.
#[derive(Debug, Clone)]
pub struct TokenSource {
    pub bearer: bool,
    pub cookie: Option<String>,
    pub query: Option<String>,
}

impl TokenSource {
    /// The token, if the request carries one where this source looks. A token in two places
    /// (or a repeated cookie or parameter with different values) is refused: the gateway could
    /// check one and the upstream use the other.
    pub fn find<'r>(
        &self,
        headers: &'r HeaderMap,
        uri: &'r Uri,
    ) -> Result<Option<Cow<'r, str>>, GatewayError> {
        let mut found: Option<Cow<'r, str>> = None;
        let mut places = 0;
        if self.bearer {
            if let Some(t) = authorization(headers, "bearer") {
                found = Some(Cow::Borrowed(t));
                places += 1;
            }
        }
        if let Some(name) = &self.cookie {
            if let Some(t) = cookie_value(headers, name)? {
                places += 1;
                found.get_or_insert(Cow::Borrowed(t));
            }
        }
        if let Some(name) = &self.query {
            if let Some(t) = query_value(uri.query(), name)? {
                places += 1;
                found.get_or_insert(t);
            }
        }
        if places > 1 {
            return Err(GatewayError::BadRequest(
                "the request carries a token in more than one place",
            ));
        }
        Ok(found)
    }

    pub fn hide(&self, req: &mut Request<Body>) {
        if self.bearer && authorization(req.headers(), "bearer").is_some() {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        if let Some(c) = &self.cookie {
            remove_cookie(req.headers_mut(), c);
        }
        if let Some(q) = &self.query {
            remove_query_param(req, q);
        }
    }
}

/// The credentials of an `Authorization` header with the given scheme (case-insensitive).
pub fn authorization<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    // A bare scheme (`Bearer`) is that scheme with empty credentials: refused, not ignored.
    let (s, rest) = v.split_once(' ').unwrap_or((v, ""));
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// A cookie's value; the same name twice with different values is refused.
pub fn cookie_value<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, GatewayError> {
    let mut found: Option<&str> = None;
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            let Some((k, val)) = pair.trim().split_once('=') else {
                continue;
            };
            if k.trim() != name {
                continue;
            }
            let val = val.trim();
            let val = val
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(val);
            match found {
                Some(prev) if prev != val => {
                    return Err(GatewayError::BadRequest(
                        "the request repeats a credential cookie",
                    ))
                }
                _ => found = Some(val),
            }
        }
    }
    Ok(found)
}

/// A query parameter's decoded value; a repeated parameter is refused.
pub fn query_value<'q>(
    query: Option<&'q str>,
    name: &str,
) -> Result<Option<Cow<'q, str>>, GatewayError> {
    let Some(q) = query else { return Ok(None) };
    let mut found = None;
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(GatewayError::BadRequest(
                    "the request repeats a credential parameter",
                ));
            }
            found = Some(v);
        }
    }
    Ok(found)
}

/// Removes every occurrence of a query parameter, leaving the others byte for byte.
pub fn remove_query_param(req: &mut Request<Body>, name: &str) {
    let Some(q) = req.uri().query() else { return };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|seg| {
            form_urlencoded::parse(seg.as_bytes())
                .next()
                .is_none_or(|(k, _)| k != name)
        })
        .collect();
    if kept.len() == q.split('&').count() {
        return;
    }
    let path = req.uri().path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

/// Removes one cookie from the `Cookie` header(s).
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let mut kept = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            let pair = pair.trim();
            let k = pair.split_once('=').map_or(pair, |(k, _)| k).trim();
            if !pair.is_empty() && k != name {
                kept.push(pair.to_owned());
            }
        }
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
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

// === the registry ===

/// Everything `consumers:` and `auth:` compiled into; part of the snapshot.
pub struct Registry {
    pub consumers: Vec<Arc<Consumer>>,
    lookup: Arc<Lookup>,
    pub realm: String,
    api_key: Arc<api_key::ApiKeys>,
    basic: Arc<basic::BasicAuth>,
    mtls: Arc<mtls::MtlsAuth>,
    jwt: BTreeMap<String, Arc<jwt::JwtProvider>>,
    introspection: BTreeMap<String, Arc<introspection::Introspector>>,
    /// Providers whose definition had errors (reported there, not again at each route).
    failed: HashSet<String>,
    /// Identity headers: removed from every client request before any policy runs.
    pub identity_headers: Vec<HeaderName>,
    /// Credential headers beyond `Authorization`/`X-API-Key` that may appear only once.
    pub single_headers: Vec<HeaderName>,
    /// Headers a client's `Connection` list may not strip: credentials the gateway checked and
    /// identity headers it set.
    pub protected: Vec<HeaderName>,
}

impl Registry {
    /// Nothing configured.
    pub fn empty() -> Registry {
        let source = SourceMap {
            file: String::new(),
            root: None,
        };
        compile(&Config::default(), &source, Path::new(".")).0
    }

    /// A consumer by name or id.
    pub fn consumer(&self, id: &str) -> Option<&Arc<Consumer>> {
        self.lookup.get(id)
    }

    /// The method a route names. `Err(true)` for a provider whose definition failed.
    pub fn method(&self, name: &str) -> Result<Method, bool> {
        Ok(match name {
            "api_key" => Method::ApiKey(self.api_key.clone()),
            "basic" => Method::Basic(self.basic.clone()),
            "mtls" => Method::Mtls(self.mtls.clone()),
            "anonymous" => Method::Anonymous,
            n => {
                if let Some(j) = self.jwt.get(n) {
                    Method::Jwt(j.clone())
                } else if let Some(i) = self.introspection.get(n) {
                    Method::Introspection(i.clone())
                } else {
                    return Err(self.failed.contains(n));
                }
            }
        })
    }

    /// Every method name a route may use, for "known: ..." hints.
    pub fn known_methods(&self) -> Vec<String> {
        let mut v: Vec<String> = BUILTIN.iter().map(|s| s.to_string()).collect();
        v.extend(self.jwt.keys().cloned());
        v.extend(self.introspection.keys().cloned());
        v.extend(self.failed.iter().cloned());
        v.sort();
        v.dedup();
        v
    }

    /// Removes client-sent identity headers (so no client can pose as a consumer).
    pub fn strip_identity_headers(&self, headers: &mut HeaderMap) {
        for h in &self.identity_headers {
            if headers.contains_key(h) {
                headers.remove(h);
            }
        }
    }

    /// Refuses a request that repeats a configured credential header.
    pub fn check_single(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        for h in &self.single_headers {
            let mut all = headers.get_all(h).iter();
            if all.next().is_some() && all.next().is_some() {
                return Err(GatewayError::BadRequest(
                    "the request repeats a credential header",
                ));
            }
        }
        Ok(())
    }
}

/// Headers a forwarded claim may not be written to.
const RESERVED_HEADERS: [&str; 12] = [
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "via",
    "x-api-key",
];

/// What a provider's build needs from the rest of the config.
pub struct ProviderEnv<'a> {
    pub lookup: &'a Arc<Lookup>,
    pub base: &'a Path,
}

/// Compiles `consumers:` and `auth:`. Errors are (field path, message); the registry is
/// returned even then, without the parts that failed, so routes can still be checked.
pub fn compile(cfg: &Config, source: &SourceMap, base: &Path) -> (Registry, Vec<(String, String)>) {
    let mut errs: Vec<(String, String)> = Vec::new();
    let auth = &cfg.auth;

    // --- consumers
    let mut consumers = Vec::new();
    let mut lookup: Lookup = HashMap::new();
    let mut keys = Vec::new();
    let mut users = Vec::new();
    for c in &cfg.consumers {
        let p = format!("consumers[{}]", c.index);
        let before = errs.len();
        if c.name.trim().is_empty() {
            errs.push((format!("{p}.name"), "a consumer needs a name".into()));
        }
        let name_header = HeaderValue::from_bytes(c.name.as_bytes()).unwrap_or_else(|_| {
            errs.push((
                format!("{p}.name"),
                format!(
                    "{:?} cannot be sent in a header (no control characters)",
                    c.name
                ),
            ));
            HeaderValue::from_static("")
        });
        for (j, r) in c.roles.iter().enumerate() {
            if r.trim().is_empty() || r.contains(',') || r.chars().any(char::is_control) {
                errs.push((
                    format!("{p}.roles[{j}]"),
                    format!("{r:?}: a role is a non-empty name without commas"),
                ));
            }
        }
        let mut limits = Vec::new();
        for (j, l) in c.limits.iter().enumerate() {
            if l.requests == 0 {
                errs.push((
                    format!("{p}.limits[{j}].requests"),
                    "must be more than 0".into(),
                ));
            }
            if l.per.0.is_zero() {
                errs.push((format!("{p}.limits[{j}].per"), "must be more than 0".into()));
            }
            limits.push(Limit {
                requests: l.requests,
                per: l.per.0,
            });
        }
        let roles_header = if c.roles.is_empty() {
            None
        } else {
            HeaderValue::from_str(&c.roles.join(",")).ok()
        };
        let consumer = Arc::new(Consumer {
            name: c.name.as_str().into(),
            roles: c.roles.clone(),
            metadata: c.metadata.clone(),
            limits,
            name_header,
            roles_header,
        });
        let mut names = vec![(format!("{p}.name"), c.name.clone())];
        for (j, id) in c.ids.iter().enumerate() {
            if id.is_empty() {
                errs.push((format!("{p}.ids[{j}]"), "an id cannot be empty".into()));
            }
            names.push((format!("{p}.ids[{j}]"), id.clone()));
        }
        for (at, n) in names {
            if n.is_empty() {
                continue;
            }
            if let Some(other) = lookup.get(&n) {
                let msg = if Arc::ptr_eq(other, &consumer) {
                    format!("{n:?} is listed twice for this consumer")
                } else {
                    format!("{n:?} already names consumer {:?}", other.name)
                };
                errs.push((at, msg));
            } else {
                lookup.insert(n, consumer.clone());
            }
        }
        for (j, k) in c.api_keys.iter().enumerate() {
            let at = format!("{p}.api_keys[{j}]");
            match api_key::parse_stored(k) {
                Ok((digest, plain)) => {
                    if plain {
                        let d = source.diag(&FieldPath::parse(&at), "");
                        tracing::warn!(
                            "{}:{}:{}: {at}: a plain API key in the config; store its digest instead (`portcullis hash-key`)",
                            d.file, d.line, d.column
                        );
                    }
                    keys.push((at, digest, consumer.clone()));
                }
                Err(e) => errs.push((at, e)),
            }
        }
        if let Some(b) = &c.basic {
            if b.user.is_empty() || b.user.contains(':') {
                errs.push((
                    format!("{p}.basic.user"),
                    "a user name is non-empty and has no ':'".into(),
                ));
            }
            match basic::PasswordHash::parse(&b.password) {
                Ok(h) => users.push((
                    format!("{p}.basic.user"),
                    b.user.clone(),
                    consumer.clone(),
                    h,
                )),
                Err(e) => errs.push((format!("{p}.basic.password"), e)),
            }
        }
        if errs.len() == before {
            consumers.push(consumer);
        }
    }
    let lookup = Arc::new(lookup);

    // --- realm
    let realm = auth.realm.clone().unwrap_or_else(|| "portcullis".into());
    if realm.is_empty()
        || realm
            .chars()
            .any(|ch| ch == '"' || ch == '\\' || ch.is_control() || !ch.is_ascii())
    {
        errs.push((
            "auth.realm".into(),
            format!("{realm:?}: expected printable ASCII without quotes or backslashes"),
        ));
    }

    // --- built-in methods
    let (api_key, mut e) = api_key::ApiKeys::build(&auth.api_key, keys);
    errs.append(&mut e);
    let (basic, mut e) = basic::BasicAuth::build(&auth.basic, users);
    errs.append(&mut e);
    let mtls = mtls::MtlsAuth {
        fields: if auth.mtls.consumer_from.is_empty() {
            vec![CertField::San, CertField::Cn]
        } else {
            auth.mtls.consumer_from.clone()
        },
        lookup: lookup.clone(),
    };

    // --- providers
    let env = ProviderEnv {
        lookup: &lookup,
        base,
    };
    let mut failed = HashSet::new();
    let mut jwt = BTreeMap::new();
    let mut forward_headers: Vec<(String, &str)> = Vec::new();
    let mut cookie_used = false;
    for (name, j) in &auth.jwt {
        let p = format!("auth.jwt.{name}");
        if BUILTIN.contains(&name.as_str()) {
            errs.push((
                p.clone(),
                format!("{name:?} is a built-in method name; pick another"),
            ));
        }
        cookie_used |= j.cookie.is_some();
        for (claim, h) in &j.forward_claims {
            forward_headers.push((format!("{p}.forward_claims.{claim}"), h));
        }
        match jwt::JwtProvider::build(name, j, &env) {
            Ok(prov) => {
                jwt.insert(name.clone(), Arc::new(prov));
            }
            Err(list) => {
                failed.insert(name.clone());
                for (field, msg) in list {
                    errs.push((join(&p, &field), msg));
                }
            }
        }
    }
    let mut introspection = BTreeMap::new();
    for (name, c) in &auth.introspection {
        let p = format!("auth.introspection.{name}");
        if BUILTIN.contains(&name.as_str()) {
            errs.push((
                p.clone(),
                format!("{name:?} is a built-in method name; pick another"),
            ));
        }
        if auth.jwt.contains_key(name) {
            errs.push((
                p.clone(),
                format!("{name:?} is also a JWT provider; names are shared"),
            ));
        }
        cookie_used |= c.cookie.is_some();
        for (claim, h) in &c.forward_claims {
            forward_headers.push((format!("{p}.forward_claims.{claim}"), h));
        }
        match introspection::Introspector::build(name, c, &env) {
            Ok(prov) => {
                introspection.insert(name.clone(), Arc::new(prov));
            }
            Err(list) => {
                failed.insert(name.clone());
                for (field, msg) in list {
                    errs.push((join(&p, &field), msg));
                }
            }
        }
    }

    // --- headers
    let mut identity_headers = vec![
        X_CONSUMER_NAME.clone(),
        X_CONSUMER_ROLES.clone(),
        X_ANONYMOUS_CONSUMER.clone(),
    ];
    for (at, h) in forward_headers {
        let Ok(h) = HeaderName::from_bytes(h.as_bytes()) else {
            errs.push((at, format!("{h:?} is not a valid header name")));
            continue;
        };
        if RESERVED_HEADERS.contains(&h.as_str()) {
            errs.push((at, format!("{h} cannot carry a claim")));
        } else if !identity_headers.contains(&h) {
            identity_headers.push(h);
        }
    }
    let mut protected = identity_headers.clone();
    protected.push(header::AUTHORIZATION);
    protected.push(api_key.header.clone());
    if cookie_used {
        protected.push(header::COOKIE);
    }
    let single_headers = vec![api_key.header.clone()];

    (
        Registry {
            consumers,
            lookup,
            realm,
            api_key: Arc::new(api_key),
            basic: Arc::new(basic),
            mtls: Arc::new(mtls),
            jwt,
            introspection,
            failed,
            identity_headers,
            single_headers,
            protected,
        },
        errs,
    )
}

/// `base` + a field suffix that may start with `[` or be empty.
pub fn join(base: &str, field: &str) -> String {
    if field.is_empty() {
        base.to_owned()
    } else if field.starts_with('[') {
        format!("{base}{field}")
    } else {
        format!("{base}.{field}")
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

    #[test]
    fn query_and_cookie_sources() {
        let mut req = Request::builder()
            .uri("/x?a=1&access_token=t%2Bk&b=%20")
            .header(header::COOKIE, "x=1; session=abc; y=2")
            .body(crate::body::empty())
            .unwrap();
        assert_eq!(
            query_value(req.uri().query(), "access_token")
                .unwrap()
                .unwrap(),
            "t+k"
        );
        assert_eq!(cookie_value(req.headers(), "session").unwrap(), Some("abc"));
        remove_query_param(&mut req, "access_token");
        assert_eq!(req.uri().to_string(), "/x?a=1&b=%20");
        remove_cookie(req.headers_mut(), "session");
        assert_eq!(req.headers()[header::COOKIE], "x=1; y=2");
        assert!(query_value(Some("k=1&k=2"), "k").is_err());
        let h = {
            let mut h = HeaderMap::new();
            h.append(header::COOKIE, "s=1".parse().unwrap());
            h.append(header::COOKIE, "s=2".parse().unwrap());
            h
        };
        assert!(cookie_value(&h, "s").is_err());
    }

    #[test]
    fn authorization_schemes() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer abc.def".parse().unwrap());
        assert_eq!(authorization(&h, "Bearer"), Some("abc.def"));
        assert_eq!(authorization(&h, "basic"), None);
        h.insert(header::AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(authorization(&h, "bearer"), Some(""));
        h.insert(header::AUTHORIZATION, "Bearerx".parse().unwrap());
        assert_eq!(authorization(&h, "bearer"), None);
    }
}
