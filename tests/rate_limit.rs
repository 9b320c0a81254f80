//! Traffic control through the real gateway (memory state): the three algorithms, every key
//! kind, several limits on one route, the headers, concurrency limits, the per-route body
//! limit, counters across a reload, and config diagnostics.
//!
//! The algorithms' edges are tested to the nanosecond with paused time in
//! `src/state/algorithms.rs`; here real time runs, so waits are generous and window tests
//! first align themselves to a window boundary.

mod common;

use common::traffic::{align_to_window, header};
use common::{assert_type, problem, Gateway, UpBody, Upstream};
use reqwest::Method;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A gateway with an echo upstream and the given routes (which may use `upstream: echo`).
async fn gateway(extra: &str, routes: &str) -> (Gateway, Upstream) {
    let echo = Upstream::echo().await;
    let yaml = format!(
        "server: {{ trusted_proxies: [127.0.0.1/32] }}\n{extra}\nupstreams:\n  echo: {{ targets: [ {{ url: \"{}\" }} ] }}\nroutes:\n{}",
        echo.url(),
        common::dedent(routes)
    );
    (Gateway::start(yaml).await, echo)
}

/// GET `path` as client `ip` (through the trusted-proxy `X-Forwarded-For`).
async fn get_as(gw: &Gateway, ip: &str, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = gw.request(Method::GET, path).header("x-forwarded-for", ip);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

async fn status_as(gw: &Gateway, ip: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    get_as(gw, ip, path, headers).await.status().as_u16()
}

const A: &str = "203.0.113.1";
const B: &str = "203.0.113.2";

// ------------------------------------------------------------------------------ algorithms

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_allows_the_burst_then_refills() {
    let (gw, echo) = gateway(
        "",
        r#"
        - match: { path: /tb }
          upstream: echo
          policies:
            - rate_limit: { requests: 2, per: 2s, algorithm: token_bucket, burst: 3 }
        "#,
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(status_as(&gw, A, "/tb", &[]).await);
    }
    assert_eq!(got, [200, 200, 200, 429, 429], "a bucket of 3");
    assert_eq!(echo.hits(), 3, "refused requests never reach the upstream");
    let r = get_as(&gw, A, "/tb", &[]).await;
    assert_eq!(header(&r, "retry-after"), "1", "one token per second");
    // One token after a second, not two.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status_as(&gw, A, "/tb", &[]).await, 200);
    assert_eq!(status_as(&gw, A, "/tb", &[]).await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_window_resets_on_the_boundary() {
    let (gw, _echo) = gateway(
        "",
        r#"
        - match: { path: /fw }
          upstream: echo
          policies:
            - rate_limit: { requests: 3, per: 2s, algorithm: fixed_window }
        "#,
    )
    .await;
    let period = Duration::from_secs(2);
    align_to_window(period, Duration::from_millis(1500)).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(status_as(&gw, A, "/fw", &[]).await);
    }
    assert_eq!(got, [200, 200, 200, 429, 429]);
    let r = get_as(&gw, A, "/fw", &[]).await;
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry), "until the window ends: {retry}");
    // The next window: the full quota again.
    align_to_window(period, period).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(status_as(&gw, A, "/fw", &[]).await);
    }
    assert_eq!(got, [200, 200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_weighs_the_previous_window() {
    let (gw, _echo) = gateway(
        "",
        r#"
        - match: { path: /sw }
          upstream: echo
          policies:
            - rate_limit: { requests: 4, per: 2s, algorithm: sliding_window }
        "#,
    )
    .await;
    let period = Duration::from_secs(2);
    align_to_window(period, Duration::from_millis(1500)).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(status_as(&gw, A, "/sw", &[]).await);
    }
    assert_eq!(got, [200, 200, 200, 200, 429]);
    // Just after the boundary the previous window still weighs (almost) fully: unlike a
    // fixed window, no second burst.
    align_to_window(period, period).await;
    assert_eq!(status_as(&gw, A, "/sw", &[]).await, 429);
    // Half-way through, half of it is left: 4 × 0.5 = 2, room for 2 more.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(status_as(&gw, A, "/sw", &[]).await);
    }
    assert_eq!(got, [200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_limits_on_one_route_and_refusals_spend_none() {
    let (gw, _echo) = gateway(
        "",
        r#"
        - match: { path: /multi }
          upstream: echo
          policies:
            - rate_limit:
                key: ip
                limits:
                  - { requests: 2, per: 1m, name: minute }
                  - { requests: 5, per: 1d, algorithm: fixed_window, name: daily }
        "#,
    )
    .await;
    align_to_window(Duration::from_secs(86_400), Duration::from_secs(30)).await;
    let r = get_as(&gw, A, "/multi", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "ratelimit-policy"),
        "\"minute\";q=2;w=60, \"daily\";q=5;w=86400"
    );
    let r = get_as(&gw, A, "/multi", &[]).await;
    let rl = header(&r, "ratelimit");
    assert!(
        rl.starts_with("\"minute\";r=0;t=60, \"daily\";r=3;t="),
        "{rl}"
    );
    for _ in 0..3 {
        let r = get_as(&gw, A, "/multi", &[]).await;
        assert_eq!(r.status(), 429);
        let rl = header(&r, "ratelimit");
        assert!(
            rl.contains("\"daily\";r=3;"),
            "the day quota is untouched: {rl}"
        );
        assert_eq!(header(&r, "x-ratelimit-limit"), "2", "the refusing limit");
        assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
        let p = problem(r, 429).await;
        assert_type(&p, "rate-limited");
        assert!(p["detail"].as_str().unwrap().contains("\"minute\""), "{p}");
    }
}

// ------------------------------------------------------------------------------------- keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_kind() {
    let (gw, _echo) = gateway(
        "",
        r#"
        - match: { path: /ip }
          upstream: echo
          policies: [ { rate_limit: { key: ip, requests: 1, per: 1m } } ]
        - match: { path: /route }
          upstream: echo
          policies: [ { rate_limit: { key: route, requests: 1, per: 1m } } ]
        - match: { path: /header }
          upstream: echo
          policies: [ { rate_limit: { key: "header:X-Tenant", requests: 1, per: 1m } } ]
        - match: { path: "/t/{tenant}/items" }
          upstream: echo
          policies: [ { rate_limit: { key: "param:tenant", requests: 1, per: 1m } } ]
        - match: { path: /combo }
          upstream: echo
          policies: [ { rate_limit: { key: [ip, "header:X-Tenant"], requests: 1, per: 1m } } ]
        - match: { path: /consumer }
          upstream: echo
          policies: [ { rate_limit: { key: consumer, requests: 1, per: 1m } } ]
        - match: { path: /api-key }
          upstream: echo
          policies: [ { rate_limit: { key: api_key, requests: 1, per: 1m } } ]
        "#,
    )
    .await;
    let t1 = [("x-tenant", "acme")];
    let t2 = [("x-tenant", "globex")];

    // ip: per client address.
    assert_eq!(status_as(&gw, A, "/ip", &[]).await, 200);
    assert_eq!(status_as(&gw, A, "/ip", &[]).await, 429);
    assert_eq!(status_as(&gw, B, "/ip", &[]).await, 200);

    // route: one counter for everyone.
    assert_eq!(status_as(&gw, A, "/route", &[]).await, 200);
    assert_eq!(status_as(&gw, B, "/route", &[]).await, 429);

    // header: per value, whoever sends it; without it, per client address.
    assert_eq!(status_as(&gw, A, "/header", &t1).await, 200);
    assert_eq!(status_as(&gw, B, "/header", &t1).await, 429);
    assert_eq!(status_as(&gw, A, "/header", &t2).await, 200);
    assert_eq!(status_as(&gw, A, "/header", &[]).await, 200);
    assert_eq!(status_as(&gw, A, "/header", &[]).await, 429);
    assert_eq!(status_as(&gw, B, "/header", &[]).await, 200);

    // param: per path parameter value.
    assert_eq!(status_as(&gw, A, "/t/acme/items", &[]).await, 200);
    assert_eq!(status_as(&gw, B, "/t/acme/items", &[]).await, 429);
    assert_eq!(status_as(&gw, A, "/t/globex/items", &[]).await, 200);

    // combination: per (client, tenant).
    assert_eq!(status_as(&gw, A, "/combo", &t1).await, 200);
    assert_eq!(status_as(&gw, A, "/combo", &t1).await, 429);
    assert_eq!(status_as(&gw, A, "/combo", &t2).await, 200);
    assert_eq!(status_as(&gw, B, "/combo", &t1).await, 200);

    // consumer and api_key: no authenticated identity here, so per client address — an
    // unverified X-API-Key must not open a fresh bucket.
    assert_eq!(status_as(&gw, A, "/consumer", &[]).await, 200);
    assert_eq!(status_as(&gw, A, "/consumer", &[]).await, 429);
    assert_eq!(status_as(&gw, B, "/consumer", &[]).await, 200);
    assert_eq!(
        status_as(&gw, A, "/api-key", &[("x-api-key", "k1")]).await,
        200
    );
    assert_eq!(
        status_as(&gw, A, "/api-key", &[("x-api-key", "k2")]).await,
        429
    );
    assert_eq!(
        status_as(&gw, B, "/api-key", &[("x-api-key", "k1")]).await,
        200
    );
}

// ---------------------------------------------------------------------------------- headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_on_success_and_refusal_and_switched_off() {
    let (gw, _echo) = gateway(
        "",
        r#"
        - match: { path: /on }
          upstream: echo
          policies: [ { rate_limit: { requests: 2, per: 1h, name: hourly } } ]
        - match: { path: /off }
          upstream: echo
          policies: [ { rate_limit: { requests: 1, per: 1h, headers: false } } ]
        "#,
    )
    .await;
    let r = get_as(&gw, A, "/on", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-policy"), "\"hourly\";q=2;w=3600");
    assert_eq!(header(&r, "ratelimit"), "\"hourly\";r=1;t=1800");
    assert_eq!(header(&r, "x-ratelimit-limit"), "2");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "1");
    assert_eq!(header(&r, "x-ratelimit-reset"), "1800");
    get_as(&gw, A, "/on", &[]).await;
    let r = get_as(&gw, A, "/on", &[]).await;
    assert_eq!(header(&r, "retry-after"), "1800");
    assert_eq!(header(&r, "ratelimit"), "\"hourly\";r=0;t=3600");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&r, "x-ratelimit-reset"), "3600");
    assert_eq!(header(&r, "cache-control"), "no-store");
    let p = problem(r, 429).await;
    assert_type(&p, "rate-limited");
    assert_eq!(p["title"], "Too Many Requests");

    let r = get_as(&gw, A, "/off", &[]).await;
    assert_eq!(r.status(), 200);
    for h in [
        "ratelimit-policy",
        "ratelimit",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(r.headers().get(h).is_none(), "{h} with headers: false");
    }
    let r = get_as(&gw, A, "/off", &[]).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("ratelimit").is_none());
    assert_eq!(header(&r, "retry-after"), "3600");
}

// ------------------------------------------------------------------------------ concurrency

/// An upstream whose response bodies wait for the test: headers go out at once, the body
/// when [`Gate::release`] is called.
struct Gate {
    senders: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>>,
    upstream: Upstream,
}

impl Gate {
    async fn start() -> Gate {
        let senders: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>> = Default::default();
        let s = senders.clone();
        let upstream = Upstream::serve(move |_req| {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            s.lock().unwrap().push(tx);
            async move {
                use http_body_util::BodyExt;
                let stream = futures_util::stream::once(async move {
                    let _ = rx.await;
                    Ok::<_, common::BoxError>(hyper::body::Frame::data(bytes::Bytes::from_static(
                        b"done",
                    )))
                });
                let body: UpBody = http_body_util::StreamBody::new(stream).boxed_unsync();
                hyper::Response::new(body)
            }
        })
        .await;
        Gate { senders, upstream }
    }

    fn release(&self) {
        for tx in self.senders.lock().unwrap().drain(..) {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_holds_the_slot_until_the_body_ends() {
    let gate = Gate::start().await;
    let gw = Gateway::start(format!(
        r#"
        server: {{ trusted_proxies: [127.0.0.1/32] }}
        upstreams:
          slow: {{ targets: [ {{ url: "{}" }} ] }}
        routes:
          - match: {{ path: /client }}
            upstream: slow
            policies: [ {{ concurrency_limit: {{ key: ip, max: 1 }} }} ]
          - match: {{ path: /route }}
            upstream: slow
            policies: [ {{ concurrency_limit: {{ key: route, max: 1 }} }} ]
        "#,
        gate.upstream.url()
    ))
    .await;

    // A has its response headers; its body is still coming.
    let a = get_as(&gw, A, "/client", &[]).await;
    assert_eq!(a.status(), 200);
    let r = get_as(&gw, A, "/client", &[]).await;
    assert_eq!(header(&r, "retry-after"), "1");
    assert_type(&problem(r, 429).await, "concurrency-limited");
    // Another client has its own slot.
    let b = get_as(&gw, B, "/client", &[]).await;
    assert_eq!(b.status(), 200);
    gate.release();
    assert_eq!(&a.bytes().await.unwrap()[..], b"done");
    assert_eq!(&b.bytes().await.unwrap()[..], b"done");
    // Free again once the body has been sent.
    let mut status = 0;
    for _ in 0..50 {
        let r = get_as(&gw, A, "/client", &[]).await;
        status = r.status().as_u16();
        if status == 200 {
            gate.release();
            let _ = r.bytes().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);

    // Route-wide: the route's capacity is used up, whoever asks: 503.
    let held = get_as(&gw, A, "/route", &[]).await;
    assert_eq!(held.status(), 200);
    let r = get_as(&gw, B, "/route", &[]).await;
    assert_type(&problem(r, 503).await, "concurrency-limited");
    // A client that goes away frees the slot too.
    drop(held);
    gate.release();
    let mut status = 0;
    for _ in 0..50 {
        let r = get_as(&gw, B, "/route", &[]).await;
        status = r.status().as_u16();
        if status == 200 {
            gate.release();
            let _ = r.bytes().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
}

// ------------------------------------------------------------------------- body size limit

/// Issue 5, item 5: the per-route body size limit (`routes[].max_body`), next to a limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_body_size_limit() {
    let (gw, echo) = gateway(
        "defaults: { max_body: 1MiB }",
        r#"
        - match: { path: /upload }
          upstream: echo
          max_body: 1KiB
          policies: [ { rate_limit: { requests: 100, per: 1m } } ]
        "#,
    )
    .await;
    let post = |body: Vec<u8>| gw.request(Method::POST, "/upload").body(body).send();
    assert_eq!(
        post(vec![7; 1024]).await.unwrap().status(),
        200,
        "at the limit"
    );
    let r = post(vec![7; 1025]).await.unwrap();
    assert_type(&problem(r, 413).await, "body-too-large");
    // Chunked (no Content-Length): cut at the limit, also 413.
    let raw = gw
        .raw(&format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            2048,
            "a".repeat(2048)
        ))
        .await;
    assert_eq!(raw.status, 413);
    assert_eq!(
        echo.hits(),
        1,
        "only the request within the limit went upstream"
    );
}

// ---------------------------------------------------------------------------------- reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_a_reload() {
    let (gw, _echo) = gateway(
        "",
        r#"
        - name: limited
          match: { path: /r }
          upstream: echo
          policies: [ { rate_limit: { requests: 1, per: 1h } } ]
        "#,
    )
    .await;
    assert_eq!(status_as(&gw, A, "/r", &[]).await, 200);
    assert_eq!(status_as(&gw, A, "/r", &[]).await, 429);
    let generation = gw.handle.generation();
    gw.handle.reload().await.unwrap();
    assert_eq!(gw.handle.generation(), generation + 1);
    assert_eq!(
        status_as(&gw, A, "/r", &[]).await,
        429,
        "the counter lives outside the snapshot"
    );
}

// ----------------------------------------------------------------------------- diagnostics

#[test]
fn config_errors_are_located() {
    // Decode errors drop their route (reported at once); compile errors are reported for
    // the routes that decoded — all in one run.
    let text = r#"routes:
  - match: { path: /a }
    respond: { status: 200 }
    policies:
      - rate_limit: { requests: 10, per: 1 }
  - match: { path: /b }
    respond: { status: 200 }
    policies:
      - rate_limit: { requests: 1, per: 1s, algorithm: leaky }
  - match: { path: "/t/{tenant}" }
    respond: { status: 200 }
    policies:
      - rate_limit: { key: [ip, "param:user"], requests: 10, per: 1s }
      - rate_limit: { requests: 0, per: 1s, algorithm: fixed_window }
      - rate_limit: { requests: 5, per: 1s, algorithm: sliding_window, burst: 9 }
      - rate_limit: { key: cookie, requests: 5, per: 1s }
      - concurrency_limit: { max: 0 }
state: { backend: redis }
"#;
    let pools = portcullis::upstream::Pools::default();
    let env = portcullis::compile::CompileEnv {
        base_dir: ".".into(),
        pools: &pools,
    };
    let Err(ds) = portcullis::compile::load_and_compile_str("t.yaml", text, &|_| None, &env) else {
        panic!("should fail")
    };
    let all: Vec<String> = ds.0.iter().map(|d| d.to_string()).collect();
    let has = |prefix: &str| {
        assert!(
            all.iter().any(|d| d.starts_with(prefix)),
            "no {prefix:?} in {all:#?}"
        )
    };
    has("t.yaml:5:42: routes[0].policies[0].rate_limit.per: invalid value: integer `1`, expected a duration with a unit");
    has("t.yaml:9:56: routes[1].policies[0].rate_limit.algorithm: unknown variant `leaky`, expected one of `token_bucket`, `fixed_window`, `sliding_window`");
    has("t.yaml:13:33: routes[2].policies[0].rate_limit.key[1]: no path parameter \"user\"; the route's path has: tenant");
    has("t.yaml:14:33: routes[2].policies[1].rate_limit.requests: expected a number from 1 to 1000000000");
    has("t.yaml:15:79: routes[2].policies[2].rate_limit.burst: `burst` applies to `algorithm: token_bucket` only");
    has("t.yaml:16:28: routes[2].policies[3].rate_limit.key: \"cookie\": expected ip, consumer, api_key, route, header:NAME or param:NAME");
    has("t.yaml:17:35: routes[2].policies[4].concurrency_limit.max: expected a number");
    has("t.yaml:18:8: state.redis: `backend: redis` needs");
    assert_eq!(all.len(), 8, "{all:#?}");

    let bad_url = "routes: [ { match: { path: /a }, respond: { status: 200 } } ]\nstate: { backend: redis, redis: { url: \"http://x\" } }\n";
    let Err(ds) = portcullis::compile::load_and_compile_str("u.yaml", bad_url, &|_| None, &env)
    else {
        panic!("should fail")
    };
    assert!(
        ds.0[0]
            .to_string()
            .starts_with("u.yaml:2:40: state.redis.url: \"http://x\" is not a Redis URL"),
        "{}",
        ds.0[0]
    );
}

// ------------------------------------------------------------------------ with identity

/// With `authenticate`, a `consumer` key counts per consumer (across addresses and keys), an
/// `api_key` key per key, and a consumer's own `limits` replace the route's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_and_api_key_limits_follow_the_authenticated_caller() {
    let (gw, _echo) = gateway(
        r#"
consumers:
  - { name: gold, api_keys: ["key-gold"], limits: [ { requests: 3, per: 1m } ] }
  - { name: plain, api_keys: ["key-p1", "key-p2"] }
"#,
        r#"
        - match: { path: /per-consumer }
          upstream: echo
          policies:
            - authenticate: [api_key]
            - rate_limit: { key: consumer, requests: 1, per: 1m }
        - match: { path: /per-key }
          upstream: echo
          policies:
            - authenticate: [api_key]
            - rate_limit: { key: api_key, requests: 1, per: 1m }
        "#,
    )
    .await;
    let key = |k: &'static str| [("x-api-key", k)];
    // plain: one request per minute, whichever key and address it comes from.
    assert_eq!(
        status_as(&gw, A, "/per-consumer", &key("key-p1")).await,
        200
    );
    assert_eq!(
        status_as(&gw, A, "/per-consumer", &key("key-p1")).await,
        429
    );
    assert_eq!(
        status_as(&gw, B, "/per-consumer", &key("key-p2")).await,
        429
    );
    // gold's own limit (3 per minute) replaces the route's.
    for _ in 0..3 {
        assert_eq!(
            status_as(&gw, A, "/per-consumer", &key("key-gold")).await,
            200
        );
    }
    assert_eq!(
        status_as(&gw, A, "/per-consumer", &key("key-gold")).await,
        429
    );
    // Per key: plain's two keys count apart, from one address.
    assert_eq!(status_as(&gw, A, "/per-key", &key("key-p1")).await, 200);
    assert_eq!(status_as(&gw, A, "/per-key", &key("key-p1")).await, 429);
    assert_eq!(status_as(&gw, A, "/per-key", &key("key-p2")).await, 200);
    // No key: 401 before any counting.
    assert_eq!(status_as(&gw, A, "/per-key", &[]).await, 401);
}
