//! Rate limits shared through Redis: the three algorithms, keys with prefix and TTL, one
//! round trip per request, exactness across two gateway processes, and Redis outages with
//! `on_error: local | allow | deny` (on a private `redis-server` each test kills and starts
//! again).
//!
//! Needs `redis-server` installed and, for the shared tests, a Redis at `REDIS_URL` (default
//! `redis://127.0.0.1:6379`). Every test uses its own key prefix.

mod common;

use common::traffic::{
    align_to_window, command_calls, header, keys_with_ttl, redis_url, unique_prefix, ChildGateway,
    Monitor, RedisServer, Tally,
};
use common::{assert_type, problem, Gateway, Upstream};
use reqwest::Method;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An in-process gateway on Redis `url` with `prefix`, an echo upstream and `routes`.
async fn gateway(url: &str, prefix: &str, on_error: &str, routes: &str) -> (Gateway, Upstream) {
    let echo = Upstream::echo().await;
    let yaml = format!(
        "server: {{ trusted_proxies: [127.0.0.1/32] }}\nstate:\n  backend: redis\n  redis: {{ url: \"{url}\", prefix: \"{prefix}\", on_error: {on_error}, timeout: 200ms }}\nupstreams:\n  echo: {{ targets: [ {{ url: \"{}\" }} ] }}\nroutes:\n{}",
        echo.url(),
        common::dedent(routes)
    );
    (Gateway::start(yaml).await, echo)
}

async fn status_as(gw: &Gateway, ip: &str, path: &str) -> u16 {
    gw.request(Method::GET, path)
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const A: &str = "203.0.113.1";
const B: &str = "203.0.113.2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_algorithms_on_redis_with_prefixed_expiring_keys() {
    let url = redis_url();
    let prefix = unique_prefix("algorithms");
    let (gw, echo) = gateway(
        &url,
        &prefix,
        "local",
        r#"
        - name: tb
          match: { path: /tb }
          upstream: echo
          policies: [ { rate_limit: { requests: 3, per: 1h } } ]
        - name: fw
          match: { path: /fw }
          upstream: echo
          policies: [ { rate_limit: { requests: 3, per: 1h, algorithm: fixed_window } } ]
        - name: sw
          match: { path: /sw }
          upstream: echo
          policies: [ { rate_limit: { requests: 3, per: 1h, algorithm: sliding_window } } ]
        "#,
    )
    .await;
    align_to_window(Duration::from_secs(3600), Duration::from_secs(30)).await;
    for path in ["/tb", "/fw", "/sw"] {
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(status_as(&gw, A, path).await);
        }
        assert_eq!(got, [200, 200, 200, 429, 429], "{path}");
        assert_eq!(status_as(&gw, B, path).await, 200, "{path}: per client");
    }
    assert_eq!(echo.hits(), 12);
    let r = gw
        .request(Method::GET, "/fw")
        .header("x-forwarded-for", A)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "ratelimit-policy"), "\"3-per-1h\";q=3;w=3600");
    assert!(header(&r, "ratelimit").starts_with("\"3-per-1h\";r=0;t="));
    assert_type(&problem(r, 429).await, "rate-limited");

    let keys = keys_with_ttl(&url, &prefix);
    assert_eq!(keys.len(), 6, "{keys:#?}");
    for (k, ttl) in &keys {
        assert!(k.starts_with(&format!("{prefix}rl:")), "{k}");
        assert!(*ttl > 0 && *ttl <= 2 * 3600 * 1000, "{k} has TTL {ttl}");
    }
    let tb = format!("{prefix}rl:tb:3-per-1h:tb:ip={A}");
    assert!(keys.contains_key(&tb), "{tb} in {keys:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_per_request_for_all_limits_of_a_route() {
    // A private Redis, so that its command counters are ours alone.
    let redis = RedisServer::start();
    let (gw, _echo) = gateway(
        &redis.url(),
        "rt:",
        "local",
        r#"
        - match: { path: /three }
          upstream: echo
          policies:
            - rate_limit:
                limits:
                  - { requests: 100, per: 1m }
                  - { requests: 1000, per: 1h, algorithm: fixed_window }
                  - { requests: 10000, per: 1d, algorithm: sliding_window }
        "#,
    )
    .await;
    // Connected and the script loaded in the background at start.
    let deadline = Instant::now() + Duration::from_secs(5);
    while command_calls(&redis.url(), "script|load") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every command that reaches Redis over the network while 20 requests pass.
    let monitor = Monitor::start(redis.port);
    for _ in 0..20 {
        assert_eq!(status_as(&gw, A, "/three").await, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = monitor.network_commands();
    assert_eq!(
        sent,
        vec!["EVALSHA".to_owned(); 20],
        "one EVALSHA per request, nothing else"
    );
    // Inside the script: the clock, then a read and a write per limit.
    let ran = monitor.script_commands();
    assert_eq!(ran.iter().filter(|c| *c == "TIME").count(), 20, "{ran:?}");
    assert_eq!(
        ran.iter().filter(|c| *c == "PEXPIRE").count(),
        40,
        "{ran:?}"
    );
    assert_eq!(keys_with_ttl(&redis.url(), "rt:").len(), 3);
}

/// Sends `n` requests to `url` from `workers` concurrent tasks; tallies the statuses.
async fn blast(client: reqwest::Client, url: String, n: usize, workers: usize) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, url, tally, next) = (client.clone(), url.clone(), tally.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let s = client.get(&url).send().await.unwrap().status().as_u16();
                tally.lock().unwrap().add(s);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let t = tally.lock().unwrap().clone();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_share_each_limit_exactly() {
    let url = redis_url();
    let prefix = unique_prefix("cluster");
    let echo = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    // Limits keyed by route: every request of both nodes counts against one counter.
    let yaml = format!(
        r#"listeners: [ {{ bind: "127.0.0.1:@PORT@" }} ]
access_log: {{ format: "off" }}
state:
  backend: redis
  redis: {{ url: "{url}", prefix: "{prefix}", on_error: deny }}
upstreams:
  echo: {{ targets: [ {{ url: "{}" }} ] }}
routes:
  - name: tb
    match: {{ path: /tb }}
    upstream: echo
    policies: [ {{ rate_limit: {{ key: route, requests: 300, per: 1h }} }} ]
  - name: fw
    match: {{ path: /fw }}
    upstream: echo
    policies: [ {{ rate_limit: {{ key: route, requests: 300, per: 1h, algorithm: fixed_window }} }} ]
  - name: sw
    match: {{ path: /sw }}
    upstream: echo
    policies: [ {{ rate_limit: {{ key: route, requests: 300, per: 1h, algorithm: sliding_window }} }} ]
"#,
        echo.url()
    );
    let one = ChildGateway::spawn(dir.path(), "one", &yaml);
    let two = ChildGateway::spawn(dir.path(), "two", &yaml);
    let client = common::client();
    align_to_window(Duration::from_secs(3600), Duration::from_secs(60)).await;
    for path in ["/tb", "/fw", "/sw"] {
        // 1,000 requests, half through each process, 16 at a time on each.
        let (a, b) = tokio::join!(
            blast(client.clone(), one.url(path), 500, 16),
            blast(client.clone(), two.url(path), 500, 16),
        );
        let allowed = a.get(200) + b.get(200);
        let refused = a.get(429) + b.get(429);
        assert_eq!(
            allowed + refused,
            1000,
            "{path}: {a:?} {b:?}\n{}",
            one.log()
        );
        // The token bucket refills one request per 12s while the test runs.
        assert!(
            (297..=303).contains(&allowed),
            "{path}: {allowed} admitted for a limit of 300 ({a:?} / {b:?})"
        );
        assert!(
            a.get(200) > 0 && b.get(200) > 0,
            "{path}: both nodes admitted some"
        );
        eprintln!(
            "{path}: {allowed} of 1000 admitted for a limit of 300 (node one {}, node two {})",
            a.get(200),
            b.get(200)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_with_on_error_local_and_recovery() {
    let mut redis = RedisServer::start();
    let (gw, _echo) = gateway(
        &redis.url(),
        "outage:",
        "local",
        r#"
        - match: { path: /limited }
          upstream: echo
          policies: [ { rate_limit: { requests: 5, per: 1h } } ]
        - match: { path: /background }
          upstream: echo
          policies: [ { rate_limit: { key: route, requests: 1000000, per: 1s } } ]
        "#,
    )
    .await;

    // Traffic all along: nothing may fail or hang while Redis goes away and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (client, url, stop) = (gw.client.clone(), gw.url("/background"), stop.clone());
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let s = client.get(&url).send().await.unwrap().status().as_u16();
                slowest = slowest.max(t.elapsed());
                tally.add(s);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (tally, slowest)
        })
    };

    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(status_as(&gw, A, "/limited").await);
    }
    assert_eq!(got, [200, 200, 200, 200, 200, 429], "counted in Redis");
    assert!(!keys_with_ttl(&redis.url(), "outage:").is_empty());

    // Redis dies in the middle of traffic: this node keeps enforcing the limit in memory
    // (its own count starts fresh), and no request waits long.
    redis.kill();
    let mut got = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        got.push(status_as(&gw, A, "/limited").await);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a request waited {:?}",
            t.elapsed()
        );
    }
    assert_eq!(got, [200, 200, 200, 200, 200, 429, 429], "enforced locally");

    // Redis comes back (empty): the node returns to it by itself. The local count for A is
    // spent, so an admitted request proves Redis is deciding again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut back = false;
    while Instant::now() < deadline {
        if status_as(&gw, A, "/limited").await == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "never returned to Redis");
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(status_as(&gw, A, "/limited").await);
    }
    assert_eq!(got, [200, 200, 200, 200, 429], "counted in the new Redis");
    assert!(keys_with_ttl(&redis.url(), "outage:")
        .keys()
        .any(|k| k.contains(&format!("ip={A}"))));

    stop.store(true, Ordering::Relaxed);
    let (tally, slowest) = background.await.unwrap();
    assert_eq!(
        tally.get(200),
        tally.total(),
        "background traffic: {tally:?}"
    );
    assert!(tally.total() > 20, "{tally:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "slowest background request {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_allow_and_deny_and_deny_recovers() {
    // A Redis that is down from the start and comes up later.
    let mut redis = RedisServer::start();
    redis.kill();
    let routes = r#"
        - match: { path: /x }
          upstream: echo
          policies: [ { rate_limit: { requests: 1, per: 1h } } ]
        "#;
    let (allow, _e1) = gateway(&redis.url(), "allow:", "allow", routes).await;
    let (deny, _e2) = gateway(&redis.url(), "deny:", "deny", routes).await;

    for _ in 0..3 {
        let t = Instant::now();
        let r = allow
            .request(Method::GET, "/x")
            .header("x-forwarded-for", A)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "allow: unlimited while Redis is away");
        assert!(
            r.headers().get("ratelimit").is_none(),
            "no headers for an unchecked limit"
        );
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    for _ in 0..3 {
        let r = deny
            .request(Method::GET, "/x")
            .header("x-forwarded-for", A)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "retry-after"), "1");
        assert_type(&problem(r, 503).await, "rate-limit-unavailable");
    }

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = 0;
    while Instant::now() < deadline {
        got = status_as(&deny, A, "/x").await;
        if got != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, 200, "deny mode returns to Redis by itself");
    assert_eq!(status_as(&deny, A, "/x").await, 429);
    // Allow mode lets everything through until its probe finds Redis; then it limits again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut limited = false;
    while Instant::now() < deadline && !limited {
        limited = status_as(&allow, A, "/x").await == 429;
    }
    assert!(limited, "allow mode is limited again once Redis is back");
}
