//! The registry: `consumers:` and `auth:` compiled into one value per snapshot — consumers
//! by name and id, one verifier per built-in method and per named provider, and the header
//! lists the pipeline needs (identity headers to strip, credential headers to protect).

use super::{api_key, basic, introspection, jwt, mtls, Consumer, Limit, Lookup, Method, BUILTIN};
use super::{X_ANONYMOUS_CONSUMER, X_CONSUMER_NAME, X_CONSUMER_ROLES};
use crate::config::auth::CertField;
use crate::config::load::FieldPath;
use crate::config::{Config, ConsumerConfig, SourceMap};
use crate::error::GatewayError;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

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
            effective: None,
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
        // Honest clients send none: one pass over their few names (no hashing) says so.
        if !headers.keys().any(|k| self.identity_headers.contains(k)) {
            return;
        }
        for h in &self.identity_headers {
            if headers.contains_key(h) {
                headers.remove(h);
            }
        }
    }

    /// Refuses a request that repeats a configured credential header.
    pub fn check_single(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        // Usually none of them is there at all: one pass over the client's few names (no
        // hashing) says so.
        if !headers.keys().any(|k| self.single_headers.contains(k)) {
            return Ok(());
        }
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

type Errors = Vec<(String, String)>;

/// Compiles `consumers:` and `auth:`. Errors are (field path, message); the registry is
/// returned even then, without the parts that failed, so routes can still be checked.
pub fn compile(cfg: &Config, source: &SourceMap, base: &Path) -> (Registry, Errors) {
    let mut errs = Errors::new();
    let auth = &cfg.auth;

    let mut lookup = Lookup::new();
    let mut creds = Credentials::default();
    let mut consumers = Vec::new();
    for c in &cfg.consumers {
        let before = errs.len();
        let consumer = consumer(c, source, &mut lookup, &mut creds, &mut errs);
        if errs.len() == before {
            consumers.push(consumer);
        }
    }
    let lookup = Arc::new(lookup);

    let realm = auth.realm.clone().unwrap_or_else(|| "portcullis".into());
    let bad_realm = |ch: char| ch == '"' || ch == '\\' || ch.is_control() || !ch.is_ascii();
    if realm.is_empty() || realm.chars().any(bad_realm) {
        errs.push((
            "auth.realm".into(),
            format!("{realm:?}: expected printable ASCII without quotes or backslashes"),
        ));
    }

    let (api_key, mut e) = api_key::ApiKeys::build(&auth.api_key, creds.keys);
    errs.append(&mut e);
    let (basic, mut e) = basic::BasicAuth::build(&auth.basic, creds.users);
    errs.append(&mut e);
    let mtls = mtls::MtlsAuth {
        fields: if auth.mtls.consumer_from.is_empty() {
            vec![CertField::San, CertField::Cn]
        } else {
            auth.mtls.consumer_from.clone()
        },
        lookup: lookup.clone(),
    };
    let env = ProviderEnv {
        lookup: &lookup,
        base,
    };
    let providers = providers(cfg, &env, &mut errs);

    // Identity headers: the fixed ones and every forwarded claim's.
    let mut identity_headers = vec![
        X_CONSUMER_NAME.clone(),
        X_CONSUMER_ROLES.clone(),
        X_ANONYMOUS_CONSUMER.clone(),
    ];
    for (at, h) in providers.forward_headers {
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
    if providers.cookie_used {
        protected.push(header::COOKIE);
    }
    let single_headers = vec![api_key.header.clone()];

    let registry = Registry {
        consumers,
        lookup,
        realm,
        api_key: Arc::new(api_key),
        basic: Arc::new(basic),
        mtls: Arc::new(mtls),
        jwt: providers.jwt,
        introspection: providers.introspection,
        failed: providers.failed,
        identity_headers,
        single_headers,
        protected,
    };
    (registry, errs)
}

/// Credentials found in `consumers:`, for the methods that check them.
#[derive(Default)]
struct Credentials {
    /// (field path, digest, consumer)
    keys: Vec<(String, [u8; 32], Arc<Consumer>)>,
    /// (field path of the user, user, consumer, hash)
    users: Vec<(String, String, Arc<Consumer>, basic::PasswordHash)>,
}

/// One consumer: checked, registered in `lookup` by name and ids, its credentials collected.
fn consumer(
    c: &ConsumerConfig,
    source: &SourceMap,
    lookup: &mut Lookup,
    creds: &mut Credentials,
    errs: &mut Errors,
) -> Arc<Consumer> {
    let p = format!("consumers[{}]", c.index);
    if c.name.trim().is_empty() {
        errs.push((format!("{p}.name"), "a consumer needs a name".into()));
    }
    let name_header = HeaderValue::from_bytes(c.name.as_bytes()).unwrap_or_else(|_| {
        let msg = format!(
            "{:?} cannot be sent in a header (no control characters)",
            c.name
        );
        errs.push((format!("{p}.name"), msg));
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
    let consumer = Arc::new(Consumer {
        name: c.name.as_str().into(),
        roles: c.roles.clone(),
        metadata: c.metadata.clone(),
        limits,
        name_header,
        roles_header: (!c.roles.is_empty())
            .then(|| HeaderValue::from_str(&c.roles.join(",")).ok())
            .flatten(),
    });

    let ids = c
        .ids
        .iter()
        .enumerate()
        .map(|(j, id)| (format!("{p}.ids[{j}]"), id));
    for (at, n) in std::iter::once((format!("{p}.name"), &c.name)).chain(ids) {
        if n.is_empty() {
            if at.contains(".ids[") {
                errs.push((at, "an id cannot be empty".into()));
            }
            continue;
        }
        match lookup.get(n) {
            Some(other) if Arc::ptr_eq(other, &consumer) => {
                errs.push((at, format!("{n:?} is listed twice for this consumer")))
            }
            Some(other) => {
                errs.push((at, format!("{n:?} already names consumer {:?}", other.name)))
            }
            None => {
                lookup.insert(n.clone(), consumer.clone());
            }
        }
    }

    for (j, k) in c.api_keys.iter().enumerate() {
        let at = format!("{p}.api_keys[{j}]");
        match api_key::parse_stored(k) {
            Ok((digest, plain)) => {
                if plain {
                    // Located, and without the key.
                    let d = source.diag(&FieldPath::parse(&at), "");
                    tracing::warn!(
                        "{}:{}:{}: {at}: a plain API key in the config; {}",
                        d.file,
                        d.line,
                        d.column,
                        "store its digest instead (`portcullis hash-key`)"
                    );
                }
                creds.keys.push((at, digest, consumer.clone()));
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
            Ok(h) => {
                let at = format!("{p}.basic.user");
                creds.users.push((at, b.user.clone(), consumer.clone(), h));
            }
            Err(e) => errs.push((format!("{p}.basic.password"), e)),
        }
    }
    consumer
}

/// The named providers of `auth.jwt` and `auth.introspection`.
struct Providers {
    jwt: BTreeMap<String, Arc<jwt::JwtProvider>>,
    introspection: BTreeMap<String, Arc<introspection::Introspector>>,
    failed: HashSet<String>,
    /// (field path, header name) of every `forward_claims` entry.
    forward_headers: Vec<(String, String)>,
    /// Some provider reads tokens from a cookie.
    cookie_used: bool,
}

fn providers(cfg: &Config, env: &ProviderEnv<'_>, errs: &mut Errors) -> Providers {
    let auth = &cfg.auth;
    let mut out = Providers {
        jwt: BTreeMap::new(),
        introspection: BTreeMap::new(),
        failed: HashSet::new(),
        forward_headers: Vec::new(),
        cookie_used: false,
    };
    let mut common = |p: &str, name: &str, cookie: bool, forward: &BTreeMap<String, String>| {
        if BUILTIN.contains(&name) {
            errs.push((
                p.to_owned(),
                format!("{name:?} is a built-in method name; pick another"),
            ));
        }
        out.cookie_used |= cookie;
        for (claim, h) in forward {
            out.forward_headers
                .push((format!("{p}.forward_claims.{claim}"), h.clone()));
        }
    };
    let mut built_jwt = Vec::new();
    for (name, j) in &auth.jwt {
        let p = format!("auth.jwt.{name}");
        common(&p, name, j.cookie.is_some(), &j.forward_claims);
        built_jwt.push((p, name, jwt::JwtProvider::build(name, j, env)));
    }
    let mut built_intro = Vec::new();
    for (name, c) in &auth.introspection {
        let p = format!("auth.introspection.{name}");
        common(&p, name, c.cookie.is_some(), &c.forward_claims);
        built_intro.push((p, name, introspection::Introspector::build(name, c, env)));
    }
    for (p, name, built) in built_jwt {
        match built {
            Ok(prov) => {
                out.jwt.insert(name.clone(), Arc::new(prov));
            }
            Err(list) => {
                out.failed.insert(name.clone());
                errs.extend(list.into_iter().map(|(f, m)| (join(&p, &f), m)));
            }
        }
    }
    for (p, name, built) in built_intro {
        if auth.jwt.contains_key(name) {
            errs.push((
                p.clone(),
                format!("{name:?} is also a JWT provider; names are shared"),
            ));
        }
        match built {
            Ok(prov) => {
                out.introspection.insert(name.clone(), Arc::new(prov));
            }
            Err(list) => {
                out.failed.insert(name.clone());
                errs.extend(list.into_iter().map(|(f, m)| (join(&p, &f), m)));
            }
        }
    }
    out
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
