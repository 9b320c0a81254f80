//! Verification keys of a JWT provider, and the JWKS cache.
//!
//! A [`KeySet`] is immutable; a provider with a `jwks_uri` holds its current one in an
//! `ArcSwap`, so a request reads keys with one atomic load and no lock. The set is fetched on
//! first use, refreshed in the background every `jwks_refresh` (default 5m), and refetched
//! when a token names a `kid` the set does not have — at most once per `jwks_min_refetch`
//! (default 10s), so tokens with made-up `kid`s cannot turn the gateway into a load generator
//! against the IdP. Fetches are single-flight (a tokio mutex taken only to fetch).
//!
//! [`Jwks`] values are shared by URI and settings across config reloads (a process-wide map
//! of weak references, touched only at compile time): a reload keeps the keys, and a cache
//! that no snapshot uses any more stops refreshing.

use super::client::{self, AuthClient};
use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Full;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    /// The one algorithm this key may verify, when the JWK says (`alg`).
    pub alg: Option<Algorithm>,
    pub family: AlgorithmFamily,
    /// For EC keys: the algorithm of the key's curve (ES256 for P-256, ES384 for P-384).
    pub curve_alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`. The family check is what stops
    /// algorithm confusion (an HS256 token "signed" with an RSA public key).
    pub fn fits(&self, alg: Algorithm) -> bool {
        alg.family() == self.family
            && self.alg.is_none_or(|a| a == alg)
            && self.curve_alg.is_none_or(|a| a == alg)
    }

    fn matches(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        let kid_ok = match (kid, &self.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        };
        kid_ok && self.fits(alg)
    }
}

/// An immutable set of keys.
#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// Changes when the keys change (verified-token caches drop older entries).
    pub generation: u64,
    /// A fetch has succeeded at least once.
    pub fetched: bool,
    /// The JWKs as fetched, to see whether a refresh changed anything.
    jwks: Vec<Jwk>,
}

impl KeySet {
    pub fn fixed(keys: Vec<Key>) -> KeySet {
        KeySet {
            keys,
            generation: 1,
            fetched: true,
            jwks: Vec::new(),
        }
    }

    /// Keys that may verify a token with this `kid` and `alg`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| k.matches(kid, alg))
    }
}

/// Why keys could not be had.
#[derive(Debug, PartialEq, Eq)]
pub struct Unavailable;

pub struct Jwks {
    uri: Uri,
    client: AuthClient,
    timeout: Duration,
    refresh: Duration,
    min_refetch: Duration,
    keys: arc_swap::ArcSwap<KeySet>,
    born: Instant,
    /// Milliseconds after `born` of the last fetch attempt, plus one; 0 = never.
    last_attempt: AtomicU64,
    /// Fetch attempts so far: a request that waited for the fetch lock sees whether someone
    /// else fetched meanwhile.
    attempts: AtomicU64,
    fetch: tokio::sync::Mutex<()>,
    background: AtomicBool,
}

/// Settings of a JWKS cache; equal settings share one cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwksSettings {
    pub uri: String,
    pub ca: Option<std::path::PathBuf>,
    pub timeout: Duration,
    pub refresh: Duration,
    pub min_refetch: Duration,
}

impl Jwks {
    /// The cache for these settings: the one a running snapshot already uses, or a new one.
    pub fn shared(s: &JwksSettings, client: AuthClient) -> Result<Arc<Jwks>, String> {
        static SHARED: Mutex<Option<HashMap<JwksSettings, Weak<Jwks>>>> = Mutex::new(None);
        let uri: Uri = s
            .uri
            .parse()
            .map_err(|e| format!("{:?} is not a URL ({e})", s.uri))?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.host().is_some() => {}
            _ => return Err(format!("{:?}: expected an http:// or https:// URL", s.uri)),
        }
        let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let map = guard.get_or_insert_with(HashMap::new);
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(j) = map.get(s).and_then(Weak::upgrade) {
            return Ok(j);
        }
        let j = Arc::new(Jwks {
            uri,
            client,
            timeout: s.timeout,
            refresh: s.refresh,
            min_refetch: s.min_refetch,
            keys: arc_swap::ArcSwap::from_pointee(KeySet::default()),
            born: Instant::now(),
            last_attempt: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            fetch: tokio::sync::Mutex::new(()),
            background: AtomicBool::new(false),
        });
        map.insert(s.clone(), Arc::downgrade(&j));
        Ok(j)
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Keys for a token. Fetches first when nothing was fetched yet; refetches (rate-limited)
    /// when no key fits the token's `kid` and `alg`.
    pub async fn keys_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<KeySet>, Unavailable> {
        self.start_background();
        let set = self.keys.load_full();
        if set.fetched && set.candidates(kid, alg).next().is_some() {
            return Ok(set);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        self.fetch_once(seen, true).await;
        let set = self.keys.load_full();
        if set.fetched {
            Ok(set)
        } else {
            Err(Unavailable)
        }
    }

    /// One fetch, unless another one happened since `seen` or (when `limited`) the last
    /// attempt was less than `min_refetch` ago.
    async fn fetch_once(&self, seen: u64, limited: bool) {
        let _one = self.fetch.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            return;
        }
        let now = self.born.elapsed().as_millis() as u64 + 1;
        let last = self.last_attempt.load(Ordering::Acquire);
        if limited && last != 0 && now.saturating_sub(last) < self.min_refetch.as_millis() as u64 {
            return;
        }
        self.last_attempt.store(now, Ordering::Release);
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match self.download().await {
            Ok((keys, jwks)) => {
                let old = self.keys.load();
                if old.fetched && old.jwks == jwks {
                    return;
                }
                tracing::info!(jwks_uri = %self.uri, keys = keys.len(), "JWKS loaded");
                self.keys.store(Arc::new(KeySet {
                    keys,
                    generation: old.generation + 1,
                    fetched: true,
                    jwks,
                }));
            }
            Err(e) => {
                tracing::warn!(jwks_uri = %self.uri, error = %e, "JWKS fetch failed; keeping the keys we have");
            }
        }
    }

    fn start_background(self: &Arc<Self>) {
        if self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = self.refresh;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = weak.upgrade() else { break };
                let seen = me.attempts.load(Ordering::Acquire);
                me.fetch_once(seen, false).await;
            }
        });
    }

    async fn download(&self) -> Result<(Vec<Key>, Vec<Jwk>), String> {
        let req = Request::get(self.uri.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "portcullis")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = client::send(&self.client, req, self.timeout).await?;
        if status != http::StatusCode::OK {
            return Err(format!("the JWKS URI answered {status}"));
        }
        parse_jwks(&body)
    }
}

/// Signing keys of a JWKS document. Keys that are not for signatures, HMAC (`oct`) keys and
/// keys of unsupported types or curves are skipped.
pub fn parse_jwks(body: &[u8]) -> Result<(Vec<Key>, Vec<Jwk>), String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no `keys` list")?;
    let mut keys = Vec::new();
    let mut jwks = Vec::new();
    for item in list {
        if item.get("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
            continue;
        };
        if let Some(k) = key_of_jwk(&jwk) {
            keys.push(k);
            jwks.push(jwk);
        }
    }
    if keys.is_empty() {
        return Err("no usable signing key in the JWKS".to_owned());
    }
    Ok((keys, jwks))
}

fn key_of_jwk(jwk: &Jwk) -> Option<Key> {
    let (family, curve_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (AlgorithmFamily::Ed, None)
        }
        // `oct` keys are HMAC secrets: never taken from a published key set.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(Algorithm::try_from(a).ok()?),
    };
    if alg.is_some_and(|a| a.family() != family) {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        curve_alg,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_what_cannot_sign() {
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "x": "AQAB", "y": "AQAB"},
            {"kty": "weird", "kid": "w"},
        ]});
        let (keys, _) = parse_jwks(body.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["r1", "e1"]);
        assert!(keys[0].fits(Algorithm::RS256));
        assert!(!keys[0].fits(Algorithm::PS256));
        assert!(!keys[0].fits(Algorithm::HS256));
        assert!(keys[1].fits(Algorithm::ES256));
        assert!(!keys[1].fits(Algorithm::ES384));
        assert!(parse_jwks(br#"{"keys": []}"#).is_err());
        assert!(parse_jwks(b"nope").is_err());
    }
}
