//! Access log: selectable JSON fields, no secrets in either format, and reopening the file
//! on SIGUSR1 (log rotation).

mod common;

use common::observe::eventually;
use common::{Admin, Gateway, Upstream};
use std::path::Path;
use std::time::Duration;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(10), "access-log lines", || async {
        let l = lines(path);
        (l.len() >= n).then_some(l)
    })
    .await
}

/// Requests carrying credentials in every place a client can put them.
async fn send_secrets(gw: &Gateway) {
    let r = gw
        .client
        .post(gw.url("/api/x?api_key=s3cr3t-query&token=s3cr3t-token-q"))
        .header("authorization", "Bearer s3cr3t-bearer")
        .header("cookie", "session=s3cr3t-cookie")
        .header("x-api-key", "s3cr3t-apikey")
        .header("proxy-authorization", "Basic s3cr3t-proxy")
        .body("password=s3cr3t-body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
}

const SECRETS: [&str; 8] = [
    "s3cr3t-query",
    "s3cr3t-token-q",
    "s3cr3t-bearer",
    "s3cr3t-cookie",
    "s3cr3t-apikey",
    "s3cr3t-proxy",
    "s3cr3t-body",
    "api_key",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_fields_are_selectable_and_secrets_never_logged() {
    let up = Upstream::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let gw = Gateway::start_as(
        Admin::Token,
        &format!(
            r#"
        access_log:
          format: json
          path: "{}"
          fields: [status, route, method, path, trace_id, bytes_in]
        tracing:
          otlp: {{ endpoint: "http://127.0.0.1:9", sample_ratio: 0 }}
        upstreams:
          app: {{ targets: [ {{ url: "http://{}" }} ] }}
        routes:
          - name: api
            match: {{ path: "/api/{{*rest}}" }}
            upstream: app
        "#,
            log.display(),
            up.addr
        ),
    )
    .await;
    send_secrets(&gw).await;
    let l = wait_lines(&log, 1).await;
    assert_eq!(l.len(), 1, "{l:#?}");
    for s in SECRETS {
        assert!(!l[0].contains(s), "{s} leaked into the log: {}", l[0]);
    }
    let v: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6, "only the selected fields: {}", l[0]);
    // In the order they were listed.
    assert!(l[0].starts_with("{\"status\":200,\"route\":\"api\",\"method\":\"POST\",\"path\":\"/api/x\",\"trace_id\":\""), "{}", l[0]);
    assert_eq!(v["bytes_in"], "password=s3cr3t-body".len());
    // The trace id is the one sent upstream.
    let tp = up.received()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(v["trace_id"], &tp[3..35]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_format_never_logs_secrets() {
    let up = Upstream::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.txt");
    let gw = Gateway::start_as(
        Admin::Token,
        &format!(
            r#"
        access_log: {{ format: text, path: "{}" }}
        upstreams:
          app: {{ targets: [ {{ url: "http://{}" }} ] }}
        routes:
          - name: api
            match: {{ path: "/api/{{*rest}}" }}
            upstream: app
        "#,
            log.display(),
            up.addr
        ),
    )
    .await;
    send_secrets(&gw).await;
    let l = wait_lines(&log, 1).await;
    assert!(
        l[0].contains("\"POST 127.0.0.1/api/x HTTP/1.1\" 200"),
        "{}",
        l[0]
    );
    for s in SECRETS {
        assert!(!l[0].contains(s), "{s} leaked into the log: {}", l[0]);
    }
    gw.stop().await;
}

#[tokio::test]
async fn fields_with_the_text_format_are_refused() {
    let err = match Gateway::try_start_as(
        Admin::Token,
        r#"
        access_log: { format: text, fields: [status] }
        routes:
          - match: { path: /x }
            respond: { status: 204 }
        "#,
    )
    .await
    {
        Ok(_) => panic!("accepted fields with the text format"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("access_log.fields"), "{err}");
    let err = match Gateway::try_start_as(
        Admin::Token,
        r#"
        access_log: { format: json, fields: [status, headers] }
        routes:
          - match: { path: /x }
            respond: { status: 204 }
        "#,
    )
    .await
    {
        Ok(_) => panic!("accepted an unknown field"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("access_log.fields[1]"), "{err}");
    assert!(err.contains("unknown variant `headers`"), "{err}");
}

/// logrotate's way: rename the file, signal the process, and the gateway writes to a new file
/// at the old path. The signal goes to this test process, which hosts the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let gw = Gateway::start_as(
        Admin::Token,
        &format!(
            r#"
        access_log: {{ format: json, path: "{}", fields: [path, status] }}
        routes:
          - name: r
            match: {{ path: "/{{*rest}}" }}
            respond: {{ status: 200, body: ok }}
        "#,
            log.display()
        ),
    )
    .await;
    gw.get("/before").await.bytes().await.unwrap();
    wait_lines(&log, 1).await;

    std::fs::rename(&log, &rotated).unwrap();
    // Until the signal, lines still go to the renamed file (the open descriptor).
    gw.get("/renamed").await.bytes().await.unwrap();
    wait_lines(&rotated, 2).await;
    assert!(!log.exists());

    let status = std::process::Command::new("kill")
        .args(["-USR1", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The writer reopens the path (creating it) without waiting for a line.
    eventually(
        Duration::from_secs(10),
        "the log file to be recreated",
        || async { log.exists().then_some(()) },
    )
    .await;
    gw.get("/after").await.bytes().await.unwrap();
    let new = wait_lines(&log, 1).await;
    assert_eq!(new, vec!["{\"path\":\"/after\",\"status\":200}"]);
    assert_eq!(
        lines(&rotated),
        vec![
            "{\"path\":\"/before\",\"status\":200}",
            "{\"path\":\"/renamed\",\"status\":200}"
        ]
    );
    gw.stop().await;
}
