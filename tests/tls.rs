//! Black-box tests of TLS termination: certificates chosen by SNI, ALPN (h2 and
//! HTTP/1.1), `X-Forwarded-Proto: https`, and a missing certificate file at start.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;

/// A test CA and two server certificates it signed, one for `a.test` and one for `b.test`.
struct Pki {
    ca: CertificateDer<'static>,
    a: CertificateDer<'static>,
    b: CertificateDer<'static>,
}

impl Pki {
    /// Generates the certificates and writes `a.pem`/`a.key` and `b.pem`/`b.key` into `dir`.
    fn write_into(dir: &std::path::Path) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis Test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let leaf = |name: &str| {
            let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            let stem = name.split('.').next().unwrap();
            std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
            cert.der().clone()
        };
        let a = leaf("a.test");
        let b = leaf("b.test");
        Pki {
            ca: ca.der().clone(),
            a,
            b,
        }
    }
}

/// A gateway with one TLS listener holding both certificates (paths relative to the
/// config file), in front of an echo upstream.
async fn tls_gateway(echo: &Upstream) -> (Gateway, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::write_into(dir.path());
    let gw = Gateway::start_in(
        dir,
        r#"
        listeners:
          - name: tls
            bind: "127.0.0.1:0"
            tls:
              certificates:
                - { cert: a.pem, key: a.key }
                - { cert: b.pem, key: b.key }
        upstreams:
          echo: { targets: [ { url: "$ECHO" } ] }
        routes:
          - match: {}
            upstream: echo
        "#
        .replace("$ECHO", &echo.url()),
    )
    .await;
    (gw, pki)
}

/// An HTTPS client that trusts `ca`, offers `alpn`, and resolves the test names to `addr`.
fn https_client(ca: &CertificateDer<'static>, alpn: &[&[u8]], addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .use_preconfigured_tls(tls_config(std::slice::from_ref(ca), alpn))
        .tls_info(true)
        .resolve("a.test", addr)
        .resolve("b.test", addr)
        .resolve("c.test", addr)
        .build()
        .unwrap()
}

fn url(name: &str, gw: &Gateway, path: &str) -> String {
    format!("https://{name}:{}{path}", gw.addr.port())
}

fn peer_certificate(res: &reqwest::Response) -> Vec<u8> {
    res.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info with the peer certificate")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_certificate_for_each_name() {
    let echo = Upstream::echo().await;
    let (gw, pki) = tls_gateway(&echo).await;
    let c = https_client(&pki.ca, &[b"http/1.1"], gw.addr);

    for (name, cert) in [("a.test", &pki.a), ("b.test", &pki.b)] {
        let res = c.get(url(name, &gw, "/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            peer_certificate(&res) == cert.as_ref(),
            "{name} was not served its own certificate"
        );
    }
    // b.test again after a.test on a fresh connection: still b's certificate.
    let fresh = https_client(&pki.ca, &[b"http/1.1"], gw.addr);
    let res = fresh.get(url("b.test", &gw, "/")).send().await.unwrap();
    assert!(peer_certificate(&res) == pki.b.as_ref());

    // A name without a certificate gets the first (a.test), which the client rejects.
    let err = c.get(url("c.test", &gw, "/")).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_is_negotiated_over_tls() {
    let echo = Upstream::echo().await;
    let (gw, pki) = tls_gateway(&echo).await;
    let c = https_client(&pki.ca, &[b"h2", b"http/1.1"], gw.addr);
    let res = c.get(url("a.test", &gw, "/x?y=1")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let s = seen(res).await;
    assert_eq!((s.path(), s.query()), ("/x", Some("y=1")));
    assert_eq!(s.header("x-forwarded-proto"), Some("https"));
    assert_eq!(s.header("via"), Some("2 portcullis"));
    let host = format!("a.test:{}", gw.addr.port());
    assert_eq!(s.header("x-forwarded-host"), Some(host.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_over_tls_forwards_with_x_forwarded_proto_https() {
    let echo = Upstream::echo().await;
    let (gw, pki) = tls_gateway(&echo).await;
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let c = https_client(&pki.ca, alpn, gw.addr);
        let res = c.get(url("b.test", &gw, "/y")).send().await.unwrap();
        assert_eq!(res.version(), reqwest::Version::HTTP_11, "ALPN {alpn:?}");
        let s = seen(res).await;
        assert_eq!(s.path(), "/y");
        assert_eq!(s.header("x-forwarded-proto"), Some("https"));
        assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(s.header("via"), Some("1.1 portcullis"));
        let host = format!("b.test:{}", gw.addr.port());
        assert_eq!(s.header("x-forwarded-host"), Some(host.as_str()));
    }

    // Errors over TLS are problem+json too.
    let c = https_client(&pki.ca, &[b"h2"], gw.addr);
    let res = c
        .request(reqwest::Method::GET, url("a.test", &gw, "/%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    problem(res, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_file_fails_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    Pki::write_into(dir.path());
    let result = Gateway::try_start_in(
        dir,
        r#"
        listeners:
          - bind: "127.0.0.1:0"
            tls:
              certificates:
                - { cert: a.pem, key: a.key }
                - { cert: missing-cert.pem, key: b.key }
        routes:
          - match: {}
            respond: { body: never }
        "#,
    )
    .await;
    let err = match result {
        Ok(_) => panic!("started with a missing certificate file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("missing-cert.pem"), "{err}");
    assert!(err.contains("listeners[0].tls.certificates[1]"), "{err}");
}

/// The HTTP/1 connection reads the decrypted stream: over TLS too, a good request is served
/// and the ambiguous one pipelined after it gets the gateway's 400, then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_over_tls_is_the_gateways_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = Upstream::echo().await;
    let (gw, pki) = tls_gateway(&echo).await;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_config(
        std::slice::from_ref(&pki.ca),
        &[b"http/1.1"],
    )));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    s.write_all(
        b"GET /ok HTTP/1.1\r\nHost: a.test\r\n\r\n\
          POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut all));
    // A close without close_notify is an error to rustls; the bytes read so far count.
    let _ = read.await.expect("the gateway closes the connection");
    let text = String::from_utf8_lossy(&all);
    let first = text
        .find("HTTP/1.1 200")
        .expect("the good request answered first");
    let second = text.find("HTTP/1.1 400").expect("then the gateway's 400");
    assert!(first < second, "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(
        text.contains("urn:portcullis:problem:bad-request"),
        "{text}"
    );
    assert_eq!(echo.hits(), 1);
}
