//! Config loading and compiling: located diagnostics, `${VAR}` interpolation, units, and the
//! access log, seen from outside (the library's public API and a running gateway).

mod common;

use common::client;
use common::process::{get, start, upstream};
use portcullis::compile::{compile, CompileEnv, Gateway};
use portcullis::config::{load_str, Diagnostic, Diagnostics};
use portcullis::upstream::Pools;
use std::time::Duration;

const UPSTREAMS: &str = "\
upstreams:
  users: { targets: [ { url: http://127.0.0.1:1 } ] }
  orders: { targets: [ { url: http://127.0.0.1:2 } ] }
";

/// Loads with a fixed environment: only `SET_VAR` is set.
fn load(yaml: &str) -> Result<portcullis::config::Loaded, Diagnostics> {
    let env = |k: &str| (k == "SET_VAR").then(|| "from-env".to_owned());
    load_str("gw.yaml", yaml, &env)
}

fn build(yaml: &str) -> Result<Gateway, Diagnostics> {
    let loaded = load(yaml)?;
    let pools = Pools::default();
    compile(
        &loaded,
        &CompileEnv {
            base_dir: ".".into(),
            pools: &pools,
        },
    )
}

fn load_errors(yaml: &str) -> Vec<Diagnostic> {
    match load(yaml) {
        Ok(_) => panic!("expected load errors for:\n{yaml}"),
        Err(d) => d.0,
    }
}

fn compile_errors(yaml: &str) -> Vec<Diagnostic> {
    let loaded = load(yaml).unwrap_or_else(|d| panic!("load failed:\n{d}"));
    let pools = Pools::default();
    match compile(
        &loaded,
        &CompileEnv {
            base_dir: ".".into(),
            pools: &pools,
        },
    ) {
        Ok(_) => panic!("expected compile errors for:\n{yaml}"),
        Err(d) => d.0,
    }
}

/// 1-based line and column of the `nth` (0-based) occurrence of `needle`.
fn pos_nth(yaml: &str, needle: &str, nth: usize) -> (u64, u64) {
    let (at, _) = yaml
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} not in the yaml"));
    let before = &yaml[..at];
    let line = before.matches('\n').count() as u64 + 1;
    let col = (at - before.rfind('\n').map_or(0, |i| i + 1)) as u64 + 1;
    (line, col)
}

fn pos(yaml: &str, needle: &str) -> (u64, u64) {
    pos_nth(yaml, needle, 0)
}

fn only(diags: Vec<Diagnostic>) -> Diagnostic {
    assert_eq!(diags.len(), 1, "expected one diagnostic: {diags:#?}");
    diags.into_iter().next().unwrap()
}

fn at(d: &Diagnostic) -> (u64, u64) {
    (d.line, d.column)
}

// --- errors found while loading

#[test]
fn unknown_field_names_the_field_and_the_expected_ones() {
    let yaml = format!(
        "{UPSTREAMS}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstreem: users\n"
    );
    let d = only(load_errors(&yaml));
    assert_eq!(d.file, "gw.yaml");
    assert_eq!(d.path, "routes[0].upstreem");
    assert!(
        d.message.contains("unknown field `upstreem`"),
        "{}",
        d.message
    );
    for expected in ["`name`", "`match`", "`upstream`", "`respond`", "`max_body`"] {
        assert!(d.message.contains(expected), "{expected} in {}", d.message);
    }
    // Points at the key itself.
    assert_eq!(at(&d), pos(&yaml, "upstreem"));
    let shown = d.to_string();
    let (l, c) = pos(&yaml, "upstreem");
    assert!(
        shown.starts_with(&format!(
            "gw.yaml:{l}:{c}: routes[0].upstreem: unknown field"
        )),
        "{shown}"
    );
}

#[test]
fn unknown_field_in_a_nested_mapping() {
    let yaml = format!(
        "{UPSTREAMS}routes:\n  - match: {{ path: /a, method: [GET] }}\n    upstream: users\n"
    );
    let d = only(load_errors(&yaml));
    assert_eq!(d.path, "routes[0].match.method");
    assert!(
        d.message.contains("unknown field `method`"),
        "{}",
        d.message
    );
    assert!(d.message.contains("`methods`"), "{}", d.message);
    assert_eq!(at(&d), pos(&yaml, "method:"));
}

#[test]
fn unknown_section_is_reported_with_the_known_ones() {
    let yaml =
        format!("{UPSTREAMS}rotes: []\nroutes:\n  - match: {{ path: /a }}\n    upstream: users\n");
    let d = only(load_errors(&yaml));
    assert_eq!(d.path, "rotes");
    assert!(
        d.message.contains("unknown section `rotes`"),
        "{}",
        d.message
    );
    for s in ["listeners", "upstreams", "routes", "access_log"] {
        assert!(d.message.contains(s), "{s} in {}", d.message);
    }
    assert_eq!(at(&d), pos(&yaml, "rotes"));
}

#[test]
fn missing_routes_section() {
    let d = only(load_errors(UPSTREAMS));
    assert!(
        d.message.contains("missing section `routes`"),
        "{}",
        d.message
    );
}

#[test]
fn bare_number_duration_is_refused() {
    let yaml = format!(
        "{UPSTREAMS}defaults:\n  timeouts:\n    request: 10\nroutes:\n  - match: {{ path: /a }}\n    upstream: users\n"
    );
    let d = only(load_errors(&yaml));
    assert_eq!(d.path, "defaults.timeouts.request");
    assert!(d.message.contains("`10`"), "{}", d.message);
    assert!(
        d.message.contains("a duration with a unit"),
        "{}",
        d.message
    );
    assert_eq!(at(&d), pos(&yaml, "10\n"));
}

#[test]
fn bad_duration_strings_are_refused() {
    for bad in ["10x", "1.5s", "soon", "-1s"] {
        let yaml = format!(
            "{UPSTREAMS}routes:\n  - match: {{ path: /a }}\n    upstream: users\n    timeouts: {{ request: \"{bad}\" }}\n"
        );
        let d = only(load_errors(&yaml));
        assert_eq!(d.path, "routes[0].timeouts.request", "{bad}");
        assert!(
            d.message.contains("a duration with a unit"),
            "{bad}: {}",
            d.message
        );
    }
}

#[test]
fn bad_size_is_refused() {
    let yaml = format!(
        "{UPSTREAMS}routes:\n  - match: {{ path: /a }}\n    upstream: users\n    max_body: 10XB\n"
    );
    let d = only(load_errors(&yaml));
    assert_eq!(d.path, "routes[0].max_body");
    assert!(d.message.contains("10XB"), "{}", d.message);
    assert!(d.message.contains("a size in bytes"), "{}", d.message);
    assert_eq!(at(&d), pos(&yaml, "10XB"));

    let yaml = format!(
        "{UPSTREAMS}defaults: {{ max_body: 1.5MiB }}\nroutes:\n  - match: {{ path: /a }}\n    upstream: users\n"
    );
    let d = only(load_errors(&yaml));
    assert_eq!(d.path, "defaults.max_body");
}

#[test]
fn missing_env_var_without_default_is_an_error() {
    let yaml = format!(
        "{UPSTREAMS}listeners:\n  - bind: ${{PORTCULLIS_TEST_UNSET_VAR}}\nroutes:\n  - match: {{ path: /a }}\n    upstream: users\n"
    );
    let d = only(load_errors(&yaml));
    assert_eq!(d.path, "listeners[0].bind");
    assert!(
        d.message
            .contains("environment variable PORTCULLIS_TEST_UNSET_VAR is not set"),
        "{}",
        d.message
    );
    assert!(d.message.contains(":-default"), "{}", d.message);
    assert_eq!(at(&d), pos(&yaml, "${PORTCULLIS"));
}

#[test]
fn env_var_defaults_and_values_are_used() {
    let yaml = "\
listeners:
  - name: ${UNSET_NAME:-fallback-name}
    bind: ${UNSET_BIND:-127.0.0.1:0}
upstreams:
  u: { targets: [ { url: \"http://${UNSET_HOST:-127.0.0.1:9}/base\" } ] }
routes:
  - name: r-${SET_VAR}
    match: { path: /a }
    respond: { status: 200, body: \"literal $${NOT_A_VAR}\" }
  - name: other-${SET_VAR:-ignored}
    match: { path: /b }
    upstream: u
";
    let loaded = load(yaml).unwrap_or_else(|d| panic!("{d}"));
    let c = &loaded.config;
    assert_eq!(c.listeners[0].name.as_deref(), Some("fallback-name"));
    assert_eq!(c.listeners[0].bind, "127.0.0.1:0");
    assert_eq!(c.upstreams["u"].targets[0].url, "http://127.0.0.1:9/base");
    assert_eq!(c.routes[0].name.as_deref(), Some("r-from-env"));
    assert_eq!(c.routes[1].name.as_deref(), Some("other-from-env"));
    assert_eq!(
        c.routes[0].respond.as_ref().unwrap().body.as_deref(),
        Some("literal ${NOT_A_VAR}")
    );
    let gw = build(yaml).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(gw.listeners[0].name, "fallback-name");
}

#[test]
fn yaml_syntax_error_is_located() {
    let yaml = "routes:\n  - match: { path: /a\n    upstream: users\n";
    let d = only(load_errors(yaml));
    assert!(d.message.starts_with("not valid YAML"), "{}", d.message);
    assert_eq!(d.file, "gw.yaml");
    assert!(
        (2..=3).contains(&d.line),
        "the error is at the unclosed flow mapping: {d}"
    );
    assert!(d.column > 1, "{d}");

    let yaml = "routes:\n  - name: a\n   bad: indent\n";
    let d = only(load_errors(yaml));
    assert!(d.message.starts_with("not valid YAML"), "{}", d.message);
    assert_eq!(d.line, 3, "{d}");
}

#[test]
fn several_load_errors_are_reported_at_once_in_file_order() {
    let yaml = format!(
        "{UPSTREAMS}defaults:\n  timeouts: {{ request: 10 }}\nroutes:\n  - name: a\n    match: {{ path: /a }}\n    upstreem: users\n  - name: b\n    match: {{ path: /b }}\n    upstream: users\n  - name: c\n    match: {{ path: /c }}\n    upstream: users\n    max_body: lots\n  - name: d\n    match: {{ path: /d }}\n    upstream: users\n    timeouts: {{ request: later }}\n"
    );
    let ds = load_errors(&yaml);
    let got: Vec<(&str, (u64, u64))> = ds.iter().map(|d| (d.path.as_str(), at(d))).collect();
    assert_eq!(
        got,
        vec![
            ("defaults.timeouts.request", pos(&yaml, "10 }")),
            ("routes[0].upstreem", pos(&yaml, "upstreem")),
            ("routes[2].max_body", pos(&yaml, "lots")),
            ("routes[3].timeouts.request", pos(&yaml, "later")),
        ]
    );
    let shown = Diagnostics(ds).to_string();
    assert!(shown.starts_with("4 errors in config:\n"), "{shown}");
    assert_eq!(shown.lines().count(), 5, "{shown}");
    assert!(shown.contains("gw.yaml:"), "{shown}");
}

// --- errors found while compiling

#[test]
fn unknown_upstream_lists_the_known_ones() {
    let yaml = format!("{UPSTREAMS}routes:\n  - match: {{ path: /a }}\n    upstream: userz\n");
    let d = only(compile_errors(&yaml));
    assert_eq!(d.path, "routes[0].upstream");
    assert_eq!(
        d.message,
        "unknown upstream \"userz\"; known: orders, users"
    );
    assert_eq!(at(&d), pos(&yaml, "userz"));

    let yaml = "routes:\n  - match: { path: /a }\n    upstream: users\n";
    let d = only(compile_errors(yaml));
    assert!(d.message.contains("none are defined"), "{}", d.message);
}

#[test]
fn bad_path_templates_are_refused() {
    for (tpl, words) in [
        ("/users/{id", "unclosed"),
        ("users/{id}", "must start with '/'"),
        ("/files/{*rest}/more", "must end"),
        ("/a/{id}/{id}", "twice"),
        ("/a/{bad-name}", "bad param name"),
    ] {
        let yaml =
            format!("{UPSTREAMS}routes:\n  - match: {{ path: \"{tpl}\" }}\n    upstream: users\n");
        let d = only(compile_errors(&yaml));
        assert_eq!(d.path, "routes[0].match.path", "{tpl}");
        assert!(d.message.contains(words), "{tpl}: {}", d.message);
        assert_eq!(at(&d), pos(&yaml, &format!("\"{tpl}")), "{tpl}");
    }
}

#[test]
fn rewrite_template_must_use_known_params() {
    let yaml = format!(
        "{UPSTREAMS}routes:\n  - match: {{ path: \"/u/{{id}}\" }}\n    upstream: users\n    rewrite: {{ path: \"/people/{{nope}}\" }}\n"
    );
    let d = only(compile_errors(&yaml));
    assert_eq!(d.path, "routes[0].rewrite.path");
}

#[test]
fn duplicate_route_names_are_refused() {
    let yaml = format!(
        "{UPSTREAMS}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: users\n  - name: a\n    match: {{ path: /b }}\n    upstream: users\n"
    );
    let d = only(compile_errors(&yaml));
    assert_eq!(d.path, "routes[1].name");
    assert!(d.message.contains("\"a\" is used twice"), "{}", d.message);
    assert_eq!(at(&d), pos_nth(&yaml, "a\n", 1));
}

#[test]
fn route_with_upstream_and_respond_is_refused() {
    let yaml = format!(
        "{UPSTREAMS}routes:\n  - match: {{ path: /a }}\n    upstream: users\n    respond: {{ status: 200 }}\n"
    );
    let d = only(compile_errors(&yaml));
    assert_eq!(d.path, "routes[0].respond");
    assert!(d.message.contains("not both"), "{}", d.message);

    let yaml = "routes:\n  - match: { path: /a }\n";
    let d = only(compile_errors(yaml));
    assert_eq!(d.path, "routes[0]");
    assert!(d.message.contains("needs a backend"), "{}", d.message);
}

#[test]
fn non_http_target_is_refused_clearly() {
    let yaml = "upstreams:\n  s:\n    targets:\n      - url: ftp://example.com\nroutes:\n  - match: { path: /a }\n    upstream: s\n";
    let d = only(compile_errors(yaml));
    assert_eq!(d.path, "upstreams.s.targets[0].url");
    assert!(
        d.message.contains("expected an http:// or https:// URL"),
        "{}",
        d.message
    );
    assert!(d.message.contains("ftp://example.com"), "{}", d.message);
    assert_eq!(at(&d), pos(yaml, "ftp://"));
}

#[test]
fn non_loopback_admin_needs_a_token() {
    let route = "routes:\n  - match: { path: /a }\n    respond: { status: 204 }\n";
    let d = only(compile_errors(&format!(
        "admin: {{ bind: 0.0.0.0:9999 }}\n{route}"
    )));
    assert_eq!(d.path, "admin.token");
    assert!(
        d.message.contains("not a loopback address"),
        "{}",
        d.message
    );
    let d = only(compile_errors(&format!(
        "admin: {{ bind: 0.0.0.0:9999, token: \"\" }}\n{route}"
    )));
    assert_eq!(d.path, "admin.token");

    let gw = build(&format!(
        "admin: {{ bind: 0.0.0.0:9999, token: t0k }}\n{route}"
    ))
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(gw.admin.unwrap().token.as_deref(), Some("t0k"));
    build(&format!("admin: {{ bind: 127.0.0.1:9999 }}\n{route}")).unwrap_or_else(|d| panic!("{d}"));
    build(&format!("admin: {{ bind: \"[::1]:9999\" }}\n{route}")).unwrap_or_else(|d| panic!("{d}"));
}

#[test]
fn several_compile_errors_are_reported_at_once() {
    let yaml = format!(
        "{UPSTREAMS}  bad: {{ targets: [ {{ url: ftp://x.example }} ] }}\nroutes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: users\n  - name: b\n    match: {{ path: \"/b/{{id\" }}\n    upstream: users\n  - name: c\n    match: {{ path: /c }}\n    upstream: userz\n  - name: a\n    match: {{ path: /d }}\n    upstream: orders\n    respond: {{ status: 200 }}\n"
    );
    let ds = compile_errors(&yaml);
    let got: Vec<(&str, (u64, u64))> = ds.iter().map(|d| (d.path.as_str(), at(d))).collect();
    assert_eq!(
        got,
        vec![
            ("upstreams.bad.targets[0].url", pos(&yaml, "ftp://x")),
            ("routes[1].match.path", pos(&yaml, "\"/b/")),
            ("routes[2].upstream", pos(&yaml, "userz")),
            ("routes[3].name", pos_nth(&yaml, "a\n", 1)),
            ("routes[3].respond", pos_nth(&yaml, "{ status: 200 }", 0)),
        ],
        "{ds:#?}"
    );
    // An upstream that failed to build is reported at its definition, and `known:` lists it.
    assert!(
        ds[2].message.contains("known: bad, orders, users"),
        "{}",
        ds[2].message
    );
}

/// A typo in `routes[0]` does not hide the unknown upstream in `routes[2]`.
#[test]
fn load_and_compile_errors_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{UPSTREAMS}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstreem: users\n  - name: b\n    match: {{ path: /b }}\n    upstream: users\n  - name: c\n    match: {{ path: /c }}\n    upstream: userz\n"
    );
    let path = common::process::write(dir.path(), "gw.yaml", &yaml);
    let pools = Pools::default();
    let Err(ds) = portcullis::compile::load_and_compile(&path, &pools) else {
        panic!("expected errors");
    };
    let got: Vec<(&str, (u64, u64))> = ds.0.iter().map(|d| (d.path.as_str(), at(d))).collect();
    assert_eq!(
        got,
        vec![
            ("routes[0].upstreem", pos(&yaml, "upstreem")),
            ("routes[2].upstream", pos(&yaml, "userz")),
        ]
    );
    assert!(ds.0.iter().all(|d| d.file == path.display().to_string()));
}

#[test]
fn access_log_format_values() {
    use portcullis::config::AccessLogFormat;
    let route = "routes:\n  - match: { path: /a }\n    respond: { status: 204 }\n";
    for (written, want) in [
        ("json", AccessLogFormat::Json),
        ("text", AccessLogFormat::Text),
        ("off", AccessLogFormat::Off),
        ("\"off\"", AccessLogFormat::Off),
    ] {
        let l = load(&format!("access_log: {{ format: {written} }}\n{route}"))
            .unwrap_or_else(|d| panic!("{written}: {d}"));
        assert_eq!(l.config.access_log.format, want, "{written}");
    }
    let d = only(load_errors(&format!(
        "access_log: {{ format: xml }}\n{route}"
    )));
    assert_eq!(d.path, "access_log.format");
    assert!(
        d.message.contains("xml") && d.message.contains("`text`"),
        "{}",
        d.message
    );
}

#[test]
fn load_file_names_the_file_and_reports_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::process::write(
        dir.path(),
        "named.yaml",
        "routes:\n  - match: { path: /a }\n    upstream: nope\n",
    );
    let pools = Pools::default();
    let Err(ds) = portcullis::compile::load_and_compile(&path, &pools) else {
        panic!("expected errors");
    };
    let d = only(ds.0);
    assert_eq!(d.file, path.display().to_string());
    assert_eq!((d.line, d.column), (3, 15));

    let Err(ds) = portcullis::config::load_file(&dir.path().join("missing.yaml")) else {
        panic!("a missing file loads?");
    };
    assert!(ds.0[0].message.contains("cannot read the file"), "{ds}");
}

// --- units accepted where they belong

#[test]
fn durations_and_sizes_are_accepted() {
    let yaml = "\
defaults:
  timeouts: { connect: 250ms, request: 1m }
  max_body: 10MiB
server:
  shutdown_grace: 2s
  max_header_size: 64KiB
upstreams:
  users:
    targets: [ { url: http://127.0.0.1:1 } ]
    timeouts: { connect: 2s, request: 1m30s }
    idle_timeout: 1h
routes:
  - name: small
    match: { path: /small }
    upstream: users
    max_body: 64KiB
    timeouts: { request: 250ms }
  - name: plain
    match: { path: /plain }
    upstream: users
  - name: bytes
    match: { path: /bytes }
    upstream: users
    max_body: 512
";
    let gw = build(yaml).unwrap_or_else(|d| panic!("{d}"));
    let route = |n: &str| gw.routes.iter().find(|r| &*r.name == n).unwrap();
    assert_eq!(route("small").max_body, 64 * 1024);
    assert_eq!(
        route("small").request_timeout,
        Some(Duration::from_millis(250))
    );
    assert_eq!(route("plain").max_body, 10 * 1024 * 1024);
    assert_eq!(route("plain").request_timeout, None);
    assert_eq!(route("bytes").max_body, 512);
    assert_eq!(gw.settings.shutdown_grace, Duration::from_secs(2));
    assert_eq!(gw.settings.max_header_size, 64 * 1024);
    let up = &gw.upstreams["users"];
    assert_eq!(up.connect_timeout, Duration::from_secs(2));
    assert_eq!(up.request_timeout, Duration::from_secs(90));

    // The defaults reach upstreams that set nothing.
    let yaml = "\
defaults:
  timeouts: { connect: 250ms, request: 1m }
upstreams:
  u: { targets: [ { url: http://127.0.0.1:1 } ] }
routes:
  - match: { path: /a }
    upstream: u
";
    let gw = build(yaml).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        gw.upstreams["u"].connect_timeout,
        Duration::from_millis(250)
    );
    assert_eq!(gw.upstreams["u"].request_timeout, Duration::from_secs(60));
}

fn tmp_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = common::process::write(dir.path(), "gw.yaml", text);
    (dir, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_64kib_is_enforced() {
    let up = upstream("up").await;
    let (_dir, path) = tmp_config(&format!(
        "\
listeners: [ {{ bind: 127.0.0.1:0 }} ]
access_log: {{ format: off }}
upstreams:
  up: {{ targets: [ {{ url: http://{} }} ] }}
routes:
  - name: upload
    match: {{ path: /upload }}
    upstream: up
    max_body: 64KiB
",
        up.addr
    ));
    let gw = start(&path, false).await;
    let url = format!("http://{}/upload", gw.addr());
    let c = client();

    let r = c.post(&url).body(vec![b'x'; 70_000]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "urn:portcullis:problem:body-too-large");
    assert_eq!(
        up.hits(),
        0,
        "an announced oversize body never reaches the upstream"
    );

    // A client still writing a large announced body gets the 413, not a reset: the gateway
    // reads and drops the rest of the body (lingering close) instead of closing under it.
    for _ in 0..5 {
        let r = c
            .post(&url)
            .body(vec![b'x'; 8 * 1024 * 1024])
            .send()
            .await
            .expect("the 413 is read, not cut off by a reset");
        assert_eq!(r.status().as_u16(), 413);
    }

    // A client waiting on `Expect: 100-continue` is told 413 at once and never asked for the
    // body (draining it would send the `100 Continue`).
    let r = common::raw::raw(
        gw.addr(),
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    r.problem(413);

    let r = c.post(&url).body(vec![b'x'; 60_000]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["body_len"], 60_000);

    // Exactly the limit passes.
    let r = c.post(&url).body(vec![b'x'; 65_536]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // A chunked body with no Content-Length is cut at the limit too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..7).map(|_| Ok(vec![b'y'; 10_000])).collect();
    let r = c
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..6).map(|_| Ok(vec![b'y'; 10_000])).collect();
    let r = c
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["body_len"], 60_000);
    assert!(gw.shutdown_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_request_timeout_250ms_is_enforced() {
    let up = upstream("up").await;
    let (_dir, path) = tmp_config(&format!(
        "\
listeners: [ {{ bind: 127.0.0.1:0 }} ]
access_log: {{ format: off }}
upstreams:
  up: {{ targets: [ {{ url: http://{} }} ] }}
routes:
  - name: quick
    match: {{ path: /quick }}
    upstream: up
    timeouts: {{ request: 250ms }}
",
        up.addr
    ));
    let gw = start(&path, false).await;
    let c = client();
    let t = std::time::Instant::now();
    let (s, body) = get(&c, &format!("http://{}/quick?sleep=2000", gw.addr())).await;
    let took = t.elapsed();
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("250 ms"), "{body}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let (s, _) = get(&c, &format!("http://{}/quick?sleep=10", gw.addr())).await;
    assert_eq!(s, 200);
    gw.shutdown_within(Duration::from_millis(100)).await;
}

// --- access log

/// Reads the log file until it has at least `n` lines or 5 s have passed.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    common::process::eventually(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let done = lines.len() >= n;
        async move { done }
    })
    .await;
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_one_line_per_request_and_no_secrets() {
    let up = upstream("up").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let path = common::process::write(
        dir.path(),
        "gw.yaml",
        &format!(
            "\
listeners: [ {{ bind: 127.0.0.1:0 }} ]
access_log: {{ format: json, path: \"{}\" }}
upstreams:
  users: {{ targets: [ {{ url: http://{} }} ] }}
routes:
  - name: users-api
    match: {{ path: \"/api/users/{{id}}\" }}
    upstream: users
  - name: hello
    match: {{ path: /hello }}
    respond: {{ status: 200, body: hi }}
",
            log.display(),
            up.addr
        ),
    );
    let gw = start(&path, false).await;
    let base = format!("http://{}", gw.addr());
    let c = client();

    let r = c
        .post(format!("{base}/api/users/42?api_key=s3cr3t-q&x=1"))
        .header("Authorization", "Bearer s3cr3t-token")
        .header("Cookie", "session=s3cr3t-cookie")
        .header("X-API-Key", "s3cr3t-key")
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = r.bytes().await.unwrap();
    let (s, _) = get(&c, &format!("{base}/hello?token=s3cr3t-q")).await;
    assert_eq!(s, 200);
    let (s, _) = get(&c, &format!("{base}/nowhere")).await;
    assert_eq!(s, 404);

    let lines = log_lines(&log, 3).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let all = lines.join("\n");
    for secret in [
        "s3cr3t-token",
        "s3cr3t-cookie",
        "s3cr3t-key",
        "s3cr3t-q",
        "api_key",
    ] {
        assert!(
            !all.contains(secret),
            "{secret} leaked into the access log:\n{all}"
        );
    }

    let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert!(
        v["time"]
            .as_str()
            .is_some_and(|t| t.len() >= 20 && t.contains('T')),
        "{v}"
    );
    assert_eq!(v["request_id"], rid.as_str());
    assert_eq!(v["client"], "127.0.0.1");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["host"], "127.0.0.1");
    assert_eq!(v["path"], "/api/users/42");
    assert_eq!(v["route"], "users-api");
    assert_eq!(v["upstream"], up.addr.to_string());
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_in"], 12);
    assert_eq!(v["bytes_out"], body.len() as u64);
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{v}");
    assert!(v["upstream_ms"].as_f64().is_some_and(|d| d > 0.0), "{v}");

    let v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["route"], "hello");
    assert!(v["upstream"].is_null(), "{v}");
    assert!(v["upstream_ms"].is_null(), "{v}");
    assert_eq!(v["bytes_out"], 2);

    let v: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(v["status"], 404);
    assert!(v["route"].is_null(), "{v}");
    gw.shutdown_within(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_log_has_one_line_per_request() {
    let up = upstream("up").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let path = common::process::write(
        dir.path(),
        "gw.yaml",
        &format!(
            "\
listeners: [ {{ bind: 127.0.0.1:0 }} ]
access_log: {{ format: text, path: \"{}\" }}
upstreams:
  users: {{ targets: [ {{ url: http://{} }} ] }}
routes:
  - name: users-api
    match: {{ path: \"/api/{{*rest}}\" }}
    upstream: users
",
            log.display(),
            up.addr
        ),
    );
    let gw = start(&path, false).await;
    let c = client();
    for i in 0..5 {
        let r = c
            .get(format!(
                "http://{}/api/item/{i}?api_key=s3cr3t-q",
                gw.addr()
            ))
            .header("Authorization", "Bearer s3cr3t-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await.unwrap();
    }
    let lines = log_lines(&log, 5).await;
    // Give a stray extra line a moment to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines_after = log_lines(&log, 5).await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert_eq!(lines_after.len(), 5, "{lines_after:#?}");
    for (i, l) in lines.iter().enumerate() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_err(),
            "not JSON: {l}"
        );
        assert!(
            l.contains(&format!("\"GET 127.0.0.1/api/item/{i} HTTP/1.1\" 200")),
            "{l}"
        );
        assert!(l.contains("route=users-api"), "{l}");
        assert!(!l.contains("s3cr3t"), "{l}");
    }
    gw.shutdown_within(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_head_is_logged_with_what_the_client_sent() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let path = common::process::write(
        dir.path(),
        "gw.yaml",
        &format!(
            "\
listeners: [ {{ bind: 127.0.0.1:0 }} ]
access_log: {{ format: json, path: \"{}\" }}
routes:
  - match: {{ path: /hello }}
    respond: {{ status: 200, body: hi }}
",
            log.display()
        ),
    );
    let gw = start(&path, false).await;
    // Ambiguous framing: refused by the connection as it parses the head.
    let r = common::raw::raw(
        gw.addr(),
        b"POST /smuggle?api_key=s3cr3t HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    r.problem(400);
    // A request line that is not plain text: logged as dashes.
    let r = common::raw::raw(gw.addr(), b"G\x01T /x HTTP/1.1\r\nHost: t\r\n\r\n").await;
    r.problem(400);

    let lines = log_lines(&log, 2).await;
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["method"], "POST", "{v}");
    assert_eq!(v["path"], "/smuggle", "{v}");
    assert_eq!(v["status"], 400);
    assert!(!lines[0].contains("s3cr3t"), "{}", lines[0]);
    let v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(v["method"], "-", "{v}");
    assert_eq!(v["status"], 400);
}
