//! Black-box tests of upstream features: balancers, active and passive health, retries and
//! their budget, the circuit breaker, canary splits, DNS and SRV discovery, upstream TLS,
//! the admin view, state across reloads, and config diagnostics.
//!
//! The real gateway runs in-process on 127.0.0.1:0 in front of real HTTP(S) backends; the
//! fault tests (killed, slow, flapping targets, bulkheads) are in `upstream_faults.rs`.

mod common;

use common::backends::*;
use common::{dedent, problem_typed, Admin, Gateway};
use std::collections::HashMap;
use std::time::Duration;

/// Replaces `$NAME` placeholders (backend URLs, ports) in a YAML snippet.
fn fill(yaml: &str, vars: &[(&str, String)]) -> String {
    let mut out = yaml.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("${k}"), v);
    }
    out
}

async fn count_by_upstream(gw: &Gateway, path: &str, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        *out.entry(gw.who(path).await).or_default() += 1;
    }
    out
}

// ---------------------------------------------------------------- balancers

#[tokio::test]
async fn round_robin_weighted_and_hash_balancers() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let gw = Gateway::start_as(Admin::Open, &fill(
        r#"
        upstreams:
          rr: { balance: round_robin, targets: [ { url: "$A" }, { url: "$B" }, { url: "$C" } ] }
          w:  { balance: weighted, targets: [ { url: "$A", weight: 3 }, { url: "$B", weight: 1 } ] }
          h:  { balance: { hash: "header:X-User" }, targets: [ { url: "$A" }, { url: "$B" }, { url: "$C" } ] }
          m:  { balance: { hash: "cookie:session", algorithm: maglev }, targets: [ { url: "$A" }, { url: "$B" }, { url: "$C" } ] }
          ip: { balance: ip_hash, targets: [ { url: "$A" }, { url: "$B" }, { url: "$C" } ] }
        routes:
          - { match: { path: "/rr/{*rest}" }, upstream: rr }
          - { match: { path: "/w/{*rest}" }, upstream: w }
          - { match: { path: "/h/{*rest}" }, upstream: h }
          - { match: { path: "/m/{*rest}" }, upstream: m }
          - { match: { path: "/ip/{*rest}" }, upstream: ip }
        "#,
        &[("A", a.url()), ("B", b.url()), ("C", c.url())],
    ))
    .await;

    let rr = count_by_upstream(&gw, "/rr/x", 30).await;
    assert_eq!((rr["a"], rr["b"], rr["c"]), (10, 10, 10), "{rr:?}");

    let w = count_by_upstream(&gw, "/w/x", 40).await;
    assert_eq!((w["a"], w["b"]), (30, 10), "{w:?}");

    // The same user always lands on the same target; users spread over targets.
    let mut homes = std::collections::HashSet::new();
    for user in 0..20 {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let r = gw
                .client
                .get(gw.url("/h/x"))
                .header("X-User", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            seen.insert(v["upstream"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 1, "user-{user} moved: {seen:?}");
        homes.extend(seen);
    }
    assert!(
        homes.len() >= 2,
        "twenty users all on one target: {homes:?}"
    );

    for session in ["s1", "s2", "s3"] {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let r = gw
                .client
                .get(gw.url("/m/x"))
                .header("Cookie", format!("theme=dark; session={session}"))
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            seen.insert(v["upstream"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 1, "session {session} moved: {seen:?}");
    }

    // One client address: one target.
    let ip = count_by_upstream(&gw, "/ip/x", 15).await;
    assert_eq!(ip.len(), 1, "{ip:?}");
}

#[tokio::test]
async fn least_connections_and_p2c_avoid_a_slow_target() {
    let (slow, f1, f2) = (
        Backend::start("slow").await,
        Backend::start("f1").await,
        Backend::start("f2").await,
    );
    slow.set_delay(Duration::from_millis(300));
    let gw = Gateway::start_as(Admin::Open, &fill(
        r#"
        upstreams:
          lc:  { balance: least_connections, targets: [ { url: "$S" }, { url: "$F1" }, { url: "$F2" } ] }
          p2c: { balance: p2c, targets: [ { url: "$S" }, { url: "$F1" }, { url: "$F2" } ] }
        routes:
          - { match: { path: "/lc" }, upstream: lc }
          - { match: { path: "/p2c" }, upstream: p2c }
        "#,
        &[("S", slow.url()), ("F1", f1.url()), ("F2", f2.url())],
    ))
    .await;
    for path in ["/lc", "/p2c"] {
        let before = (slow.hits(), f1.hits() + f2.hits());
        // Four workers, 15 requests each: the slow target holds its request 300ms while the
        // fast ones serve the rest.
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (client, url) = (gw.client.clone(), gw.url(path));
            workers.push(tokio::spawn(async move {
                for _ in 0..15 {
                    let r = client.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let slow_hits = slow.hits() - before.0;
        let fast_hits = f1.hits() + f2.hits() - before.1;
        assert_eq!(slow_hits + fast_hits, 60);
        assert!(
            slow_hits * 4 < fast_hits,
            "{path}: the slow target got {slow_hits} of 60"
        );
    }
}

// ---------------------------------------------------------------- health

#[tokio::test]
async fn active_health_checks_remove_and_readmit_a_target() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start_as(Admin::Open, &fill(
        r#"
        upstreams:
          u:
            targets: [ { url: "$A" }, { url: "$B" } ]
            health:
              active: { path: /healthz, interval: 50ms, timeout: 500ms, healthy: 2, unhealthy: 2, expect: ["2xx"] }
        routes:
          - { match: { path: "/{*rest}" }, upstream: u }
        "#,
        &[("A", a.url()), ("B", b.url())],
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(3), || b
            .b
            .probes
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2)
        .await
    );
    assert_eq!(gw.target_health("u", b.addr), TargetHealth::Healthy);

    b.set_health(503);
    assert!(
        eventually(Duration::from_secs(3), || gw.target_health("u", b.addr)
            == TargetHealth::Unhealthy)
        .await
    );
    let last = gw.upstream("u").targets[1].last_error.clone().unwrap();
    assert!(last.message.contains("status 503"), "{last:?}");
    let served = count_by_upstream(&gw, "/x", 20).await;
    assert_eq!(served.get("a"), Some(&20), "{served:?}");

    b.set_health(200);
    assert!(
        eventually(Duration::from_secs(3), || gw.target_health("u", b.addr)
            == TargetHealth::Healthy)
        .await
    );
    let served = count_by_upstream(&gw, "/x", 20).await;
    assert_eq!(served.get("b"), Some(&10), "{served:?}");
}

#[tokio::test]
async fn passive_checks_eject_then_readmit() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    b.set_status(502);
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        upstreams:
          u:
            balance: round_robin
            targets: [ { url: "$A" }, { url: "$B" } ]
            health: { passive: { consecutive_failures: 2, eject_for: 500ms } }
        routes:
          - { match: { path: "/{*rest}" }, upstream: u }
        "#,
            &[("A", a.url()), ("B", b.url())],
        ),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(gw.call("/x").await.0);
    }
    // b answered twice (the upstream's own 502 passes through), then was ejected.
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(b.hits(), 2);
    let t = gw.upstream("u").targets[1].clone();
    assert_eq!(t.health, TargetHealth::Ejected);
    assert!(t.ejected_for_ms.unwrap() <= 500);
    assert_eq!(t.ejections, 1);
    assert_eq!(t.last_error.unwrap().message, "status 502");

    // After the period it is re-admitted and gets traffic again.
    b.set_status(200);
    assert!(
        eventually(Duration::from_secs(2), || gw.target_health("u", b.addr)
            == TargetHealth::Healthy)
        .await
    );
    let served = count_by_upstream(&gw, "/x", 10).await;
    assert_eq!(served.get("b"), Some(&5), "{served:?}");
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn retries_idempotent_methods_and_opted_in_ones_with_the_body() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    a.set_status(503);
    b.set_status(503);
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        upstreams:
          plain:
            targets: [ { url: "$A" } ]
            retries: { attempts: 2, backoff: 1ms }
          optin:
            targets: [ { url: "$B" } ]
            retries: { attempts: 2, backoff: 1ms, methods: [GET, POST], buffer: 2KiB }
        routes:
          - { match: { path: "/plain" }, upstream: plain }
          - { match: { path: "/optin" }, upstream: optin }
        "#,
            &[("A", a.url()), ("B", b.url())],
        ),
    )
    .await;

    // GET: three tries, then the upstream's own 503.
    let (s, v) = gw.call("/plain").await;
    assert_eq!((s, a.hits()), (503, 3), "{v}");
    // POST is not idempotent: one try.
    let r = gw
        .client
        .post(gw.url("/plain"))
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), a.hits()), (503, 4));

    // Opted in: three tries, each with the whole body.
    let r = gw
        .client
        .post(gw.url("/optin"))
        .body("y".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!((b.hits(), v["body_len"].as_u64()), (3, Some(1000)));
    // A body above `buffer` is streamed, so it cannot be sent twice: one try.
    let r = gw
        .client
        .post(gw.url("/optin"))
        .body("z".repeat(4096))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!((b.hits(), v["body_len"].as_u64()), (4, Some(4096)));
}

#[tokio::test]
async fn retry_budget_caps_the_extra_load() {
    let a = Backend::start("a").await;
    a.set_status(503);
    let gw = Gateway::start_as(Admin::Open, &fill(
        r#"
        upstreams:
          u:
            targets: [ { url: "$A" } ]
            retries: { attempts: 3, backoff: 1ms, budget: { ratio: 0.1, min_per_second: 1, window: 10s } }
        routes:
          - { match: { path: "/{*rest}" }, upstream: u }
        "#,
        &[("A", a.url())],
    ))
    .await;
    for _ in 0..50 {
        assert_eq!(gw.call("/x").await.0, 503);
    }
    // Without a budget: 200 tries. With it: 50 requests + max(1/s × 10s, 10% of 50) = 60.
    assert_eq!(a.hits(), 60);
    let budget = gw.upstream("u").retry_budget.unwrap();
    assert_eq!((budget.window_requests, budget.window_retries), (50, 10));
}

#[tokio::test]
async fn nothing_is_retried_once_the_response_has_started() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        upstreams:
          u:
            targets: [ { url: "$A" }, { url: "$B" } ]
            retries: { attempts: 3, backoff: 1ms }
        routes:
          - { match: { path: "/{*rest}" }, upstream: u }
        "#,
            &[("A", a.url()), ("B", b.url())],
        ),
    )
    .await;
    let r = gw.get("/partial").await;
    assert_eq!(r.status(), 200);
    // The body breaks after its first part; the client sees the error, not a second copy.
    let body = r.bytes().await;
    assert!(body.is_err() || !body.unwrap().is_empty());
    assert_eq!(a.hits() + b.hits(), 1);
}

// ---------------------------------------------------------------- circuit breaker

#[tokio::test]
async fn circuit_breaker_opens_answers_at_once_and_closes_after_probes() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    a.set_status(500);
    b.set_status(500);
    let gw = Gateway::start_as(Admin::Open, &fill(
        r#"
        upstreams:
          u:
            targets: [ { url: "$A" } ]
            circuit_breaker: { failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 400ms, half_open_probes: 2 }
          fb:
            targets: [ { url: "$B" } ]
            circuit_breaker:
              failure_ratio: 0.5
              min_requests: 4
              open_for: 1m
              fallback: { status: 200, json: { degraded: true }, headers: { X-Fallback: "1" } }
        routes:
          - { match: { path: "/u" }, upstream: u }
          - { match: { path: "/fb" }, upstream: fb }
        "#,
        &[("A", a.url()), ("B", b.url())],
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(gw.call("/u").await.0, 500);
    }
    // Open: 503 at once with Retry-After, and the upstream is not called.
    let r = gw.get("/u").await;
    assert_eq!(r.headers()["retry-after"], "1");
    problem_typed(r, 503, "circuit-open").await;
    assert_eq!(a.hits(), 4);
    let cb = gw.upstream("u").circuit_breaker.unwrap();
    assert_eq!(serde_json::to_value(cb.state).unwrap(), "open");

    // After open_for, two probes go through; both succeed, so it closes.
    a.set_status(200);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(gw.call("/u").await.0, 200);
    assert_eq!(gw.call("/u").await.0, 200);
    let cb = gw.upstream("u").circuit_breaker.unwrap();
    assert_eq!(serde_json::to_value(cb.state).unwrap(), "closed");
    assert_eq!(gw.call("/u").await.0, 200);
    assert_eq!(a.hits(), 7);

    // A fallback answers instead of the 503.
    for _ in 0..4 {
        assert_eq!(gw.call("/fb").await.0, 500);
    }
    let r = gw.get("/fb").await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-fallback"].to_str().unwrap()
        ),
        (200, "1")
    );
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["degraded"],
        true
    );
    assert_eq!(b.hits(), 4);
}

#[tokio::test]
async fn half_open_probe_failure_reopens() {
    let a = Backend::start("a").await;
    a.set_status(503);
    let gw = Gateway::start_as(Admin::Open, &fill(
        r#"
        upstreams:
          u:
            targets: [ { url: "$A" } ]
            circuit_breaker: { failure_ratio: 1, min_requests: 2, open_for: 300ms, half_open_probes: 1 }
        routes:
          - { match: { path: "/u" }, upstream: u }
        "#,
        &[("A", a.url())],
    ))
    .await;
    gw.call("/u").await;
    gw.call("/u").await;
    assert_eq!(gw.call("/u").await.0, 503);
    assert_eq!(a.hits(), 2);
    tokio::time::sleep(Duration::from_millis(350)).await;
    // The probe fails: open again, at once.
    assert_eq!(gw.call("/u").await.0, 503);
    assert_eq!(a.hits(), 3);
    let r = gw.get("/u").await;
    problem_typed(r, 503, "circuit-open").await;
    assert_eq!(a.hits(), 3);
}

// ---------------------------------------------------------------- split

#[tokio::test]
async fn canary_split_by_weight_override_and_sticky() {
    let (c, s) = (
        Backend::start("canary").await,
        Backend::start("stable").await,
    );
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        upstreams:
          canary: { targets: [ { url: "$C" } ] }
          stable: { targets: [ { url: "$S" } ] }
        routes:
          - match: { path: "/random/{*rest}" }
            split: [ { upstream: canary, weight: 20 }, { upstream: stable, weight: 80 } ]
          - match: { path: "/sticky/{*rest}" }
            split:
              upstreams: [ { upstream: canary, weight: 50 }, { upstream: stable, weight: 50 } ]
              override: { header: X-Canary, cookie: canary }
              sticky: client_ip
        "#,
            &[("C", c.url()), ("S", s.url())],
        ),
    )
    .await;
    let shares = count_by_upstream(&gw, "/random/x", 400).await;
    let canary = *shares.get("canary").unwrap_or(&0) as f64 / 400.0;
    assert!(
        (0.12..0.28).contains(&canary),
        "canary share {canary}: {shares:?}"
    );

    let sticky = count_by_upstream(&gw, "/sticky/x", 30).await;
    assert_eq!(
        sticky.len(),
        1,
        "one client address, one upstream: {sticky:?}"
    );
    let home = sticky.keys().next().unwrap().clone();
    let other = if home == "canary" { "stable" } else { "canary" };

    let r = gw
        .client
        .get(gw.url("/sticky/x"))
        .header("X-Canary", other)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["upstream"],
        other
    );
    let r = gw
        .client
        .get(gw.url("/sticky/x"))
        .header("Cookie", format!("canary={other}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["upstream"],
        other
    );
    // A value that names no upstream of the split changes nothing.
    let r = gw
        .client
        .get(gw.url("/sticky/x"))
        .header("X-Canary", "users")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["upstream"],
        home.as_str()
    );
}

/// `sticky: consumer` follows the authenticated consumer, not the address: every request
/// here comes from 127.0.0.1, yet sixteen consumers spread over both upstreams, each staying
/// on its own.
#[tokio::test]
async fn canary_split_sticky_by_consumer() {
    let (c, s) = (
        Backend::start("canary").await,
        Backend::start("stable").await,
    );
    let consumers: String = (0..16)
        .map(|i| format!("          - {{ name: c{i}, api_keys: [\"key-{i}\"] }}\n"))
        .collect();
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            &format!(
                r#"
        consumers:
{consumers}
        routes:
          - match: {{ path: "/sticky/{{*rest}}" }}
            policies: [ {{ authenticate: [api_key] }} ]
            split:
              upstreams: [ {{ upstream: canary, weight: 50 }}, {{ upstream: stable, weight: 50 }} ]
              sticky: consumer
        upstreams:
          canary: {{ targets: [ {{ url: "$C" }} ] }}
          stable: {{ targets: [ {{ url: "$S" }} ] }}
        "#
            ),
            &[("C", c.url()), ("S", s.url())],
        ),
    )
    .await;
    let mut homes = std::collections::BTreeSet::new();
    for i in 0..16 {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let r = gw
                .client
                .get(gw.url("/sticky/x"))
                .header("X-API-Key", format!("key-{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            seen.insert(v["upstream"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 1, "consumer c{i} moved: {seen:?}");
        homes.extend(seen);
    }
    assert_eq!(
        homes.len(),
        2,
        "sixteen consumers all on one upstream: {homes:?}"
    );
}

#[tokio::test]
/// Beyond `canary_split_sticky_by_consumer`: the consumer, not the address, is the key, and
/// anonymous callers fall back to their address.
async fn sticky_consumer_ignores_the_address_and_anonymous_callers_use_it() {
    let (c, s) = (
        Backend::start("canary").await,
        Backend::start("stable").await,
    );
    let consumers: Vec<String> = (0..16)
        .map(|i| {
            format!(
                "{{ name: c{i}, api_keys: [\"{}\"] }}",
                portcullis::auth::api_key::stored_form(&format!("key-{i}"))
            )
        })
        .collect();
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        server: { trusted_proxies: ["127.0.0.1/32"] }
        upstreams:
          canary: { targets: [ { url: "$C" } ] }
          stable: { targets: [ { url: "$S" } ] }
        consumers: [ $LIST ]
        routes:
          - match: { path: "/api/{*rest}" }
            policies: [ { authenticate: [api_key, anonymous] } ]
            split:
              upstreams: [ { upstream: canary, weight: 50 }, { upstream: stable, weight: 50 } ]
              sticky: consumer
        "#,
            &[
                ("C", c.url()),
                ("S", s.url()),
                ("LIST", consumers.join(", ")),
            ],
        ),
    )
    .await;
    let call = |key: Option<String>, client: String| {
        let mut r = gw
            .client
            .get(gw.url("/api/x"))
            .header("X-Forwarded-For", client);
        if let Some(k) = key {
            r = r.header("X-API-Key", k);
        }
        async move {
            let res = r.send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.json::<serde_json::Value>().await.unwrap()["upstream"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    // A consumer keeps its upstream whatever address it calls from.
    let mut homes = std::collections::HashSet::new();
    for i in 0..16 {
        let mut seen = std::collections::HashSet::new();
        for ip in 1..5 {
            seen.insert(call(Some(format!("key-{i}")), format!("10.9.{i}.{ip}")).await);
        }
        assert_eq!(seen.len(), 1, "consumer c{i} moved: {seen:?}");
        homes.extend(seen);
    }
    assert_eq!(homes.len(), 2, "sixteen consumers all on one side");
    // Anonymous callers stick by address instead: one address, one upstream; many, both.
    let one: std::collections::HashSet<_> =
        futures_util::future::join_all((0..4).map(|_| call(None, "10.8.0.1".into())))
            .await
            .into_iter()
            .collect();
    assert_eq!(one.len(), 1);
    let mut many = std::collections::HashSet::new();
    for i in 0..16 {
        many.insert(call(None, format!("10.7.0.{i}")).await);
    }
    assert_eq!(many.len(), 2);
}

// ---------------------------------------------------------------- discovery

#[tokio::test]
async fn dns_discovery_of_localhost() {
    let a = Backend::start("a").await;
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        upstreams:
          u: { discover: { dns: localhost, port: $PORT, family: ipv4, refresh: 200ms } }
        routes:
          - { match: { path: "/{*rest}" }, upstream: u }
        "#,
            &[("PORT", a.addr.port().to_string())],
        ),
    )
    .await;
    // Resolved before the first request: no 503 window.
    let (s, v) = gw.call("/x").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["host"], format!("localhost:{}", a.addr.port()));
    let u = gw.upstream("u");
    assert_eq!(u.targets.len(), 1);
    assert_eq!(
        u.targets[0].url,
        format!("http://127.0.0.1:{}", a.addr.port())
    );
    let d = u.discovery.unwrap();
    assert_eq!((d.endpoints, d.last_error), (1, None));
    assert!(d.source.contains("dns localhost"));
}

#[tokio::test]
async fn srv_discovery_adds_and_removes_targets_without_dropping_requests() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dns = FakeDns::start(vec![(a.addr.port(), 1)]).await;
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        upstreams:
          u: { discover: { srv: _http._tcp.svc.test, nameservers: ["$DNS"], refresh: 100ms } }
        routes:
          - { match: { path: "/{*rest}" }, upstream: u }
        "#,
            &[("DNS", dns.addr.to_string())],
        ),
    )
    .await;
    assert_eq!(gw.who("/x").await, "a");

    // A slow request to a is in flight when a leaves the records.
    let slow = {
        let (client, url) = (gw.client.clone(), gw.url("/slow?sleep=800"));
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    assert!(
        eventually(Duration::from_secs(2), || a
            .b
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );
    dns.set(vec![(b.addr.port(), 1)]);
    let only_b = |u: &portcullis::upstream::state::UpstreamStatus| {
        u.targets.len() == 1 && u.targets[0].url.ends_with(&format!(":{}", b.addr.port()))
    };
    assert!(eventually(Duration::from_secs(3), || only_b(&gw.upstream("u"))).await);
    for _ in 0..5 {
        assert_eq!(gw.who("/x").await, "b");
    }
    let res = slow.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["upstream"],
        "a"
    );

    // Both again: both get traffic.
    dns.set(vec![(a.addr.port(), 1), (b.addr.port(), 1)]);
    assert!(
        eventually(Duration::from_secs(3), || gw.upstream("u").targets.len()
            == 2)
        .await
    );
    let served = count_by_upstream(&gw, "/x", 10).await;
    assert_eq!(
        (served.get("a"), served.get("b")),
        (Some(&5), Some(&5)),
        "{served:?}"
    );

    // The name server goes away: the last known targets stay.
    drop(dns);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.upstream("u").targets.len(), 2);
    assert_eq!(gw.call("/x").await.0, 200);
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn upstream_tls_with_custom_ca_sni_client_certificate_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::write_into(dir.path(), &["api.internal", "localhost"]);
    // A second CA nobody signed the backend with.
    let other = tempfile::tempdir().unwrap();
    Pki::write_into(other.path(), &["x"]);
    std::fs::copy(other.path().join("ca.pem"), dir.path().join("other-ca.pem")).unwrap();
    let mtls = TlsBackend::start("mtls", &pki, true).await;
    let open = TlsBackend::start("open", &pki, false).await;
    let gw = Gateway::start_in_as(Admin::Open,
        dir,
        &fill(
            r#"
            upstreams:
              h2:
                targets: [ { url: "https://127.0.0.1:$MTLS" } ]
                protocol: http2
                tls: { ca: ca.pem, sni: api.internal, client_cert: client.pem, client_key: client.key }
              h1:
                targets: [ { url: "https://127.0.0.1:$MTLS" } ]
                tls: { ca: ca.pem, sni: api.internal, client_cert: client.pem, client_key: client.key }
              auto:
                targets: [ { url: "https://localhost:$OPEN" } ]
                protocol: auto
                tls: { ca: ca.pem }
              nocert:
                targets: [ { url: "https://127.0.0.1:$MTLS" } ]
                tls: { ca: ca.pem, sni: api.internal }
              wrongca:
                targets: [ { url: "https://127.0.0.1:$OPEN" } ]
                tls: { ca: other-ca.pem, sni: api.internal }
            routes:
              - { match: { path: "/h2" }, upstream: h2 }
              - { match: { path: "/h1" }, upstream: h1 }
              - { match: { path: "/auto" }, upstream: auto }
              - { match: { path: "/nocert" }, upstream: nocert }
              - { match: { path: "/wrongca" }, upstream: wrongca }
            "#,
            &[("MTLS", mtls.addr.port().to_string()), ("OPEN", open.addr.port().to_string())],
        ),
    )
    .await;

    let (s, v) = gw.call("/h2").await;
    assert_eq!((s, v["version"].as_str()), (200, Some("HTTP/2.0")), "{v}");
    let hs = mtls.last().unwrap();
    assert_eq!(hs.sni.as_deref(), Some("api.internal"));
    assert_eq!(hs.alpn.as_deref(), Some("h2"));
    assert!(hs.client_cert);

    let (s, v) = gw.call("/h1").await;
    assert_eq!((s, v["version"].as_str()), (200, Some("HTTP/1.1")), "{v}");
    assert_eq!(mtls.last().unwrap().alpn.as_deref(), Some("http/1.1"));

    // ALPN picks h2; the default SNI is the URL's host.
    let (s, v) = gw.call("/auto").await;
    assert_eq!((s, v["version"].as_str()), (200, Some("HTTP/2.0")), "{v}");
    let hs = open.last().unwrap();
    assert_eq!(
        (hs.sni.as_deref(), hs.client_cert),
        (Some("localhost"), false)
    );

    // No client certificate where one is required, or an untrusted server: 502.
    assert_eq!(gw.call("/nocert").await.0, 502);
    let r = gw.get("/wrongca").await;
    problem_typed(r, 502, "upstream-unreachable").await;
}

// ---------------------------------------------------------------- admin, reload

#[tokio::test]
async fn admin_upstreams_endpoint_shows_target_state() {
    let (a, dead) = (Backend::start("a").await, Backend::start("dead").await);
    dead.kill().await;
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        upstreams:
          u:
            balance: round_robin
            targets: [ { url: "$A" }, { url: "$D" } ]
            circuit_breaker: { failure_ratio: 0.9, min_requests: 100 }
            max_concurrent: 50
            retries: { attempts: 1 }
        routes:
          - { match: { path: "/{*rest}" }, upstream: u }
        "#,
            &[("A", a.url()), ("D", dead.url())],
        ),
    )
    .await;
    for _ in 0..4 {
        assert_eq!(gw.call("/x").await.0, 200);
    }
    let admin = gw.handle.admin_addr().unwrap();
    let v: serde_json::Value = gw
        .client
        .get(format!("http://{admin}/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The admin API's summary per target, and the upstream code's full account in `detail`.
    let view = &v[0];
    assert_eq!(view["name"], "u");
    assert_eq!(view["targets"][0]["state"]["healthy"], true);
    assert_eq!(view["targets"][0]["state"]["circuit"], "closed");
    assert!(view["targets"][1]["state"]["last_error"].is_string(), "{v}");
    let u = &view["detail"];
    assert_eq!(u["name"], "u");
    assert_eq!(u["balance"], "round_robin");
    assert_eq!(u["in_flight"], 0);
    assert_eq!(u["circuit_breaker"]["state"], "closed");
    assert_eq!(u["bulkhead"]["max_concurrent"], 50);
    let t = &u["targets"];
    assert_eq!(
        (t[0]["health"].as_str(), t[0]["failures"].as_u64()),
        (Some("healthy"), Some(0))
    );
    assert!(t[0]["requests"].as_u64().unwrap() >= 4);
    // Every pick of the dead target failed and was retried on the live one.
    let failures = t[1]["failures"].as_u64().unwrap();
    assert!(failures >= 2, "{v}");
    assert_eq!(
        u["retry_budget"]["window_retries"].as_u64(),
        Some(failures),
        "{v}"
    );
    assert!(
        t[1]["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{v}"
    );
    assert!(t[1]["last_error"]["at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn health_and_breaker_state_survive_a_reload() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    b.set_status(502);
    let config = |extra: &str| {
        fill(
            &format!(
                r#"
                upstreams:
                  u:
                    balance: round_robin
                    targets: [ {{ url: "$A" }}, {{ url: "$B" }} ]
                    health: {{ passive: {{ consecutive_failures: 1, eject_for: 1m }} }}
                  v:
                    targets: [ {{ url: "$B" }} ]
                    circuit_breaker: {{ failure_ratio: 0.5, min_requests: 2, open_for: 1m }}
                routes:
                  - {{ match: {{ path: "/u" }}, upstream: u }}
                  - {{ match: {{ path: "/v" }}, upstream: v }}
                {extra}
                "#
            ),
            &[("A", a.url()), ("B", b.url())],
        )
    };
    let gw = Gateway::start_as(Admin::Open, &config("")).await;
    gw.call("/u").await;
    gw.call("/u").await;
    gw.call("/v").await;
    gw.call("/v").await;
    assert_eq!(gw.target_health("u", b.addr), TargetHealth::Ejected);
    let hits = b.hits();

    gw.reload_with(&config(
        "  - { match: { path: /new }, respond: { status: 204 } }",
    ))
    .await;
    assert_eq!(gw.handle.generation(), 2);
    assert_eq!(gw.call("/new").await.0, 204);
    assert_eq!(gw.target_health("u", b.addr), TargetHealth::Ejected);
    let cb = gw.upstream("v").circuit_breaker.unwrap();
    assert_eq!(serde_json::to_value(cb.state).unwrap(), "open");
    for _ in 0..6 {
        gw.call("/u").await;
    }
    assert_eq!(gw.call("/v").await.0, 503);
    assert_eq!(
        b.hits(),
        hits,
        "the ejected target or open breaker was called after the reload"
    );
}

#[tokio::test]
async fn switching_active_checks_off_readmits_their_targets() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    b.set_health(500);
    let config = |health: &str| {
        fill(
            &format!(
                r#"
                upstreams:
                  u:
                    targets: [ {{ url: "$A" }}, {{ url: "$B" }} ]
                    {health}
                routes:
                  - {{ match: {{ path: "/{{*rest}}" }}, upstream: u }}
                "#
            ),
            &[("A", a.url()), ("B", b.url())],
        )
    };
    let gw = Gateway::start_as(
        Admin::Open,
        &config("health: { active: { path: /healthz, interval: 30ms, unhealthy: 1 } }"),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(3), || gw.target_health("u", b.addr)
            == TargetHealth::Unhealthy)
        .await
    );
    // No more probes would ever bring b back, so their verdict goes with them.
    gw.reload_with(&config("")).await;
    assert!(
        eventually(Duration::from_secs(1), || gw.target_health("u", b.addr)
            == TargetHealth::Healthy)
        .await
    );
    let served = count_by_upstream(&gw, "/x", 10).await;
    assert_eq!(served.get("b"), Some(&5), "{served:?}");
}

// ---------------------------------------------------------------- diagnostics

fn diagnostics(yaml: &str) -> Vec<String> {
    let pools = portcullis::upstream::Pools::default();
    let env = portcullis::compile::CompileEnv {
        base_dir: ".".into(),
        pools: &pools,
    };
    match portcullis::compile::load_and_compile_str("t.yaml", &dedent(yaml), &|_| None, &env) {
        Ok(_) => Vec::new(),
        Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn upstream_config_errors_are_located() {
    let errs = diagnostics(
        r#"
        upstreams:
          users:
            targets: [ { url: "http://127.0.0.1:1", weight: 2 } ]
            balance: round_robin
            health:
              active: { path: /healthz, interval: 0s }
              passive: { eject_for: 10s }
          retry:
            targets: [ { url: "http://127.0.0.1:1" } ]
            retries: { attempts: 2, on: [connect_error, sometimes] }
          orders:
            targets: [ { url: "http://127.0.0.1:2" } ]
            discover: { dns: orders.internal, srv: _x._tcp.orders }
            queue: { size: 10 }
          cat:
            targets: [ { url: "https://127.0.0.1:3" } ]
            tls: { ca: missing-ca.pem }
          ratio:
            targets: [ { url: "http://127.0.0.1:4" } ]
            circuit_breaker: { failure_ratio: 1.5 }
          plain:
            targets: [ { url: "http://127.0.0.1:4" } ]
            protocol: auto
            balance: { hash: "query:x" }
          typo:
            targets: [ { url: "http://127.0.0.1:4" } ]
            retryz: 1
        routes:
          - match: { path: /a }
            split: [ { upstream: users, weight: 1 }, { upstream: nope, weight: 1 } ]
          - match: { path: /b }
            split: { upstreams: [ { upstream: plain, weight: 1 } ], sticky: moon }
        "#,
    );
    let expect = [
        "t.yaml:5:14: upstreams.users.balance: round_robin gives every target the same share",
        "t.yaml:7:43: upstreams.users.health.active.interval: must be more than 0",
        "t.yaml:8:16: upstreams.users.health.passive: say when to eject",
        "t.yaml:11:49: upstreams.retry.retries.on[1]: invalid value: string \"sometimes\"",
        "t.yaml:14:15: upstreams.orders.discover: give `targets` or `discover`, not both",
        "t.yaml:14:15: upstreams.orders.discover: give one of `dns`",
        "t.yaml:15:12: upstreams.orders.queue: a queue needs `max_concurrent`",
        "t.yaml:18:16: upstreams.cat.tls.ca: cannot read",
        "t.yaml:21:39: upstreams.ratio.circuit_breaker.failure_ratio: invalid value: floating point `1.5`, expected a share between 0 and 1",
        "t.yaml:24:15: upstreams.plain.protocol: `auto` negotiates HTTP/2",
        "t.yaml:25:22: upstreams.plain.balance.hash: \"query:x\"",
        "t.yaml:28:5: upstreams.typo.retryz: unknown field `retryz`",
        "t.yaml:31:58: routes[0].split[1].upstream: unknown upstream \"nope\"; known: users, retry",
        "t.yaml:33:69: routes[1].split.sticky: \"moon\": expected client_ip, consumer",
    ];
    for e in expect {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in:\n{}",
            errs.join("\n")
        );
    }
    // `users` is used by a split while it has errors of its own: reported once, there.
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
}

/// Every YAML snippet of the README's upstream section compiles as written (certificates it
/// names are generated next to it).
#[test]
fn readme_upstream_snippets_compile() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("## Upstreams: balancing, health, retries, breakers")
        .expect("the README section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    Pki::write_into(&dir.path().join("certs"), &["catalog.internal"]);
    for (from, to) in [
        ("ca.pem", "internal-ca.pem"),
        ("client.pem", "gw-client.pem"),
        ("client.key", "gw-client.key"),
    ] {
        std::fs::copy(
            dir.path().join("certs").join(from),
            dir.path().join("certs").join(to),
        )
        .unwrap();
    }
    let mut count = 0;
    for block in section.split("```yaml\n").skip(1) {
        let yaml = &block[..block.find("```").unwrap()];
        let path = dir.path().join(format!("snippet-{count}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let pools = portcullis::upstream::Pools::default();
        if let Err(e) = portcullis::compile::load_and_compile(&path, &pools) {
            panic!("README snippet {count} does not compile:\n{yaml}\n{e}");
        }
        count += 1;
    }
    assert!(count >= 8, "only {count} snippets found");
}

/// The fuller example config uses the resilience settings; it must keep compiling.
#[test]
fn example_gateway_config_compiles() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gateway.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let pools = portcullis::upstream::Pools::default();
    let env = portcullis::compile::CompileEnv::for_file(std::path::Path::new(path), &pools);
    if let Err(e) = portcullis::compile::load_and_compile_str(path, &text, &|_| None, &env) {
        panic!("{e}");
    }
}
