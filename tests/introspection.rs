//! Black-box tests of OAuth2 token introspection (RFC 7662) against a test authorization
//! server: active and inactive tokens, the gateway's client credentials, caching for the
//! token's lifetime (bounded by `cache_for`), one call for concurrent requests, an
//! unreachable or refusing server, and introspection next to a JWT provider.

mod common;

use common::identity::*;
use common::*;
use serde_json::json;
use std::time::Duration;

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn gateway(echo: &Upstream, idp_url: &str, secret: &str, extra: &str) -> Gateway {
    Gateway::start(format!(
        r#"
        upstreams:
          echo: {{ targets: [ {{ url: "{echo}" }} ] }}
        consumers:
          - {{ name: billing, ids: [billing-client], roles: [reader] }}
        auth:
          jwt:
            local: {{ secret: "0123456789abcdef0123456789abcdef", algorithms: [HS256] }}
          introspection:
            oauth:
              url: "{idp_url}"
              client_id: gateway
              client_secret: "{secret}"
              consumer_claim: client_id
              forward_claims: {{ username: X-User }}
              {extra}
        routes:
          - match: {{ path: /api }}
            upstream: echo
            policies:
              - authenticate: [oauth]
          - match: {{ path: /scoped }}
            upstream: echo
            policies:
              - authenticate: [oauth]
              - authorize: {{ scopes: [billing.read] }}
          - match: {{ path: /mixed }}
            upstream: echo
            policies:
              - authenticate: [local, oauth]
        "#,
        echo = echo.url(),
    ))
    .await
}

fn active(extra: serde_json::Value) -> serde_json::Value {
    let mut v = json!({
        "active": true,
        "client_id": "billing-client",
        "username": "ada",
        "scope": "billing.read billing.write",
        "exp": now() + 3600,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[tokio::test]
async fn active_tokens_are_accepted_and_remembered() {
    let echo = Upstream::echo().await;
    let idp = IntrospectionServer::start("gateway", "s3cr3t&=").await;
    idp.set("opaque-1", active(json!({})));
    let gw = gateway(&echo, &idp.url(), "s3cr3t&=", "").await;

    let s = seen(
        gw.get_req("/api")
            .header("authorization", bearer("opaque-1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("billing"));
    assert_eq!(s.header("x-consumer-roles"), Some("reader"));
    assert_eq!(s.header("x-user"), Some("ada"));
    assert_eq!(idp.hits(), 1);
    for _ in 0..5 {
        seen(
            gw.get_req("/api")
                .header("authorization", bearer("opaque-1"))
                .send()
                .await
                .unwrap(),
        )
        .await;
    }
    assert_eq!(idp.hits(), 1, "active results are cached");

    // Scopes from the introspection answer drive `authorize`.
    seen(
        gw.get_req("/scoped")
            .header("authorization", bearer("opaque-1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    idp.set("opaque-2", active(json!({ "scope": "billing.write" })));
    assert_403(
        gw.get_req("/scoped")
            .header("authorization", bearer("opaque-2"))
            .send()
            .await
            .unwrap(),
        &[r#"Bearer realm="portcullis", error="insufficient_scope", scope="billing.read""#],
    )
    .await;

    // Inactive and unknown tokens: 401 invalid_token, and asked about every time.
    idp.set("revoked", json!({ "active": false }));
    let before = idp.hits();
    for t in ["revoked", "revoked", "never-issued"] {
        assert_401(
            gw.get_req("/api")
                .header("authorization", bearer(t))
                .send()
                .await
                .unwrap(),
            &[BEARER_INVALID],
        )
        .await;
    }
    assert_eq!(idp.hits(), before + 3);
    // Active but expired, not yet valid, or naming no consumer: refused too.
    idp.set("stale", active(json!({ "exp": now() - 10 })));
    idp.set("early", active(json!({ "nbf": now() + 600 })));
    idp.set("stranger", active(json!({ "client_id": "who" })));
    idp.set("not-true", active(json!({ "active": "true" })));
    for t in ["stale", "early", "stranger", "not-true"] {
        assert_401(
            gw.get_req("/api")
                .header("authorization", bearer(t))
                .send()
                .await
                .unwrap(),
            &[BEARER_INVALID],
        )
        .await;
    }
    assert_401(gw.get_req("/api").send().await.unwrap(), &[BEARER]).await;
}

#[tokio::test]
async fn the_cache_ends_at_the_tokens_exp_and_at_cache_for() {
    let echo = Upstream::echo().await;
    let idp = IntrospectionServer::start("gateway", "pw").await;
    let gw = gateway(&echo, &idp.url(), "pw", "cache_for: 1s").await;
    let get = |t: &'static str| gw.get_req("/api").header("authorization", bearer(t)).send();

    // Lives longer than cache_for: asked again after 1s.
    idp.set("long", active(json!({})));
    assert_eq!(get("long").await.unwrap().status(), 200);
    assert_eq!(get("long").await.unwrap().status(), 200);
    assert_eq!(idp.hits(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get("long").await.unwrap().status(), 200);
    assert_eq!(idp.hits(), 2);

    // Expires before cache_for would: not served from memory after its exp.
    let gw2 = gateway(&echo, &idp.url(), "pw", "cache_for: 1h").await;
    idp.set("short", active(json!({ "exp": now() + 2 })));
    let get2 = || {
        gw2.get_req("/api")
            .header("authorization", bearer("short"))
            .send()
    };
    assert_eq!(get2().await.unwrap().status(), 200);
    assert_eq!(get2().await.unwrap().status(), 200);
    let asked = idp.hits();
    idp.set("short", json!({ "active": false }));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_401(get2().await.unwrap(), &[BEARER_INVALID]).await;
    assert_eq!(idp.hits(), asked + 1);
}

#[tokio::test]
async fn concurrent_requests_share_one_introspection() {
    let echo = Upstream::echo().await;
    // A slow authorization server, so the requests overlap.
    let idp = IntrospectionServer::start("gateway", "pw").await;
    idp.set("hot", active(json!({})));
    let slow = Upstream::serve({
        let target = idp.url();
        move |req: hyper::Request<hyper::body::Incoming>| {
            let target = target.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (parts, body) = req.into_parts();
                let body = http_body_util::BodyExt::collect(body)
                    .await
                    .unwrap()
                    .to_bytes();
                let res = client()
                    .post(target)
                    .headers({
                        let mut h = reqwest::header::HeaderMap::new();
                        for (k, v) in &parts.headers {
                            if k != "host" && k != "content-length" {
                                h.insert(k.clone(), v.clone());
                            }
                        }
                        h
                    })
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                hyper::Response::new(http_body_util::Full::new(res.bytes().await.unwrap()))
            }
        }
    })
    .await;
    let gw = gateway(&echo, &format!("{}/introspect", slow.url()), "pw", "").await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let req = gw.get_req("/api").header("authorization", bearer("hot"));
        tasks.push(tokio::spawn(async move {
            req.send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(slow.hits(), 1);
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn a_server_that_cannot_be_asked_is_503() {
    let echo = Upstream::echo().await;
    let idp = IntrospectionServer::start("gateway", "right").await;
    idp.set("t", active(json!({})));
    // Wrong client secret: the server says 401 to the gateway; that is not "inactive".
    let gw = gateway(&echo, &idp.url(), "wrong", "").await;
    let res = gw
        .get_req("/api")
        .header("authorization", bearer("t"))
        .send()
        .await
        .unwrap();
    problem_typed(res, 503, "identity-provider-unavailable").await;
    assert_eq!(idp.hits(), 1);
    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = gateway(
        &echo,
        &format!("http://{closed}/introspect"),
        "right",
        "timeout: 2s",
    )
    .await;
    let res = gw
        .get_req("/api")
        .header("authorization", bearer("t"))
        .send()
        .await
        .unwrap();
    problem_typed(res, 503, "identity-provider-unavailable").await;
    assert_eq!(echo.hits(), 0);
}

#[tokio::test]
async fn jwts_and_opaque_tokens_on_one_route() {
    let echo = Upstream::echo().await;
    let idp = IntrospectionServer::start("gateway", "pw").await;
    idp.set("opaque", active(json!({})));
    let gw = gateway(&echo, &idp.url(), "pw", "").await;
    let jwt = SigningKey::hmac(
        jsonwebtoken::Algorithm::HS256,
        b"0123456789abcdef0123456789abcdef",
    )
    .sign(&claims(json!({})));
    let s = seen(
        gw.get_req("/mixed")
            .header("authorization", bearer(&jwt))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(!s.has("x-consumer-name"), "the local JWT names no consumer");
    assert_eq!(idp.hits(), 0, "a valid JWT needs no introspection");
    let s = seen(
        gw.get_req("/mixed")
            .header("authorization", bearer("opaque"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("billing"));
    assert_401(
        gw.get_req("/mixed")
            .header("authorization", bearer("neither"))
            .send()
            .await
            .unwrap(),
        &[BEARER_INVALID],
    )
    .await;
}
