//! Black-box tests of the gateway's own HTTP/1.1 server connection (`server/h1`): bodiless
//! responses (HEAD, 204, 304), HTTP/1.0 keep-alive, `Expect: 100-continue`, chunked
//! responses of unknown length, pipelining, slow heads, the header-read timeout and graceful
//! shutdown. Every test reads the exact bytes the gateway writes on a raw TCP connection.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------------------------- helpers

/// A raw client connection that reads responses one at a time, byte-exact.
struct Wire {
    s: TcpStream,
    /// Read and not yet consumed.
    buf: Vec<u8>,
}

/// One response as it came off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    /// Every value of a header (names case-insensitive).
    fn all(&self, name: &str) -> Vec<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} came {} times:\n{}",
            all.len(),
            self.head
        );
        all.first().copied()
    }

    fn seen(&self) -> Seen {
        assert_eq!(self.status, 200, "{}\n{}", self.head, self.text());
        Seen(serde_json::from_slice(&self.body).expect("echo JSON"))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Wire {
    async fn connect(addr: SocketAddr) -> Wire {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Wire { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.s.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Reads more into the buffer; false at EOF (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 << 10];
        match tokio::time::timeout(READ_TIMEOUT, self.s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!(
                "nothing came for {READ_TIMEOUT:?}; buffered: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Takes exactly `n` bytes.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "closed with {} of {n} bytes: {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Takes one CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = self.take(i + 2).await;
                return String::from_utf8(l[..i].to_vec()).unwrap();
            }
            assert!(self.fill().await, "closed in the middle of a line");
        }
    }

    /// Takes one response head (without the final CRLF CRLF).
    async fn head(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let h = self.take(i + 4).await;
                return String::from_utf8(h[..i].to_vec()).unwrap();
            }
            assert!(
                self.fill().await,
                "closed before a complete head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Takes one response, framed as RFC 9112 says for a request with `method`: no body for
    /// HEAD, 1xx, 204 and 304; chunked; Content-Length; else until the close.
    async fn response(&mut self, method: &str) -> Resp {
        let head = self.head().await;
        assert!(head.starts_with("HTTP/1.1 "), "not a response: {head:?}");
        let status: u16 = head[9..12].parse().unwrap();
        let mut r = Resp {
            status,
            head,
            body: Vec::new(),
        };
        if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
            return r;
        }
        if r.header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            assert!(
                r.header("content-length").is_none(),
                "both framings:\n{}",
                r.head
            );
            r.body = self.chunked().await;
        } else if let Some(n) = r.header("content-length") {
            let n: usize = n.parse().unwrap();
            r.body = self.take(n).await;
        } else {
            r.body = self.until_close().await;
        }
        r
    }

    /// A chunked body, strictly framed (hex size, CRLF after data, `0` CRLF CRLF).
    async fn chunked(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let size = self.line().await;
            let n = usize::from_str_radix(&size, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size:?}"));
            if n == 0 {
                assert_eq!(
                    self.line().await,
                    "",
                    "trailers or junk after the last chunk"
                );
                return out;
            }
            out.extend(self.take(n).await);
            assert_eq!(
                self.take(2).await,
                b"\r\n",
                "chunk data not followed by CRLF"
            );
        }
    }

    async fn until_close(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Whether the gateway closed the connection within `within` without sending anything
    /// more (bytes that do come fail the test).
    async fn closes_within(&mut self, within: Duration) -> bool {
        assert!(
            self.buf.is_empty(),
            "unread bytes before the close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(within, self.s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(_) => false,
        }
    }

    /// Nothing arrives (and the connection stays open) for `d`.
    async fn quiet_for(&mut self, d: Duration) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(d, self.s.read(&mut chunk)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => panic!("the gateway closed the connection"),
            Ok(Ok(n)) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: h1.test\r\n\r\n")
}

/// A gateway routing everything to `up`, with `extra` YAML at the top level.
async fn gateway_to(up: &Upstream, extra: &str) -> Gateway {
    Gateway::start(format!(
        r#"
        {extra}
        upstreams:
          up: {{ targets: [ {{ url: "{}" }} ] }}
        routes:
          - match: {{}}
            upstream: up
        "#,
        up.url()
    ))
    .await
}

// ------------------------------------------------------------------------------- HEAD, 204, 304

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_no_body_bytes_and_the_connection_stays_usable() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "").await;
    let mut c = Wire::connect(gw.addr).await;
    c.send("HEAD /h HTTP/1.1\r\nHost: h1.test\r\n\r\n").await;
    let r = c.response("HEAD").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.header("transfer-encoding").is_none(),
        "a HEAD answer is not chunked:\n{}",
        r.head
    );
    // Whatever length the head announces, no byte of a body follows it.
    c.quiet_for(Duration::from_millis(500)).await;
    c.send(get("/after-head")).await;
    assert_eq!(c.response("GET").await.seen().path(), "/after-head");

    // Pipelined: the next response starts right after the HEAD answer's head.
    c.send(format!(
        "HEAD /h2 HTTP/1.1\r\nHost: h1.test\r\n\r\n{}",
        get("/after-pipelined-head")
    ))
    .await;
    assert_eq!(c.response("HEAD").await.status, 200);
    let next = c.response("GET").await;
    assert_eq!(next.seen().path(), "/after-pipelined-head");
    c.quiet_for(Duration::from_millis(200)).await;
    assert_eq!(echo.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_for_204_and_304_from_the_upstream_and_the_connection_goes_on() {
    let up = Upstream::serve(|req: hyper::Request<hyper::body::Incoming>| async move {
        let status = match req.uri().path() {
            "/204" => 204,
            "/304" => 304,
            _ => 200,
        };
        http::Response::builder()
            .status(status)
            .header("x-from", "up")
            .body(full("payload"))
            .unwrap()
    })
    .await;
    let gw = gateway_to(&up, "").await;
    let mut c = Wire::connect(gw.addr).await;
    // One write: any body byte after the 204 or 304 would be read as the next head.
    c.send([get("/204"), get("/304"), get("/200")].concat())
        .await;
    let r = c.response("GET").await;
    assert_eq!(
        (r.status, r.header("x-from")),
        (204, Some("up")),
        "{}",
        r.head
    );
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
    assert!(
        r.header("content-length").is_none_or(|v| v == "0"),
        "{}",
        r.head
    );
    let r = c.response("GET").await;
    assert_eq!(r.status, 304, "{}", r.head);
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
    let r = c.response("GET").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "payload"),
        "{}",
        r.head
    );
    c.quiet_for(Duration::from_millis(300)).await;
}

// ------------------------------------------------------------------------------- HTTP/1.0

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_without_keep_alive_is_answered_then_closed() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "").await;
    let mut c = Wire::connect(gw.addr).await;
    c.send("GET /ten HTTP/1.0\r\nHost: h1.test\r\n\r\n").await;
    let r = c.response("GET").await;
    assert_eq!(r.seen().path(), "/ten");
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
    assert!(
        c.closes_within(Duration::from_secs(3)).await,
        "an HTTP/1.0 connection without keep-alive stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_with_keep_alive_is_kept_until_a_request_without_it() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "").await;
    let mut c = Wire::connect(gw.addr).await;
    for path in ["/ka1", "/ka2"] {
        c.send(format!(
            "GET {path} HTTP/1.0\r\nHost: h1.test\r\nConnection: keep-alive\r\n\r\n"
        ))
        .await;
        let r = c.response("GET").await;
        assert_eq!(r.seen().path(), path);
        assert_eq!(r.header("connection"), Some("keep-alive"), "{}", r.head);
        assert!(r.header("content-length").is_some(), "{}", r.head);
    }
    c.quiet_for(Duration::from_millis(300)).await;
    c.send("GET /last HTTP/1.0\r\nHost: h1.test\r\n\r\n").await;
    let r = c.response("GET").await;
    assert_eq!(r.seen().path(), "/last");
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    assert!(c.closes_within(Duration::from_secs(3)).await);
    assert_eq!(echo.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_length_to_http10_is_delimited_by_the_close_even_with_keep_alive() {
    let big = Upstream::big(200_000).await;
    let gw = gateway_to(&big, "").await;
    let mut c = Wire::connect(gw.addr).await;
    c.send("GET / HTTP/1.0\r\nHost: h1.test\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
    assert!(r.header("content-length").is_none(), "{}", r.head);
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    // `response` read to the close: exactly the body, nothing more.
    assert_eq!(r.body.len(), 200_000);
    assert!(r.body == pattern(200_000), "the body arrived damaged");
}

// ------------------------------------------------------------------------------- Expect: 100-continue

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_100_then_the_answer_when_the_body_fits() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "defaults: { max_body: 1KiB }").await;
    let mut c = Wire::connect(gw.addr).await;
    c.send(
        "POST /up HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    // Nothing of the body is sent before the 100.
    let cont = c.head().await;
    assert_eq!(cont, "HTTP/1.1 100 Continue");
    assert!(c.buf.is_empty(), "{:?}", String::from_utf8_lossy(&c.buf));
    c.send("hello world").await;
    let r = c.response("POST").await;
    let seen = r.seen();
    assert_eq!((seen.path(), seen.body_len()), ("/up", 11));
    assert!(!seen.has("expect"), "Expect went upstream");
    // The connection goes on.
    c.send(get("/next")).await;
    assert_eq!(c.response("GET").await.seen().path(), "/next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_with_a_body_too_large_is_413_without_100() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "defaults: { max_body: 1KiB }").await;
    let mut c = Wire::connect(gw.addr).await;
    c.send(
        "POST /up HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let r = c.response("POST").await;
    assert_eq!(r.status, 413, "{}\n{}", r.head, r.text());
    assert!(r.text().contains("body-too-large"), "{}", r.text());
    // The body was never asked for, so it is not on its way: the gateway does not wait
    // for it, and no 100 comes after the answer either.
    assert!(
        c.closes_within(Duration::from_secs(5)).await,
        "the connection stayed open after an early 413 with an unsent body"
    );
    assert_eq!(echo.hits(), 0);
}

// ------------------------------------------------------------------------------- chunked responses

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_length_to_http11_is_chunked_and_decodes_intact() {
    let big = Upstream::big(300_000).await;
    let gw = gateway_to(&big, "").await;
    let mut c = Wire::connect(gw.addr).await;
    for round in 0..2 {
        c.send(get("/big")).await;
        let r = c.response("GET").await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{}", r.head);
        assert!(r.header("content-length").is_none(), "{}", r.head);
        assert!(r.header("connection").is_none(), "{}", r.head);
        assert_eq!(r.body.len(), 300_000, "round {round}");
        assert!(r.body == pattern(300_000), "round {round}: damaged body");
        assert!(r.header("date").is_some(), "{}", r.head);
    }
    // The last chunk ended the response exactly: nothing follows, the connection is open.
    c.quiet_for(Duration::from_millis(300)).await;
}

// ------------------------------------------------------------------------------- pipelining

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_one_write_are_answered_in_order() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "").await;
    let mut c = Wire::connect(gw.addr).await;
    let mut all = String::new();
    for i in 0..6 {
        all.push_str(&get(&format!("/p{i}")));
    }
    // A body in the middle, and a request that ends the connection last.
    all.push_str("POST /body HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 5\r\n\r\nhello");
    all.push_str("GET /last HTTP/1.1\r\nHost: h1.test\r\nConnection: close\r\n\r\n");
    c.send(all).await;
    for i in 0..6 {
        let r = c.response("GET").await;
        assert_eq!(r.seen().path(), format!("/p{i}"));
        assert!(r.header("connection").is_none(), "{}", r.head);
    }
    let r = c.response("POST").await;
    let s = r.seen();
    assert_eq!((s.path(), s.body_len()), ("/body", 5));
    let r = c.response("GET").await;
    assert_eq!(r.seen().path(), "/last");
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    assert!(c.closes_within(Duration::from_secs(3)).await);
    assert_eq!(echo.hits(), 8);
}

/// An early answer (no route) to a request whose small body is already in: the body is
/// consumed, and the connection carries the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_after_a_complete_body_keeps_the_connection() {
    let echo = Upstream::echo().await;
    let gw = Gateway::start(format!(
        r#"
        upstreams:
          echo: {{ targets: [ {{ url: "{}" }} ] }}
        routes:
          - match: {{ path: /up }}
            upstream: echo
        "#,
        echo.url()
    ))
    .await;
    let mut c = Wire::connect(gw.addr).await;
    c.send("POST /nowhere HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let r = c.response("POST").await;
    assert_eq!(r.status, 404, "{}", r.head);
    assert!(r.header("connection").is_none(), "{}", r.head);
    c.send(get("/up")).await;
    assert_eq!(c.response("GET").await.seen().path(), "/up");
}

// ------------------------------------------------------------------------------- slow heads, timeout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_half_head_does_not_hold_up_other_connections() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "").await;
    let mut stalled = Vec::new();
    for _ in 0..32 {
        let mut c = Wire::connect(gw.addr).await;
        c.send("GET /stalled HTTP/1.1\r\nHost: h1.test\r\nX-Half: ")
            .await;
        stalled.push(c);
    }
    // A complete request followed by half of the next, on one connection.
    let mut mixed = Wire::connect(gw.addr).await;
    mixed
        .send(format!("{}GET /half HTTP/1.1\r\nHo", get("/whole")))
        .await;
    let t = Instant::now();
    let mut other = Wire::connect(gw.addr).await;
    other.send(get("/other")).await;
    assert_eq!(other.response("GET").await.seen().path(), "/other");
    assert_eq!(mixed.response("GET").await.seen().path(), "/whole");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The half heads are neither answered nor dropped (yet).
    for c in stalled.iter_mut().take(4) {
        c.quiet_for(Duration::from_millis(100)).await;
    }
    mixed.quiet_for(Duration::from_millis(100)).await;
    // The half head, completed late, is answered.
    mixed.send("st: h1.test\r\n\r\n").await;
    assert_eq!(mixed.response("GET").await.seen().path(), "/half");
    assert_eq!(echo.hits(), 3);
}

/// The header-read timeout (30 s) closes a connection whose head never completes, silent
/// or dribbling. (hyper's server behind the old head guard did not: the guard held partial
/// heads back from it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_never_completes_is_dropped_at_the_header_timeout() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "").await;
    let t = Instant::now();
    // One byte every 500 ms of a header that never ends: every read makes progress, the
    // head never completes.
    let mut dribble = Wire::connect(gw.addr).await;
    dribble.send("GET / HTTP/1.1\r\nX-Slow: ").await;
    let dribbler = tokio::spawn(async move {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            if dribble.s.write_all(b"a").await.is_err() {
                break started.elapsed();
            }
            match tokio::time::timeout(Duration::from_millis(500), dribble.s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
                Ok(Ok(n)) => panic!("dribbler got {:?}", String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "dribbler never closed"
            );
        }
    });
    let mut c = Wire::connect(gw.addr).await;
    c.send("GET / HTTP/1.1\r\nHost: h1.test\r\n").await;
    c.quiet_for(Duration::from_secs(25)).await;
    assert!(
        c.closes_within(Duration::from_secs(10)).await,
        "still open {:?} after connecting",
        t.elapsed()
    );
    let took = t.elapsed();
    assert!(
        (Duration::from_secs(29)..Duration::from_secs(34)).contains(&took),
        "closed after {took:?}"
    );
    let took = dribbler.await.unwrap();
    assert!(
        (Duration::from_secs(29)..Duration::from_secs(35)).contains(&took),
        "the dribbling connection closed after {took:?}"
    );
    assert_eq!(echo.hits(), 0);
}

/// The one per-connection timer fires at the first deadline while the connection is in use;
/// it must move on to the current deadline instead of closing the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_deadline_moves_with_each_request() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "").await;
    let t = Instant::now();
    let mut c = Wire::connect(gw.addr).await;
    for (at, path) in [(0u64, "/t0"), (20, "/t20"), (33, "/t33")] {
        tokio::time::sleep_until((t + Duration::from_secs(at)).into()).await;
        c.send(get(path)).await;
        assert_eq!(c.response("GET").await.seen().path(), path, "at {at}s");
    }
}

/// The cancelled request is still recorded: an access-log line with nginx's 499 and the
/// path as sent, and nothing else for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_by_its_client_is_logged_as_499() {
    let up = Upstream::serve(|_req: hyper::Request<hyper::body::Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        http::Response::new(full("late"))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let gw = gateway_to(
        &up,
        &format!(
            "access_log: {{ format: json, path: \"{}\", fields: [method, path, status] }}",
            log.display()
        ),
    )
    .await;
    let mut c = Wire::connect(gw.addr).await;
    c.send(get("/gone?q=1")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if !text.is_empty() || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Past the upstream's 2 s: no second line for the same request.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let text = std::fs::read_to_string(&log).unwrap_or(text);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [serde_json::json!({"method": "GET", "path": "/gone", "status": 499})],
        "{text}"
    );
}

// ------------------------------------------------------------------------------- graceful shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_at_once_and_busy_ones_after_their_answer() {
    let echo = Upstream::echo().await;
    let slow = Upstream::slow(Duration::from_millis(1500)).await;
    let gw = Gateway::start(format!(
        r#"
        upstreams:
          echo: {{ targets: [ {{ url: "{}" }} ] }}
          slow: {{ targets: [ {{ url: "{}" }} ] }}
        routes:
          - match: {{ path: /slow }}
            upstream: slow
          - match: {{}}
            upstream: echo
        "#,
        echo.url(),
        slow.url()
    ))
    .await;
    // An idle keep-alive connection, after one exchange.
    let mut idle = Wire::connect(gw.addr).await;
    idle.send(get("/first")).await;
    assert_eq!(idle.response("GET").await.seen().path(), "/first");
    // A fresh connection that has sent nothing yet.
    let mut fresh = Wire::connect(gw.addr).await;
    // A busy one.
    let mut busy = Wire::connect(gw.addr).await;
    busy.send(get("/slow")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let handle = gw.handle.clone();
    let t = Instant::now();
    let shutdown = tokio::spawn(async move {
        let drained = handle.shutdown_within(Duration::from_secs(10)).await;
        (drained, t.elapsed())
    });
    assert!(
        idle.closes_within(Duration::from_millis(1000)).await,
        "an idle keep-alive connection stayed open on shutdown"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert!(fresh.closes_within(Duration::from_millis(500)).await);
    let r = busy.response("GET").await;
    assert_eq!(r.seen().path(), "/slow");
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    assert!(busy.closes_within(Duration::from_secs(2)).await);
    let (drained, took) = shutdown.await.unwrap();
    assert!(drained, "shutdown did not drain");
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
}

// ------------------------------------------------------------------------------- found in review
//
// Each of these fails on 3cfb077 (see the reason); they pass once the bug is fixed.

/// A 413 for an announced body the client has not sent: the gateway's lingering reader
/// (`body::linger`, 5 s) gives up on the body, and the connection must then close. On
/// 3cfb077 the pump holds a reserved channel slot while it waits for client bytes, nothing
/// wakes it when the body's receiver is dropped, and the connection stays open for as long
/// as the client stays silent (no timeout applies after the response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn an_early_413_for_a_body_never_sent_does_not_hold_the_connection_forever() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "defaults: { max_body: 1KiB }").await;
    let mut c = Wire::connect(gw.addr).await;
    c.send("POST /up HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 1048576\r\n\r\n")
        .await;
    let r = c.response("POST").await;
    assert_eq!(r.status, 413, "{}", r.head);
    let t = Instant::now();
    assert!(
        c.closes_within(Duration::from_secs(15)).await,
        "still open {:?} after the 413",
        t.elapsed()
    );
}

/// When a request body is left unread by an early answer, the connection is closed after
/// the answer, so the answer should say `Connection: close`; without it a client takes the
/// connection for reusable and may lose its next request to the close. Not a regression:
/// hyper's server (3cfb077^) did not say it either in these two cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn an_answer_that_leaves_the_body_unread_says_connection_close() {
    let echo = Upstream::echo().await;
    let gw = Gateway::start(format!(
        r#"
        defaults: {{ max_body: 1KiB }}
        upstreams:
          echo: {{ targets: [ {{ url: "{}" }} ] }}
        routes:
          - match: {{ path: /up }}
            upstream: echo
        "#,
        echo.url()
    ))
    .await;
    let mut failed = Vec::new();
    for (what, req) in [
        (
            "413 with Expect",
            "POST /up HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n",
        ),
        (
            "404 with the body not sent yet",
            "POST /nowhere HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 10\r\n\r\nhello",
        ),
    ] {
        let mut c = Wire::connect(gw.addr).await;
        c.send(req).await;
        let r = c.response("POST").await;
        assert!(r.status >= 400, "{what}: {}", r.head);
        let closed = c.closes_within(Duration::from_secs(5)).await;
        if closed && r.header("connection") != Some("close") {
            failed.push(format!("{what}:\n{}", r.head));
        }
    }
    assert!(
        failed.is_empty(),
        "closed after an answer without Connection: close:\n{}",
        failed.join("\n\n")
    );
}

/// An upstream's `Content-Length: 5, 5` (equal values merged, which the upstream client
/// accepts) must reach the client as one length. On 3cfb077 the response writer cannot
/// parse the list, takes the length from the body instead and adds a second
/// `content-length` header next to the upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_merged_content_length_from_the_upstream_is_sent_once() {
    let (up_addr, up) =
        fixed_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello").await;
    let gw = Gateway::start(gateway_yaml(up_addr, "")).await;
    let mut c = Wire::connect(gw.addr).await;
    c.send(get("/")).await;
    let head = c.head().await;
    let lengths: Vec<&str> = head
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
        .collect();
    assert_eq!(lengths.len(), 1, "{head}");
    assert_eq!(c.take(5).await, b"hello");
    up.abort();
}

/// A connection with half a head has no request in progress: on shutdown it closes like an
/// idle one (hyper's server did). On 3cfb077 only an empty read buffer counts as idle, so
/// a client that sent a few bytes holds the shutdown until the header timeout (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn shutdown_does_not_wait_for_a_head_that_is_not_complete() {
    let echo = Upstream::echo().await;
    let gw = gateway_to(&echo, "").await;
    let mut c = Wire::connect(gw.addr).await;
    c.send("GET / HTTP/1.1\r\nHost: h1.test\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let drained = gw.handle.shutdown_within(Duration::from_secs(4)).await;
    assert!(drained, "shutdown not drained after {:?}", t.elapsed());
    assert!(c.closes_within(Duration::from_secs(1)).await);
}

/// A client that goes away while its request is in flight: hyper's server noticed the EOF
/// and dropped the request (and with it the upstream exchange). On 3cfb077 nothing reads
/// the socket while the pipeline runs a body-less request, so the upstream exchange runs to
/// its end for nobody. (Possibly intended, as half-close support; listed for the record.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_client_that_goes_away_cancels_its_request() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let up = Upstream::serve(move |_req: hyper::Request<hyper::body::Incoming>| {
        let d = d.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            d.fetch_add(1, Ordering::SeqCst);
            http::Response::new(full("late"))
        }
    })
    .await;
    let gw = gateway_to(&up, "").await;
    let mut c = Wire::connect(gw.addr).await;
    c.send(get("/")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "the upstream exchange ran to its end after the client left"
    );
}

// ------------------------------------------------------------------------------- raw fields

/// An upstream that answers every request with `response`, byte for byte.
async fn fixed_upstream(response: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        let _ = s.write_all(response).await;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, task)
}

fn gateway_yaml(up: SocketAddr, route_extra: &str) -> String {
    format!(
        r#"
        upstreams:
          up: {{ targets: [ {{ url: "http://{up}" }} ] }}
        routes:
          - match: {{}}
            upstream: up
            {route_extra}
        "#
    )
}

const UPSTREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: up\r\nX-Mixed: Case Kept\r\n\
    Set-Cookie: a=1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: b=2\r\nConnection: keep-alive\r\n\
    Content-Length: 5\r\n\r\nhello";

/// On a route with no policies an upstream's fields reach an HTTP/1 client as the upstream
/// wrote them (`raw_head`): case kept, repeated fields in order, hop-by-hop fields and the
/// upstream's framing left out, the gateway's own fields (Via, request id, Date, length)
/// once each; and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_fields_pass_as_written_and_hop_by_hop_ones_do_not() {
    let (up, task) = fixed_upstream(UPSTREAM_HEAD).await;
    let gw = Gateway::start(gateway_yaml(up, "")).await;
    let mut c = Wire::connect(gw.addr).await;
    for _ in 0..2 {
        c.send(get("/")).await;
        let r = c.response("GET").await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.head.contains("\r\nX-Mixed: Case Kept\r\n"), "{}", r.head);
        assert_eq!(r.all("set-cookie"), ["a=1", "b=2"], "{}", r.head);
        assert_eq!(r.all("server"), ["up"]);
        assert!(r.all("keep-alive").is_empty(), "{}", r.head);
        assert!(r.all("connection").is_empty(), "{}", r.head);
        assert_eq!(r.all("content-length"), ["5"], "{}", r.head);
        assert_eq!(r.all("date").len(), 1, "{}", r.head);
        assert_eq!(r.all("via"), ["1.1 portcullis"], "{}", r.head);
        assert_eq!(r.all("x-request-id").len(), 1, "{}", r.head);
        assert_eq!(r.body, b"hello");
    }

    // HEAD keeps the upstream's length and sends no body; the connection goes on.
    let (up_head, task_head) =
        fixed_upstream(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 7\r\n\r\n").await;
    let gw_head = Gateway::start(gateway_yaml(up_head, "")).await;
    let mut c = Wire::connect(gw_head.addr).await;
    c.send("HEAD / HTTP/1.1\r\nHost: h1.test\r\n\r\n").await;
    let r = c.response("HEAD").await;
    assert_eq!(r.all("content-length"), ["7"], "{}", r.head);
    assert_eq!(r.all("x-a"), ["1"]);
    assert!(r.body.is_empty());
    c.send("HEAD / HTTP/1.1\r\nHost: h1.test\r\n\r\n").await;
    assert_eq!(c.response("HEAD").await.status, 200);
    task.abort();
    task_head.abort();
}

/// Where the raw form could say something else than the map would, the map is used: the
/// upstream's own Via and request id, and fields its `Connection` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_the_gateway_sets_or_drops_are_not_passed_raw() {
    let (up, task) = fixed_upstream(
        b"HTTP/1.1 200 OK\r\nVia: 1.0 inner\r\nX-Request-Id: from-upstream\r\n\
          X-Secret: s\r\nConnection: keep-alive, X-Secret\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let gw = Gateway::start(gateway_yaml(up, "")).await;
    let mut c = Wire::connect(gw.addr).await;
    c.send(get("/")).await;
    let r = c.response("GET").await;
    assert_eq!(r.all("via"), ["1.0 inner, 1.1 portcullis"], "{}", r.head);
    let ids = r.all("x-request-id");
    assert_eq!(ids.len(), 1, "{}", r.head);
    assert_ne!(ids[0], "from-upstream");
    assert!(r.all("x-secret").is_empty(), "{}", r.head);
    assert_eq!(r.all("x-kept"), ["k"]);
    assert_eq!(r.body, b"ok");
    task.abort();
}

/// HTTP/2 clients (served by hyper) and routes with policies get every field through the
/// map, the same fields as the raw path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_clients_and_routes_with_policies_get_the_same_fields() {
    let (up, task) = fixed_upstream(UPSTREAM_HEAD).await;
    let gw = Gateway::start(gateway_yaml(up, "")).await;
    let res = h2c_client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let h = res.headers();
    assert_eq!(h["x-mixed"], "Case Kept");
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert!(h.get("keep-alive").is_none());
    assert_eq!(h["via"], "1.1 portcullis");
    assert_eq!(res.text().await.unwrap(), "hello");

    let gw = Gateway::start(gateway_yaml(
        up,
        "deprecation: { since: 2026-01-01, sunset: 2099-12-31 }",
    ))
    .await;
    let mut c = Wire::connect(gw.addr).await;
    c.send(get("/")).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.all("x-mixed"), ["Case Kept"]);
    assert_eq!(r.all("set-cookie"), ["a=1", "b=2"]);
    assert!(r.all("keep-alive").is_empty(), "{}", r.head);
    assert_eq!(r.all("content-length"), ["5"], "{}", r.head);
    assert_eq!(r.all("deprecation").len(), 1, "{}", r.head);
    assert_eq!(r.body, b"hello");
    task.abort();
}
