//! Helpers for the identity tests (auth, jwt, introspection, mtls): an echo upstream, a
//! gateway started from YAML, signing keys and tokens made in the test, a JWKS server, an
//! OAuth2 introspection server and a small PKI for client certificates.
//!
//! Everything listens on 127.0.0.1 port 0. Each test binary uses part of this module.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::server::{self, ConfigSource, Options, ServerHandle, StartError};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------- servers

/// An HTTP server on 127.0.0.1 that counts its requests; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn serve<F, Fut>(handler: F) -> Server
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Server::serve_maybe_tls(None, handler).await
    }

    /// Serves over TLS with this certificate.
    pub async fn serve_tls<F, Fut>(cert: &Issued, handler: F) -> Server
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        Server::serve_maybe_tls(Some(acceptor), handler).await
    }

    async fn serve_maybe_tls<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> Server
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, counter, tls) = (handler.clone(), counter.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Server { addr, hits, task }
    }

    /// Answers with JSON describing the request: method, path, query and every header.
    pub async fn echo() -> Server {
        Server::serve(|req: Request<Incoming>| async move {
            let (parts, _) = req.into_parts();
            let mut headers = serde_json::Map::new();
            for (k, v) in &parts.headers {
                let list = headers.entry(k.as_str()).or_insert_with(|| json!([]));
                list.as_array_mut()
                    .unwrap()
                    .push(String::from_utf8_lossy(v.as_bytes()).into());
            }
            let seen = json!({
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "headers": headers,
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(seen.to_string())))
                .unwrap()
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// What the echo upstream received.
#[derive(Debug)]
pub struct Seen(pub Value);

impl Seen {
    pub fn path(&self) -> &str {
        self.0["path"].as_str().unwrap()
    }
    pub fn query(&self) -> Option<&str> {
        self.0["query"].as_str()
    }
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.0["headers"][name.to_ascii_lowercase()]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default()
    }
    /// The only value of a header; panics if it came more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.headers(name);
        assert!(all.len() <= 1, "{name} came {} times: {all:?}", all.len());
        all.first().copied()
    }
    pub fn has(&self, name: &str) -> bool {
        !self.headers(name).is_empty()
    }
}

/// Reads the echo upstream's answer, insisting on 200.
pub async fn seen(res: reqwest::Response) -> Seen {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(
        status, 200,
        "expected the upstream's answer, got {status}: {text}"
    );
    Seen(serde_json::from_str(&text).unwrap())
}

// ---------------------------------------------------------------- gateway

/// A running gateway; its temp dir holds the config and files it refers to.
pub struct Gw {
    pub handle: ServerHandle,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
}

/// Removes the common indentation of a YAML snippet.
pub fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The snippet plus a listener on a free port (unless it has `listeners:`) and no access log.
pub fn full_config(yaml: &str) -> String {
    let yaml = dedent(yaml);
    let mut out = String::from("access_log: { format: \"off\" }\n");
    if !yaml.lines().any(|l| l.starts_with("listeners:")) {
        out.push_str("listeners: [{ bind: \"127.0.0.1:0\" }]\n");
    }
    out + &yaml
}

impl Gw {
    pub async fn start(yaml: impl AsRef<str>) -> Gw {
        Gw::start_in(tempfile::tempdir().unwrap(), yaml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, yaml: impl AsRef<str>) -> Gw {
        match Gw::try_start_in(dir, yaml.as_ref()).await {
            Ok(gw) => gw,
            Err(e) => panic!("the gateway did not start:\n{e}"),
        }
    }

    pub async fn try_start_in(dir: tempfile::TempDir, yaml: &str) -> Result<Gw, StartError> {
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, full_config(yaml)).unwrap();
        let handle = server::start(Options {
            source: ConfigSource::File(path),
            watch: false,
            sighup: false,
        })
        .await?;
        let addr = handle.addr();
        Ok(Gw {
            handle,
            addr,
            client: client(),
            dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }
}

/// Config errors of a YAML snippet, one `path: message` per line (and the located form).
pub fn config_errors(yaml: &str) -> Vec<portcullis::config::Diagnostic> {
    let pools = portcullis::upstream::Pools::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, full_config(yaml)).unwrap();
    match portcullis::compile::load_and_compile(&path, &pools) {
        Ok(_) => Vec::new(),
        Err(d) => d.0,
    }
}

/// The compiled gateway of a YAML snippet (panics with the diagnostics if it does not compile).
pub fn compile(yaml: &str) -> portcullis::compile::Gateway {
    let pools = portcullis::upstream::Pools::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, full_config(yaml)).unwrap();
    portcullis::compile::load_and_compile(&path, &pools).unwrap_or_else(|d| panic!("{d}"))
}

/// A rustls client config (aws-lc-rs) trusting `roots`, with an optional client certificate.
pub fn tls_config(
    roots: &[CertificateDer<'static>],
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store);
    let mut cfg = match client_cert {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

/// reqwest for plain HTTP: no proxy, no redirects, a timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls(tls_config(&[], None))
        .build()
        .unwrap()
}

/// Checks a problem+json answer; returns its headers and body.
pub async fn problem(
    res: reqwest::Response,
    status: u16,
    slug: &str,
) -> (reqwest::header::HeaderMap, Value) {
    let headers = res.headers().clone();
    let got = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert_eq!(got, status, "expected {status} {slug}, got {got}: {text}");
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["type"],
        format!("urn:portcullis:problem:{slug}"),
        "{text}"
    );
    assert_eq!(v["status"], status);
    (headers, v)
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
    let (h, body) = problem(res, 401, "unauthorized").await;
    assert_eq!(challenges(&h), expected);
    assert_eq!(
        body["detail"],
        "valid credentials are required for this resource"
    );
    body
}

/// A 403 answer with exactly these challenges (usually none).
pub async fn assert_403(res: reqwest::Response, expected: &[&str]) -> Value {
    let (h, body) = problem(res, 403, "forbidden").await;
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
    pub server: Server,
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
            None => Server::serve(handler).await,
            Some(c) => Server::serve_tls(c, handler).await,
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
    pub server: Server,
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
        let server = Server::serve(move |req: Request<Incoming>| {
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
