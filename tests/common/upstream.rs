//! Test upstreams on 127.0.0.1: HTTP/1.1 and h2c by preface (or TLS), counting requests and
//! connections, stopped when dropped.

use super::identity::Issued;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body of a test upstream.
pub type UpBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// `len` bytes of a fixed pattern (period 251, so a lost or repeated chunk shows).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// An HTTP server on 127.0.0.1 (HTTP/1.1 and h2c by preface) that counts its requests.
/// Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    /// What a [`Upstream::recording`] upstream received (empty for the others).
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Serves every request with `handler`.
    pub async fn serve<F, Fut, B>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Upstream::serve_maybe_tls(None, handler).await
    }

    /// Serves over TLS (no ALPN, so HTTP/1.1) with this certificate.
    pub async fn serve_tls<F, Fut, B>(cert: &Issued, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        Upstream::serve_maybe_tls(Some(acceptor), handler).await
    }

    async fn serve_maybe_tls<F, Fut, B>(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: F,
    ) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let counter = hits.clone();
        let accepted = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (handler, counter, tls) = (handler.clone(), counter.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            hits,
            conns,
            received: Arc::default(),
            task,
        }
    }

    /// Records every request (see [`Upstream::received`]) and answers `respond(path)`: a
    /// status and a `text/plain` body.
    pub async fn recording(respond: fn(&str) -> (u16, &'static str)) -> Upstream {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let rec = received.clone();
        let mut up = Upstream::serve(move |req: Request<Incoming>| {
            let rec = rec.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let (status, text) = respond(parts.uri.path());
                rec.lock().unwrap().push(Received {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    headers: parts.headers,
                    body,
                });
                Response::builder()
                    .status(status)
                    .header("content-type", "text/plain")
                    .body(Full::new(Bytes::from_static(text.as_bytes())))
                    .unwrap()
            }
        })
        .await;
        up.received = received;
        up
    }

    /// A recording upstream that answers 200 `hello` to everything.
    pub async fn hello() -> Upstream {
        Upstream::recording(|_| (200, "hello")).await
    }

    /// What a recording upstream received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Answers with JSON describing the request it received (see [`Seen`]).
    pub async fn echo() -> Upstream {
        Upstream::echo_named("echo").await
    }

    /// An echo upstream that also reports `name` (to tell targets apart).
    pub async fn echo_named(name: &str) -> Upstream {
        let name: Arc<str> = name.into();
        Upstream::serve(move |req| echo_response(name.clone(), req)).await
    }

    /// Echoes after sleeping `delay`.
    pub async fn slow(delay: Duration) -> Upstream {
        Upstream::serve(move |req| async move {
            tokio::time::sleep(delay).await;
            echo_response("slow".into(), req).await
        })
        .await
    }

    /// Streams the request body straight back as the response body.
    pub async fn mirror() -> Upstream {
        Upstream::serve(|req: Request<Incoming>| async move {
            Response::new(req.into_body().map_err(BoxError::from).boxed_unsync())
        })
        .await
    }

    /// Answers every request with [`pattern`]`(len)`, sent in 64 KiB chunks.
    pub async fn big(len: usize) -> Upstream {
        let data = Bytes::from(pattern(len));
        Upstream::serve(move |_req| {
            let data = data.clone();
            async move {
                let chunks = (0..data.len())
                    .step_by(64 << 10)
                    .map(move |i| {
                        let end = (i + (64 << 10)).min(data.len());
                        Ok::<_, BoxError>(hyper::body::Frame::data(data.slice(i..end)))
                    })
                    .collect::<Vec<_>>();
                let stream = futures_util::stream::iter(chunks);
                Response::new(http_body_util::StreamBody::new(stream).boxed_unsync())
            }
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

async fn echo_response(name: Arc<str>, req: Request<Incoming>) -> Response<UpBody> {
    let (parts, body) = req.into_parts();
    let body_len = match body.collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(e) => {
            let mut r = Response::new(full(format!("echo: body error: {e}")));
            *r.status_mut() = http::StatusCode::BAD_REQUEST;
            return r;
        }
    };
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let list = headers.entry(k.as_str()).or_insert_with(|| json!([]));
        list.as_array_mut()
            .unwrap()
            .push(String::from_utf8_lossy(v.as_bytes()).into());
    }
    let seen = json!({
        "upstream": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(&seen).unwrap()))
        .unwrap()
}

/// What a recording upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// What an echo upstream received.
#[derive(Debug)]
pub struct Seen(pub Value);

impl Seen {
    pub fn upstream(&self) -> &str {
        self.0["upstream"].as_str().unwrap()
    }
    pub fn method(&self) -> &str {
        self.0["method"].as_str().unwrap()
    }
    pub fn path(&self) -> &str {
        self.0["path"].as_str().unwrap()
    }
    pub fn query(&self) -> Option<&str> {
        self.0["query"].as_str()
    }
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub fn version(&self) -> &str {
        self.0["version"].as_str().unwrap()
    }
    pub fn authority(&self) -> Option<&str> {
        self.0["authority"].as_str()
    }
    pub fn body_len(&self) -> u64 {
        self.0["body_len"].as_u64().unwrap()
    }
    /// Every value of a header, in order.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.0["headers"][name.to_ascii_lowercase()]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default()
    }
    /// The only value of a header; panics if it came more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.headers(name);
        assert!(all.len() <= 1, "{name} came {} times: {all:?}", all.len());
        all.first().copied()
    }
    pub fn has(&self, name: &str) -> bool {
        !self.headers(name).is_empty()
    }
}

/// Reads an echo upstream's answer, insisting on 200.
pub async fn seen(res: reqwest::Response) -> Seen {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(
        status, 200,
        "expected the echo upstream's answer, got {status}: {text}"
    );
    Seen(serde_json::from_str(&text).unwrap_or_else(|e| panic!("not echo JSON ({e}): {text}")))
}

/// An address on 127.0.0.1 where nothing listens (connections are refused).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A listener whose accept queue is full and never drained: new connections to it hang in
/// SYN-SENT, which gives a connect timeout without leaving 127.0.0.1. Keep the returned
/// value alive for as long as the address is used. `None` if the kernel completes the
/// handshakes anyway.
pub async fn unaccepting_listener() -> Option<(SocketAddr, Vec<TcpStream>, socket2::Socket)> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("connect to the backlog listener failed: {e}"),
            // This connect hangs: the queue is full.
            Err(_) => return Some((addr, fillers, sock)),
        }
    }
    None
}
