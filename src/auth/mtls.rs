//! Client certificates (mTLS): the listener's rustls verifier checks the chain against
//! `listeners[].tls.client_ca` during the handshake; this module reads the verified leaf once
//! per connection ([`ClientCert`], carried in `proxy::ConnInfo`) and maps it to a consumer.
//!
//! The mapping tries the fields of `auth.mtls.consumer_from` in order (default: every
//! subjectAltName, then the subject CN) and takes the first value that is a consumer's name or
//! one of its `ids`. A certificate that names no consumer is refused.

use super::{Identity, Lookup, Outcome};
use crate::config::auth::CertField;
use crate::policy::Ctx;
use std::sync::Arc;
use x509_parser::extensions::GeneralName;

/// The parts of a verified client certificate the gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject as text, e.g. `CN=acme-billing, O=Acme`.
    pub subject: String,
    pub cn: Option<String>,
    /// subjectAltName values: DNS names, URIs, e-mail addresses, IP addresses.
    pub sans: Vec<String>,
}

impl ClientCert {
    /// Parses a DER certificate; `None` if it cannot be parsed (rustls already verified it,
    /// so that does not happen in practice).
    pub fn parse(der: &[u8]) -> Option<ClientCert> {
        let (_, x) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = x.subject().to_string();
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map(str::to_owned);
        let mut sans = Vec::new();
        if let Ok(Some(san)) = x.subject_alternative_name() {
            for gn in &san.value.general_names {
                match gn {
                    GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                        sans.push((*s).to_owned())
                    }
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => sans.push(
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string(),
                        ),
                        16 => sans.push(
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string(),
                        ),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Some(ClientCert { subject, cn, sans })
    }
}

pub struct MtlsAuth {
    pub fields: Vec<CertField>,
    pub lookup: Arc<Lookup>,
}

impl MtlsAuth {
    pub fn check(&self, cx: &Ctx) -> Outcome {
        let Some(cert) = &cx.client_cert else {
            return Outcome::Absent;
        };
        for f in &self.fields {
            let candidates: Vec<&str> = match f {
                CertField::San => cert.sans.iter().map(String::as_str).collect(),
                CertField::Cn => cert.cn.iter().map(String::as_str).collect(),
                CertField::Subject => vec![cert.subject.as_str()],
            };
            for c in candidates {
                if let Some(consumer) = self.lookup.get(c) {
                    return Outcome::Valid(Identity {
                        consumer: Some(consumer.clone()),
                        method: "mtls".into(),
                        token: None,
                    });
                }
            }
        }
        Outcome::Invalid
    }
}
