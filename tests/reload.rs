//! Hot reload (explicit, file watch, SIGHUP) and graceful shutdown, from outside.

mod common;

use common::process::{eventually, get, start, upstream, write, write_atomic};
use common::{client, free_port};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A config with one listener on a free port, the `api` route to `up`, and `extra` appended
/// to the routes.
fn config(up: SocketAddr, extra: &str) -> String {
    format!(
        "\
listeners: [ {{ bind: 127.0.0.1:0 }} ]
access_log: {{ format: \"off\" }}
upstreams:
  up: {{ targets: [ {{ url: http://{up} }} ] }}
routes:
  - name: api
    match: {{ path: \"/api/{{*rest}}\" }}
    upstream: up
{extra}"
    )
}

const V2_ROUTE: &str =
    "  - name: v2\n    match: { path: /v2 }\n    respond: { status: 200, body: v2-here }\n";

async fn status(c: &reqwest::Client, url: &str) -> u16 {
    match c.get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_routing_and_bumps_the_generation() {
    let up = upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gw.yaml", &config(up.addr, ""));
    let gw = start(&path, false).await;
    let base = format!("http://{}", gw.addr());
    let c = client();
    assert_eq!(gw.generation(), 1);
    assert_eq!(gw.reload_counts(), (0, 0));
    assert_eq!(status(&c, &format!("{base}/v2")).await, 404);
    assert_eq!(status(&c, &format!("{base}/api/x")).await, 200);

    write(dir.path(), "gw.yaml", &config(up.addr, V2_ROUTE));
    let g = gw.reload().await.expect("reload");
    assert_eq!(g, 2);
    assert_eq!(gw.generation(), 2);
    assert_eq!(gw.reload_counts(), (1, 0));
    let (s, body) = get(&c, &format!("{base}/v2")).await;
    assert_eq!((s, body.as_str()), (200, "v2-here"));
    assert_eq!(status(&c, &format!("{base}/api/x")).await, 200);
    assert!(gw.route_table().contains("v2"));

    // And back: the route is gone again.
    write(dir.path(), "gw.yaml", &config(up.addr, ""));
    assert_eq!(gw.reload().await.expect("reload"), 3);
    assert_eq!(status(&c, &format!("{base}/v2")).await, 404);
    // The listener kept its socket across both reloads.
    assert_eq!(format!("http://{}", gw.addr()), base);
    gw.shutdown_within(Duration::from_secs(2)).await;
}

/// One request on a kept-alive raw connection; the status and body of its answer.
async fn exchange(s: &mut tokio::net::TcpStream, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a Content-Length");
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "the gateway closed the kept connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A connection keeps the config snapshot of its last request only until a reload is
/// published: the next request on the same connection is routed by the new config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_sees_the_reloaded_config_on_its_next_request() {
    let up = upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gw.yaml", &config(up.addr, ""));
    let gw = start(&path, false).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    assert_eq!(exchange(&mut s, "/v2").await.0, 404);
    assert_eq!(exchange(&mut s, "/v2").await.0, 404);

    write(dir.path(), "gw.yaml", &config(up.addr, V2_ROUTE));
    assert_eq!(gw.reload().await.expect("reload"), 2);
    assert_eq!(exchange(&mut s, "/v2").await, (200, "v2-here".to_owned()));

    write(dir.path(), "gw.yaml", &config(up.addr, ""));
    assert_eq!(gw.reload().await.expect("reload"), 3);
    assert_eq!(exchange(&mut s, "/v2").await.0, 404);
    gw.shutdown_within(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reload_keeps_the_old_config_serving() {
    let up = upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gw.yaml", &config(up.addr, V2_ROUTE));
    let gw = start(&path, false).await;
    let base = format!("http://{}", gw.addr());
    let c = client();

    // A semantic error, then a YAML syntax error, then an empty file.
    for bad in [
        config(
            up.addr,
            "  - name: bad\n    match: { path: /bad }\n    upstream: nope\n",
        ),
        "routes:\n  - match: { path: /a\n".to_owned(),
        String::new(),
    ] {
        write(dir.path(), "gw.yaml", &bad);
        let err = gw.reload().await.expect_err("a bad file must not load");
        let msg = err.to_string();
        assert!(msg.contains("gw.yaml"), "{msg}");
    }
    assert_eq!(gw.reload_counts(), (0, 3));
    assert_eq!(gw.generation(), 1);
    let (s, body) = get(&c, &format!("{base}/v2")).await;
    assert_eq!((s, body.as_str()), (200, "v2-here"));
    assert_eq!(status(&c, &format!("{base}/api/x")).await, 200);

    // A bind failure is a failed reload too, and leaves everything serving.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let text = config(up.addr, V2_ROUTE).replace(
        "listeners: [ { bind: 127.0.0.1:0 } ]",
        &format!("listeners: [ {{ bind: 127.0.0.1:0 }}, {{ bind: \"{taken_addr}\" }} ]"),
    );
    write(dir.path(), "gw.yaml", &text);
    assert!(gw.reload().await.is_err());
    assert_eq!(gw.reload_counts(), (0, 4));
    assert_eq!(status(&c, &format!("{base}/v2")).await, 200);
    drop(taken);

    // A good file afterwards is taken.
    write(dir.path(), "gw.yaml", &config(up.addr, ""));
    assert_eq!(gw.reload().await.expect("good reload"), 2);
    assert_eq!(gw.reload_counts(), (1, 4));
    assert_eq!(status(&c, &format!("{base}/v2")).await, 404);
    gw.shutdown_within(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watch_reloads_on_write_and_on_rename_over() {
    let up = upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gw.yaml", &config(up.addr, ""));
    let gw = start(&path, true).await;
    let base = format!("http://{}", gw.addr());
    let c = client();
    // Let the watcher settle before the first change.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 1. Plain write in place.
    std::fs::write(&path, config(up.addr, V2_ROUTE)).unwrap();
    let reloaded = eventually(Duration::from_secs(3), || {
        let g = gw.generation();
        async move { g >= 2 }
    })
    .await;
    assert!(reloaded, "no reload after writing the file");
    assert_eq!(status(&c, &format!("{base}/v2")).await, 200);

    // 2. Editor-style save: a new file renamed over the old one.
    let before = gw.generation();
    write_atomic(&path, &config(up.addr, ""));
    let reloaded = eventually(Duration::from_secs(3), || {
        let g = gw.generation();
        async move { g > before }
    })
    .await;
    assert!(reloaded, "no reload after a rename-over save");
    assert_eq!(status(&c, &format!("{base}/v2")).await, 404);

    // 3. A second rename-over save still works (the watch survived the first one).
    let before = gw.generation();
    write_atomic(&path, &config(up.addr, V2_ROUTE));
    let reloaded = eventually(Duration::from_secs(3), || {
        let g = gw.generation();
        async move { g > before }
    })
    .await;
    assert!(reloaded, "no reload after a second rename-over save");
    assert_eq!(status(&c, &format!("{base}/v2")).await, 200);

    // 4. A bad save is counted as a failure, and the config keeps serving.
    let (_, failed) = gw.reload_counts();
    std::fs::write(&path, "routes: [ {").unwrap();
    let counted = eventually(Duration::from_secs(3), || {
        let f = gw.reload_counts().1;
        async move { f > failed }
    })
    .await;
    assert!(counted, "no failed reload recorded after a bad save");
    assert_eq!(status(&c, &format!("{base}/v2")).await, 200);

    // 5. A file that did not change does not reload.
    std::fs::write(&path, config(up.addr, V2_ROUTE)).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || {
            let g = gw.generation();
            async move { g > before + 1 }
        })
        .await
    );
    let settled = gw.reload_counts();
    std::fs::write(&path, config(up.addr, V2_ROUTE)).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        gw.reload_counts(),
        settled,
        "identical content must not reload"
    );
    gw.shutdown_within(Duration::from_secs(2)).await;
}

/// The key property: requests racing with reloads are never lost or misrouted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_lost_across_many_reloads() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let dir = tempfile::tempdir().unwrap();
    // Two valid configs that both route /api/...: one to upstream a, the other to b (and with
    // different extra routes, so the router really changes).
    let cfg_a = config(a.addr, V2_ROUTE);
    let cfg_b = config(b.addr, "")
        .replace("name: api", "name: api-b")
        .replace("\"/api/{*rest}\"", "\"/api/{*rest}\", methods: [GET, HEAD]");
    let path = write(dir.path(), "gw.yaml", &cfg_a);
    let gw = start(&path, false).await;
    let base = format!("http://{}", gw.addr());

    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 500;
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let base = base.clone();
        let started = started.clone();
        tasks.push(tokio::spawn(async move {
            // Keep-alive connections for two clients, a fresh connection per request for the
            // others: both kinds must survive reloads.
            let c = if t % 2 == 0 {
                client()
            } else {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap()
            };
            let mut bad = Vec::new();
            let mut tags = [0u32; 2];
            for i in 0..PER_CLIENT {
                started.fetch_add(1, Ordering::Relaxed);
                match c.get(format!("{base}/api/t{t}/{i}")).send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                        let path_ok = v["path"] == format!("/api/t{t}/{i}");
                        match v["tag"].as_str() {
                            Some("a") if s == 200 && path_ok => tags[0] += 1,
                            Some("b") if s == 200 && path_ok => tags[1] += 1,
                            _ => bad.push(format!("#{i}: {s} {body}")),
                        }
                    }
                    Err(e) => bad.push(format!("#{i}: {e}")),
                }
            }
            (bad, tags)
        }));
    }

    // Reload while the load runs: wait for it to get going, then alternate the configs.
    let reloader = {
        let gw = gw.clone();
        let path = path.clone();
        let started = started.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let total = (CLIENTS * PER_CLIENT) as u64;
            while started.load(Ordering::Relaxed) < total / 10 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let mut n = 0u32;
            while !done.load(Ordering::Relaxed)
                && (n < 12 || started.load(Ordering::Relaxed) < total * 8 / 10)
                && n < 200
            {
                let text = if n % 2 == 0 { &cfg_b } else { &cfg_a };
                std::fs::write(&path, text).unwrap();
                gw.reload().await.expect("valid config reloads");
                n += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            n
        })
    };

    let results = tokio::time::timeout(Duration::from_secs(90), async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
    .await
    .expect("the load finished in time");
    done.store(true, Ordering::Relaxed);
    let reloads = reloader.await.unwrap();

    let mut tags = [0u32; 2];
    let mut bad = Vec::new();
    for (b, t) in results {
        bad.extend(b);
        tags[0] += t[0];
        tags[1] += t[1];
    }
    assert!(
        bad.is_empty(),
        "{} failed requests, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!((tags[0] + tags[1]) as usize, CLIENTS * PER_CLIENT);
    assert!(
        reloads >= 10,
        "only {reloads} reloads happened during the load"
    );
    assert_eq!(gw.reload_counts(), (reloads as u64, 0));
    assert!(tags[0] > 0 && tags[1] > 0, "both configs served: {tags:?}");
    assert_eq!(a.hits() + b.hits(), (CLIENTS * PER_CLIENT) as u64);
    gw.shutdown_within(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_finishes_on_the_config_it_started_with() {
    let up = upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let slow = "  - name: slow\n    match: { path: /slow }\n    upstream: up\n";
    let path = write(dir.path(), "gw.yaml", &config(up.addr, slow));
    let gw = start(&path, false).await;
    let base = format!("http://{}", gw.addr());
    let c = client();

    let t0 = Instant::now();
    let inflight = {
        let c = c.clone();
        let url = format!("{base}/slow?sleep=500");
        tokio::spawn(async move {
            let r = c.get(url).send().await.expect("in-flight request");
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        })
    };
    // Wait until the upstream has the request in hand... (it counts hits after the sleep, so
    // give the request time to get there instead).
    tokio::time::sleep(Duration::from_millis(150)).await;
    write(dir.path(), "gw.yaml", &config(up.addr, ""));
    gw.reload().await.expect("reload");
    assert_eq!(
        status(&c, &format!("{base}/slow")).await,
        404,
        "route removed"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "the reload was too slow to test this"
    );

    let (s, body) = tokio::time::timeout(Duration::from_secs(5), inflight)
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["path"], "/slow");
    assert!(t0.elapsed() >= Duration::from_millis(500));
    gw.shutdown_within(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners() {
    let up = upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let one = config(up.addr, "");
    let path = write(dir.path(), "gw.yaml", &one);
    let gw = start(&path, false).await;
    let first = gw.addr();
    assert_eq!(gw.addrs().len(), 1);
    let c = client();

    let port = free_port();
    let second: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        std::net::TcpStream::connect(second).is_err(),
        "port {port} is free"
    );
    let two = one.replace(
        "listeners: [ { bind: 127.0.0.1:0 } ]",
        &format!(
            "listeners:\n  - {{ name: main, bind: 127.0.0.1:0 }}\n  - {{ name: extra, bind: \"127.0.0.1:{port}\" }}"
        ),
    );
    write(dir.path(), "gw.yaml", &two);
    gw.reload().await.expect("reload");
    let addrs = gw.addrs();
    assert_eq!(
        addrs,
        vec![("main".to_owned(), first), ("extra".to_owned(), second)]
    );
    let (s, body) = get(&c, &format!("http://{second}/api/through-extra")).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("/api/through-extra"), "{body}");
    assert_eq!(status(&c, &format!("http://{first}/api/x")).await, 200);

    // Remove it again: it stops accepting, the first one keeps serving.
    write(dir.path(), "gw.yaml", &one);
    gw.reload().await.expect("reload");
    assert_eq!(gw.addrs().len(), 1);
    let closed = eventually(Duration::from_secs(2), || async move {
        tokio::net::TcpStream::connect(second).await.is_err()
    })
    .await;
    assert!(closed, "the removed listener still accepts");
    assert_eq!(status(&c, &format!("http://{first}/api/x")).await, 200);
    gw.shutdown_within(Duration::from_secs(2)).await;
}

#[test]
fn sighup_reloads_the_running_process() {
    // The process watches the config's directory; point it at a symlink whose target lives
    // elsewhere, so a changed target is seen only through SIGHUP, not the file watch.
    let real_dir = tempfile::tempdir().unwrap();
    let link_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let text = |extra: &str| {
        format!(
            "listeners: [ {{ bind: \"127.0.0.1:{port}\" }} ]\naccess_log: {{ format: \"off\" }}\nroutes:\n  - name: a\n    match: {{ path: /a }}\n    respond: {{ status: 200, body: a }}\n{extra}"
        )
    };
    let real = write(real_dir.path(), "real.yaml", &text(""));
    let link = link_dir.path().join("gw.yaml");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let mut gw = common::process::Process::spawn(&["run", "-c", link.to_str().unwrap()]);
    assert!(
        common::process::wait_for_status(addr, "/a", 200, Duration::from_secs(15)),
        "not serving; stderr:\n{}",
        gw.stderr()
    );
    assert_eq!(
        common::process::blocking_get(addr, "/v2").map(|r| r.0),
        Some(404)
    );
    // The SIGHUP handler is installed by a task spawned at start; give it a moment.
    std::thread::sleep(Duration::from_millis(300));

    std::fs::write(&real, text(V2_ROUTE)).unwrap();
    // Without SIGHUP nothing changes.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        common::process::blocking_get(addr, "/v2").map(|r| r.0),
        Some(404),
        "reloaded without SIGHUP?"
    );
    gw.signal("HUP");
    assert!(
        common::process::wait_for_status(addr, "/v2", 200, Duration::from_secs(5)),
        "no reload after SIGHUP; stderr:\n{}",
        gw.stderr()
    );
    assert!(gw.alive(), "SIGHUP killed the process");

    // A bad file on SIGHUP keeps the process and the old config.
    std::fs::write(&real, "routes: [ {").unwrap();
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(gw.alive());
    assert_eq!(
        common::process::blocking_get(addr, "/v2").map(|r| r.0),
        Some(200)
    );
    assert!(gw.stderr().contains("reload rejected"), "{}", gw.stderr());

    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(Some(0)));
}

// --- graceful shutdown

async fn slow_gateway() -> (
    common::process::TaggedUpstream,
    tempfile::TempDir,
    portcullis::server::ServerHandle,
) {
    let up = upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gw.yaml", &config(up.addr, ""));
    let gw = start(&path, false).await;
    (up, dir, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let (up, _dir, gw) = slow_gateway().await;
    let addr = gw.addr();
    let c = client();
    // A keep-alive connection that is idle during shutdown.
    assert_eq!(status(&c, &format!("http://{addr}/api/warm")).await, 200);

    let inflight = {
        let c = c.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = c
                .get(format!("http://{addr}/api/slow?sleep=500"))
                .send()
                .await
                .expect("in-flight request");
            let s = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            (s, body, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;

    let t0 = Instant::now();
    let shutdown = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.shutdown_within(Duration::from_secs(5)).await })
    };
    // New connections are refused while the slow request is still running.
    let refused = eventually(Duration::from_millis(300), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        refused,
        "new connections still accepted after shutdown started"
    );
    assert!(
        !inflight.is_finished(),
        "the slow request ended too early to test this"
    );

    let (s, body, _) = tokio::time::timeout(Duration::from_secs(5), inflight)
        .await
        .expect("in-flight request finished")
        .unwrap();
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("/api/slow"), "{body}");
    let drained = tokio::time::timeout(Duration::from_secs(6), shutdown)
        .await
        .expect("shutdown returned")
        .unwrap();
    assert!(drained, "shutdown reported a timeout");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(up.hits(), 2);
    // Still refused afterwards.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_short_grace_gives_up_in_time() {
    let (_up, _dir, gw) = slow_gateway().await;
    let addr = gw.addr();
    let c = client();
    let inflight = tokio::spawn(async move {
        c.get(format!("http://{addr}/api/slow?sleep=3000"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t0 = Instant::now();
    let drained = tokio::time::timeout(
        Duration::from_secs(5),
        gw.shutdown_within(Duration::from_millis(300)),
    )
    .await
    .expect("shutdown_within returned");
    let took = t0.elapsed();
    assert!(!drained, "a 3 s request cannot drain in 300 ms");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    inflight.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_nothing_in_flight_is_immediate() {
    let (_up, _dir, gw) = slow_gateway().await;
    let c = client();
    assert_eq!(
        status(&c, &format!("http://{}/api/x", gw.addr())).await,
        200
    );
    drop(c);
    let t0 = Instant::now();
    assert!(gw.shutdown_within(Duration::from_secs(5)).await);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // A second call is harmless.
    assert!(gw.shutdown_within(Duration::from_secs(1)).await);
}

/// Two listeners written with the same address text (port 0) are two sockets, and both keep
/// their ports across a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_port_zero_listeners_are_two_sockets_across_reloads() {
    let up = upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(up.addr, "").replace(
        "listeners: [ { bind: 127.0.0.1:0 } ]",
        "listeners: [ { bind: 127.0.0.1:0 }, { bind: 127.0.0.1:0 } ]",
    );
    let path = write(dir.path(), "gw.yaml", &text);
    let gw = start(&path, false).await;
    let before: Vec<SocketAddr> = gw.addrs().into_iter().map(|(_, a)| a).collect();
    assert_eq!(before.len(), 2);
    assert_ne!(before[0], before[1]);
    gw.reload().await.expect("reload");
    let after: Vec<SocketAddr> = gw.addrs().into_iter().map(|(_, a)| a).collect();
    assert_eq!(before, after);
    let c = client();
    for a in after {
        let (s, body) = get(&c, &format!("http://{a}/api/x")).await;
        assert_eq!(s, 200, "{body}");
    }
    gw.shutdown_within(Duration::from_secs(2)).await;
}
