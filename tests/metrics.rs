//! `GET /metrics` after a known sequence of requests: exact counter values, histogram counts,
//! bytes, connections, per-target state, reloads and the policy counters' interface.

mod common;

use common::observe::{eventually, Metrics};
use common::{closed_port, Admin, Gateway, Upstream};
use reqwest::Method;
use std::time::Duration;

fn upstream_answer(path: &str) -> (u16, &'static str) {
    match path {
        "/ok" => (200, "hello"),
        _ => (404, "nope!!"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_after_a_known_sequence() {
    let up = Upstream::recording(upstream_answer).await;
    let dead = closed_port().await;
    let gw = Gateway::start_as(
        Admin::Token,
        &format!(
            r#"
        upstreams:
          app: {{ targets: [ {{ url: "http://{}" }} ] }}
          dead: {{ targets: [ {{ url: "http://{dead}" }} ] }}
        routes:
          - name: api
            match: {{ path: "/api/{{*rest}}" }}
            upstream: app
            rewrite: {{ strip_prefix: /api }}
          - name: broken
            match: {{ path: "/broken/{{*rest}}" }}
            upstream: dead
        "#,
            up.addr
        ),
    )
    .await;
    let c = common::client();
    let mut bytes_out = 0u64;
    let send = |m: Method, path: &str, body: &'static str| {
        let req = c.request(m, gw.url(path)).body(body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let n = r.bytes().await.unwrap().len() as u64;
            (status, n)
        }
    };
    // 3 × 200 (one of them a POST with a 12-byte body), 2 × 404 from the upstream,
    // 1 × 502 (nothing listens), 1 × 404 that no route takes.
    let mut api_out = 0;
    for (m, p, b, want) in [
        (Method::GET, "/api/ok", "", 200),
        (Method::POST, "/api/ok", "twelve bytes", 200),
        (Method::GET, "/api/ok", "", 200),
        (Method::GET, "/api/missing", "", 404),
        (Method::GET, "/api/other?secret=x", "", 404),
    ] {
        let (s, n) = send(m, p, b).await;
        assert_eq!(s, want, "{p}");
        api_out += n;
    }
    assert_eq!(api_out, 3 * 5 + 2 * 6);
    let (s, broken_out) = send(Method::GET, "/broken/x", "").await;
    assert_eq!(s, 502);
    let (s, unmatched_out) = send(Method::GET, "/nowhere/at/all", "").await;
    assert_eq!(s, 404);
    bytes_out += api_out + broken_out + unmatched_out;
    assert!(bytes_out > 0);

    // Requests are recorded when their response body is done; wait for the last one.
    let m: Metrics = eventually(Duration::from_secs(10), "all requests recorded", || async {
        let m = gw.metrics().await;
        let done = m.opt("portcullis_request_duration_seconds_count{route=\"(unmatched)\"}")
            == Some(1.0)
            && m.opt("portcullis_request_duration_seconds_count{route=\"api\"}") == Some(5.0)
            && m.opt("portcullis_request_duration_seconds_count{route=\"broken\"}") == Some(1.0);
        done.then_some(m)
    })
    .await;

    let req = |route: &str, method: &str, class: &str| {
        format!(
            "portcullis_requests_total{{route=\"{route}\",method=\"{method}\",status_class=\"{class}\"}}"
        )
    };
    assert_eq!(m.get(&req("api", "GET", "2xx")), 2.0);
    assert_eq!(m.get(&req("api", "POST", "2xx")), 1.0);
    assert_eq!(m.get(&req("api", "GET", "4xx")), 2.0);
    assert_eq!(m.get(&req("broken", "GET", "5xx")), 1.0);
    assert_eq!(m.get(&req("(unmatched)", "GET", "4xx")), 1.0);
    let total: f64 = m
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with("portcullis_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 7.0, "{}", m.text);
    // No raw path or query ever becomes a label value.
    assert!(
        !m.text.contains("/api/ok") && !m.text.contains("secret") && !m.text.contains("nowhere")
    );

    // Histograms: one observation per request; the +Inf bucket holds them all.
    assert_eq!(
        m.get("portcullis_request_duration_seconds_bucket{le=\"+Inf\",route=\"api\"}"),
        5.0
    );
    assert!(m.get("portcullis_request_duration_seconds_sum{route=\"api\"}") > 0.0);
    assert_eq!(
        m.get("portcullis_upstream_duration_seconds_count{route=\"api\",upstream=\"app\"}"),
        5.0
    );
    assert_eq!(
        m.get("portcullis_upstream_duration_seconds_bucket{le=\"+Inf\",route=\"api\",upstream=\"app\"}"),
        5.0
    );
    assert_eq!(
        m.get("portcullis_upstream_duration_seconds_count{route=\"broken\",upstream=\"dead\"}"),
        1.0
    );
    // Cumulative buckets: the largest is the +Inf one.
    let buckets: Vec<f64> = m
        .samples
        .iter()
        .filter(|(k, _)| {
            k.starts_with("portcullis_request_duration_seconds_bucket{")
                && k.ends_with(",route=\"api\"}")
        })
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(buckets.len(), 17);
    assert_eq!(buckets.iter().copied().fold(0.0, f64::max), 5.0);

    // Bytes.
    assert_eq!(m.get("portcullis_request_bytes_total{route=\"api\"}"), 12.0);
    assert_eq!(
        m.get("portcullis_response_bytes_total{route=\"api\"}"),
        api_out as f64
    );
    assert_eq!(
        m.get("portcullis_response_bytes_total{route=\"broken\"}"),
        broken_out as f64
    );
    assert_eq!(
        m.get("portcullis_response_bytes_total{route=\"(unmatched)\"}"),
        unmatched_out as f64
    );

    // Per-target state.
    let t = format!("upstream=\"app\",target=\"{}\"", up.addr);
    assert_eq!(
        m.get(&format!("portcullis_upstream_target_in_flight{{{t}}}")),
        0.0
    );
    assert_eq!(
        m.get(&format!("portcullis_upstream_target_healthy{{{t}}}")),
        1.0
    );
    assert_eq!(
        m.get(&format!("portcullis_upstream_target_circuit_state{{{t}}}")),
        0.0
    );
    assert_eq!(m.get("portcullis_config_generation"), 1.0);
    assert_eq!(m.get("portcullis_config_reloads_total{result=\"ok\"}"), 0.0);

    drop(c);

    // Connections: two more raw TCP connections show as open until they close.
    let open = "portcullis_connections_open{listener=\"127.0.0.1:0\"}";
    let total = "portcullis_connections_total{listener=\"127.0.0.1:0\"}";
    let gw = &gw;
    let wait_open = |n: f64| async move {
        eventually(
            Duration::from_secs(10),
            "the open-connection gauge",
            || async {
                let m = gw.metrics().await;
                (m.get(open) == n).then_some(m)
            },
        )
        .await
    };
    let m = wait_open(0.0).await;
    let before = m.get(total);
    assert!(before >= 1.0);
    let a = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let m = wait_open(2.0).await;
    assert_eq!(m.get(total), before + 2.0);
    drop((a, b));
    wait_open(0.0).await;
    gw.handle.shutdown_within(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_requests_waiting_on_a_target() {
    // An upstream that holds every request until told to answer.
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let g = gate.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let g = g.clone();
                    async move {
                        g.notified().await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"late")),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let gw = Gateway::start_as(
        Admin::Token,
        &format!(
            r#"
        upstreams:
          slow: {{ targets: [ {{ url: "http://{addr}" }} ] }}
        routes:
          - name: slow
            match: {{ path: "/{{*rest}}" }}
            upstream: slow
        "#
        ),
    )
    .await;
    let series =
        format!("portcullis_upstream_target_in_flight{{upstream=\"slow\",target=\"{addr}\"}}");
    let url = gw.url("/x");
    let pending = tokio::spawn(async move { common::client().get(url).send().await });
    eventually(Duration::from_secs(10), "one request in flight", || async {
        (gw.metrics().await.get(&series) == 1.0).then_some(())
    })
    .await;
    let v = gw.admin_json("/upstreams").await;
    assert_eq!(v[0]["targets"][0]["state"]["in_flight"], 1);
    gate.notify_waiters();
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.text().await.unwrap(), "late");
    eventually(Duration::from_secs(10), "nothing in flight", || async {
        (gw.metrics().await.get(&series) == 0.0).then_some(())
    })
    .await;
    task.abort();
    gw.stop().await;
}

#[tokio::test]
async fn reloads_and_policy_counters_are_exported() {
    let gw = Gateway::start_as(
        Admin::Token,
        r#"
        routes:
          - name: metrics-reload-route
            match: { path: /x }
            respond: { status: 204 }
        "#,
    )
    .await;
    let r = gw.admin(Method::POST, "/reload").send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.rewrite("routes: [ { match: { path: /x }, upstream: none } ]\n");
    let r = gw.admin(Method::POST, "/reload").send().await.unwrap();
    assert_eq!(r.status(), 422);
    let m = gw.metrics().await;
    assert_eq!(m.get("portcullis_config_reloads_total{result=\"ok\"}"), 1.0);
    assert_eq!(
        m.get("portcullis_config_reloads_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(m.get("portcullis_config_last_reload_successful"), 0.0);
    assert_eq!(m.get("portcullis_config_generation"), 2.0);

    // The interface the rate-limit, auth and cache policies call.
    use portcullis::observe::metrics::{self, AuthFailure};
    let route = "metrics-reload-route";
    let before = gw
        .metrics()
        .await
        .get("portcullis_auth_failures_total{reason=\"invalid\"}");
    metrics::rate_limited(route);
    metrics::rate_limited(route);
    metrics::auth_failure(AuthFailure::Invalid);
    metrics::cache_hit(route);
    metrics::cache_miss(route);
    metrics::cache_miss(route);
    let m = gw.metrics().await;
    assert_eq!(
        m.get(&format!(
            "portcullis_rate_limited_total{{route=\"{route}\"}}"
        )),
        2.0
    );
    // Auth failures are process-wide and other tests may add to them: at least ours.
    assert!(m.get("portcullis_auth_failures_total{reason=\"invalid\"}") >= before + 1.0);
    for reason in ["missing", "invalid", "expired", "forbidden"] {
        m.get(&format!(
            "portcullis_auth_failures_total{{reason=\"{reason}\"}}"
        ));
    }
    assert_eq!(
        m.get(&format!("portcullis_cache_hits_total{{route=\"{route}\"}}")),
        1.0
    );
    assert_eq!(
        m.get(&format!(
            "portcullis_cache_misses_total{{route=\"{route}\"}}"
        )),
        2.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn counters_survive_a_reload() {
    let gw = Gateway::start_as(
        Admin::Token,
        r#"
        routes:
          - name: kept
            match: { path: /x }
            respond: { status: 200, body: x }
        "#,
    )
    .await;
    let series = "portcullis_requests_total{route=\"kept\",method=\"GET\",status_class=\"2xx\"}";
    for _ in 0..2 {
        gw.get("/x").await.bytes().await.unwrap();
    }
    eventually(Duration::from_secs(10), "2 requests", || async {
        (gw.metrics().await.opt(series) == Some(2.0)).then_some(())
    })
    .await;
    gw.rewrite(
        r#"
        routes:
          - name: new
            match: { path: /y }
            respond: { status: 200 }
          - name: kept
            match: { path: /x }
            respond: { status: 200, body: x }
        "#,
    );
    assert_eq!(
        gw.admin(Method::POST, "/reload")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.get("/x").await.bytes().await.unwrap();
    eventually(Duration::from_secs(10), "3 requests", || async {
        (gw.metrics().await.opt(series) == Some(3.0)).then_some(())
    })
    .await;
    gw.stop().await;
}
