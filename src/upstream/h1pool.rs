//! Keep-alive HTTP/1.1 connections to one plain-`http` target, owned by the target's
//! long-lived state, and the exchanges on them ([`wire`]).
//!
//! Why not hyper-util's pooled client for these: per request it hashes the pool key
//! (SipHash) into a map behind a mutex, wraps the connection in a `Pooled` guard, and spawns
//! a task that waits for the connection to become idle again before putting it back; in
//! callgrind that was about a sixth of a proxied request's instructions. Why not hyper's
//! `client::conn::http1` under this pool either (the previous step): every connection
//! needs a task of its own that each exchange crosses a channel to. Here the pool is already
//! the target's (no key, no map), checkout is a pop from a short LIFO stack (the warmest
//! connection first), the exchange runs in the request's own task, and a connection goes
//! back when its response body ends. `https`, `h2` and `auto` upstreams keep the pooled
//! client.
//!
//! Reuse rules: a connection the upstream closed (or wrote to) while idle is noticed at
//! checkout and skipped, with no system call when its socket had no news. A request that
//! got nothing back on a reused connection (closed or reset before any byte of a response:
//! the upstream was closing it as we reused it) goes out again once, on a new
//! connection, when the whole request is in hand and its method is idempotent (so a request
//! that makes the upstream reset goes out at most twice); otherwise a failure is the
//! caller's to retry. A response body
//! dropped before its end drops its connection too (HTTP/1 cannot cancel one exchange and
//! keep the connection). Idle connections older than the idle timeout are closed at the
//! next checkout or return, and by a sweeper task per pool that holds only a `Weak`.

pub mod wire;

use crate::body::{Body, BoxError};
use crate::forwarded::Own;
use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
pub use wire::Outgoing;
use wire::{Conn, WireBody, WireError};

/// How connections are made and kept (from the upstream's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {authority} timed out")]
    ConnectTimeout { authority: String },
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    /// The exchange failed after the request was handed to a connection.
    #[error(transparent)]
    Request(WireError),
    /// The request's deadline passed before the response head came, connecting included.
    #[error("no response in time")]
    TimedOut,
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        !matches!(self, SendError::Request(_) | SendError::TimedOut)
    }

    /// Reading the client's request body failed (not the upstream's doing).
    pub fn is_request_body(&self) -> bool {
        matches!(self, SendError::Request(WireError::RequestBody(_)))
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The idle connections of one target.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    /// Whether the sweeper task runs (started with the first connection).
    sweeping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idle connections right now (tests, admin).
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// The warmest idle connection that is still open and not expired. Expired ones sit at
    /// the bottom of the stack, so they are cut off in one go.
    fn checkout(&self, now: Instant, s: &Settings) -> Option<Conn> {
        let mut idle = self.lock();
        prune(&mut idle, now, s.idle_timeout);
        while let Some(mut c) = idle.pop() {
            if c.conn.alive() {
                return Some(c.conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn, s: &Settings) {
        if !conn.reusable() {
            return;
        }
        // When it went idle, to the second: the thread's last clock reading will do.
        let now = crate::clock::recent();
        let mut idle = self.lock();
        prune(&mut idle, now, s.idle_timeout);
        if idle.len() < s.max_idle {
            idle.push(Idle { conn, since: now });
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `authority` over a pooled connection,
    /// or a new one; [`SendError::TimedOut`] when no response head is in by `until`.
    pub async fn send(
        self: &Arc<Self>,
        authority: &str,
        req: Request<Body>,
        s: &Settings,
        own: &Own<'_>,
        (raw, until): (Option<&HeaderName>, tokio::time::Instant),
    ) -> Result<Response<Pooled>, SendError> {
        let (parts, body) = req.into_parts();
        let out = Outgoing::new(&parts, own, body);
        drop(parts);
        self.send_out(authority, out, s, (raw, until)).await
    }

    /// [`Pool::send`] for a request already encoded ([`Outgoing::encode`]). The deadline
    /// is kept by the connection's own timer during the exchange ([`wire::exchange`]), so
    /// a request on a reused connection arms no new timer.
    pub async fn send_out(
        self: &Arc<Self>,
        authority: &str,
        mut out: Outgoing,
        s: &Settings,
        (raw, until): (Option<&HeaderName>, tokio::time::Instant),
    ) -> Result<Response<Pooled>, SendError> {
        if let Some(rid) = raw {
            out.keep_raw(rid);
        }
        if let Some(e) = out.failure() {
            return Err(SendError::Request(e));
        }
        let mut resent = false;
        loop {
            let checked_out = if resent {
                None
            } else {
                self.checkout(crate::clock::recent(), s)
            };
            let (conn, reused) = match checked_out {
                Some(c) => (c, true),
                // A new connection is rare enough for a timer of its own.
                None => match tokio::time::timeout_at(until, self.connect(authority, s)).await {
                    Ok(c) => (c?, false),
                    Err(_) => return Err(SendError::TimedOut),
                },
            };
            match wire::exchange(conn, &mut out, until).await {
                Ok((parts, mut body)) => {
                    let home = if body.is_end_stream() {
                        if let Some(c) = body.take_idle() {
                            self.put(c, s);
                        }
                        None
                    } else {
                        Some((Arc::downgrade(self), *s))
                    };
                    return Ok(Response::from_parts(parts, Pooled::Wire { body, home }));
                }
                // The upstream was closing this idle connection as we reused it: the
                // request can go out again as it is, once, on a new connection.
                Err(e) if reused && e.nothing_received() && out.resendable() => {
                    resent = true;
                    continue;
                }
                Err(WireError::TimedOut) => return Err(SendError::TimedOut),
                Err(e) => return Err(SendError::Request(e)),
            }
        }
    }

    async fn connect(self: &Arc<Self>, authority: &str, s: &Settings) -> Result<Conn, SendError> {
        let stream = tokio::time::timeout(s.connect_timeout, dial(authority))
            .await
            .map_err(|_| SendError::ConnectTimeout {
                authority: authority.to_owned(),
            })?
            .map_err(|source| SendError::Connect {
                authority: authority.to_owned(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
        self.start_sweeper(s.idle_timeout);
        Ok(Conn::new(stream))
    }

    /// Closes expired idle connections even when no request comes to do it.
    fn start_sweeper(self: &Arc<Self>, idle_timeout: Duration) {
        use std::sync::atomic::Ordering;
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = (idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { return };
                let mut idle = pool.lock();
                prune(&mut idle, Instant::now(), idle_timeout);
                idle.retain_mut(|c| c.conn.alive());
            }
        });
    }
}

/// Drops the connections idle for longer than `timeout` (the bottom of the stack).
fn prune(idle: &mut Vec<Idle>, now: Instant, timeout: Duration) {
    let expired = idle
        .iter()
        .take_while(|c| now.saturating_duration_since(c.since) >= timeout)
        .count();
    if expired > 0 {
        idle.drain(..expired);
    }
}

/// A TCP connection to `host:port`: an IP literal directly, a name through the system
/// resolver (each address in turn).
async fn dial(authority: &str) -> std::io::Result<tokio::net::TcpStream> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return tokio::net::TcpStream::connect(addr).await;
    }
    let mut last = None;
    for addr in tokio::net::lookup_host(authority).await? {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{authority} resolves to no address"),
        )
    }))
}

/// An upstream response body: read off a pooled connection, which goes back to the pool
/// when the body ends, or hyper's (the pooled client's responses).
#[derive(Debug)]
pub enum Pooled {
    Wire {
        body: WireBody,
        home: Option<(Weak<Pool>, Settings)>,
    },
    Detached(Incoming),
}

impl Pooled {
    /// A body whose connection is not ours to pool (the pooled client's responses).
    pub fn detached(inner: Incoming) -> Pooled {
        Pooled::Detached(inner)
    }

    /// The response came over the gateway's own HTTP/1.1 client ([`wire`]), whose heads
    /// carry no hop-by-hop fields.
    pub fn is_wire(&self) -> bool {
        matches!(self, Pooled::Wire { .. })
    }

    /// The response's end-to-end fields, when the wire client left them raw
    /// ([`crate::raw_head`]).
    pub fn take_raw(&mut self) -> Option<Box<crate::raw_head::RawFields>> {
        match self {
            Pooled::Wire { body, .. } => body.take_raw(),
            Pooled::Detached(_) => None,
        }
    }
}

impl HttpBody for Pooled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Pooled::Detached(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Pooled::Wire { body, home } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if body.is_end_stream() {
                    // The body ended: its connection is idle again.
                    if let Some((pool, s)) = home.take() {
                        if let (Some(pool), Some(conn)) = (pool.upgrade(), body.take_idle()) {
                            pool.put(conn, &s);
                        }
                    }
                }
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Pooled::Detached(b) => b.is_end_stream(),
            Pooled::Wire { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Pooled::Detached(b) => b.size_hint(),
            Pooled::Wire { body, .. } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A real HTTP/1.1 server on loopback that counts its connections. `close` makes it
    /// answer with `Connection: close`.
    async fn server(close: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        let mut res = Response::new(crate::body::full("hello"));
                        if close {
                            res.headers_mut()
                                .insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(res)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, conns)
    }

    /// A deadline no test reaches.
    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(60)
    }

    fn settings(idle: Duration) -> Settings {
        Settings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: idle,
            max_idle: 8,
        }
    }

    /// One request on `pool` with a 30 s idle time and the client's fields as they are.
    async fn send(
        pool: &Arc<Pool>,
        addr: &str,
        req: Request<Body>,
    ) -> Result<Response<Pooled>, SendError> {
        pool.send(
            addr,
            req,
            &settings(Duration::from_secs(30)),
            &Own::keep_all(),
            (None, far()),
        )
        .await
    }

    fn get(addr: &str) -> Request<Body> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, addr)
            .body(crate::body::empty())
            .unwrap()
    }

    async fn fetch(pool: &Arc<Pool>, addr: &str, s: &Settings) -> Bytes {
        let res = pool
            .send(addr, get(addr), s, &Own::keep_all(), (None, far()))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_finished_response_gives_its_connection_back() {
        let (addr, conns) = server(false).await;
        let pool = Arc::new(Pool::default());
        let s = settings(Duration::from_secs(30));
        for _ in 0..5 {
            assert_eq!(fetch(&pool, &addr, &s).await, "hello");
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one connection for five requests"
        );
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        let (addr, conns) = server(true).await;
        let pool = Arc::new(Pool::default());
        let s = settings(Duration::from_secs(30));
        for _ in 0..3 {
            assert_eq!(fetch(&pool, &addr, &s).await, "hello");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_expired_idle_connection_is_closed_not_reused() {
        let (addr, conns) = server(false).await;
        let pool = Arc::new(Pool::default());
        let s = settings(Duration::from_millis(200));
        fetch(&pool, &addr, &s).await;
        assert_eq!(pool.idle_count(), 1);
        // The sweeper runs every idle_timeout / 2.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(pool.idle_count(), 0, "the sweeper closed it");
        fetch(&pool, &addr, &s).await;
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_early_takes_its_connection_along() {
        let (addr, conns) = server(false).await;
        let pool = Arc::new(Pool::default());
        let s = settings(Duration::from_secs(30));
        let res = pool
            .send(&addr, get(&addr), &s, &Own::keep_all(), (None, far()))
            .await
            .unwrap();
        drop(res);
        assert_eq!(pool.idle_count(), 0);
        fetch(&pool, &addr, &s).await;
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn max_idle_bounds_what_is_kept() {
        let (addr, _) = server(false).await;
        let pool = Arc::new(Pool::default());
        let s = Settings {
            max_idle: 2,
            ..settings(Duration::from_secs(30))
        };
        // Four at once need four connections; only two stay.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(
                pool.send(&addr, get(&addr), &s, &Own::keep_all(), (None, far()))
                    .await
                    .unwrap(),
            );
        }
        for res in held {
            res.into_body().collect().await.unwrap();
        }
        assert_eq!(pool.idle_count(), 2);
    }

    /// A loopback server that answers `GET /N` after N milliseconds, keeping the
    /// connection; counts connections.
    async fn slow_server() -> (String, Arc<AtomicUsize>) {
        paced_server(|head, _| {
            let ms: u64 = head
                .split(' ')
                .nth(1)
                .and_then(|p| p.trim_start_matches('/').parse().ok())
                .unwrap_or(0);
            (
                Duration::from_millis(ms),
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            )
        })
        .await
    }

    /// The connection's timer is kept from one exchange to the next: each exchange is held
    /// to its own deadline, later (an earlier exchange's must not cut it short) or sooner
    /// (it must not wait for the earlier one's), and a timed-out exchange's connection is
    /// not reused.
    #[tokio::test]
    async fn each_exchange_on_a_kept_connection_has_its_own_deadline() {
        let (addr, conns) = slow_server().await;
        let pool = Arc::new(Pool::default());
        let s = settings(Duration::from_secs(30));
        let get_ms = |ms: u64| {
            Request::builder()
                .uri(format!("/{ms}"))
                .header(http::header::HOST, &addr)
                .body(crate::body::empty())
                .unwrap()
        };
        let at = |ms: u64| tokio::time::Instant::now() + Duration::from_millis(ms);
        let fetch = |req, until| {
            let pool = pool.clone();
            let addr = addr.clone();
            async move {
                let res = pool
                    .send(&addr, req, &s, &Own::keep_all(), (None, until))
                    .await?;
                let body = res.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"ok");
                Ok::<_, SendError>(())
            }
        };
        // Armed at +300 ms.
        fetch(get_ms(0), at(300)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Answered at about +550 ms from the first, past the first deadline.
        let t = std::time::Instant::now();
        fetch(get_ms(400), at(800)).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(400));
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one kept connection");
        // A sooner deadline than the one armed: it fires at its own time.
        let t = std::time::Instant::now();
        let e = fetch(get_ms(1000), at(200)).await.unwrap_err();
        assert!(matches!(e, SendError::TimedOut), "{e}");
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_millis(700),
            "{waited:?}"
        );
        assert_eq!(pool.idle_count(), 0, "a timed-out connection is not kept");
        // A new connection (the deadline covers connecting too) serves the next request.
        fetch(get_ms(0), at(300)).await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let pool = Arc::new(Pool::default());
        let e = send(&pool, &addr, get(&addr)).await.unwrap_err();
        assert!(e.is_connect(), "{e}");
        assert!(matches!(e, SendError::Connect { .. }), "{e}");
    }

    /// A loopback server that answers each request head it reads with `answer(head, n)`
    /// (`n`: the request's index on its connection), on the same connection; the bytes are
    /// sent as they are, and an empty answer closes the connection. Counts connections.
    async fn raw_server(answer: fn(&str, usize) -> Vec<u8>) -> (String, Arc<AtomicUsize>) {
        paced_server(move |head, n| (Duration::ZERO, answer(head, n))).await
    }

    /// [`raw_server`] whose answers also say how long to wait before they are sent.
    async fn paced_server<F>(answer: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(&str, usize) -> (Duration, Vec<u8>) + Copy + Send + 'static,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut n = 0;
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                            buf.drain(..end + 4);
                            let (wait, out) = answer(&head, n);
                            n += 1;
                            if !wait.is_zero() {
                                tokio::time::sleep(wait).await;
                            }
                            if out.is_empty() || s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    async fn body_of(pool: &Arc<Pool>, addr: &str, req: Request<Body>) -> (u16, Bytes) {
        let res = send(pool, addr, req).await.unwrap();
        let status = res.status().as_u16();
        (status, res.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn chunked_responses_decode_and_keep_their_connection() {
        let (addr, conns) = raw_server(|_, _| {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-t: 1\r\n\r\n"
                .to_vec()
        })
        .await;
        let pool = Arc::new(Pool::default());
        for _ in 0..3 {
            assert_eq!(body_of(&pool, &addr, get(&addr)).await.1, "hello world");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close() {
        // An HTTP/1.0 upstream: writes its answer and closes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil the end").await;
            }
        });
        let pool = Arc::new(Pool::default());
        assert_eq!(body_of(&pool, &addr, get(&addr)).await.1, "until the end");
        assert_eq!(
            pool.idle_count(),
            0,
            "a close-delimited body ends its connection"
        );
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_head_has_no_body() {
        let (addr, conns) = raw_server(|head, _| {
            if head.starts_with("HEAD") {
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec()
            } else {
                b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
                  HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    .to_vec()
            }
        })
        .await;
        let pool = Arc::new(Pool::default());
        assert_eq!(
            body_of(&pool, &addr, get(&addr)).await,
            (200, Bytes::from("ok"))
        );
        let mut head = get(&addr);
        *head.method_mut() = http::Method::HEAD;
        let res = send(&pool, &addr, head).await.unwrap();
        assert_eq!(res.headers()["content-length"], "5");
        assert!(res
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
        assert_eq!(body_of(&pool, &addr, get(&addr)).await.1, "ok");
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one connection for all three"
        );
    }

    #[tokio::test]
    async fn malformed_answers_are_errors_not_responses() {
        for answer in [
            (|_: &str, _: usize| {
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx".to_vec()
            }) as fn(&str, usize) -> Vec<u8>,
            |_, _| b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(),
            |_, _| b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec(),
        ] {
            let (addr, _) = raw_server(answer).await;
            let pool = Arc::new(Pool::default());
            let e = send(&pool, &addr, get(&addr)).await.unwrap_err();
            assert!(
                matches!(e, SendError::Request(WireError::Malformed(_))),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn an_early_answer_is_heard_while_the_body_is_still_going_up() {
        // Answers 413 on the head alone; the body never ends (the client is still sending).
        let (addr, _) = raw_server(|_, _| {
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!".to_vec()
        })
        .await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .unwrap();
        let body = http_body_util::StreamBody::new(tokio_stream_like(rx));
        let req = Request::builder()
            .method("POST")
            .uri("/")
            .header(http::header::HOST, &addr)
            .body(crate::body::boxed(body))
            .unwrap();
        let pool = Arc::new(Pool::default());
        let got = tokio::time::timeout(Duration::from_secs(5), body_of(&pool, &addr, req))
            .await
            .expect("the answer comes before the body ends");
        assert_eq!(got, (413, Bytes::from("big!")));
        assert_eq!(
            pool.idle_count(),
            0,
            "a connection with half a body is not reused"
        );
        drop(tx);
    }

    /// A stream over an mpsc receiver (no tokio-stream dependency for one test).
    fn tokio_stream_like<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn request_bodies_go_up_with_their_framing() {
        // Echoes the request head's framing line back as the body.
        let (addr, _) = raw_server(|head, _| {
            let framing = head
                .lines()
                .find(|l| l.starts_with("content-length") || l.starts_with("transfer-encoding"))
                .unwrap_or("none")
                .to_owned();
            let expect = head.lines().any(|l| l.starts_with("expect"));
            let body = format!("{framing} expect={expect}");
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .await;
        let pool = Arc::new(Pool::default());
        let with_length = Request::builder()
            .method("POST")
            .uri("/")
            .header(http::header::HOST, &addr)
            .header(http::header::CONTENT_LENGTH, "3")
            .header(http::header::EXPECT, "100-continue")
            .body(crate::body::full("abc"))
            .unwrap();
        assert_eq!(
            body_of(&pool, &addr, with_length).await.1,
            "content-length: 3 expect=false"
        );
        let without_length = Request::builder()
            .method("POST")
            .uri("/")
            .header(http::header::HOST, &addr)
            .body(crate::body::full("abc"))
            .unwrap();
        assert_eq!(
            body_of(&pool, &addr, without_length).await.1,
            "transfer-encoding: chunked expect=false"
        );
    }

    #[tokio::test]
    async fn an_idempotent_request_is_resent_once_on_a_new_connection_and_a_post_is_not() {
        // Answers the first request on each connection, then closes instead of answering
        // the second (an upstream closing an idle connection just as it is reused).
        let (addr, conns) = raw_server(|_, n| {
            if n == 0 {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
            } else {
                Vec::new()
            }
        })
        .await;
        let pool = Arc::new(Pool::default());
        let s = settings(Duration::from_secs(30));
        assert_eq!(body_of(&pool, &addr, get(&addr)).await.1, "ok");
        // Reuses the first connection, which closes: goes out again on a second one.
        assert_eq!(body_of(&pool, &addr, get(&addr)).await.1, "ok");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        // The same for a POST is an error: the upstream may have acted on it.
        let post = Request::builder()
            .method("POST")
            .uri("/")
            .header(http::header::HOST, &addr)
            .header(http::header::CONTENT_LENGTH, "1")
            .body(crate::body::full("x"))
            .unwrap();
        let e = pool
            .send(&addr, post, &s, &Own::keep_all(), (None, far()))
            .await
            .unwrap_err();
        assert!(
            matches!(e, SendError::Request(WireError::NoResponse)),
            "{e}"
        );
        assert_eq!(conns.load(Ordering::SeqCst), 2, "not sent again");
    }
}
