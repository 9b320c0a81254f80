//! The admin API, black-box: every endpoint, bearer-token auth, problem+json errors, the
//! OpenAPI document against what is served, and the non-loopback refusal.

mod common;

use common::observe::TOKEN;
use common::{problem, Admin, Gateway, Upstream};
use reqwest::Method;
use serde_json::Value;

fn yaml(up: &Upstream) -> String {
    format!(
        r#"
        tracing:
          otlp: {{ endpoint: "http://127.0.0.1:4318", sample_ratio: 0.5, headers: {{ X-Api-Key: "otlp-s3cr3t" }} }}
        upstreams:
          app:
            targets: [ {{ url: "http://{}", weight: 3 }}, {{ url: "http://127.0.0.1:1/base" }} ]
            timeouts: {{ connect: 1s, request: 5s }}
        routes:
          - name: api
            match: {{ path: "/api/{{*rest}}", methods: [GET, POST], hosts: [api.example.com] }}
            upstream: app
            deprecation: {{ since: 2026-01-01 }}
          - name: hello
            match: {{ path: /hello, headers: {{ Authorization: "Bearer header-s3cr3t" }} }}
            respond: {{ status: 200, body: hi }}
        "#,
        up.addr
    )
}

#[tokio::test]
async fn auth_missing_or_wrong_token_is_401_problem() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    for path in [
        "/status",
        "/config",
        "/metrics",
        "/nowhere",
        "/openapi.json",
    ] {
        let r = gw.client.get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"portcullis-admin\""
        );
        let p = problem(r, 401).await;
        assert_eq!(p["type"], "urn:portcullis:problem:admin-unauthorized");

        let r = gw
            .client
            .get(gw.admin_url(path))
            .bearer_auth("wrong-token")
            .send()
            .await
            .unwrap();
        problem(r, 401).await;

        // Right length, wrong bytes; and the right token under another scheme.
        let almost: String = TOKEN.chars().rev().collect();
        let r = gw
            .client
            .get(gw.admin_url(path))
            .bearer_auth(almost)
            .send()
            .await
            .unwrap();
        problem(r, 401).await;
        let r = gw
            .client
            .get(gw.admin_url(path))
            .basic_auth(TOKEN, Some(TOKEN))
            .send()
            .await
            .unwrap();
        problem(r, 401).await;
    }
    // A POST without a token does nothing.
    let gen = gw.handle.generation();
    let r = gw
        .client
        .post(gw.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    problem(r, 401).await;
    assert_eq!(gw.handle.generation(), gen);

    let r = gw.admin(Method::GET, "/status").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The scheme is case-insensitive.
    let r = gw
        .client
        .get(gw.admin_url("/status"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn without_a_token_on_loopback_the_api_is_open() {
    let gw = Gateway::start_as(
        Admin::Token,
        r#"
        admin: { bind: "127.0.0.1:0" }
        routes:
          - match: { path: /x }
            respond: { status: 204 }
        "#,
    )
    .await;
    let r = gw.client.get(gw.admin_url("/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn status_endpoint() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    let v = gw.admin_json("/status").await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["config_generation"], 1);
    assert_eq!(v["reloads"]["ok"], 0);
    assert_eq!(v["routes"], 2);
    assert_eq!(v["upstreams"], serde_json::json!(["app"]));
    assert_eq!(v["listeners"][0]["addr"], gw.addr.to_string());
    assert!(v["uptime_seconds"].is_u64());
    // HEAD works where GET does.
    let r = gw.admin(Method::HEAD, "/status").send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn config_endpoint_redacts_secrets() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    let r = gw.admin(Method::GET, "/config").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.unwrap();
    for secret in [TOKEN, "otlp-s3cr3t", "header-s3cr3t"] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["file"].as_str().unwrap().ends_with("portcullis.yaml"));
    assert_eq!(v["generation"], 1);
    let c = &v["config"];
    assert_eq!(c["admin"]["token"], "[redacted]");
    assert_eq!(c["admin"]["bind"], "127.0.0.1:0");
    assert_eq!(c["tracing"]["otlp"]["headers"]["X-Api-Key"], "[redacted]");
    assert_eq!(c["tracing"]["otlp"]["sample_ratio"], 0.5);
    assert_eq!(
        c["routes"][1]["match"]["headers"]["Authorization"],
        "[redacted]"
    );
    assert_eq!(c["routes"][0]["name"], "api");
    assert_eq!(
        c["upstreams"]["app"]["targets"][0]["url"],
        format!("http://{}", up.addr)
    );
    gw.stop().await;
}

#[tokio::test]
async fn config_endpoint_shows_interpolated_values_and_redacts_them() {
    // The variable names are unique to this test, so setting them races with nothing.
    std::env::set_var("PORTCULLIS_TEST_ADMIN_TOKEN_ENV", "from-env-s3cr3t");
    std::env::set_var("PORTCULLIS_TEST_BODY_ENV", "from-env-body");
    let gw = Gateway::start_as(
        Admin::Token,
        r#"
        admin: { bind: "127.0.0.1:0", token: "${PORTCULLIS_TEST_ADMIN_TOKEN_ENV}" }
        routes:
          - match: { path: /x }
            respond: { status: 200, body: "${PORTCULLIS_TEST_BODY_ENV}" }
        "#,
    )
    .await;
    let r = gw
        .client
        .get(gw.admin_url("/config"))
        .bearer_auth("from-env-s3cr3t")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains("from-env-s3cr3t"), "{text}");
    assert!(text.contains("from-env-body"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn routes_endpoint() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    let v = gw.admin_json("/routes").await;
    let routes = v.as_array().unwrap();
    assert_eq!(routes.len(), 2);
    let api = &routes[0];
    assert_eq!(api["name"], "api");
    assert_eq!(api["path"], "/api/{*rest}");
    assert_eq!(api["methods"], serde_json::json!(["GET", "POST"]));
    assert_eq!(api["hosts"], serde_json::json!(["api.example.com"]));
    assert_eq!(api["backend"], "upstream");
    assert_eq!(api["upstream"], "app");
    assert_eq!(api["policies"], serde_json::json!(["deprecation"]));
    assert!(api["summary"].as_str().unwrap().contains("upstream app"));
    let hello = &routes[1];
    assert_eq!(hello["backend"], "respond");
    assert!(hello["upstream"].is_null());
    assert_eq!(hello["methods"], serde_json::json!([]));
    gw.stop().await;
}

#[tokio::test]
async fn upstreams_endpoint_shows_targets_with_state() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    let v = gw.admin_json("/upstreams").await;
    let app = &v[0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["protocol"], "http1");
    assert_eq!(app["connect_timeout_ms"], 1000);
    assert_eq!(app["request_timeout_ms"], 5000);
    let t = &app["targets"];
    assert_eq!(t[0]["target"], up.addr.to_string());
    assert_eq!(t[0]["url"], format!("http://{}", up.addr));
    assert_eq!(t[0]["weight"], 3);
    assert_eq!(t[0]["state"]["healthy"], true);
    assert_eq!(t[0]["state"]["in_flight"], 0);
    assert_eq!(t[0]["state"]["circuit"], "closed");
    assert_eq!(t[1]["target"], "127.0.0.1:1");
    assert_eq!(t[1]["url"], "http://127.0.0.1:1/base");
    assert_eq!(t[1]["weight"], 1);
    gw.stop().await;
}

#[tokio::test]
async fn consumers_endpoint_is_an_empty_list_without_consumers() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    let v = gw.admin_json("/consumers").await;
    assert_eq!(v, serde_json::json!([]));
    gw.stop().await;
}

#[tokio::test]
async fn reload_endpoint_applies_or_explains() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    assert_eq!(gw.get("/hello").await.status(), 404); // needs the header predicate

    gw.rewrite(
        r#"
        routes:
          - name: hello
            match: { path: /hello }
            respond: { status: 200, body: reloaded }
        "#,
    );
    let r = gw.admin(Method::POST, "/reload").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "reloaded");
    assert_eq!(v["generation"], 2);
    assert_eq!(gw.get("/hello").await.text().await.unwrap(), "reloaded");

    // A broken file: 422 with every diagnostic, and the running config stays.
    gw.rewrite(
        r#"
        routes:
          - name: hello
            match: { path: /hello }
            upstream: nowhere
          - name: other
            match: { path: /other }
            respond: { status: 99 }
        "#,
    );
    let r = gw.admin(Method::POST, "/reload").send().await.unwrap();
    let p = problem(r, 422).await;
    assert_eq!(p["type"], "urn:portcullis:problem:config-invalid");
    let d = p["diagnostics"].as_array().unwrap();
    assert_eq!(d.len(), 2, "{p}");
    assert_eq!(d[0]["path"], "routes[0].upstream");
    assert!(d[0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown upstream"));
    assert!(d[0]["line"].as_u64().unwrap() > 0);
    assert!(d[0]["file"].as_str().unwrap().ends_with("portcullis.yaml"));
    assert_eq!(d[1]["path"], "routes[1].respond.status");
    assert_eq!(gw.get("/hello").await.text().await.unwrap(), "reloaded");
    let s = gw.admin_json("/status").await;
    assert_eq!(s["config_generation"], 2);
    assert_eq!(s["reloads"]["ok"], 1);
    assert_eq!(s["reloads"]["failed"], 1);
    gw.stop().await;
}

#[tokio::test]
async fn validate_endpoint_checks_without_applying() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    let good = "routes:\n  - match: { path: /a }\n    respond: { status: 204 }\n";
    let r = gw
        .admin(Method::POST, "/validate")
        .header("content-type", "application/yaml")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["routes"], 1);
    assert_eq!(v["listeners"], 1);

    let bad =
        "routes:\n  - match: { path: /a }\n    upstrem: x\nadmin: { bind: \"0.0.0.0:9900\" }\n";
    let r = gw
        .admin(Method::POST, "/validate")
        .body(bad)
        .send()
        .await
        .unwrap();
    let p = problem(r, 422).await;
    let d = p["diagnostics"].as_array().unwrap();
    let paths: Vec<&str> = d.iter().map(|x| x["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"routes[0].upstrem"), "{p}");
    // A non-loopback admin address without a token is refused.
    assert!(paths.contains(&"admin.token"), "{p}");
    assert_eq!(d[0]["file"], "candidate");
    assert_eq!(d[0]["line"], 3);

    let r = gw
        .admin(Method::POST, "/validate")
        .body(vec![0xff, 0xfe])
        .send()
        .await
        .unwrap();
    problem(r, 400).await;

    // Nothing of that was applied.
    assert_eq!(gw.handle.generation(), 1);
    assert_eq!(gw.admin_json("/routes").await.as_array().unwrap().len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn metrics_endpoint_is_prometheus_text() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    let r = gw.admin(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains("# TYPE portcullis_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "portcullis_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(text.ends_with("# EOF\n"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_are_problems() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    let r = gw.admin(Method::GET, "/nope").send().await.unwrap();
    let p = problem(r, 404).await;
    assert_eq!(p["type"], "urn:portcullis:problem:not-found");

    let r = gw.admin(Method::GET, "/reload").send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    let p = problem(r, 405).await;
    assert_eq!(p["type"], "urn:portcullis:problem:method-not-allowed");

    let r = gw.admin(Method::DELETE, "/status").send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    problem(r, 405).await;
    gw.stop().await;
}

/// Every path and method in the OpenAPI document is served, and every endpoint the gateway
/// serves is in the document.
#[tokio::test]
async fn openapi_document_matches_the_served_endpoints() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(Admin::Token, &yaml(&up)).await;
    let r = gw.admin(Method::GET, "/openapi.json").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();

    let mut documented = Vec::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            documented.push(format!("{} {path}", method.to_uppercase()));
            assert!(
                op["responses"]["200"].is_object(),
                "{method} {path} documents no 200"
            );
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} documents no 401"
            );
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut req = gw.admin(m, path);
            if path == "/validate" {
                req = req.body("routes:\n  - match: { path: /a }\n    respond: { status: 204 }\n");
            }
            let res = req.send().await.unwrap();
            assert_eq!(
                res.status(),
                200,
                "{method} {path} is documented but answers {}",
                res.status()
            );
        }
    }
    documented.sort();
    // What the gateway serves (probed from outside: each answers 200 with the token).
    let mut served = vec![
        "GET /status",
        "GET /config",
        "GET /routes",
        "GET /upstreams",
        "GET /consumers",
        "POST /reload",
        "POST /validate",
        "GET /metrics",
        "GET /openapi.json",
    ];
    served.sort();
    assert_eq!(documented, served);
    // And a path outside the document is not served.
    let r = gw.admin(Method::GET, "/admin/status").send().await.unwrap();
    assert_eq!(r.status(), 404);
    gw.stop().await;
}

#[tokio::test]
async fn a_non_loopback_admin_bind_without_a_token_is_refused() {
    let r = Gateway::try_start_as(
        Admin::Token,
        r#"
        admin: { bind: "0.0.0.0:0" }
        routes:
          - match: { path: /x }
            respond: { status: 204 }
        "#,
    )
    .await;
    let err = match r {
        Ok(_) => panic!("started with an open non-loopback admin listener"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("admin.token"), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
}
