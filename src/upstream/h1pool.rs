//! Keep-alive HTTP/1.1 connections to one plain-`http` target, owned by the target's
//! long-lived state.
//!
//! Why not hyper-util's pooled client for these: per request it hashes the pool key
//! (SipHash) into a map behind a mutex, wraps the connection in a `Pooled` guard, and spawns
//! a task that waits for the connection to become idle again before putting it back; in
//! callgrind that was about a sixth of a proxied request's instructions. Here the pool is
//! already the target's (no key, no map), a connection goes back when the response body
//! ends (no task), and checkout is a pop from a short LIFO stack (the warmest connection
//! first). Each connection still has its own task driving hyper's `client::conn::http1`
//! state machine; `https`, `h2` and `auto` upstreams keep the pooled client.
//!
//! Semantics match the pooled client's: a connection the upstream closed while idle is
//! noticed at checkout and skipped; a request that a reused connection could not even
//! start to write goes out again on another one (the message comes back from
//! `try_send_request`); once written, a failure is the caller's to retry. A response body
//! dropped before its end drops its connection too (HTTP/1 cannot cancel one exchange and
//! keep the connection). Idle connections older than the idle timeout are closed at the
//! next checkout or return, and by a sweeper task per pool that holds only a `Weak`.

use crate::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
    #[error("HTTP/1.1 handshake with {authority}: {source}")]
    Handshake {
        authority: String,
        source: hyper::Error,
    },
    /// The exchange failed after the request was handed to a connection.
    #[error(transparent)]
    Request(hyper::Error),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        !matches!(self, SendError::Request(_))
    }
}

struct Idle {
    tx: SendRequest<Body>,
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
    fn checkout(&self, now: Instant, s: &Settings) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        prune(&mut idle, now, s.idle_timeout);
        while let Some(c) = idle.pop() {
            if !c.tx.is_closed() {
                return Some(c.tx);
            }
        }
        None
    }

    fn put(&self, tx: SendRequest<Body>, s: &Settings) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        prune(&mut idle, now, s.idle_timeout);
        if idle.len() < s.max_idle {
            idle.push(Idle { tx, since: now });
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `authority` over a pooled connection,
    /// or a new one.
    pub async fn send(
        self: &Arc<Self>,
        authority: &str,
        mut req: Request<Body>,
        s: &Settings,
    ) -> Result<Response<Pooled>, SendError> {
        loop {
            let (mut tx, reused) = match self.checkout(Instant::now(), s) {
                Some(tx) => (tx, true),
                None => (self.connect(authority, s).await?, false),
            };
            // Usually ready at once; not yet when the connection is still finishing the
            // previous response. An error means it closed: take another.
            if let Err(e) = tx.ready().await {
                if reused {
                    continue;
                }
                return Err(SendError::Request(e));
            }
            match tx.try_send_request(req).await {
                Ok(res) => {
                    let (parts, body) = res.into_parts();
                    let mut pooled = Pooled {
                        inner: body,
                        home: Some((tx, Arc::downgrade(self), *s)),
                    };
                    if pooled.inner.is_end_stream() {
                        give_back(&mut pooled.home);
                    }
                    return Ok(Response::from_parts(parts, pooled));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: a connection the upstream had closed. Another one.
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    async fn connect(
        self: &Arc<Self>,
        authority: &str,
        s: &Settings,
    ) -> Result<SendRequest<Body>, SendError> {
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
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| SendError::Handshake {
                authority: authority.to_owned(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        self.start_sweeper(s.idle_timeout);
        Ok(tx)
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
                idle.retain(|c| !c.tx.is_closed());
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

pin_project_lite::pin_project! {
    /// A response body that gives its connection back to the pool when it ends.
    pub struct Pooled {
        #[pin]
        inner: Incoming,
        home: Home,
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("pooled", &self.home.is_some())
            .finish()
    }
}

impl Pooled {
    /// A body whose connection is not ours to pool (the pooled client's responses).
    pub fn detached(inner: Incoming) -> Pooled {
        Pooled { inner, home: None }
    }
}

type Home = Option<(SendRequest<Body>, Weak<Pool>, Settings)>;

/// The body ended: its connection is idle again.
fn give_back(home: &mut Home) {
    if let Some((tx, pool, s)) = home.take() {
        if let Some(pool) = pool.upgrade() {
            pool.put(tx, &s);
        }
    }
}

impl HttpBody for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(None) => give_back(this.home),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => give_back(this.home),
            // A broken body: the connection is not reused.
            Poll::Ready(Some(Err(_))) => *this.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
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

    fn settings(idle: Duration) -> Settings {
        Settings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: idle,
            max_idle: 8,
        }
    }

    fn get(addr: &str) -> Request<Body> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, addr)
            .body(crate::body::empty())
            .unwrap()
    }

    async fn fetch(pool: &Arc<Pool>, addr: &str, s: &Settings) -> Bytes {
        let res = pool.send(addr, get(addr), s).await.unwrap();
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
        let res = pool.send(&addr, get(&addr), &s).await.unwrap();
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
            held.push(pool.send(&addr, get(&addr), &s).await.unwrap());
        }
        for res in held {
            res.into_body().collect().await.unwrap();
        }
        assert_eq!(pool.idle_count(), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let pool = Arc::new(Pool::default());
        let e = pool
            .send(&addr, get(&addr), &settings(Duration::from_secs(30)))
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e}");
        assert!(matches!(e, SendError::Connect { .. }), "{e}");
    }
}
