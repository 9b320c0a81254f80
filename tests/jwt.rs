//! Black-box tests of JWT providers: every algorithm, keys inline and from a JWKS served by a
//! test server (rotation, refetch on an unknown `kid` and its rate limit, background refresh,
//! an unreachable JWKS), every rejection case, clock leeway, token sources, claims mapped to
//! a consumer and forwarded, and `authorize` by scope and claim. Keys are generated per test.

mod common;

use common::identity::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::time::Duration;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// The config: one echo upstream, one consumer, then the given `auth:` body and routes
/// (each written at any indentation).
fn config(echo: &Upstream, auth: &str, routes: &str) -> String {
    format!(
        "upstreams:\n  echo: {{ targets: [ {{ url: \"{}\" }} ] }}\nconsumers:\n  - {{ name: web-app, ids: [client-123], roles: [reader] }}\nauth:\n{}\nroutes:\n{}\n",
        echo.url(),
        shift(auth, 2),
        shift(routes, 2),
    )
}

fn shift(text: &str, by: usize) -> String {
    dedent(text)
        .lines()
        .map(|l| format!("{}{l}", " ".repeat(by)))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn gateway(echo: &Upstream, auth: &str, routes: &str) -> Gateway {
    Gateway::start(config(echo, auth, routes)).await
}

/// A route `/NAME` per provider, authenticating with it alone.
fn routes_for(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "- {{ match: {{ path: /{n} }}, upstream: echo, policies: [ {{ authenticate: [{n}] }} ] }}\n"
            )
        })
        .collect()
}

/// A PEM key as a one-line YAML string.
fn pem_yaml(key: &SigningKey) -> String {
    serde_json::to_string(&key.public_pem).unwrap()
}

#[tokio::test]
async fn every_algorithm_verifies_inline_and_from_a_jwks() {
    let echo = Upstream::echo().await;
    let rsa = SigningKey::new(Algorithm::RS256, "rsa");
    let es256 = SigningKey::new(Algorithm::ES256, "p256");
    let es384 = SigningKey::new(Algorithm::ES384, "p384");
    let ed = SigningKey::new(Algorithm::EdDSA, "ed");
    // A JWK without `alg` may verify any algorithm of its family.
    let mut rsa_any = rsa.jwk();
    rsa_any.as_object_mut().unwrap().remove("alg");
    let jwks = JwksServer::start(&[&es256, &es384, &ed]).await;
    {
        let mut keys = vec![rsa_any];
        keys.extend([es256.jwk(), es384.jwk(), ed.jwk()]);
        jwks.set_raw(json!({ "keys": keys }));
    }
    let auth = format!(
        r#"
        jwt:
          hs256: {{ secret: "{s32}", algorithms: [HS256] }}
          hs384: {{ secret: "{s48}", algorithms: [HS384] }}
          hs512: {{ secret: "{SECRET}", algorithms: [HS512, HS256] }}
          rsa:
            public_key: {rsa_pem}
            algorithms: [RS256, RS384, RS512, PS256, PS384, PS512]
          es256: {{ public_key: es256.pem, algorithms: [ES256] }}
          es384: {{ public_key: es384.pem, algorithms: [ES384] }}
          ed: {{ public_key: ed.pem, algorithms: [EdDSA] }}
          jwks:
            jwks_uri: "{jwks}"
            algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]
        "#,
        s32 = &SECRET[..32],
        s48 = &SECRET[..48],
        rsa_pem = pem_yaml(&rsa),
        jwks = jwks.url(),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("es256.pem"), &es256.public_pem).unwrap();
    std::fs::write(dir.path().join("es384.pem"), &es384.public_pem).unwrap();
    std::fs::write(dir.path().join("ed.pem"), &ed.public_pem).unwrap();
    let routes = routes_for(&[
        "hs256", "hs384", "hs512", "rsa", "es256", "es384", "ed", "jwks",
    ]);
    let gw = Gateway::start_in(dir, config(&echo, &auth, &routes)).await;

    let ok = |path: &'static str, token: String| {
        let req = gw.get_req(path).header("authorization", bearer(&token));
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200, "{path}: {}", res.text().await.unwrap());
        }
    };
    let c = claims(json!({}));
    ok(
        "/hs256",
        SigningKey::hmac(Algorithm::HS256, &SECRET.as_bytes()[..32]).sign(&c),
    )
    .await;
    ok(
        "/hs384",
        SigningKey::hmac(Algorithm::HS384, &SECRET.as_bytes()[..48]).sign(&c),
    )
    .await;
    ok(
        "/hs512",
        SigningKey::hmac(Algorithm::HS512, SECRET.as_bytes()).sign(&c),
    )
    .await;
    ok(
        "/hs512",
        SigningKey::hmac(Algorithm::HS256, SECRET.as_bytes()).sign(&c),
    )
    .await;
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        ok("/rsa", rsa.sign_as(alg, &c)).await;
        ok("/jwks", rsa.sign_as(alg, &c)).await;
    }
    ok("/es256", es256.sign(&c)).await;
    ok("/es384", es384.sign(&c)).await;
    ok("/ed", ed.sign(&c)).await;
    ok("/jwks", es256.sign(&c)).await;
    ok("/jwks", es384.sign(&c)).await;
    ok("/jwks", ed.sign(&c)).await;
    // One download served every JWKS check.
    assert_eq!(jwks.hits(), 1);

    // Keys of the wrong curve or family do not verify.
    let r = gw
        .get_req("/es256")
        .header("authorization", bearer(&es384.sign(&c)))
        .send()
        .await
        .unwrap();
    assert_401(r, &[BEARER_INVALID]).await;
    let r = gw
        .get_req("/hs256")
        .header(
            "authorization",
            bearer(
                &SigningKey::hmac(Algorithm::HS256, b"another secret of thirty-two b..").sign(&c),
            ),
        )
        .send()
        .await
        .unwrap();
    assert_401(r, &[BEARER_INVALID]).await;
}

/// The provider most tests use: keys from a JWKS, issuer and audience checked; `extra` are
/// more of its fields (one per line).
fn idp_auth(jwks: &JwksServer, extra: &str) -> String {
    let extra: String = extra
        .lines()
        .map(|l| format!("    {}\n", l.trim()))
        .collect();
    format!(
        "jwt:\n  idp:\n    jwks_uri: \"{}\"\n    jwks_min_refetch: 500ms\n    algorithms: [RS256, ES256]\n    issuer: https://idp.test/\n    audiences: [api, other-api]\n{extra}",
        jwks.url()
    )
}

#[tokio::test]
async fn every_rejection_is_401_invalid_token() {
    let echo = Upstream::echo().await;
    let rsa = SigningKey::new(Algorithm::RS256, "k1");
    let es = SigningKey::new(Algorithm::ES256, "k2");
    let jwks = JwksServer::start(&[&rsa, &es]).await;
    let auth = format!(
        "{}  pem: {{ public_key: {}, algorithms: [RS256] }}\n",
        idp_auth(&jwks, ""),
        pem_yaml(&rsa)
    );
    let gw = gateway(&echo, &auth, &routes_for(&["idp", "pem"])).await;
    let send = |path: &'static str, token: String| {
        gw.get_req(path)
            .header("authorization", bearer(&token))
            .send()
    };

    // The good ones first: the rejections below are not a broken setup.
    seen(send("/idp", rsa.sign(&claims(json!({})))).await.unwrap()).await;
    seen(send("/idp", es.sign(&claims(json!({})))).await.unwrap()).await;
    seen(send("/pem", rsa.sign(&claims(json!({})))).await.unwrap()).await;
    seen(
        send(
            "/idp",
            rsa.sign(&claims(json!({ "aud": ["x", "other-api"] }))),
        )
        .await
        .unwrap(),
    )
    .await;

    let c = claims(json!({}));
    let attacker = SigningKey::new(Algorithm::RS256, "k1");
    let confused = SigningKey::hmac(Algorithm::HS256, rsa.public_pem.as_bytes());
    let cases: Vec<(&str, &'static str, String)> = vec![
        ("alg none", "/idp", alg_none(&c)),
        ("alg none (pem)", "/pem", alg_none(&c)),
        (
            "RS384 is not allowed",
            "/idp",
            rsa.sign_as(Algorithm::RS384, &c),
        ),
        (
            "PS256 is not allowed",
            "/idp",
            rsa.sign_as(Algorithm::PS256, &c),
        ),
        ("HMAC keyed with the public key", "/pem", confused.sign(&c)),
        ("HMAC keyed with the public key (jwks)", "/idp", {
            let mut k = SigningKey::hmac(Algorithm::HS256, rsa.public_pem.as_bytes());
            k.kid = "k1".into();
            k.sign(&c)
        }),
        (
            "tampered payload",
            "/idp",
            tampered(&rsa.sign(&c), &claims(json!({ "sub": "admin" }))),
        ),
        (
            "tampered payload (pem)",
            "/pem",
            tampered(&rsa.sign(&c), &claims(json!({ "sub": "admin" }))),
        ),
        ("another key with a known kid", "/idp", attacker.sign(&c)),
        ("another key (pem)", "/pem", attacker.sign(&c)),
        ("malformed: one part", "/idp", "abc".into()),
        ("malformed: two parts", "/idp", "abc.def".into()),
        ("malformed: garbage parts", "/idp", "a.b.c".into()),
        ("malformed: not JSON", "/idp", {
            let t = rsa.sign(&c);
            format!("e30.bm90IGpzb24.{}", t.rsplit('.').next().unwrap())
        }),
        (
            "wrong issuer",
            "/idp",
            rsa.sign(&claims(json!({ "iss": "https://evil.test/" }))),
        ),
        (
            "wrong audience",
            "/idp",
            rsa.sign(&claims(json!({ "aud": "someone-else" }))),
        ),
        (
            "wrong audiences",
            "/idp",
            rsa.sign(&claims(json!({ "aud": ["a", "b"] }))),
        ),
        (
            "expired",
            "/idp",
            rsa.sign(&claims(json!({ "exp": now() - 3600 }))),
        ),
        (
            "expired (pem)",
            "/pem",
            rsa.sign(&claims(json!({ "exp": now() - 3600 }))),
        ),
        ("no exp", "/idp", rsa.sign(&claims(json!({ "exp": null })))),
        (
            "not yet valid",
            "/idp",
            rsa.sign(&claims(json!({ "nbf": now() + 3600 }))),
        ),
        (
            "issued in the future",
            "/idp",
            rsa.sign(&claims(json!({ "iat": now() + 3600 }))),
        ),
        (
            "exp not a number",
            "/idp",
            rsa.sign(&claims(json!({ "exp": "tomorrow" }))),
        ),
        (
            "unknown kid",
            "/idp",
            SigningKey::new(Algorithm::ES256, "k9").sign(&c),
        ),
    ];
    for (what, path, token) in cases {
        let res = send(path, token).await.unwrap();
        assert_eq!(res.status(), 401, "{what}");
        assert_eq!(challenges(res.headers()), [BEARER_INVALID], "{what}");
        assert_401(res, &[BEARER_INVALID]).await;
    }
    // An empty bearer token and a missing one.
    let res = gw
        .get_req("/idp")
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_401(res, &[BEARER_INVALID]).await;
    assert_401(gw.get_req("/idp").send().await.unwrap(), &[BEARER]).await;
    // Basic credentials are not a bearer token: missing, not invalid.
    let res = gw
        .get_req("/idp")
        .header("authorization", "Basic dTpw")
        .send()
        .await
        .unwrap();
    assert_401(res, &[BEARER]).await;
    // Nothing refused reached the upstream.
    assert_eq!(echo.hits(), 4);
}

#[tokio::test]
async fn clock_leeway_on_exp_nbf_and_iat() {
    let echo = Upstream::echo().await;
    let key = SigningKey::hmac(Algorithm::HS256, SECRET.as_bytes());
    let auth = format!(
        r#"
        jwt:
          lenient: {{ secret: "{SECRET}", algorithms: [HS256], leeway: 60s }}
          strict: {{ secret: "{SECRET}", algorithms: [HS256], leeway: 0s }}
        "#
    );
    let gw = gateway(&echo, &auth, &routes_for(&["lenient", "strict"])).await;
    let status = |path: &'static str, extra: serde_json::Value| {
        let req = gw
            .get_req(path)
            .header("authorization", bearer(&key.sign(&claims(extra))));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let t = now();
    assert_eq!(status("/lenient", json!({ "exp": t - 30 })).await, 200);
    assert_eq!(status("/lenient", json!({ "exp": t - 120 })).await, 401);
    assert_eq!(status("/lenient", json!({ "nbf": t + 30 })).await, 200);
    assert_eq!(status("/lenient", json!({ "nbf": t + 120 })).await, 401);
    assert_eq!(status("/lenient", json!({ "iat": t + 30 })).await, 200);
    assert_eq!(status("/lenient", json!({ "iat": t + 120 })).await, 401);
    assert_eq!(status("/strict", json!({ "exp": t - 30 })).await, 401);
    assert_eq!(status("/strict", json!({ "nbf": t + 30 })).await, 401);
    assert_eq!(status("/strict", json!({ "iat": t + 30 })).await, 401);
    assert_eq!(
        status("/strict", json!({ "exp": t + 30, "nbf": t - 1 })).await,
        200
    );
}

#[tokio::test]
async fn a_cached_token_still_expires() {
    let echo = Upstream::echo().await;
    let key = SigningKey::hmac(Algorithm::HS256, SECRET.as_bytes());
    let auth =
        format!("jwt:\n  short: {{ secret: \"{SECRET}\", algorithms: [HS256], leeway: 0s }}\n");
    let gw = gateway(&echo, &auth, &routes_for(&["short"])).await;
    let token = key.sign(&claims(json!({ "exp": now() + 2 })));
    let get = || {
        gw.get_req("/short")
            .header("authorization", bearer(&token))
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(get().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_401(get().await.unwrap(), &[BEARER_INVALID]).await;
}

#[tokio::test]
async fn tokens_from_a_cookie_or_a_query_parameter() {
    let echo = Upstream::echo().await;
    let key = SigningKey::hmac(Algorithm::HS256, SECRET.as_bytes());
    let auth = format!(
        r#"
        jwt:
          web: {{ secret: "{SECRET}", algorithms: [HS256], cookie: session, query: access_token }}
          cookie-only: {{ secret: "{SECRET}", algorithms: [HS256], bearer: false, cookie: session }}
        "#
    );
    let routes = format!(
        "{}- {{ match: {{ path: /hidden }}, upstream: echo, policies: [ {{ authenticate: {{ methods: [web], hide_credentials: true }} }} ] }}\n",
        routes_for(&["web", "cookie-only"])
    );
    let gw = gateway(&echo, &auth, &routes).await;
    let t = key.sign(&claims(json!({})));

    seen(
        gw.get_req("/web")
            .header("authorization", bearer(&t))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let s = seen(
        gw.get_req("/web")
            .header("cookie", format!("theme=dark; session={t}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        s.header("cookie").unwrap().contains("session="),
        "not hidden by default"
    );
    let s = seen(
        gw.get_req(&format!("/web?x=1&access_token={t}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.query().unwrap(), format!("x=1&access_token={t}"));

    // Two places at once: refused.
    let both = gw
        .get_req(&format!("/web?access_token={t}"))
        .header("authorization", bearer(&t))
        .send()
        .await
        .unwrap();
    problem_typed(both, 400, "bad-request").await;
    let two_cookies = gw
        .get_req("/web")
        .header("cookie", format!("session={t}; session=other"))
        .send()
        .await
        .unwrap();
    problem_typed(two_cookies, 400, "bad-request").await;

    // `bearer: false`: the Authorization header is not looked at.
    seen(
        gw.get_req("/cookie-only")
            .header("cookie", format!("session={t}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_401(
        gw.get_req("/cookie-only")
            .header("authorization", bearer(&t))
            .send()
            .await
            .unwrap(),
        &[BEARER],
    )
    .await;
    assert_401(
        gw.get_req("/cookie-only")
            .header("cookie", "session=nope")
            .send()
            .await
            .unwrap(),
        &[BEARER_INVALID],
    )
    .await;

    // hide_credentials: the token does not reach the upstream, wherever it came from.
    let s = seen(
        gw.get_req("/hidden")
            .header("cookie", format!("theme=dark; session={t}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("cookie"), Some("theme=dark"));
    let s = seen(
        gw.get_req(&format!("/hidden?x=1&access_token={t}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.query(), Some("x=1"));
    let s = seen(
        gw.get_req("/hidden")
            .header("authorization", bearer(&t))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(!s.has("authorization"));
}

#[tokio::test]
async fn claims_name_the_consumer_and_are_forwarded() {
    let echo = Upstream::echo().await;
    let rsa = SigningKey::new(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(&[&rsa]).await;
    let extra = "consumer_claim: client_id
        roles_claim: /realm_access/roles
        forward_claims: { email: X-User-Email, sub: X-User-Id, groups: X-User-Groups }";
    let routes = format!(
        "{}- {{ match: {{ path: /open }}, upstream: echo }}\n",
        routes_for(&["idp"])
    );
    let gw = gateway(&echo, &idp_auth(&jwks, extra), &routes).await;
    let token = rsa.sign(&claims(json!({
        "client_id": "client-123",
        "email": "ada@example.com",
        "groups": ["eng", "ops"],
        "realm_access": { "roles": ["admin", "reader"] },
    })));
    let s = seen(
        gw.get_req("/idp")
            .header("authorization", bearer(&token))
            .header("x-user-email", "mallory@example.com")
            .header("x-consumer-name", "someone-else")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.headers("x-consumer-name"), ["web-app"]);
    assert_eq!(s.headers("x-consumer-roles"), ["reader,admin"]);
    assert_eq!(s.headers("x-user-email"), ["ada@example.com"]);
    assert_eq!(s.headers("x-user-id"), ["user-1"]);
    assert_eq!(s.headers("x-user-groups"), ["eng,ops"]);

    // A token whose claim names no consumer is refused.
    let stranger = rsa.sign(&claims(json!({ "client_id": "client-999" })));
    assert_401(
        gw.get_req("/idp")
            .header("authorization", bearer(&stranger))
            .send()
            .await
            .unwrap(),
        &[BEARER_INVALID],
    )
    .await;
    let no_claim = rsa.sign(&claims(json!({})));
    assert_401(
        gw.get_req("/idp")
            .header("authorization", bearer(&no_claim))
            .send()
            .await
            .unwrap(),
        &[BEARER_INVALID],
    )
    .await;

    // Forwarded-claim headers sent by a client are removed on every route.
    let s = seen(
        gw.get_req("/open")
            .header("x-user-email", "mallory@example.com")
            .header("x-user-id", "root")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(!s.has("x-user-email") && !s.has("x-user-id"), "{s:?}");
}

#[tokio::test]
async fn authorize_by_scope_claim_and_token_role() {
    let echo = Upstream::echo().await;
    let rsa = SigningKey::new(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(&[&rsa]).await;
    let routes = r#"
        - match: { path: /read }
          upstream: echo
          policies:
            - authenticate: [idp, api_key]
            - authorize: { scopes: ["users:read"] }
        - match: { path: /both }
          upstream: echo
          policies:
            - authenticate: [idp]
            - authorize: { scopes: ["users:read", "users:write"] }
        - match: { path: /acme }
          upstream: echo
          policies:
            - authenticate: [idp]
            - authorize: { claims: { tenant: acme, groups: [admins, ops] } }
        - match: { path: /admin }
          upstream: echo
          policies:
            - authenticate: [idp]
            - authorize: { roles: [admin], scopes: ["users:read"] }
    "#;
    let gw = gateway(&echo, &idp_auth(&jwks, "roles_claim: roles"), routes).await;
    let status = |path: &'static str, extra: serde_json::Value| {
        let req = gw
            .get_req(path)
            .header("authorization", bearer(&rsa.sign(&claims(extra))));
        async move { req.send().await.unwrap() }
    };
    let scope_challenge =
        r#"Bearer realm="portcullis", error="insufficient_scope", scope="users:read""#;

    seen(status("/read", json!({ "scope": "users:read users:write" })).await).await;
    seen(status("/read", json!({ "scp": ["users:read"] })).await).await;
    assert_403(
        status("/read", json!({ "scope": "users:write" })).await,
        &[scope_challenge],
    )
    .await;
    assert_403(status("/read", json!({})).await, &[scope_challenge]).await;
    // All scopes are needed.
    seen(status("/both", json!({ "scope": "users:write users:read" })).await).await;
    assert_403(
        status("/both", json!({ "scope": "users:read" })).await,
        &[r#"Bearer realm="portcullis", error="insufficient_scope", scope="users:read users:write""#],
    )
    .await;
    // Claims: every listed claim must match; list claims match on any element.
    seen(
        status(
            "/acme",
            json!({ "tenant": "acme", "groups": ["eng", "ops"] }),
        )
        .await,
    )
    .await;
    assert_403(
        status("/acme", json!({ "tenant": "globex", "groups": ["ops"] })).await,
        &[],
    )
    .await;
    assert_403(status("/acme", json!({ "tenant": "acme" })).await, &[]).await;
    // Roles from the token; a missing role is not a scope problem: no challenge.
    seen(
        status(
            "/admin",
            json!({ "roles": ["admin"], "scope": "users:read" }),
        )
        .await,
    )
    .await;
    assert_403(
        status(
            "/admin",
            json!({ "roles": "viewer", "scope": "users:read" }),
        )
        .await,
        &[],
    )
    .await;
    // No token at all: 401, with both challenges of the route.
    assert_401(gw.get_req("/read").send().await.unwrap(), &[BEARER, KEY]).await;
}

#[tokio::test]
async fn jwks_rotation_refetches_on_an_unknown_kid_at_a_limited_rate() {
    let echo = Upstream::echo().await;
    let a = SigningKey::new(Algorithm::ES256, "a");
    let b = SigningKey::new(Algorithm::ES256, "b");
    let jwks = JwksServer::start(&[&a]).await;
    let gw = gateway(&echo, &idp_auth(&jwks, ""), &routes_for(&["idp"])).await;
    let get = |key: &SigningKey| {
        let req = gw
            .get_req("/idp")
            .header("authorization", bearer(&key.sign(&claims(json!({})))));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let token_a = a.sign(&claims(json!({})));
    let send_a = || {
        gw.get_req("/idp")
            .header("authorization", bearer(&token_a))
            .send()
    };

    assert_eq!(send_a().await.unwrap().status(), 200);
    assert_eq!(send_a().await.unwrap().status(), 200);
    assert_eq!(jwks.hits(), 1);

    // The IdP rotates: b replaces a.
    jwks.set(&[&b]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&b).await, 200, "an unknown kid triggers a refetch");
    assert_eq!(jwks.hits(), 2);
    // a is gone, also for the token verified (and remembered) before the rotation; asking
    // again so soon is rate-limited.
    assert_401(send_a().await.unwrap(), &[BEARER_INVALID]).await;
    assert_eq!(jwks.hits(), 2);
    // A flood of made-up kids costs the IdP nothing within the limit.
    for i in 0..20 {
        let fake = SigningKey::new(Algorithm::ES256, &format!("fake-{i}"));
        assert_eq!(get(&fake).await, 401);
    }
    assert_eq!(jwks.hits(), 2);
    // After the limit, one more fetch for an unknown kid.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&SigningKey::new(Algorithm::ES256, "c")).await, 401);
    assert_eq!(jwks.hits(), 3);
    assert_eq!(get(&b).await, 200);
    assert_eq!(jwks.hits(), 3);
}

#[tokio::test]
async fn jwks_is_refreshed_in_the_background() {
    let echo = Upstream::echo().await;
    let a = SigningKey::new(Algorithm::ES256, "a");
    let b = SigningKey::new(Algorithm::ES256, "b");
    let jwks = JwksServer::start(&[&a, &b]).await;
    let gw = gateway(
        &echo,
        &idp_auth(&jwks, "jwks_refresh: 200ms")
            .replace("jwks_min_refetch: 500ms", "jwks_min_refetch: 1h"),
        &routes_for(&["idp"]),
    )
    .await;
    let token_a = a.sign(&claims(json!({})));
    let send_a = || {
        gw.get_req("/idp")
            .header("authorization", bearer(&token_a))
            .send()
    };
    assert_eq!(send_a().await.unwrap().status(), 200);
    let first = jwks.hits();
    // a is withdrawn; no request asks for anything, but the refresh notices.
    jwks.set(&[&b]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        jwks.hits() >= first + 2,
        "background refreshes: {}",
        jwks.hits()
    );
    assert_401(send_a().await.unwrap(), &[BEARER_INVALID]).await;
    let token_b = b.sign(&claims(json!({})));
    let res = gw
        .get_req("/idp")
        .header("authorization", bearer(&token_b))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn an_unreachable_jwks_is_503_not_401() {
    let echo = Upstream::echo().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let broken = Upstream::serve(|_req| async {
        hyper::Response::builder()
            .status(500)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"oops",
            )))
            .unwrap()
    })
    .await;
    let auth = format!(
        r#"
        jwt:
          down: {{ jwks_uri: "http://{closed}/jwks", algorithms: [RS256], timeout: 2s }}
          broken: {{ jwks_uri: "{}/jwks", algorithms: [RS256] }}
        "#,
        broken.url()
    );
    let routes = format!(
        "{}- {{ match: {{ path: /either }}, upstream: echo, policies: [ {{ authenticate: [down, api_key] }} ] }}\n",
        routes_for(&["down", "broken"])
    );
    let gw = gateway(&echo, &auth, &routes).await;
    let token = SigningKey::new(Algorithm::RS256, "k").sign(&claims(json!({})));
    for path in ["/down", "/broken"] {
        let res = gw
            .get_req(path)
            .header("authorization", bearer(&token))
            .send()
            .await
            .unwrap();
        let (h, _) = problem_with_headers(res, 503, "identity-provider-unavailable").await;
        assert!(challenges(&h).is_empty());
    }
    // Without a token the provider is not needed: the usual 401.
    assert_401(gw.get_req("/down").send().await.unwrap(), &[BEARER]).await;
    assert_eq!(echo.hits(), 0);
}

#[tokio::test]
async fn jwks_over_https_with_a_private_ca() {
    let echo = Upstream::echo().await;
    let pki = Pki::new("IdP CA");
    let key = SigningKey::new(Algorithm::ES256, "k1");
    let jwks = JwksServer::start_tls(&pki.server("localhost"), &[&key]).await;
    assert!(jwks.url().starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idp-ca.pem"), pki.ca_pem()).unwrap();
    let auth = format!(
        r#"
        jwt:
          trusted: {{ jwks_uri: "{url}", algorithms: [ES256], ca: idp-ca.pem }}
          untrusted: {{ jwks_uri: "{url}", algorithms: [ES256], timeout: 2s }}
        "#,
        url = jwks.url()
    );
    let gw = Gateway::start_in(
        dir,
        config(&echo, &auth, &routes_for(&["trusted", "untrusted"])),
    )
    .await;
    let token = key.sign(&claims(json!({})));
    seen(
        gw.get_req("/trusted")
            .header("authorization", bearer(&token))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The IdP's certificate does not chain to the system roots: no keys, 503.
    let res = gw
        .get_req("/untrusted")
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap();
    problem_typed(res, 503, "identity-provider-unavailable").await;
}
