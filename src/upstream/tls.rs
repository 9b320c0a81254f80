//! TLS to upstreams (`https://` targets): trusted roots (the system's, or a CA file), the
//! server name sent and verified (SNI), an optional client certificate, and ALPN for the
//! upstream protocol.
//!
//! rustls with the aws-lc-rs provider, like the listeners (one provider in the process;
//! never ring). Files are read at compile time, so a reload picks up renewed certificates;
//! the pool key includes a fingerprint of what was read, so a changed certificate gets a
//! fresh connection pool while an unchanged one keeps its warm connections.

use crate::config::upstream::UpstreamTlsConfig;
use crate::config::UpstreamProtocol;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// A ready client TLS setup.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Overrides the name taken from the target URL.
    pub sni: Option<ServerName<'static>>,
    /// Identifies what was read, for the pool key.
    pub fingerprint: u64,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The system's roots, read once per process.
fn system_roots() -> Result<RootCertStore, String> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                Err("the system has no CA certificates; set `tls.ca`".to_owned())
            } else {
                Ok(store)
            }
        })
        .clone()
}

fn alpn(protocol: UpstreamProtocol) -> Vec<Vec<u8>> {
    match protocol {
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
        UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    }
}

/// Builds the TLS setup of an upstream with `https` targets. `sni_default` is used when the
/// config sets no `sni` (discovered targets are IP addresses; their name comes from DNS).
/// Errors are (field under `tls`, message).
pub fn client_tls(
    cfg: &UpstreamTlsConfig,
    base: &Path,
    protocol: UpstreamProtocol,
    sni_default: Option<&str>,
) -> Result<ClientTls, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut fp = std::collections::hash_map::DefaultHasher::new();
    let roots = match &cfg.ca {
        Some(ca) => {
            let path = base.join(ca);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    bytes.hash(&mut fp);
                    let mut store = RootCertStore::empty();
                    let certs: Vec<CertificateDer<'static>> =
                        CertificateDer::pem_slice_iter(&bytes)
                            .filter_map(Result::ok)
                            .collect();
                    let (added, _) = store.add_parsable_certificates(certs);
                    if added == 0 {
                        errors.push((
                            "ca".to_owned(),
                            format!("no usable CERTIFICATE in {}", path.display()),
                        ));
                    }
                    store
                }
                Err(e) => {
                    errors.push((
                        "ca".to_owned(),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    RootCertStore::empty()
                }
            }
        }
        None => match system_roots() {
            Ok(r) => r,
            Err(e) => {
                errors.push((String::new(), e));
                RootCertStore::empty()
            }
        },
    };
    let sni = match cfg.sni.as_deref().or(sni_default) {
        None => None,
        Some(name) => {
            name.hash(&mut fp);
            match ServerName::try_from(name.to_owned()) {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(("sni".to_owned(), format!("{name:?} is not a server name")));
                    None
                }
            }
        }
    };
    let client_auth = match (&cfg.client_cert, &cfg.client_key) {
        (None, None) => None,
        (Some(_), None) => {
            errors.push((
                "client_key".to_owned(),
                "`client_cert` needs a `client_key`".to_owned(),
            ));
            None
        }
        (None, Some(_)) => {
            errors.push((
                "client_cert".to_owned(),
                "`client_key` needs a `client_cert`".to_owned(),
            ));
            None
        }
        (Some(c), Some(k)) => {
            let (cp, kp) = (base.join(c), base.join(k));
            let chain: Result<Vec<CertificateDer<'static>>, String> = std::fs::read(&cp)
                .map_err(|e| format!("cannot read {}: {e}", cp.display()))
                .and_then(|b| {
                    b.hash(&mut fp);
                    let chain: Vec<_> = CertificateDer::pem_slice_iter(&b)
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("bad PEM in {}: {e}", cp.display()))?;
                    if chain.is_empty() {
                        return Err(format!("no CERTIFICATE in {}", cp.display()));
                    }
                    Ok(chain)
                });
            let key: Result<PrivateKeyDer<'static>, String> = std::fs::read(&kp)
                .map_err(|e| format!("cannot read {}: {e}", kp.display()))
                .and_then(|b| {
                    b.hash(&mut fp);
                    PrivateKeyDer::from_pem_slice(&b)
                        .map_err(|e| format!("no private key in {}: {e}", kp.display()))
                });
            match (chain, key) {
                (Ok(c), Ok(k)) => Some((c, k)),
                (c, k) => {
                    if let Err(e) = c {
                        errors.push(("client_cert".to_owned(), e));
                    }
                    if let Err(e) = k {
                        errors.push(("client_key".to_owned(), e));
                    }
                    None
                }
            }
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| vec![(String::new(), e.to_string())])?
        .with_root_certificates(roots);
    let mut config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| vec![("client_key".to_owned(), format!("unusable client key: {e}"))])?,
    };
    config.alpn_protocols = alpn(protocol);
    format!("{protocol:?}").hash(&mut fp);
    Ok(ClientTls {
        config: Arc::new(config),
        sni,
        fingerprint: fp.finish(),
    })
}

/// The TLS config of pools that only ever speak plain HTTP (the connector wants one).
pub fn plain() -> Arc<rustls::ClientConfig> {
    static PLAIN: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    PLAIN
        .get_or_init(|| {
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .expect("aws-lc-rs supports the default versions")
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth(),
            )
        })
        .clone()
}
