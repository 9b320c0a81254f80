//! W3C trace context through the gateway and spans exported over OTLP/HTTP to a collector
//! written here: names, parent/child ids, the client's trace id, attributes, sampling, and
//! no secret in any span.

mod common;

use common::observe::{attr, Collector};
use common::{closed_port, Admin, Gateway, Upstream};
use portcullis::observe::trace::parse_traceparent;
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const SECRETS: [&str; 5] = [
    "s3cr3t-bearer",
    "s3cr3t-cookie",
    "s3cr3t-apikey",
    "s3cr3t-query",
    "s3cr3t-collector-key",
];

async fn gateway(collector: &Collector, up: &Upstream, ratio: f64) -> Gateway {
    let dead = closed_port().await;
    Gateway::start_as(
        Admin::Token,
        &format!(
            r#"
        tracing:
          otlp:
            endpoint: "{}"
            sample_ratio: {ratio}
            service_name: gateway-under-test
            headers: {{ X-Api-Key: s3cr3t-collector-key }}
        upstreams:
          app: {{ targets: [ {{ url: "http://{}" }} ] }}
          dead: {{ targets: [ {{ url: "http://{dead}" }} ] }}
        routes:
          - name: api
            match: {{ path: "/api/{{*rest}}" }}
            upstream: app
          - name: broken
            match: {{ path: "/broken" }}
            upstream: dead
          - name: direct
            match: {{ path: "/direct" }}
            respond: {{ status: 200, body: hi }}
        "#,
            collector.endpoint(),
            up.addr
        ),
    )
    .await
}

fn find<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_clients_trace_and_exports_request_and_try_spans() {
    let collector = Collector::start().await;
    let up = Upstream::hello().await;
    // Ratio 0: only the client's sampled flag can make these requests recorded.
    let gw = gateway(&collector, &up, 0.0).await;

    // Unsampled first, so its spans, had any been exported, would arrive no later than the
    // sampled request's.
    let r = gw.get("/api/unsampled").await;
    assert_eq!(r.status(), 200);
    let unsampled_tp = up.received()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let unsampled = parse_traceparent(&unsampled_tp).expect("a valid traceparent upstream");
    assert!(!unsampled.sampled, "{unsampled_tp}");

    let r = gw
        .client
        .get(gw.url("/api/users/7?api_key=s3cr3t-query"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=abc,other=1")
        .header("authorization", "Bearer s3cr3t-bearer")
        .header("cookie", "session=s3cr3t-cookie")
        .header("x-api-key", "s3cr3t-apikey")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    r.bytes().await.unwrap();

    // What the upstream received: the same trace, a new parent (the try span), the state.
    let seen = up.received()[1].clone();
    let tp = seen.headers["traceparent"].to_str().unwrap();
    let parsed = parse_traceparent(tp).unwrap();
    assert_eq!(&tp[3..35], TRACE);
    assert_ne!(&tp[36..52], CLIENT_SPAN);
    assert!(parsed.sampled);
    assert_eq!(seen.headers["tracestate"], "vendor=abc,other=1");

    let spans = collector.wait_for(TRACE, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = find(&spans, "GET api");
    let client = find(&spans, "upstream app");

    assert_eq!(server["kind"], 2);
    assert_eq!(server["parentSpanId"], CLIENT_SPAN);
    assert_eq!(server["traceState"], "vendor=abc,other=1");
    assert_eq!(server["service"], "gateway-under-test");
    assert_eq!(attr(server, "portcullis.route").as_deref(), Some("api"));
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(server, "url.path").as_deref(), Some("/api/users/7"));
    assert_eq!(
        attr(server, "portcullis.request_id").as_deref(),
        Some(rid.as_str())
    );
    assert_eq!(server["status"]["code"], 0);

    assert_eq!(client["kind"], 3);
    assert_eq!(client["parentSpanId"], server["spanId"]);
    assert_eq!(
        client["spanId"],
        &tp[36..52],
        "the upstream's parent is the try span"
    );
    assert_eq!(attr(client, "portcullis.upstream").as_deref(), Some("app"));
    assert_eq!(
        attr(client, "portcullis.target").as_deref(),
        Some(up.addr.to_string().as_str())
    );
    assert_eq!(
        attr(client, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(client, "portcullis.try").as_deref(), Some("1"));
    // The try lies within the request.
    let n = |s: &Value, k: &str| s[k].as_str().unwrap().parse::<u64>().unwrap();
    assert!(n(client, "startTimeUnixNano") >= n(server, "startTimeUnixNano"));
    assert!(n(client, "endTimeUnixNano") <= n(server, "endTimeUnixNano"));

    // The unsampled trace was never exported.
    let unsampled_id: String = unsampled_tp[3..35].to_owned();
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| s["traceId"] != unsampled_id),
        "an unsampled trace was exported"
    );

    // No secret anywhere in what reached the collector, except the collector's own header.
    let raw = collector.raw();
    for s in &SECRETS[..4] {
        assert!(!raw.contains(s), "{s} reached the collector:\n{raw}");
    }
    assert!(
        raw.contains("s3cr3t-collector-key"),
        "the configured export header is sent to the collector"
    );
    let bodies: String = collector.spans().iter().map(|s| s.to_string()).collect();
    for s in SECRETS {
        assert!(!bodies.contains(s), "{s} is in a span:\n{bodies}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_a_trace_when_the_client_sends_none() {
    let collector = Collector::start().await;
    let up = Upstream::hello().await;
    let gw = gateway(&collector, &up, 1.0).await;
    let r = gw.get("/api/x").await;
    assert_eq!(r.status(), 200);
    let tp = up.received()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let p = parse_traceparent(&tp).unwrap();
    assert!(p.sampled);
    assert!(up.received()[0].headers.get("tracestate").is_none());
    let trace = &tp[3..35];
    let spans = collector.wait_for(trace, 2).await;
    let server = find(&spans, "GET api");
    assert!(server.get("parentSpanId").is_none(), "{server}");
    let client = find(&spans, "upstream app");
    assert_eq!(client["spanId"], &tp[36..52]);

    // A request the gateway answers itself is one span.
    let r = gw
        .client
        .get(gw.url("/direct"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = collector.wait_for(TRACE, 1).await;
    assert_eq!(spans[0]["name"], "GET direct");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tries_are_error_spans() {
    let collector = Collector::start().await;
    let up = Upstream::hello().await;
    let gw = gateway(&collector, &up, 1.0).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = gw
        .client
        .get(gw.url("/broken"))
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let spans = collector.wait_for(trace, 2).await;
    let server = find(&spans, "GET broken");
    assert_eq!(server["status"]["code"], 2);
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("502")
    );
    let client = find(&spans, "upstream dead");
    assert_eq!(client["status"]["code"], 2);
    assert_eq!(
        attr(client, "error.type").as_deref(),
        Some("upstream-unreachable")
    );
    gw.stop().await;
}

#[tokio::test]
async fn without_tracing_trace_headers_pass_through_unchanged() {
    let up = Upstream::hello().await;
    let gw = Gateway::start_as(
        Admin::Token,
        &format!(
            r#"
        upstreams:
          app: {{ targets: [ {{ url: "http://{}" }} ] }}
        routes:
          - match: {{ path: "/{{*rest}}" }}
            upstream: app
        "#,
            up.addr
        ),
    )
    .await;
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    gw.client
        .get(gw.url("/x"))
        .header("traceparent", &tp)
        .header("tracestate", "a=b")
        .send()
        .await
        .unwrap();
    let seen = &up.received()[0];
    assert_eq!(seen.headers["traceparent"], tp.as_str());
    assert_eq!(seen.headers["tracestate"], "a=b");
    gw.stop().await;
}

#[tokio::test]
async fn tracing_config_errors_are_located() {
    let r = Gateway::try_start_as(
        Admin::Token,
        r#"
        tracing:
          otlp: { endpoint: "http://127.0.0.1:4318", protocol: grpc, sample_ratio: 2 }
        routes:
          - match: { path: /x }
            respond: { status: 204 }
        "#,
    )
    .await;
    let err = match r {
        Ok(_) => panic!("started with a bad tracing section"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("tracing.otlp.protocol"), "{err}");
    assert!(err.contains("tracing.otlp.sample_ratio"), "{err}");
}
