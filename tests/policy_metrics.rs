//! The counters that policies bump, seen through `GET /metrics` after a known sequence of
//! requests. A test file of its own: the counters are process-wide, so no other test may run
//! in this process at the same time.

mod common;

use common::{Admin, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_and_rate_limit_rejections_are_counted() {
    let gw = Gateway::start_as(
        Admin::Token,
        r#"
consumers:
  - { name: reader, roles: [reader], api_keys: ["key-r"] }
routes:
  - name: admin-only
    match: { path: /admin-only }
    respond: { status: 200, body: ok }
    policies:
      - authenticate: [api_key]
      - authorize: { roles: [admin] }
  - name: limited
    match: { path: /limited }
    respond: { status: 200, body: ok }
    policies:
      - rate_limit: { requests: 1, per: 1m }
"#,
    )
    .await;
    let c = common::client();
    let call = |path: &'static str, key: Option<&'static str>| {
        let mut r = c.get(gw.url(path));
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call("/admin-only", None).await, 401);
    assert_eq!(call("/admin-only", Some("wrong")).await, 401);
    assert_eq!(call("/admin-only", Some("wrong")).await, 401);
    assert_eq!(call("/admin-only", Some("key-r")).await, 403);
    assert_eq!(call("/limited", None).await, 200);
    assert_eq!(call("/limited", None).await, 429);
    assert_eq!(call("/limited", None).await, 429);

    let m = gw.metrics().await;
    assert_eq!(
        m.get("portcullis_auth_failures_total{reason=\"missing\"}"),
        1.0
    );
    assert_eq!(
        m.get("portcullis_auth_failures_total{reason=\"invalid\"}"),
        2.0
    );
    assert_eq!(
        m.get("portcullis_auth_failures_total{reason=\"forbidden\"}"),
        1.0
    );
    assert_eq!(
        m.get("portcullis_rate_limited_total{route=\"limited\"}"),
        2.0
    );
    gw.stop().await;
}
