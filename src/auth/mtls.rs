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
                        key_id: None,
                    });
                }
            }
        }
        Outcome::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Consumer;
    use std::collections::HashMap;

    fn cert(cn: &str, sans: Vec<rcgen::SanType>) -> ClientCert {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme");
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        ClientCert::parse(&der).unwrap()
    }

    fn ia5(s: &str) -> rcgen::string::Ia5String {
        s.try_into().unwrap()
    }

    #[test]
    fn parses_subject_and_every_kind_of_san() {
        let c = cert(
            "billing",
            vec![
                rcgen::SanType::DnsName(ia5("billing.acme.test")),
                rcgen::SanType::URI(ia5("spiffe://acme.test/billing")),
                rcgen::SanType::Rfc822Name(ia5("ops@acme.test")),
                rcgen::SanType::IpAddress("10.1.2.3".parse().unwrap()),
                rcgen::SanType::IpAddress("2001:db8::1".parse().unwrap()),
            ],
        );
        assert_eq!(c.cn.as_deref(), Some("billing"));
        assert_eq!(c.subject, "CN=billing, O=Acme");
        assert_eq!(
            c.sans,
            [
                "billing.acme.test",
                "spiffe://acme.test/billing",
                "ops@acme.test",
                "10.1.2.3",
                "2001:db8::1"
            ]
        );
    }

    fn consumer(name: &str) -> Arc<Consumer> {
        Arc::new(Consumer {
            name: name.into(),
            roles: Vec::new(),
            metadata: Default::default(),
            limits: Vec::new(),
            name_header: http::HeaderValue::from_str(name).unwrap(),
            roles_header: None,
        })
    }

    fn mapped(fields: Vec<CertField>, c: &ClientCert) -> Option<String> {
        let mut lookup: Lookup = HashMap::new();
        lookup.insert("spiffe://acme.test/billing".into(), consumer("by-san"));
        lookup.insert("billing".into(), consumer("by-cn"));
        lookup.insert("CN=billing, O=Acme".into(), consumer("by-subject"));
        let m = MtlsAuth {
            fields,
            lookup: Arc::new(lookup),
        };
        let cx = crate::policy::Ctx {
            request_id: http::HeaderValue::from_static("x"),
            client: "127.0.0.1:1".parse().unwrap(),
            tls: true,
            started: std::time::Instant::now(),
            route: 0,
            route_name: "r".into(),
            params: Default::default(),
            path: "/".into(),
            target: None,
            upstream_latency: None,
            identity: None,
            client_cert: Some(Arc::new(c.clone())),
            consumer: None,
            api_key: None,
            traffic: Default::default(),
            trace: None,
            raw_head: None,
        };
        match m.check(&cx) {
            Outcome::Valid(id) => Some(id.consumer.unwrap().name.to_string()),
            _ => None,
        }
    }

    #[test]
    fn fields_are_tried_in_order() {
        let c = cert(
            "billing",
            vec![rcgen::SanType::URI(ia5("spiffe://acme.test/billing"))],
        );
        use CertField::*;
        assert_eq!(mapped(vec![San, Cn], &c).as_deref(), Some("by-san"));
        assert_eq!(mapped(vec![Cn, San], &c).as_deref(), Some("by-cn"));
        assert_eq!(mapped(vec![Subject], &c).as_deref(), Some("by-subject"));
        let other = cert("nobody", vec![]);
        assert_eq!(mapped(vec![San, Cn, Subject], &other), None);
    }
}
