//! Fault tests with real backends: a target killed in the middle of a load, a slow target,
//! a flapping target, all targets down and one coming back, and a saturated upstream whose
//! bulkhead keeps another route fast.
//!
//! Each test sends a bounded number of requests to 127.0.0.1 and finishes in seconds.

mod common;

use common::backends::*;
use common::{problem_typed, Admin, Gateway};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn fill(yaml: &str, vars: &[(&str, String)]) -> String {
    let mut out = yaml.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("${k}"), v);
    }
    out
}

/// `workers` tasks send GET `path` until `total` requests are done; returns every status.
/// `after(n)` runs once when `n` requests have completed.
async fn load(
    gw: &Gateway,
    path: &str,
    total: usize,
    workers: usize,
) -> (Vec<u16>, Arc<AtomicUsize>) {
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, url, done, next) =
            (gw.client.clone(), gw.url(path), done.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < total {
                let s = match client.get(&url).send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        // Read the body: a response cut mid-body must count as an error.
                        if r.bytes().await.is_err() {
                            599
                        } else {
                            s
                        }
                    }
                    Err(_) => 598,
                };
                statuses.push(s);
                done.fetch_add(1, Ordering::SeqCst);
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all, done)
}

fn errors(statuses: &[u16]) -> Vec<u16> {
    statuses.iter().copied().filter(|&s| s != 200).collect()
}

#[tokio::test]
async fn killed_target_mid_load_idempotent_gets_see_no_errors() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    for t in [&a, &b, &c] {
        t.set_delay(Duration::from_millis(5));
    }
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        upstreams:
          u:
            balance: least_connections
            targets: [ { url: "$A" }, { url: "$B" }, { url: "$C" } ]
            retries: { attempts: 2, backoff: 2ms }
            health: { passive: { consecutive_failures: 1, eject_for: 30s } }
        routes:
          - { match: { path: "/{*rest}" }, upstream: u }
        "#,
            &[("A", a.url()), ("B", b.url()), ("C", c.url())],
        ),
    )
    .await;
    let gw = Arc::new(gw);
    let runner = {
        let gw = gw.clone();
        tokio::spawn(async move { load(&gw, "/x", 600, 12).await.0 })
    };
    // Kill b once a third of the load is through, with requests in flight on it.
    assert!(
        eventually(Duration::from_secs(10), || a.hits() + b.hits() + c.hits()
            >= 200)
        .await
    );
    assert!(
        eventually(Duration::from_secs(2), || b
            .b
            .in_flight
            .load(Ordering::SeqCst)
            > 0)
        .await
    );
    let cut = b.b.in_flight.load(Ordering::SeqCst);
    b.kill().await;
    let b_hits = b.hits();
    let statuses = runner.await.unwrap();
    assert_eq!(statuses.len(), 600);
    assert_eq!(
        errors(&statuses),
        Vec::<u16>::new(),
        "{cut} requests were cut on b"
    );
    assert!(b_hits < 300, "b served {b_hits}");
    assert_eq!(gw.target_health("u", b.addr), TargetHealth::Ejected);
    assert!(gw.upstream("u").retry_budget.unwrap().window_retries >= 1);
}

#[tokio::test]
async fn slow_target_per_try_timeout_moves_on() {
    let (slow, fast) = (Backend::start("slow").await, Backend::start("fast").await);
    slow.set_delay(Duration::from_secs(3));
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        upstreams:
          u:
            balance: round_robin
            targets: [ { url: "$S" }, { url: "$F" } ]
            timeouts: { per_try: 150ms, request: 5s }
            retries: { attempts: 1, on: [timeout], backoff: 1ms }
          total:
            targets: [ { url: "$S" } ]
            timeouts: { request: 200ms }
        routes:
          - { match: { path: "/u" }, upstream: u }
          - { match: { path: "/total" }, upstream: total }
        "#,
            &[("S", slow.url()), ("F", fast.url())],
        ),
    )
    .await;
    for _ in 0..6 {
        let started = Instant::now();
        assert_eq!(gw.who("/u").await, "fast");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    // Round robin puts every first try on the slow target (each retry moves the rotation
    // on too); each gave up after 150ms.
    assert_eq!(slow.hits(), 6);
    // Without retries the total timeout answers 504 and says how long it waited.
    let started = Instant::now();
    let p = problem_typed(gw.get("/total").await, 504, "upstream-timeout").await;
    assert!(p["detail"].as_str().unwrap().contains("200 ms"), "{p}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn flapping_target_costs_no_errors() {
    let (flap, steady) = (Backend::start("flap").await, Backend::start("steady").await);
    let gw = Arc::new(
        Gateway::start_as(Admin::Open, &fill(
            r#"
            upstreams:
              u:
                targets: [ { url: "$F" }, { url: "$S" } ]
                health:
                  active: { path: /healthz, interval: 30ms, timeout: 200ms, healthy: 1, unhealthy: 1 }
                  passive: { consecutive_failures: 1, eject_for: 100ms }
                retries: { attempts: 2, backoff: 2ms }
            routes:
              - { match: { path: "/{*rest}" }, upstream: u }
            "#,
            &[("F", flap.url()), ("S", steady.url())],
        ))
        .await,
    );
    let runner = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let (statuses, _) = load(&gw, "/x?sleep=2", 800, 4).await;
            statuses
        })
    };
    let mut hits_while_up = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        flap.kill().await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        let before = flap.hits();
        flap.restart().await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        hits_while_up += flap.hits() - before;
    }
    let statuses = runner.await.unwrap();
    assert_eq!(errors(&statuses), Vec::<u16>::new());
    assert!(
        hits_while_up > 0,
        "the flapping target never got traffic back"
    );
    assert!(steady.hits() > 0);
}

#[tokio::test]
async fn all_targets_down_then_one_comes_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start_as(
        Admin::Open,
        &fill(
            r#"
        upstreams:
          strict:
            targets: [ { url: "$A" }, { url: "$B" } ]
            health: { active: { path: /healthz, interval: 40ms, healthy: 1, unhealthy: 1 } }
          lenient:
            targets: [ { url: "$A" }, { url: "$B" } ]
            health:
              active: { path: /healthz, interval: 40ms, healthy: 1, unhealthy: 1 }
              fallback_to_all: true
        routes:
          - { match: { path: "/strict" }, upstream: strict }
          - { match: { path: "/lenient" }, upstream: lenient }
        "#,
            &[("A", a.url()), ("B", b.url())],
        ),
    )
    .await;
    assert_eq!(gw.call("/strict").await.0, 200);

    // Health checks fail everywhere: 503 problem+json with Retry-After, nothing sent.
    a.set_health(500);
    b.set_health(500);
    let all_down = |u: &str| {
        gw.upstream(u)
            .targets
            .iter()
            .all(|t| t.health == TargetHealth::Unhealthy)
    };
    assert!(
        eventually(Duration::from_secs(3), || all_down("strict")
            && all_down("lenient"))
        .await
    );
    let hits = a.hits() + b.hits();
    let r = gw.get("/strict").await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    let p = problem_typed(r, 503, "no-healthy-target").await;
    assert!(p["detail"].as_str().unwrap().contains("strict"));
    assert_eq!(a.hits() + b.hits(), hits);
    // With fallback_to_all the request goes out anyway (the targets do answer).
    assert_eq!(gw.call("/lenient").await.0, 200);

    // The backends die for real; then one comes back and passes its checks.
    a.kill().await;
    b.kill().await;
    a.set_health(200);
    a.restart().await;
    assert!(
        eventually(Duration::from_secs(3), || gw
            .target_health("strict", a.addr)
            == TargetHealth::Healthy)
        .await
    );
    for _ in 0..5 {
        assert_eq!(gw.who("/strict").await, "a");
    }
}

#[tokio::test]
async fn a_saturated_upstream_does_not_slow_another_route() {
    let (slow, fast, queued) = (
        Backend::start("slow").await,
        Backend::start("fast").await,
        Backend::start("queued").await,
    );
    slow.set_delay(Duration::from_millis(1500));
    queued.set_delay(Duration::from_millis(600));
    let gw = Arc::new(
        Gateway::start_as(
            Admin::Open,
            &fill(
                r#"
            upstreams:
              slow: { targets: [ { url: "$SLOW" } ], max_concurrent: 4 }
              fast: { targets: [ { url: "$FAST" } ] }
              queued:
                targets: [ { url: "$Q" } ]
                max_concurrent: 1
                queue: { size: 1, timeout: 150ms }
            routes:
              - { match: { path: "/slow" }, upstream: slow }
              - { match: { path: "/fast" }, upstream: fast }
              - { match: { path: "/queued" }, upstream: queued }
            "#,
                &[
                    ("SLOW", slow.url()),
                    ("FAST", fast.url()),
                    ("Q", queued.url()),
                ],
            ),
        )
        .await,
    );
    let timed = |path: &'static str| {
        let gw = gw.clone();
        async move {
            let started = Instant::now();
            let r = gw.get(path).await;
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            (status, started.elapsed(), retry_after)
        }
    };
    let mut baseline = Duration::ZERO;
    for _ in 0..20 {
        baseline = baseline.max(timed("/fast").await.1);
    }

    // Saturate the slow upstream with 24 concurrent requests.
    let burst: Vec<_> = (0..24).map(|_| tokio::spawn(timed("/slow"))).collect();
    assert!(
        eventually(Duration::from_secs(2), || slow
            .b
            .in_flight
            .load(Ordering::SeqCst)
            == 4)
        .await
    );
    let mut during = Duration::ZERO;
    for _ in 0..20 {
        let (s, took, _) = timed("/fast").await;
        assert_eq!(s, 200);
        during = during.max(took);
    }
    let mut ok = 0;
    for t in burst {
        let (s, took, retry_after) = t.await.unwrap();
        match s {
            200 => ok += 1,
            503 => {
                // Refused at once, not after the slow upstream's 1.5s.
                assert!(took < Duration::from_millis(700), "{took:?}");
                assert_eq!(retry_after.as_deref(), Some("1"));
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 4);
    assert_eq!(slow.b.max_in_flight.load(Ordering::SeqCst), 4);
    assert!(
        during < baseline + Duration::from_millis(250) && during < Duration::from_millis(500),
        "fast route: {during:?} while the slow one was saturated (baseline {baseline:?})"
    );

    // With a queue: one in flight, one waits its 150ms and gives up, one is refused at once.
    let first = tokio::spawn(timed("/queued"));
    assert!(
        eventually(Duration::from_secs(2), || queued
            .b
            .in_flight
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    let waiter = tokio::spawn(timed("/queued"));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (s3, t3, _) = timed("/queued").await;
    let (s2, t2, _) = waiter.await.unwrap();
    let (s1, _, _) = first.await.unwrap();
    assert_eq!((s1, s2, s3), (200, 503, 503));
    assert!(
        t2 >= Duration::from_millis(140),
        "the queued request gave up after {t2:?}"
    );
    assert!(
        t3 < Duration::from_millis(100),
        "the third was not refused at once: {t3:?}"
    );
}
