//! Black-box tests of mTLS: client certificates made in the test by a client CA, verified by
//! the listener (`client_auth: optional` and `required`), mapped to consumers by SAN or CN,
//! refused when unknown or from another CA, and the config errors of `client_ca`.

mod common;

use common::identity::*;
use common::*;
use std::net::SocketAddr;

struct Setup {
    gw: Gateway,
    server_ca: rustls_pki_types::CertificateDer<'static>,
    clients: Pki,
}

async fn setup(echo: &Upstream) -> Setup {
    let server_pki = Pki::new("Upstream CA");
    let clients = Pki::new("Client CA");
    let server = server_pki.server("gw.test");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.pem"), &server.pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
    std::fs::write(dir.path().join("clients-ca.pem"), clients.ca_pem()).unwrap();
    let gw = Gateway::start_in(
        dir,
        format!(
            r#"
            listeners:
              - name: optional
                bind: "127.0.0.1:0"
                tls: {{ cert: server.pem, key: server.key, client_ca: clients-ca.pem, client_auth: optional }}
              # A different bind text: listeners are told apart by it (two "127.0.0.1:0"
              # would be one listener).
              - name: required
                bind: "localhost:0"
                tls: {{ cert: server.pem, key: server.key, client_ca: clients-ca.pem }}
            upstreams:
              echo: {{ targets: [ {{ url: "{}" }} ] }}
            consumers:
              - {{ name: acme, ids: ["spiffe://acme.test/billing"], roles: [partner] }}
              - {{ name: ops-laptop, api_keys: ["ops-key"] }}
            routes:
              - {{ match: {{ path: /mtls }}, upstream: echo, policies: [ {{ authenticate: [mtls] }} ] }}
              - {{ match: {{ path: /any }}, upstream: echo, policies: [ {{ authenticate: [mtls, api_key] }} ] }}
              - {{ match: {{ path: /open }}, upstream: echo }}
            "#,
            echo.url()
        ),
    )
    .await;
    Setup {
        gw,
        server_ca: server_pki.ca_der(),
        clients,
    }
}

impl Setup {
    fn addr(&self, listener: &str) -> SocketAddr {
        self.gw
            .handle
            .addrs()
            .into_iter()
            .find(|(n, _)| n == listener)
            .unwrap()
            .1
    }

    /// A client for `listener` presenting `cert` (or none).
    fn client(&self, listener: &str, cert: Option<&Issued>) -> (reqwest::Client, String) {
        let addr = self.addr(listener);
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .resolve("gw.test", addr)
            .use_preconfigured_tls(tls_config_with_cert(
                std::slice::from_ref(&self.server_ca),
                &[b"http/1.1"],
                cert.map(Issued::identity),
            ))
            .build()
            .unwrap();
        (c, format!("https://gw.test:{}", addr.port()))
    }
}

#[tokio::test]
async fn optional_client_certificates_map_to_consumers() {
    let echo = Upstream::echo().await;
    let s = setup(&echo).await;
    let by_san = s
        .clients
        .client("acme-billing-7", &["spiffe://acme.test/billing"]);
    let by_cn = s.clients.client("ops-laptop", &[]);
    let unknown = s.clients.client("stranger", &["spiffe://acme.test/other"]);

    let (c, base) = s.client("optional", Some(&by_san));
    let seen_ = seen(c.get(format!("{base}/mtls")).send().await.unwrap()).await;
    assert_eq!(seen_.header("x-consumer-name"), Some("acme"));
    assert_eq!(seen_.header("x-consumer-roles"), Some("partner"));
    assert_eq!(seen_.header("x-forwarded-proto"), Some("https"));
    // A client cannot name itself: the certificate decides.
    let seen_ = seen(
        c.get(format!("{base}/mtls"))
            .header("x-consumer-name", "ops-laptop")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen_.headers("x-consumer-name"), ["acme"]);

    let (c, base) = s.client("optional", Some(&by_cn));
    let seen_ = seen(c.get(format!("{base}/mtls")).send().await.unwrap()).await;
    assert_eq!(seen_.header("x-consumer-name"), Some("ops-laptop"));

    // Verified, but naming no consumer.
    let (c, base) = s.client("optional", Some(&unknown));
    assert_401(c.get(format!("{base}/mtls")).send().await.unwrap(), &[CERT]).await;
    seen(c.get(format!("{base}/open")).send().await.unwrap()).await;

    // No certificate: the handshake is fine, the route decides.
    let (c, base) = s.client("optional", None);
    assert_401(c.get(format!("{base}/mtls")).send().await.unwrap(), &[CERT]).await;
    assert_401(
        c.get(format!("{base}/any")).send().await.unwrap(),
        &[KEY, CERT],
    )
    .await;
    let seen_ = seen(
        c.get(format!("{base}/any"))
            .header("x-api-key", "ops-key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen_.header("x-consumer-name"), Some("ops-laptop"));
    seen(c.get(format!("{base}/open")).send().await.unwrap()).await;
}

#[tokio::test]
async fn required_client_certificates_and_foreign_cas() {
    let echo = Upstream::echo().await;
    let s = setup(&echo).await;
    let good = s
        .clients
        .client("acme-billing-7", &["spiffe://acme.test/billing"]);
    let rogue_pki = Pki::new("Client CA");
    let rogue = rogue_pki.client("acme-billing-7", &["spiffe://acme.test/billing"]);

    let (c, base) = s.client("required", Some(&good));
    let seen_ = seen(c.get(format!("{base}/mtls")).send().await.unwrap()).await;
    assert_eq!(seen_.header("x-consumer-name"), Some("acme"));

    // Without a certificate there is no connection at all on the required listener.
    let (c, base) = s.client("required", None);
    let err = c.get(format!("{base}/open")).send().await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // A certificate from another CA (even with the same names) fails the handshake on both.
    for listener in ["required", "optional"] {
        let (c, base) = s.client(listener, Some(&rogue));
        let err = c.get(format!("{base}/open")).send().await.unwrap_err();
        assert!(err.is_connect() || err.is_request(), "{listener}: {err:?}");
    }
    assert_eq!(echo.hits(), 1);
}

#[test]
fn client_ca_config_errors() {
    let errs = config_errors(
        r#"
        listeners:
          - bind: "127.0.0.1:0"
            tls: { cert: nope.pem, key: nope.key, client_auth: optional }
          - bind: "127.0.0.1:0"
            tls: { cert: nope.pem, key: nope.key, client_ca: missing-ca.pem, client_auth: sometimes }
        routes:
          - { match: { path: /a }, respond: { status: 200 } }
        "#,
    );
    let find = |path: &str, needle: &str| {
        assert!(
            errs.iter()
                .any(|d| d.path == path && d.message.contains(needle)),
            "no {needle:?} at {path}: {errs:#?}"
        )
    };
    find("listeners[0].tls.client_auth", "needs `client_ca`");
    find(
        "listeners[1].tls.client_auth",
        "unknown variant `sometimes`",
    );
}

#[test]
fn unreadable_client_ca_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Upstream CA");
    let server = pki.server("gw.test");
    std::fs::write(dir.path().join("server.pem"), &server.pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let yaml = r#"
        listeners:
          - bind: "127.0.0.1:0"
            tls: { cert: server.pem, key: server.key, client_ca: missing-ca.pem }
          - bind: "127.0.0.1:0"
            tls: { cert: server.pem, key: server.key, client_ca: empty.pem }
        routes:
          - { match: { path: /a }, respond: { status: 200 } }
    "#;
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, full_config(yaml)).unwrap();
    let pools = portcullis::upstream::Pools::default();
    let errs = match portcullis::compile::load_and_compile(&path, &pools) {
        Ok(_) => panic!("compiled"),
        Err(d) => d.0,
    };
    assert!(
        errs.iter()
            .any(|d| d.path == "listeners[0].tls.client_ca" && d.message.contains("cannot read")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|d| d.path == "listeners[1].tls.client_ca" && d.message.contains("no CERTIFICATE")),
        "{errs:#?}"
    );
}
