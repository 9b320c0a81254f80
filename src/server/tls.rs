//! TLS termination with rustls: PEM chains and keys, several certificates chosen by SNI,
//! TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
//!
//! Certificates are read and checked at compile time (a reload re-reads them, so renewing a
//! certificate is a file change plus SIGHUP). SNI selection uses the DNS names of each
//! certificate's subjectAltName (or its CN when it has none): an exact name first, then a
//! wildcard (`*.example.com` covers one label), then the first certificate.
//!
//! mTLS: with `client_ca`, client certificates are verified against those CAs during the
//! handshake (`client_auth: required`, the default, refuses a handshake without one;
//! `optional` lets it through, and routes decide with `authenticate: [mtls]`). A presented
//! certificate that does not verify always fails the handshake.

use crate::config::{ClientAuth, TlsConfig};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Picks a certificate by SNI.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads one certificate chain and key and returns the key with the DNS names it covers.
fn load_pair(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, Vec<String>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no CERTIFICATE block in {}", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("unusable private key {}: {e}", key.display()))?;
    let names = dns_names(&chain[0]).map_err(|e| format!("{}: {e}", cert.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "{} does not belong to {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok((Arc::new(ck), names))
}

fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = gn {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in x509.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

type Verifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

/// The client-certificate verifier of an mTLS listener (`client_ca`), if any.
fn client_verifier(
    tls: &TlsConfig,
    base: &Path,
) -> Result<Option<Verifier>, Vec<(String, String)>> {
    let err = |field: &str, msg: String| vec![(field.to_owned(), msg)];
    let Some(ca) = &tls.client_ca else {
        if tls.client_auth.is_some() {
            return Err(err(
                "client_auth",
                "`client_auth` needs `client_ca`, the CAs client certificates must chain to".into(),
            ));
        }
        return Ok(None);
    };
    let path = base.join(ca);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .map_err(|e| err("client_ca", format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("client_ca", format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(
            "client_ca",
            format!("no CERTIFICATE block in {}", path.display()),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| {
            err(
                "client_ca",
                format!("unusable CA certificate in {}: {e}", path.display()),
            )
        })?;
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = match tls.client_auth.unwrap_or(ClientAuth::Required) {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .map(Some)
        .map_err(|e| err("client_ca", e.to_string()))
}

/// Builds the rustls config of a listener. Relative paths are taken from `base`, the config
/// file's directory. Errors are (field suffix, message).
pub fn server_config(
    tls: &TlsConfig,
    base: &Path,
) -> Result<Arc<rustls::ServerConfig>, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut pairs = Vec::new();
    match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => pairs.push(("".to_owned(), c.clone(), k.clone())),
        (None, None) => {}
        (Some(_), None) => errors.push(("key".to_owned(), "`cert` needs a `key`".to_owned())),
        (None, Some(_)) => errors.push(("cert".to_owned(), "`key` needs a `cert`".to_owned())),
    }
    for (i, p) in tls.certificates.iter().enumerate() {
        pairs.push((format!("certificates[{i}]."), p.cert.clone(), p.key.clone()));
    }
    if pairs.is_empty() && errors.is_empty() {
        errors.push((
            String::new(),
            "expected `cert` and `key`, or a list of `certificates`".to_owned(),
        ));
    }
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for (prefix, cert, key) in pairs {
        match load_pair(&base.join(&cert), &base.join(&key)) {
            Ok((ck, names)) => {
                for n in names {
                    match n.strip_prefix("*.") {
                        Some(suffix) => wildcard
                            .entry(suffix.to_owned())
                            .or_insert_with(|| ck.clone()),
                        None => exact.entry(n).or_insert_with(|| ck.clone()),
                    };
                }
                default.get_or_insert(ck);
            }
            Err(e) => errors.push((format!("{prefix}cert"), e)),
        }
    }
    let client_verifier = match client_verifier(tls, base) {
        Ok(v) => v,
        Err(mut e) => {
            errors.append(&mut e);
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let resolver = SniResolver {
        exact,
        wildcard,
        default: default.expect("at least one pair loaded"),
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| vec![(String::new(), e.to_string())])?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
