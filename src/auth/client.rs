//! The HTTP client identity providers are asked with (JWKS downloads, token introspection):
//! hyper-util's pooled client over hyper-rustls (aws-lc-rs), `http` and `https`.
//!
//! Each provider gets its own client (its own small connection pool, so a pool never outlives
//! the runtime its connections were made on); they trust the system's roots, read once per
//! process, or only the provider's `ca`. Clients are built at compile time (never on the
//! request path) and answers are read with a timeout and a size cap.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub type AuthClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest answer read from an identity provider.
const MAX_ANSWER: usize = 1 << 20;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn build(tls: rustls::ClientConfig) -> AuthClient {
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(conn)
}

fn tls_with_roots(
    roots: impl Into<Arc<rustls::RootCertStore>>,
) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The system's CA certificates, read once.
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                tracing::warn!(
                    "no system CA certificates found: https identity providers need a `ca`"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// A client for a provider, trusting the system's roots or only `ca` (a PEM file).
pub fn client(ca: Option<&Path>) -> Result<AuthClient, String> {
    let Some(ca) = ca else {
        return Ok(build(tls_with_roots(system_roots())?));
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read CA certificates from {}: {e}", ca.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!("no CERTIFICATE block in {}", ca.display()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("unusable CA certificate in {}: {e}", ca.display()))?;
    }
    Ok(build(tls_with_roots(roots)?))
}

/// Sends a request and reads the whole answer, within `timeout` and [`MAX_ANSWER`] bytes.
/// Errors are for logs; they never contain the request's credentials.
pub async fn send(
    client: &AuthClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let work = async {
        let res = client.request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}
