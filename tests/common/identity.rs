//! Identity helpers (auth, jwt, introspection, mtls): signing keys and tokens made in the
//! test, a JWKS server, an OAuth2 introspection server and a small PKI for certificates.

use super::problem::problem_typed;
use super::upstream::Upstream;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Checks a problem+json answer with this `type` slug; returns its headers and body.
pub async fn problem_with_headers(
    res: reqwest::Response,
    status: u16,
    slug: &str,
) -> (reqwest::header::HeaderMap, Value) {
    let headers = res.headers().clone();
    (headers, problem_typed(res, status, slug).await)
}

/// Every `WWW-Authenticate` value, in order.
pub fn challenges(h: &reqwest::header::HeaderMap) -> Vec<String> {
    h.get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// A 401 answer with exactly these challenges.
pub async fn assert_401(res: reqwest::Response, expected: &[&str]) -> Value {
    let (h, body) = problem_with_headers(res, 401, "unauthorized").await;
    assert_eq!(challenges(&h), expected);
    assert_eq!(
        body["detail"],
        "valid credentials are required for this resource"
    );
    body
}

/// A 403 answer with exactly these challenges (usually none).
pub async fn assert_403(res: reqwest::Response, expected: &[&str]) -> Value {
    let (h, body) = problem_with_headers(res, 403, "forbidden").await;
    assert_eq!(challenges(&h), expected);
    assert_eq!(body["detail"], "access to this resource is not allowed");
    body
}

pub const BEARER: &str = r#"Bearer realm="portcullis""#;
pub const BEARER_INVALID: &str = r#"Bearer realm="portcullis", error="invalid_token""#;
pub const BASIC: &str = r#"Basic realm="portcullis", charset="UTF-8""#;
pub const KEY: &str = r#"Key realm="portcullis""#;
pub const CERT: &str = r#"Certificate realm="portcullis""#;

// ---------------------------------------------------------------- keys and tokens

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A key that signs test tokens, with its public forms (PEM, JWK).
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    /// PEM public key (empty for HMAC).
    pub public_pem: String,
    /// The raw secret (HMAC only).
    pub secret: Vec<u8>,
    /// The raw public key (Ed25519 only: jsonwebtoken cannot make its JWK from rcgen's PKCS#8 v2).
    pub ed_public: Vec<u8>,
}

impl SigningKey {
    /// An asymmetric key for `alg` (RS*, PS*, ES256/384, EdDSA), generated now.
    pub fn new(alg: Algorithm, kid: &str) -> SigningKey {
        let rcgen_alg = match alg {
            Algorithm::RS256 | Algorithm::PS256 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::RS384 | Algorithm::PS384 => &rcgen::PKCS_RSA_SHA384,
            Algorithm::RS512 | Algorithm::PS512 => &rcgen::PKCS_RSA_SHA512,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            other => panic!("{other:?} is not asymmetric"),
        };
        let kp = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let pem = kp.serialize_pem();
        let encoding = match alg.family() {
            jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem.as_bytes()),
            jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem.as_bytes()),
            _ => EncodingKey::from_ed_pem(pem.as_bytes()),
        }
        .unwrap();
        SigningKey {
            alg,
            kid: kid.to_owned(),
            encoding,
            public_pem: kp.public_key_pem(),
            secret: Vec::new(),
            ed_public: if alg == Algorithm::EdDSA {
                kp.public_key_raw().to_vec()
            } else {
                Vec::new()
            },
        }
    }

    pub fn hmac(alg: Algorithm, secret: &[u8]) -> SigningKey {
        SigningKey {
            alg,
            kid: String::new(),
            encoding: EncodingKey::from_secret(secret),
            public_pem: String::new(),
            secret: secret.to_vec(),
            ed_public: Vec::new(),
        }
    }

    /// A token with these claims, this key's `alg` and (if set) `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, claims)
    }

    /// A token whose header says `alg` (which must be of the key's family).
    pub fn sign_as(&self, alg: Algorithm, claims: &Value) -> String {
        let mut h = Header::new(alg);
        if !self.kid.is_empty() {
            h.kid = Some(self.kid.clone());
        }
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }

    /// The public JWK, with `kid` and `alg`.
    pub fn jwk(&self) -> Value {
        if self.alg == Algorithm::EdDSA {
            return json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64(&self.ed_public),
                "kid": self.kid, "alg": "EdDSA", "use": "sig",
            });
        }
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }
}

/// Claims valid for an hour: `iss`, `aud`, `sub`, `iat`, `exp`, plus `extra`.
pub fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": "https://idp.test/",
        "aud": "api",
        "sub": "user-1",
        "iat": now(),
        "exp": now() + 3600,
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned token: `{"alg":"none"}`, the claims, and an empty signature.
pub fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// The token with its payload replaced (the signature no longer matches).
pub fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    )
}

/// A JWKS endpoint whose key set the test can change.
pub struct JwksServer {
    pub server: Upstream,
    keys: Arc<Mutex<Value>>,
    tls: bool,
}

impl JwksServer {
    pub async fn start(keys: &[&SigningKey]) -> JwksServer {
        JwksServer::start_maybe_tls(None, keys).await
    }

    /// Over https, with this server certificate.
    pub async fn start_tls(cert: &Issued, keys: &[&SigningKey]) -> JwksServer {
        JwksServer::start_maybe_tls(Some(cert), keys).await
    }

    async fn start_maybe_tls(cert: Option<&Issued>, keys: &[&SigningKey]) -> JwksServer {
        let set = Arc::new(Mutex::new(json!({ "keys": [] })));
        let served = set.clone();
        let handler = move |_req| {
            let body = served.lock().unwrap().to_string();
            async move {
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
        };
        let server = match cert {
            None => Upstream::serve(handler).await,
            Some(c) => Upstream::serve_tls(c, handler).await,
        };
        let j = JwksServer {
            server,
            keys: set,
            tls: cert.is_some(),
        };
        j.set(keys);
        j
    }

    /// Serves this exact document.
    pub fn set_raw(&self, doc: Value) {
        *self.keys.lock().unwrap() = doc;
    }

    pub fn set(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() =
            json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() });
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!(
                "https://localhost:{}/.well-known/jwks.json",
                self.server.addr.port()
            )
        } else {
            format!("{}/.well-known/jwks.json", self.server.url())
        }
    }

    pub fn hits(&self) -> usize {
        self.server.hits()
    }
}

/// An RFC 7662 introspection endpoint: answers from a table of tokens, after checking the
/// gateway's client credentials (wrong ones get 401, which the gateway must not take as
/// "inactive").
pub struct IntrospectionServer {
    pub server: Upstream,
    tokens: Arc<Mutex<HashMap<String, Value>>>,
}

impl IntrospectionServer {
    pub async fn start(client_id: &str, client_secret: &str) -> IntrospectionServer {
        use base64::Engine;
        // RFC 6749 §2.3.1: id and secret are form-encoded, then Basic-encoded.
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(client_id),
                enc(client_secret)
            ))
        );
        let tokens: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let table = tokens.clone();
        let server = Upstream::serve(move |req: Request<Incoming>| {
            let table = table.clone();
            let expected = expected.clone();
            async move {
                let auth_ok = req
                    .headers()
                    .get("authorization")
                    .is_some_and(|v| v == expected.as_str());
                let form_ok = req
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v == "application/x-www-form-urlencoded");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                if !auth_ok || !form_ok {
                    return Response::builder()
                        .status(401)
                        .body(Full::new(Bytes::from_static(
                            b"{\"error\":\"invalid_client\"}",
                        )))
                        .unwrap();
                }
                let token = form_urlencoded::parse(&body)
                    .find(|(k, _)| k == "token")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let answer = table
                    .lock()
                    .unwrap()
                    .get(&token)
                    .cloned()
                    .unwrap_or(json!({ "active": false }));
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer.to_string())))
                    .unwrap()
            }
        })
        .await;
        IntrospectionServer { server, tokens }
    }

    pub fn set(&self, token: &str, answer: Value) {
        self.tokens.lock().unwrap().insert(token.to_owned(), answer);
    }

    pub fn url(&self) -> String {
        format!("{}/oauth2/introspect", self.server.url())
    }

    pub fn hits(&self) -> usize {
        self.server.hits()
    }
}

// ---------------------------------------------------------------- certificates

/// A test CA that signs server and client certificates.
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, as DER and PEM.
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub pem: String,
    pub key_pem: String,
}

impl Issued {
    /// The (chain, key) pair a rustls client presents.
    pub fn identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
    }
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        Pki {
            ca: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `name`.
    pub fn server(&self, name: &str) -> Issued {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        self.issue(params)
    }

    /// A client certificate with this CN and SANs (`spiffe://...` URIs, DNS names).
    pub fn client(&self, cn: &str, sans: &[&str]) -> Issued {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Test Clients");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        for s in sans {
            params.subject_alt_names.push(if s.contains("://") {
                rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*s).unwrap())
            } else {
                rcgen::SanType::DnsName(rcgen::string::Ia5String::try_from(*s).unwrap())
            });
        }
        self.issue(params)
    }

    fn issue(&self, params: rcgen::CertificateParams) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Issued {
            der: cert.der().clone(),
            key_der: key.serialize_der(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
