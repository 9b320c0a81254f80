//! Black-box tests of identity without tokens: consumers, API keys, Basic, `anonymous`,
//! `authorize` by role, identity headers (forwarding, spoofing, `hide_credentials`), IP
//! filters, the CLI helpers and config diagnostics.

mod common;

use common::identity::*;
use common::*;
use portcullis::auth::api_key::stored_form;

/// Consumers with every kind of credential, and routes using them.
fn config(echo: &Upstream, extra_routes: &str) -> String {
    let argon = portcullis::auth::basic::hash_password("open sesame").unwrap();
    let bcrypt = bcrypt::hash("b-pass", 4).unwrap();
    format!(
        r#"
        upstreams:
          echo: {{ targets: [ {{ url: "{echo}" }} ] }}
        consumers:
          - name: mobile-app
            roles: [reader]
            metadata: {{ team: mobile, tier: 2 }}
            api_keys: ["{stored}", "plain-key-for-tests"]
            limits: [ {{ requests: 1000, per: 1m }}, {{ requests: 10, per: 1s }} ]
          - name: partner-acme
            roles: [reader, writer]
            basic: {{ user: acme, password: "{argon}" }}
          - name: legacy
            basic: {{ user: old, password: "{bcrypt}" }}
        routes:
          - name: keys
            match: {{ path: "/keys/{{*rest}}" }}
            upstream: echo
            policies:
              - authenticate: [api_key]
          - name: basic
            match: {{ path: "/basic/{{*rest}}" }}
            upstream: echo
            policies:
              - authenticate: [basic]
          - name: either
            match: {{ path: "/either/{{*rest}}" }}
            upstream: echo
            policies:
              - authenticate: [api_key, basic]
          - name: open
            match: {{ path: "/open/{{*rest}}" }}
            upstream: echo
          {extra_routes}
        "#,
        echo = echo.url(),
        stored = stored_form("k-mobile-1"),
    )
}

async fn gateway(echo: &Upstream) -> Gateway {
    Gateway::start(config(echo, "")).await
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test]
async fn consumers_are_compiled_with_roles_metadata_and_limits() {
    let echo = Upstream::echo().await;
    let gw = compile(&config(&echo, ""));
    let auth = &gw.auth;
    let c = auth.consumer("mobile-app").unwrap();
    assert_eq!(c.roles, ["reader"]);
    assert_eq!(c.metadata["team"], "mobile");
    assert_eq!(c.metadata["tier"], 2);
    assert_eq!(c.limits.len(), 2);
    assert_eq!(c.limits[1].requests, 10);
    assert_eq!(c.limits[1].per, std::time::Duration::from_secs(1));
    assert_eq!(auth.consumers.len(), 3);
}

#[tokio::test]
async fn api_key_in_the_default_header() {
    let echo = Upstream::echo().await;
    let gw = gateway(&echo).await;

    // Stored as a SHA-256 digest.
    let s = seen(
        gw.get_req("/keys/a")
            .header("X-API-Key", "k-mobile-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("mobile-app"));
    assert_eq!(s.header("x-consumer-roles"), Some("reader"));
    assert!(!s.has("x-anonymous-consumer"));
    // Without hide_credentials the key goes upstream.
    assert_eq!(s.header("x-api-key"), Some("k-mobile-1"));

    // A plain key in the config works too (with a warning at load).
    let s = seen(
        gw.get_req("/keys/a")
            .header("x-api-key", "plain-key-for-tests")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("mobile-app"));

    // Missing, wrong, empty, almost right: 401 with the Key challenge, and the same body.
    let missing = assert_401(gw.get_req("/keys/a").send().await.unwrap(), &[KEY]).await;
    let wrong = assert_401(
        gw.get_req("/keys/a")
            .header("X-API-Key", "k-mobile-2")
            .send()
            .await
            .unwrap(),
        &[KEY],
    )
    .await;
    assert_401(
        gw.get_req("/keys/a")
            .header("X-API-Key", "")
            .send()
            .await
            .unwrap(),
        &[KEY],
    )
    .await;
    assert_401(
        gw.get_req("/keys/a")
            .header("X-API-Key", "K-mobile-1")
            .send()
            .await
            .unwrap(),
        &[KEY],
    )
    .await;
    // The digest itself is not a key.
    assert_401(
        gw.get_req("/keys/a")
            .header("X-API-Key", stored_form("k-mobile-1"))
            .send()
            .await
            .unwrap(),
        &[KEY],
    )
    .await;
    assert_eq!(missing["detail"], wrong["detail"]);
    assert_eq!(missing["title"], wrong["title"]);

    // Two keys: refused before anyone looks at them.
    let res = gw
        .get_req("/keys/a")
        .header("X-API-Key", "k-mobile-1")
        .header("X-API-Key", "other")
        .send()
        .await
        .unwrap();
    problem_typed(res, 400, "bad-request").await;
    // The upstream never saw a refused request.
    assert_eq!(echo.hits(), 2);
}

#[tokio::test]
async fn api_key_in_a_configured_header_or_query_parameter() {
    let echo = Upstream::echo().await;
    let yaml = config(&echo, "").replace(
        "        consumers:",
        "        auth:\n          api_key: { header: X-Token, query: apikey }\n        consumers:",
    );
    let gw = Gateway::start(yaml).await;

    let s = seen(
        gw.get_req("/keys/a")
            .header("X-Token", "k-mobile-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("mobile-app"));
    let s = seen(
        gw.get_req("/keys/a?x=1&apikey=k-mobile-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("mobile-app"));
    assert_eq!(s.query(), Some("x=1&apikey=k-mobile-1"));
    // Percent-encoded in the query is the same key.
    let s = seen(
        gw.get_req("/keys/a?apikey=k%2Dmobile%2D1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("mobile-app"));

    // The default header is not read any more.
    assert_401(
        gw.get_req("/keys/a")
            .header("X-API-Key", "k-mobile-1")
            .send()
            .await
            .unwrap(),
        &[KEY],
    )
    .await;
    assert_401(
        gw.get_req("/keys/a?apikey=nope").send().await.unwrap(),
        &[KEY],
    )
    .await;

    // Ambiguity is refused: the configured header twice, the parameter twice, both places.
    let two_headers = gw
        .get_req("/keys/a")
        .header("X-Token", "k-mobile-1")
        .header("X-Token", "k-mobile-1")
        .send()
        .await
        .unwrap();
    problem_typed(two_headers, 400, "bad-request").await;
    problem_typed(
        gw.get_req("/keys/a?apikey=k-mobile-1&apikey=x")
            .send()
            .await
            .unwrap(),
        400,
        "bad-request",
    )
    .await;
    let both = gw
        .get_req("/keys/a?apikey=k-mobile-1")
        .header("X-Token", "k-mobile-1")
        .send()
        .await
        .unwrap();
    problem_typed(both, 400, "bad-request").await;
}

#[tokio::test]
async fn basic_with_argon2id_and_bcrypt() {
    let echo = Upstream::echo().await;
    let gw = gateway(&echo).await;

    let s = seen(
        gw.get_req("/basic/x")
            .header("authorization", basic("acme", "open sesame"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("partner-acme"));
    assert_eq!(s.header("x-consumer-roles"), Some("reader,writer"));
    // Cached now; still right.
    let s = seen(
        gw.get_req("/basic/x")
            .header("authorization", basic("acme", "open sesame"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("partner-acme"));
    let s = seen(
        gw.get_req("/basic/x")
            .header("authorization", basic("old", "b-pass"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("legacy"));
    assert!(!s.has("x-consumer-roles"));

    for bad in [
        basic("acme", "open sesame!"),
        basic("acme", ""),
        basic("nobody", "open sesame"),
        basic("old", "open sesame"),
        "Basic !!!not-base64".to_owned(),
        format!("Basic {}", {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode("no-colon")
        }),
    ] {
        assert_401(
            gw.get_req("/basic/x")
                .header("authorization", bad)
                .send()
                .await
                .unwrap(),
            &[BASIC],
        )
        .await;
    }
    assert_401(gw.get_req("/basic/x").send().await.unwrap(), &[BASIC]).await;
    // A bearer token is not a Basic credential.
    assert_401(
        gw.get_req("/basic/x")
            .header("authorization", "Bearer abc")
            .send()
            .await
            .unwrap(),
        &[BASIC],
    )
    .await;
}

#[tokio::test]
async fn any_one_method_and_every_challenge() {
    let echo = Upstream::echo().await;
    let gw = gateway(&echo).await;
    let s = seen(
        gw.get_req("/either/x")
            .header("x-api-key", "k-mobile-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("mobile-app"));
    let s = seen(
        gw.get_req("/either/x")
            .header("authorization", basic("acme", "open sesame"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("partner-acme"));
    // A refused key does not hide an accepted password.
    let s = seen(
        gw.get_req("/either/x")
            .header("x-api-key", "wrong")
            .header("authorization", basic("acme", "open sesame"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("partner-acme"));
    assert_401(gw.get_req("/either/x").send().await.unwrap(), &[BASIC, KEY]).await;
    assert_401(
        gw.get_req("/either/x")
            .header("x-api-key", "wrong")
            .send()
            .await
            .unwrap(),
        &[BASIC, KEY],
    )
    .await;
}

#[tokio::test]
async fn anonymous_only_without_credentials() {
    let echo = Upstream::echo().await;
    let routes = r#"
          - name: maybe
            match: { path: "/maybe/{*rest}" }
            upstream: echo
            policies:
              - authenticate: [api_key, anonymous]
          - name: readers
            match: { path: "/readers/{*rest}" }
            upstream: echo
            policies:
              - authenticate: [api_key, anonymous]
              - authorize: { roles: [reader] }
    "#;
    let gw = Gateway::start(config(&echo, routes)).await;

    let s = seen(
        gw.get_req("/maybe/x")
            .header("X-Consumer-Name", "partner-acme")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-anonymous-consumer"), Some("true"));
    assert!(
        !s.has("x-consumer-name"),
        "a spoofed name must not pass: {s:?}"
    );
    let s = seen(
        gw.get_req("/maybe/x")
            .header("x-api-key", "k-mobile-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("mobile-app"));
    assert!(!s.has("x-anonymous-consumer"));
    // A wrong key is reported, not downgraded to anonymous.
    assert_401(
        gw.get_req("/maybe/x")
            .header("x-api-key", "wrong")
            .send()
            .await
            .unwrap(),
        &[KEY],
    )
    .await;

    // Anonymous callers who need a role are asked for credentials (401), not refused (403).
    assert_401(gw.get_req("/readers/x").send().await.unwrap(), &[KEY]).await;
    seen(
        gw.get_req("/readers/x")
            .header("x-api-key", "k-mobile-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn authorize_by_role() {
    let echo = Upstream::echo().await;
    let routes = r#"
          - name: writers
            match: { path: "/write/{*rest}" }
            upstream: echo
            policies:
              - authorize: { roles: [writer, admin] }
              - authenticate: [api_key, basic]
    "#;
    let gw = Gateway::start(config(&echo, routes)).await;
    // Policy order in the file does not matter: authenticate runs first.
    let s = seen(
        gw.get_req("/write/x")
            .header("authorization", basic("acme", "open sesame"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("partner-acme"));
    // Authenticated but not allowed: 403, no challenge, same body whatever the reason.
    let refused = assert_403(
        gw.get_req("/write/x")
            .header("x-api-key", "k-mobile-1")
            .send()
            .await
            .unwrap(),
        &[],
    )
    .await;
    assert!(!refused.to_string().contains("writer"), "{refused}");
    assert_403(
        gw.get_req("/write/x")
            .header("authorization", basic("old", "b-pass"))
            .send()
            .await
            .unwrap(),
        &[],
    )
    .await;
    assert_401(gw.get_req("/write/x").send().await.unwrap(), &[BASIC, KEY]).await;
}

#[tokio::test]
async fn identity_headers_cannot_be_spoofed() {
    let echo = Upstream::echo().await;
    let gw = gateway(&echo).await;
    let spoof = |rb: reqwest::RequestBuilder| {
        rb.header("X-Consumer-Name", "admin")
            .header("X-Consumer-Roles", "admin")
            .header("X-Anonymous-Consumer", "false")
    };
    // On a route with authentication: the gateway's values only.
    let s = seen(
        spoof(gw.get_req("/keys/x"))
            .header("x-api-key", "k-mobile-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.headers("x-consumer-name"), ["mobile-app"]);
    assert_eq!(s.headers("x-consumer-roles"), ["reader"]);
    assert!(!s.has("x-anonymous-consumer"));
    // On a route without authentication: none at all.
    let s = seen(spoof(gw.get_req("/open/x")).send().await.unwrap()).await;
    assert!(!s.has("x-consumer-name"), "{s:?}");
    assert!(!s.has("x-consumer-roles"), "{s:?}");
    assert!(!s.has("x-anonymous-consumer"), "{s:?}");
    // A client's Connection header cannot strip what the gateway set or checked.
    let s = seen(
        gw.get_req("/keys/x")
            .header("x-api-key", "k-mobile-1")
            .header("connection", "x-consumer-name, x-consumer-roles, x-api-key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("mobile-app"));
    assert_eq!(s.header("x-consumer-roles"), Some("reader"));
    assert_eq!(s.header("x-api-key"), Some("k-mobile-1"));
}

#[tokio::test]
async fn hide_credentials_removes_what_was_checked() {
    let echo = Upstream::echo().await;
    let yaml = config(
        &echo,
        r#"
          - name: hidden
            match: { path: "/hidden/{*rest}" }
            upstream: echo
            policies:
              - authenticate: { methods: [api_key, basic], hide_credentials: true }
        "#,
    )
    .replace(
        "        consumers:",
        "        auth:\n          api_key: { query: apikey }\n        consumers:",
    );
    let gw = Gateway::start(yaml).await;
    let s = seen(
        gw.get_req("/hidden/x?a=1")
            .header("x-api-key", "k-mobile-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("mobile-app"));
    assert!(!s.has("x-api-key"), "{s:?}");
    let s = seen(
        gw.get_req("/hidden/x?a=1&apikey=k-mobile-1&b=%20")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("mobile-app"));
    assert_eq!(s.query(), Some("a=1&b=%20"));
    let s = seen(
        gw.get_req("/hidden/x")
            .header("authorization", basic("acme", "open sesame"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("partner-acme"));
    assert!(!s.has("authorization"), "{s:?}");
    // Without hide_credentials the same credentials go through.
    let s = seen(
        gw.get_req("/basic/x")
            .header("authorization", basic("acme", "open sesame"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(s.has("authorization"));
}

// ---------------------------------------------------------------- IP filters

#[tokio::test]
async fn ip_allow_and_deny_lists() {
    let echo = Upstream::echo().await;
    let gw = Gateway::start(format!(
        r#"
        upstreams:
          echo: {{ targets: [ {{ url: "{}" }} ] }}
        routes:
          - {{ match: {{ path: /denied }}, upstream: echo, policies: [ {{ ip_filter: {{ deny: [127.0.0.0/8] }} }} ] }}
          - {{ match: {{ path: /elsewhere }}, upstream: echo, policies: [ {{ ip_filter: {{ allow: [10.0.0.0/8, "2001:db8::/32"] }} }} ] }}
          - {{ match: {{ path: /allowed }}, upstream: echo, policies: [ {{ ip_filter: {{ allow: [10.0.0.0/8, 127.0.0.1] }} }} ] }}
          - {{ match: {{ path: /carved }}, upstream: echo, policies: [ {{ ip_filter: {{ allow: [127.0.0.0/8], deny: [127.0.0.1/32] }} }} ] }}
          - match: {{ path: /gated }}
            upstream: echo
            policies:
              - ip_filter: {{ deny: [127.0.0.0/8] }}
              - authenticate: [api_key]
        "#,
        echo.url()
    ))
    .await;
    assert_403(gw.get_req("/denied").send().await.unwrap(), &[]).await;
    assert_403(gw.get_req("/elsewhere").send().await.unwrap(), &[]).await;
    seen(gw.get_req("/allowed").send().await.unwrap()).await;
    assert_403(gw.get_req("/carved").send().await.unwrap(), &[]).await;
    // The address is checked before credentials: 403, not 401.
    assert_403(gw.get_req("/gated").send().await.unwrap(), &[]).await;
    assert_eq!(echo.hits(), 1);
}

#[tokio::test]
async fn ip_filter_uses_the_client_behind_trusted_proxies() {
    let echo = Upstream::echo().await;
    let routes = |trusted: &str| {
        format!(
            r#"
            server: {{ trusted_proxies: [{trusted}] }}
            upstreams:
              echo: {{ targets: [ {{ url: "{}" }} ] }}
            routes:
              - match: {{ path: /x }}
                upstream: echo
                policies:
                  - ip_filter: {{ deny: [203.0.113.0/24, "2001:db8::/32"] }}
            "#,
            echo.url()
        )
    };
    let gw = Gateway::start(routes("127.0.0.1/32, 10.0.0.0/8")).await;
    let xff = |v: &'static str| gw.get_req("/x").header("x-forwarded-for", v);
    assert_403(xff("203.0.113.9").send().await.unwrap(), &[]).await;
    assert_403(xff("2001:db8::5").send().await.unwrap(), &[]).await;
    // The right-most untrusted hop is the client: a client cannot prepend an innocent one.
    assert_403(xff("198.51.100.1, 203.0.113.9").send().await.unwrap(), &[]).await;
    assert_403(xff("203.0.113.9, 10.1.1.1").send().await.unwrap(), &[]).await;
    seen(xff("203.0.113.9, 198.51.100.1").send().await.unwrap()).await;
    seen(xff("2001:db9::5").send().await.unwrap()).await;

    // From an untrusted peer, X-Forwarded-For is not believed: the peer (127.0.0.1) is judged.
    let gw2 = Gateway::start(routes("10.0.0.0/8")).await;
    seen(
        gw2.get_req("/x")
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn ip_filter_on_an_ipv6_listener() {
    // Skip quietly where the machine has no IPv6 loopback.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let echo = Upstream::echo().await;
    let gw = Gateway::start(format!(
        r#"
        listeners: [ {{ bind: "[::1]:0" }} ]
        upstreams:
          echo: {{ targets: [ {{ url: "{}" }} ] }}
        routes:
          - {{ match: {{ path: /in }}, upstream: echo, policies: [ {{ ip_filter: {{ allow: ["::1/128"] }} }} ] }}
          - {{ match: {{ path: /out }}, upstream: echo, policies: [ {{ ip_filter: {{ deny: ["::/0"] }} }} ] }}
        "#,
        echo.url()
    ))
    .await;
    seen(gw.get_req("/in").send().await.unwrap()).await;
    assert_403(gw.get_req("/out").send().await.unwrap(), &[]).await;
}

// ---------------------------------------------------------------- CLI

fn cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn cli_hash_key_and_hash_password_make_working_credentials() {
    let (ok, out, _) = cli(&["hash-key"], "k-from-stdin\n");
    assert!(ok);
    assert_eq!(out.trim(), stored_form("k-from-stdin"));
    let (ok, out, _) = cli(&["hash-key", "k-arg"], "");
    assert!(ok);
    assert_eq!(out.trim(), stored_form("k-arg"));
    let (ok, out, _) = cli(&["hash-key", "--generate"], "");
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (new_key, new_stored) = (lines[0], lines[1]);
    assert_eq!(new_stored, stored_form(new_key));
    assert!(new_key.len() >= 43);
    let (ok, hash, _) = cli(&["hash-password"], "pa55 word\n");
    assert!(ok);
    let hash = hash.trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let (ok, _, err) = cli(&["hash-password"], "");
    assert!(!ok && err.contains("empty"), "{err}");

    let echo = Upstream::echo().await;
    let gw = Gateway::start(format!(
        r#"
        upstreams:
          echo: {{ targets: [ {{ url: "{}" }} ] }}
        consumers:
          - {{ name: cli-user, api_keys: ["{new_stored}"], basic: {{ user: cli, password: "{hash}" }} }}
        routes:
          - {{ match: {{ path: /x }}, upstream: echo, policies: [ {{ authenticate: [api_key, basic] }} ] }}
        "#,
        echo.url()
    ))
    .await;
    let s = seen(
        gw.get_req("/x")
            .header("x-api-key", new_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("cli-user"));
    let s = seen(
        gw.get_req("/x")
            .header("authorization", basic("cli", "pa55 word"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.header("x-consumer-name"), Some("cli-user"));
}

// ---------------------------------------------------------------- diagnostics

fn has_error(errs: &[portcullis::config::Diagnostic], path: &str, needle: &str) -> (u64, u64) {
    let d = errs
        .iter()
        .find(|d| d.path == path && d.message.contains(needle))
        .unwrap_or_else(|| panic!("no error at {path} containing {needle:?} in:\n{errs:#?}"));
    (d.line, d.column)
}

#[test]
fn config_errors_are_located() {
    let errs = config_errors(
        r#"
        upstreams:
          echo: { targets: [ { url: "http://127.0.0.1:9" } ] }
        consumers:
          - name: a
            api_keys: ["sha256:1234", "sha256:{KEY}"]
            basic: { user: a, password: "plain-text" }
            limits: [ { requests: 0, per: 1s } ]
          - name: a
            roles: ["x,y"]
            api_keys: ["sha256:{KEY}"]
        auth:
          realm: 'say "hi"'
          jwt:
            corporate-idp:
              jwks_uri: http://127.0.0.1:9/jwks
              algorithms: [RS256, RS257, none]
            mixed:
              secret: "0123456789abcdef0123456789abcdef"
              algorithms: [HS256, RS256]
            short:
              secret: "tiny"
              algorithms: [HS256]
            basic:
              secret: "0123456789abcdef0123456789abcdef"
              algorithms: [HS256]
              forward_claims: { email: "bad header" }
        routes:
          - match: { path: /a }
            upstream: echo
            policies:
              - authenticate: [api_key, idpp]
          - match: { path: /b }
            upstream: echo
            policies:
              - authorize: { roles: [x] }
          - match: { path: /c }
            upstream: echo
            policies:
              - authenticate: { methods: [basic, basic] }
              - ip_filter: { allow: [10.0.0.0/33] }
        "#
        .replace("{KEY}", &"ab".repeat(32))
        .as_str(),
    );
    has_error(&errs, "consumers[0].api_keys[0]", "64 hex digits");
    has_error(&errs, "consumers[0].basic.password", "not a plain password");
    has_error(&errs, "consumers[0].limits[0].requests", "more than 0");
    has_error(&errs, "consumers[1].name", "already names consumer");
    has_error(&errs, "consumers[1].roles[0]", "without commas");
    has_error(
        &errs,
        "consumers[1].api_keys[0]",
        "already given to consumer",
    );
    has_error(&errs, "auth.realm", "without quotes");
    let (line, col) = has_error(
        &errs,
        "auth.jwt.corporate-idp.algorithms[1]",
        "unknown algorithm \"RS257\"; expected one of HS256",
    );
    assert_eq!((line, col), (19, 27), "{errs:#?}");
    has_error(
        &errs,
        "auth.jwt.corporate-idp.algorithms[2]",
        "`none` is never accepted",
    );
    has_error(&errs, "auth.jwt.mixed.algorithms[1]", "algorithm confusion");
    has_error(&errs, "auth.jwt.short.secret", "at least 32");
    has_error(&errs, "auth.jwt.basic", "built-in method name");
    has_error(
        &errs,
        "auth.jwt.basic.forward_claims.email",
        "not a valid header name",
    );
    let (line, col) = has_error(
        &errs,
        "routes[0].policies[0].authenticate[1]",
        "unknown auth provider \"idpp\"; known: anonymous, api_key, basic, corporate-idp",
    );
    assert_eq!((line, col), (34, 33), "{errs:#?}");
    has_error(
        &errs,
        "routes[1].policies[0].authorize",
        "needs an `authenticate`",
    );
    has_error(
        &errs,
        "routes[2].policies[0].authenticate.methods[1]",
        "listed twice",
    );
    has_error(
        &errs,
        "routes[2].policies[1].ip_filter.allow[0]",
        "expected an address or CIDR",
    );
}

#[test]
fn consumer_and_auth_typos_are_decode_errors() {
    let errs = config_errors(
        r#"
        consumers:
          - name: a
            api_key: ["x"]
        auth:
          jwt:
            one: { secret: "0123456789abcdef0123456789abcdef", algorithms: [HS256], issuers: [x] }
            two: { secret: "0123456789abcdef0123456789abcdef", algorithms: [HS256], leway: 5s }
          introspect: {}
        routes:
          - match: { path: /a }
            respond: { status: 200 }
            policies:
              - authenticate: { methods: [api_key], hide: true }
        "#,
    );
    has_error(&errs, "consumers[0].api_key", "unknown field `api_key`");
    // Both bad providers are reported, not just the first.
    has_error(&errs, "auth.jwt.one.issuers", "unknown field `issuers`");
    has_error(&errs, "auth.jwt.two.leway", "unknown field `leway`");
    has_error(&errs, "auth.introspect", "unknown field `introspect`");
    has_error(
        &errs,
        "routes[0].policies[0].authenticate.hide",
        "unknown field `hide`",
    );
}

// ---------------------------------------------------------------- docs and examples

#[test]
fn the_identity_example_compiles() {
    let pools = portcullis::upstream::Pools::default();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/identity.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let env = |_: &str| None;
    let gw = portcullis::compile::load_and_compile_str(
        "examples/identity.yaml",
        &text,
        &env,
        &portcullis::compile::CompileEnv::for_file(&path, &pools),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(gw.routes.len(), 4);
    assert!(gw.auth.consumer("acme-client-7").is_some());
}

/// Every YAML block of the README's identity section compiles (with the files and variables
/// it refers to, and a provider or upstream where a block uses one it does not define).
#[test]
fn readme_identity_snippets_compile() {
    let readme = include_str!("../README.md");
    let start = readme.find("\n## Identity:").expect("the section exists");
    let len = readme[start + 1..].find("\n## ").unwrap();
    let section = &readme[start..start + 1 + len];
    let blocks: Vec<&str> = section
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 8, "{} blocks", blocks.len());

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let pki = Pki::new("Docs CA");
    let server = pki.server("api.example.com");
    std::fs::write(dir.path().join("certs/api.pem"), &server.pem).unwrap();
    std::fs::write(dir.path().join("certs/api.key"), &server.key_pem).unwrap();
    std::fs::write(dir.path().join("certs/clients-ca.pem"), pki.ca_pem()).unwrap();
    let ed = SigningKey::new(jsonwebtoken::Algorithm::EdDSA, "p");
    std::fs::write(dir.path().join("keys/partner.pem"), &ed.public_pem).unwrap();
    let env = |k: &str| match k {
        "JWT_SECRET" | "INTROSPECT_SECRET" => Some("x".repeat(64)),
        _ => None,
    };
    let pools = portcullis::upstream::Pools::default();
    let cenv = portcullis::compile::CompileEnv {
        base_dir: dir.path().to_path_buf(),
        pools: &pools,
    };
    for block in blocks {
        let mut yaml = block.to_owned();
        if !yaml.contains("routes:") {
            yaml.push_str("routes:\n  - { match: { path: /x }, respond: { status: 200 } }\n");
        }
        if yaml.contains("upstream: users") && !yaml.contains("upstreams:") {
            yaml.insert_str(
                0,
                "upstreams:\n  users: { targets: [ { url: \"http://127.0.0.1:9\" } ] }\n",
            );
        }
        if yaml.contains("corporate-idp") && !yaml.contains("auth:") {
            yaml.push_str("auth:\n  jwt:\n    corporate-idp: { jwks_uri: \"http://127.0.0.1:9/jwks\", algorithms: [RS256] }\n");
        }
        if let Err(d) = portcullis::compile::load_and_compile_str("README.md", &yaml, &env, &cenv) {
            panic!("a README snippet does not compile:\n{yaml}\n{d}");
        }
    }
}

#[test]
fn a_plain_key_is_a_warning_that_does_not_show_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        full_config(
            r#"
            consumers:
              - { name: a, api_keys: ["do-not-log-me-0123"] }
            routes:
              - { match: { path: /x }, respond: { status: 200 }, policies: [ { authenticate: [api_key] } ] }
            "#,
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", "-c"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("consumers[0].api_keys[0]: a plain API key"),
        "{err}"
    );
    assert!(!err.contains("do-not-log-me"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("do-not-log-me"));
}
