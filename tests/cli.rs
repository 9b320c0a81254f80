//! The `portcullis` command line, run as a process.

mod common;

use common::free_port;
use common::process::{blocking_get, run_cli, wait_for_status, Process};
use std::net::SocketAddr;
use std::time::Duration;

const GOOD: &str = "\
listeners: [ { bind: 127.0.0.1:0 } ]
upstreams:
  users: { targets: [ { url: http://127.0.0.1:9 } ] }
  orders: { targets: [ { url: http://127.0.0.1:10 } ] }
routes:
  - name: users-api
    match: { path: \"/api/users/{*rest}\", methods: [GET, POST] }
    upstream: users
    rewrite: { strip_prefix: /api }
  - name: orders-api
    match: { path: \"/api/orders/{id}\", hosts: [api.example.com] }
    upstream: orders
  - name: health
    match: { path: /healthz }
    respond: { status: 200, json: { ok: true } }
";

/// Three errors on known lines: an unknown field, an unknown upstream, a bare-number duration.
const BAD: &str = "\
upstreams:
  users: { targets: [ { url: http://127.0.0.1:9 } ] }
  orders: { targets: [ { url: http://127.0.0.1:10 } ] }
routes:
  - name: a
    match: { path: /a }
    upstrem: users
  - name: b
    match: { path: /b }
    upstream: users
  - name: c
    match: { path: /c }
    upstream: userz
  - name: d
    match: { path: /d }
    upstream: users
    timeouts: { request: 10 }
";

fn file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = common::process::write(dir.path(), "gw.yaml", text);
    (dir, p.to_str().unwrap().to_owned())
}

#[test]
fn validate_good_config_exits_0() {
    let (_d, p) = file(GOOD);
    let (code, out, err) = run_cli(&["validate", "-c", &p]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("{p}: ok (3 routes, 2 upstreams, 1 listeners)")),
        "{out}"
    );
    // The long flag works too.
    let (code, _, _) = run_cli(&["validate", "--config", &p]);
    assert_eq!(code, 0);
}

#[test]
fn validate_bad_config_exits_1_with_every_error() {
    let (_d, p) = file(BAD);
    let (code, out, err) = run_cli(&["validate", "-c", &p]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("3 errors in config:"), "{err}");
    let want = [
        format!("{p}:7:5: routes[0].upstrem: unknown field `upstrem`, expected one of `name`"),
        format!("{p}:13:15: routes[2].upstream: unknown upstream \"userz\"; known: orders, users"),
        format!("{p}:17:26: routes[3].timeouts.request: invalid value: integer `10`, expected a duration with a unit"),
    ];
    let mut last = 0;
    for w in &want {
        let at = err
            .find(w.as_str())
            .unwrap_or_else(|| panic!("missing {w:?} in:\n{err}"));
        assert!(at >= last, "errors out of file order:\n{err}");
        last = at;
    }
    assert!(!out.contains("ok"), "{out}");
}

#[test]
fn validate_missing_file_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.yaml");
    let (code, _, err) = run_cli(&["validate", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the file"), "{err}");
}

#[test]
fn routes_prints_the_table() {
    let (_d, p) = file(GOOD);
    let (code, out, err) = run_cli(&["routes", "-c", &p]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for h in ["ROUTE", "HOSTS", "METHODS", "PATH", "BACKEND"] {
        assert!(lines[0].contains(h), "{out}");
    }
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
    };
    let users = row("users-api");
    assert!(users.contains("/api/users/{*rest}"), "{users}");
    assert!(users.contains("GET,POST"), "{users}");
    assert!(users.contains("upstream users"), "{users}");
    assert!(users.contains("strip /api"), "{users}");
    let orders = row("orders-api");
    assert!(orders.contains("api.example.com"), "{orders}");
    assert!(orders.contains("/api/orders/{id}"), "{orders}");
    assert!(orders.contains("upstream orders"), "{orders}");
    let health = row("health");
    assert!(health.contains("/healthz"), "{health}");
    assert!(health.contains("respond 200"), "{health}");
    // In config order.
    assert!(
        lines[1].starts_with("users-api") && lines[3].starts_with("health"),
        "{out}"
    );

    let (_d2, bad) = file(BAD);
    let (code, out, err) = run_cli(&["routes", "-c", &bad]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("3 errors in config"), "{err}");
}

#[test]
fn help_works_for_every_subcommand() {
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["run", "validate", "routes", "demo"] {
        assert!(
            out.contains(sub),
            "{sub} missing from top-level help:\n{out}"
        );
    }
    for (sub, flag) in [
        ("run", "--config"),
        ("validate", "--config"),
        ("routes", "--config"),
        ("demo", "--bind"),
    ] {
        let (code, out, err) = run_cli(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub} --help: {err}");
        assert!(out.contains("Usage:"), "{sub}: {out}");
        assert!(out.contains(flag), "{sub}: {out}");
    }
    let (code, _, err) = run_cli(&["frobnicate"]);
    assert_eq!(code, 2, "clap's usage error code: {err}");
    let (code, _, err) = run_cli(&["validate"]);
    assert_eq!(code, 2, "missing --config: {err}");
}

#[test]
fn run_with_a_bad_config_exits_1_with_the_diagnostics() {
    let (_d, p) = file(BAD);
    let mut gw = Process::spawn(&["run", "-c", &p]);
    let code = gw.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(Some(1)), "stderr:\n{}", gw.stderr());
    let err = gw.stderr();
    assert!(err.contains("3 errors in config"), "{err}");
    assert!(
        err.contains(&format!("{p}:13:15: routes[2].upstream")),
        "{err}"
    );
}

#[test]
fn run_serves_and_exits_0_on_sigterm() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_d, p) = file(&format!(
        "\
listeners: [ {{ bind: 127.0.0.1:{port} }} ]
access_log: {{ format: \"off\" }}
routes:
  - name: health
    match: {{ path: /healthz }}
    respond: {{ status: 200, json: {{ ok: true }} }}
"
    ));
    let mut gw = Process::spawn(&["run", "-c", &p]);
    assert!(
        wait_for_status(addr, "/healthz", 200, Duration::from_secs(15)),
        "the gateway did not answer; stderr:\n{}",
        gw.stderr()
    );
    let (s, body) = blocking_get(addr, "/healthz").unwrap();
    assert_eq!(s, 200);
    assert!(body.contains("\"ok\":true"), "{body}");
    assert_eq!(blocking_get(addr, "/nope").unwrap().0, 404);

    gw.signal("TERM");
    let code = gw.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(Some(0)), "stderr:\n{}", gw.stderr());
    assert!(
        blocking_get(addr, "/healthz").is_none(),
        "still answering after exit"
    );
}

#[test]
fn run_reads_the_config_path_from_the_environment() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_d, p) = file(&format!(
        "listeners: [ {{ bind: 127.0.0.1:{port} }} ]\naccess_log: {{ format: \"off\" }}\nroutes:\n  - match: {{ path: /x }}\n    respond: {{ status: 204 }}\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let err = std::fs::File::create(dir.path().join("err")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("run")
        .env("PORTCULLIS_CONFIG", &p)
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let ok = wait_for_status(addr, "/x", 204, Duration::from_secs(15));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ok,
        "{}",
        std::fs::read_to_string(dir.path().join("err")).unwrap_or_default()
    );
}

/// The admin listener gets its own free port so that the test runs beside anything on 9900.
#[test]
fn demo_answers_hello_and_proxies_to_the_echo_upstream() {
    let port = free_port();
    let admin = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut gw = Process::spawn(&[
        "demo",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--admin-bind",
        &format!("127.0.0.1:{admin}"),
    ]);
    if !wait_for_status(addr, "/hello", 200, Duration::from_secs(15)) {
        let alive = gw.alive();
        panic!(
            "the demo did not answer (alive: {alive}); stderr:\n{}",
            gw.stderr()
        );
    }
    let (s, body) = blocking_get(addr, "/hello").unwrap();
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["message"], "Hello from Portcullis");

    let (s, body) = blocking_get(addr, "/api/echo/x?y=1").unwrap();
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"], "portcullis-demo-upstream");
    assert_eq!(v["path"], "/echo/x", "the /api prefix is stripped");
    assert_eq!(v["query"], "y=1");
    assert_eq!(v["method"], "GET");

    let (s, body) = blocking_get(addr, "/api/v1/users/42").unwrap();
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["path"], "/people/42");

    let (s, _) = blocking_get(addr, "/api/v0/old").unwrap();
    assert_eq!(s, 410);

    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)),
        Some(Some(0)),
        "{}",
        gw.stderr()
    );
}
