//! JWT providers (`auth.jwt.NAME`): tokens signed with HS256/384/512, RS256/384/512,
//! PS256/384/512, ES256/384 or EdDSA, verified with an inline secret or PEM key or with keys
//! from a JWKS URI ([`super::jwks`]).
//!
//! What is refused, and where:
//! - `alg: none` and algorithms outside the allow-list: the header's `alg` must be listed
//!   (`none` cannot even be listed).
//! - Algorithm confusion: a provider is either HMAC (a `secret`) or public-key (a PEM key or
//!   JWKS), never both, and a key only verifies algorithms of its own family, so an HS256
//!   token "signed" with the RSA public key finds no key.
//! - Tampered signatures and malformed tokens: jsonwebtoken's verification.
//! - `exp`, `nbf` (jsonwebtoken) and `iat` (here: not in the future) with `leeway`; `iss` and
//!   `aud` when configured.
//!
//! Verified tokens are remembered (bounded, keyed by the token's SHA-256) until they expire,
//! at most 5 minutes, and only while the key set is unchanged: a hot client pays for one
//! signature check, not one per request.

use super::jwks::{Jwks, JwksSettings, Key, KeySet};
use super::{
    sha256, ClaimPath, ClaimRules, Identity, Outcome, ProviderEnv, TokenInfo, TokenSource,
};
use crate::config::auth::JwtConfig;
use crate::error::GatewayError;
use http::{HeaderMap, HeaderName, Uri};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
const DEFAULT_MIN_REFETCH: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CACHE: usize = 10_000;
const MAX_CACHED: Duration = Duration::from_secs(300);

pub const ALGORITHMS: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

enum Keys {
    Fixed(Arc<KeySet>),
    Jwks(Arc<Jwks>),
}

struct Verified {
    info: Arc<TokenInfo>,
    until: Instant,
    generation: u64,
}

pub struct JwtProvider {
    pub name: Arc<str>,
    /// One validation per allowed algorithm (exp, nbf, iss, aud, leeway).
    validations: Vec<(Algorithm, Validation)>,
    keys: Keys,
    leeway: u64,
    rules: ClaimRules,
    pub source: TokenSource,
    cache: Option<quick_cache::sync::Cache<[u8; 32], Arc<Verified>>>,
}

type Errors = Vec<(String, String)>;

impl JwtProvider {
    pub fn build(
        name: &str,
        cfg: &JwtConfig,
        env: &ProviderEnv<'_>,
    ) -> Result<JwtProvider, Errors> {
        let mut errs: Errors = Vec::new();

        // Algorithms: the allow-list, one family kind only.
        let mut algs: Vec<Algorithm> = Vec::new();
        for (i, a) in cfg.algorithms.iter().enumerate() {
            let at = format!("algorithms[{i}]");
            if a.eq_ignore_ascii_case("none") {
                errs.push((
                    at,
                    "`none` is never accepted: an unsigned token proves nothing".into(),
                ));
                continue;
            }
            match Algorithm::from_str(a) {
                Ok(alg) if !algs.contains(&alg) => {
                    if let Some(first) = algs.first() {
                        if (first.family() == AlgorithmFamily::Hmac)
                            != (alg.family() == AlgorithmFamily::Hmac)
                        {
                            errs.push((at, format!("{a} cannot share a provider with {first:?}: HMAC and public-key algorithms together allow algorithm confusion; define two providers")));
                            continue;
                        }
                    }
                    algs.push(alg);
                }
                Ok(_) => {}
                Err(_) => errs.push((
                    at,
                    format!("unknown algorithm {a:?}; expected one of {ALGORITHMS}"),
                )),
            }
        }
        if cfg.algorithms.is_empty() {
            errs.push((
                "algorithms".into(),
                format!("list the accepted algorithms, e.g. [RS256]; one or more of {ALGORITHMS}"),
            ));
        }
        let hmac = algs
            .first()
            .is_some_and(|a| a.family() == AlgorithmFamily::Hmac);

        // Keys: exactly one source, of the algorithms' kind.
        let given = [
            cfg.secret.is_some(),
            cfg.public_key.is_some(),
            cfg.jwks_uri.is_some(),
        ];
        let keys = if given.iter().filter(|g| **g).count() != 1 {
            errs.push((
                String::new(),
                "give exactly one of `secret`, `public_key` or `jwks_uri`".into(),
            ));
            None
        } else if let Some(secret) = &cfg.secret {
            if !hmac && !algs.is_empty() {
                errs.push((
                    "secret".into(),
                    "a `secret` is for HS256/384/512; public-key algorithms need `public_key` or `jwks_uri`".into(),
                ));
            }
            let bytes = if cfg.secret_base64 {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(secret.trim())
                    .or_else(|_| {
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(secret.trim())
                    })
                    .map_err(|_| errs.push(("secret".into(), "not valid base64".into())))
                    .unwrap_or_default()
            } else {
                secret.as_bytes().to_vec()
            };
            let need = algs
                .iter()
                .map(|a| match a {
                    Algorithm::HS384 => 48,
                    Algorithm::HS512 => 64,
                    _ => 32,
                })
                .max()
                .unwrap_or(32);
            if bytes.len() < need {
                errs.push((
                    "secret".into(),
                    format!("the secret has {} bytes; RFC 7518 requires at least {need} for these algorithms", bytes.len()),
                ));
            }
            Some(Keys::Fixed(Arc::new(KeySet::fixed(vec![Key {
                kid: None,
                alg: None,
                family: AlgorithmFamily::Hmac,
                curve_alg: None,
                key: DecodingKey::from_secret(&bytes),
            }]))))
        } else {
            if hmac {
                errs.push((
                    "algorithms".into(),
                    "HS256/384/512 need a `secret`: an HMAC keyed with a public key is algorithm confusion".into(),
                ));
            }
            if let Some(pem) = &cfg.public_key {
                match read_public_key(pem, env.base) {
                    Ok(k) => {
                        if !algs.is_empty() && !algs.iter().any(|a| a.family() == k.family) {
                            errs.push((
                                "public_key".into(),
                                format!("a {:?} key cannot verify {:?}", k.family, algs),
                            ));
                        }
                        Some(Keys::Fixed(Arc::new(KeySet::fixed(vec![k]))))
                    }
                    Err(e) => {
                        errs.push(("public_key".into(), e));
                        None
                    }
                }
            } else {
                let uri = cfg.jwks_uri.clone().unwrap_or_default();
                let ca = cfg.ca.as_ref().map(|c| env.base.join(c));
                match super::client::client(ca.as_deref()) {
                    Err(e) => {
                        errs.push(("ca".into(), e));
                        None
                    }
                    Ok(client) => {
                        let s = JwksSettings {
                            uri,
                            ca,
                            timeout: positive(cfg.timeout, DEFAULT_TIMEOUT, "timeout", &mut errs),
                            refresh: positive(
                                cfg.jwks_refresh,
                                DEFAULT_REFRESH,
                                "jwks_refresh",
                                &mut errs,
                            ),
                            min_refetch: cfg.jwks_min_refetch.map_or(DEFAULT_MIN_REFETCH, |d| d.0),
                        };
                        match Jwks::shared(&s, client) {
                            Ok(j) => Some(Keys::Jwks(j)),
                            Err(e) => {
                                errs.push(("jwks_uri".into(), e));
                                None
                            }
                        }
                    }
                }
            }
        };
        if cfg.ca.is_some() && cfg.jwks_uri.is_none() {
            errs.push(("ca".into(), "`ca` is for an https `jwks_uri`".into()));
        }

        let leeway = cfg.leeway.map_or(DEFAULT_LEEWAY, |d| d.0).as_secs();
        let validations = algs
            .iter()
            .map(|a| {
                let mut v = Validation::new(*a);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                if let Some(iss) = &cfg.issuer {
                    v.set_issuer(&iss.0);
                }
                if cfg.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&cfg.audiences);
                }
                (*a, v)
            })
            .collect();
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
        let cache_size = cfg.cache_size.unwrap_or(DEFAULT_CACHE);
        Ok(JwtProvider {
            name: name.into(),
            validations,
            keys: keys.expect("no errors"),
            leeway,
            rules,
            source,
            cache: (cache_size > 0).then(|| quick_cache::sync::Cache::new(cache_size)),
        })
    }

    fn generation(&self) -> u64 {
        match &self.keys {
            Keys::Fixed(s) => s.generation,
            Keys::Jwks(j) => j.current().generation,
        }
    }

    fn identity(&self, info: Arc<TokenInfo>) -> Outcome {
        Outcome::Valid(Identity {
            consumer: info.consumer.clone(),
            method: self.name.clone(),
            token: Some(info),
            key_id: None,
        })
    }

    pub async fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<Outcome, GatewayError> {
        let Some(token) = self.source.find(headers, uri)? else {
            return Ok(Outcome::Absent);
        };
        Ok(self.verify(&token).await)
    }

    /// Verifies a token (or finds it verified in the cache).
    pub async fn verify(&self, token: &str) -> Outcome {
        let digest = self.cache.as_ref().map(|_| sha256(&[token.as_bytes()]));
        if let (Some(cache), Some(d)) = (&self.cache, &digest) {
            if let Some(v) = cache.get(d) {
                if Instant::now() < v.until && v.generation == self.generation() {
                    return self.identity(v.info.clone());
                }
                cache.remove(d);
            }
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Outcome::Invalid;
        };
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Outcome::Invalid;
        };
        let set = match &self.keys {
            Keys::Fixed(s) => s.clone(),
            Keys::Jwks(j) => match j.keys_for(header.kid.as_deref(), header.alg).await {
                Ok(s) => s,
                Err(_) => return Outcome::Unavailable,
            },
        };
        let mut claims = None;
        for k in set.candidates(header.kid.as_deref(), header.alg) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, validation) {
                Ok(d) => {
                    claims = Some(d.claims);
                    break;
                }
                // Several keys may fit a token without `kid`: try the next.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(_) => return Outcome::Invalid,
            }
        }
        let Some(claims) = claims else {
            return Outcome::Invalid;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // jsonwebtoken leaves `iat` alone; a token issued in the future is refused.
        if let Some(iat) = claims.get("iat") {
            match iat.as_f64() {
                Some(t) if t <= (now + self.leeway) as f64 => {}
                _ => return Outcome::Invalid,
            }
        }
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
        let Some(info) = self.rules.token_info(claims) else {
            return Outcome::Invalid;
        };
        let info = Arc::new(info);
        if let (Some(cache), Some(d)) = (&self.cache, digest) {
            let left = Duration::from_secs((exp + self.leeway).saturating_sub(now));
            cache.insert(
                d,
                Arc::new(Verified {
                    info: info.clone(),
                    until: Instant::now() + left.min(MAX_CACHED),
                    generation: set.generation,
                }),
            );
        }
        self.identity(info)
    }
}

fn positive(
    d: Option<crate::config::Dur>,
    default: Duration,
    field: &str,
    errs: &mut Errors,
) -> Duration {
    match d {
        Some(d) if d.0.is_zero() => {
            errs.push((field.into(), "must be more than 0".into()));
            default
        }
        Some(d) => d.0,
        None => default,
    }
}

/// A PEM public key, inline (`-----BEGIN ...`) or from a file; RSA, EC or Ed25519.
fn read_public_key(pem: &str, base: &std::path::Path) -> Result<Key, String> {
    let text = if pem.trim_start().starts_with("-----BEGIN") {
        pem.to_owned()
    } else {
        let path = base.join(pem);
        std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
    };
    let b = text.as_bytes();
    let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(b) {
        (AlgorithmFamily::Rsa, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(b) {
        (AlgorithmFamily::Ec, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(b) {
        (AlgorithmFamily::Ed, k)
    } else {
        return Err("not a PEM RSA, EC or Ed25519 public key".into());
    };
    Ok(Key {
        kid: None,
        alg: None,
        family,
        curve_alg: None,
        key,
    })
}

/// Where a provider reads tokens from; errors at `bearer`, `cookie`, `query`.
pub fn token_source(
    bearer: bool,
    cookie: &Option<String>,
    query: &Option<String>,
    errs: &mut Errors,
) -> TokenSource {
    if cookie.as_deref() == Some("") {
        errs.push(("cookie".into(), "a cookie name cannot be empty".into()));
    }
    if query.as_deref() == Some("") {
        errs.push(("query".into(), "a parameter name cannot be empty".into()));
    }
    if !bearer && cookie.is_none() && query.is_none() {
        errs.push((
            "bearer".into(),
            "with `bearer: false`, name a `cookie` or a `query` parameter to read the token from"
                .into(),
        ));
    }
    TokenSource {
        bearer,
        cookie: cookie.clone(),
        query: query.clone(),
    }
}

/// Consumer, roles and forwarded claims of a provider.
pub fn claim_rules(
    consumer: Option<&str>,
    roles: Option<&str>,
    forward: &std::collections::BTreeMap<String, String>,
    env: &ProviderEnv<'_>,
    errs: &mut Errors,
) -> ClaimRules {
    for (field, v) in [("consumer_claim", consumer), ("roles_claim", roles)] {
        if v == Some("") {
            errs.push((field.into(), "a claim name cannot be empty".into()));
        }
    }
    ClaimRules {
        consumer: consumer.map(ClaimPath::new),
        roles: roles.map(ClaimPath::new),
        // Header names are checked (and reported) by the registry.
        forward: forward
            .iter()
            .filter_map(|(c, h)| {
                Some((
                    ClaimPath::new(c),
                    HeaderName::from_bytes(h.as_bytes()).ok()?,
                ))
            })
            .collect(),
        lookup: env.lookup.clone(),
    }
}
