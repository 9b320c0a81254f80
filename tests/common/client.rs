//! reqwest clients and rustls client configs.

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A rustls client config (aws-lc-rs) trusting `roots`, offering `alpn`.
pub fn tls_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> rustls::ClientConfig {
    tls_config_with_cert(roots, alpn, None)
}

/// [`tls_config`] that presents this client certificate (chain, key), if any.
pub fn tls_config_with_cert(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
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
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// reqwest with no proxy from the environment, no redirects, a timeout, and a TLS config
/// that trusts nothing (plain HTTP only).
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls(tls_config(&[], &[b"http/1.1"]))
}

/// An HTTP/1.1 client.
pub fn client() -> reqwest::Client {
    client_builder().http1_only().build().unwrap()
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2c_client() -> reqwest::Client {
    client_builder().http2_prior_knowledge().build().unwrap()
}

/// A client that sends requests for each of `names` to `addr` (so `Host` is that name).
pub fn client_resolving(names: &[&str], addr: SocketAddr) -> reqwest::Client {
    names
        .iter()
        .fold(client_builder().http1_only(), |b, n| b.resolve(n, addr))
        .build()
        .unwrap()
}
