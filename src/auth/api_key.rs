//! API keys: a secret in a header (default `X-API-Key`) or, when configured, a query
//! parameter, that names one consumer.
//!
//! Keys are stored as SHA-256 digests (`sha256:<hex>`, made by `portcullis hash-key`), so the
//! config file does not hold usable secrets. A request's key is hashed, candidates are found
//! by the digest's first 8 bytes, and the full digests are compared in constant time
//! (`subtle`): nothing about a stored key leaks through timing.

use super::{query_value, remove_query_param, sha256, Consumer, Identity, Outcome};
use crate::body::Body;
use crate::config::auth::ApiKeyConfig;
use crate::error::GatewayError;
use http::{HeaderMap, HeaderName, Request, Uri};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Digest prefix → (digest, consumer): the prefix finds candidates, the full digest is
/// compared in constant time.
type KeyTable = HashMap<u64, Vec<([u8; 32], Arc<Consumer>)>>;

pub struct ApiKeys {
    pub header: HeaderName,
    pub query: Option<String>,
    keys: KeyTable,
    method: Arc<str>,
}

impl ApiKeys {
    /// `keys` are (field path, digest, consumer). Errors are (field path, message).
    pub fn build(
        cfg: &ApiKeyConfig,
        keys: Vec<(String, [u8; 32], Arc<Consumer>)>,
    ) -> (ApiKeys, Vec<(String, String)>) {
        let mut errs = Vec::new();
        let header = match cfg.header.as_deref() {
            None => HeaderName::from_static("x-api-key"),
            Some(h) => HeaderName::from_bytes(h.as_bytes()).unwrap_or_else(|_| {
                errs.push((
                    "auth.api_key.header".to_owned(),
                    format!("{h:?} is not a valid header name"),
                ));
                HeaderName::from_static("x-api-key")
            }),
        };
        if matches!(header.as_str(), "authorization" | "cookie" | "host") {
            errs.push((
                "auth.api_key.header".to_owned(),
                format!("{header} cannot carry API keys"),
            ));
        }
        if cfg.query.as_deref() == Some("") {
            errs.push((
                "auth.api_key.query".to_owned(),
                "a parameter name cannot be empty".to_owned(),
            ));
        }
        let mut map = KeyTable::new();
        for (at, digest, consumer) in keys {
            let bucket = map.entry(prefix(&digest)).or_default();
            if let Some((_, other)) = bucket.iter().find(|(d, _)| *d == digest) {
                errs.push((
                    at,
                    format!("this API key is already given to consumer {:?}", other.name),
                ));
                continue;
            }
            bucket.push((digest, consumer));
        }
        (
            ApiKeys {
                header,
                query: cfg.query.clone(),
                keys: map,
                method: "api_key".into(),
            },
            errs,
        )
    }

    pub fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<Outcome, GatewayError> {
        let from_query = match &self.query {
            Some(q) => query_value(uri.query(), q)?,
            None => None,
        };
        let key: &[u8] = match (headers.get(&self.header), &from_query) {
            (Some(_), Some(_)) => {
                return Err(GatewayError::BadRequest(
                    "the request carries an API key in more than one place",
                ))
            }
            (Some(h), None) => h.as_bytes(),
            (None, Some(q)) => q.as_bytes(),
            (None, None) => return Ok(Outcome::Absent),
        };
        Ok(match self.find(key) {
            Some(c) => Outcome::Valid(Identity {
                consumer: Some(c.clone()),
                method: self.method.clone(),
                key_id: Some(key_id(key)),
                token: None,
            }),
            None => Outcome::Invalid,
        })
    }

    fn find(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        if key.is_empty() {
            return None;
        }
        let digest = sha256(&[key]);
        let mut hit = None;
        for (d, c) in self.keys.get(&prefix(&digest))? {
            if bool::from(d.ct_eq(&digest)) {
                hit = Some(c);
            }
        }
        hit
    }

    pub fn hide(&self, req: &mut Request<Body>) {
        req.headers_mut().remove(&self.header);
        if let Some(q) = &self.query {
            remove_query_param(req, q);
        }
    }
}

fn prefix(d: &[u8; 32]) -> u64 {
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// A stored key: `sha256:<64 hex digits>`, or a plain key (returned with `true`, to warn).
pub fn parse_stored(s: &str) -> Result<([u8; 32], bool), String> {
    if let Some(hex) = s.strip_prefix("sha256:") {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(format!(
                "expected sha256: and 64 hex digits, got {} characters after the prefix",
                bytes.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let v = |c: u8| (c as char).to_digit(16);
            match (v(pair[0]), v(pair[1])) {
                (Some(a), Some(b)) => out[i] = (a * 16 + b) as u8,
                _ => return Err("expected sha256: and 64 hex digits".to_owned()),
            }
        }
        return Ok((out, false));
    }
    if s.is_empty() {
        return Err("an API key cannot be empty".to_owned());
    }
    Ok((sha256(&[s.as_bytes()]), true))
}

/// The stored form of a key, as `portcullis hash-key` prints it.
pub fn stored_form(key: &str) -> String {
    format!("sha256:{}", super::hex(&sha256(&[key.as_bytes()])))
}

/// A new random key: 32 bytes from the system's CSPRNG, base64url without padding.
pub fn generate() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A stable, non-secret name for a key: the first 12 bytes of its SHA-256, in hex.
fn key_id(key: &[u8]) -> Arc<str> {
    let d = sha256(&[key]);
    d[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_forms() {
        let s = stored_form("secret-key");
        assert!(s.starts_with("sha256:") && s.len() == 71, "{s}");
        let (d, plain) = parse_stored(&s).unwrap();
        assert!(!plain);
        assert_eq!(d, sha256(&[b"secret-key"]));
        let (d2, plain) = parse_stored("secret-key").unwrap();
        assert!(plain);
        assert_eq!(d, d2);
        assert!(parse_stored("sha256:abc").is_err());
        assert!(parse_stored(&format!("sha256:{}", "g".repeat(64))).is_err());
        assert_ne!(generate(), generate());
        assert_eq!(generate().len(), 43);
    }
}
