//! Shared helpers for the black-box tests: test upstreams, starting a gateway from YAML,
//! clients (reqwest, raw TCP) and checks for the gateway's problem+json answers.
//!
//! Each test binary uses a different subset of these.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portcullis::server::{self, ConfigSource, Options, ServerHandle, StartError};
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

// ---------------------------------------------------------------- upstreams

/// An HTTP server on 127.0.0.1 (HTTP/1.1 and h2c by preface) that counts its requests.
/// Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Serves every request with `handler`.
    pub async fn serve<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<UpBody>> + Send + 'static,
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
                let (handler, counter) = (handler.clone(), counter.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            conns,
            task,
        }
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

// ---------------------------------------------------------------- gateway

/// A running gateway and a client for it. Its temp dir holds the config (and whatever the
/// test puts next to it, such as certificates).
pub struct Gateway {
    pub handle: ServerHandle,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
}

/// Removes the common indentation of a YAML snippet written inside a test.
pub fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The config as the gateway reads it: the snippet, plus a listener on a free port and the
/// access log off unless the snippet says otherwise.
pub fn full_config(yaml: &str) -> String {
    let yaml = dedent(yaml);
    let mut out = String::new();
    if !yaml.lines().any(|l| l.starts_with("listeners:")) {
        out.push_str("listeners: [{ bind: \"127.0.0.1:0\" }]\n");
    }
    if !yaml.lines().any(|l| l.starts_with("access_log:")) {
        out.push_str("access_log: { format: off }\n");
    }
    out + &yaml
}

pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, full_config(yaml)).unwrap();
    path
}

impl Gateway {
    pub async fn start(yaml: impl AsRef<str>) -> Gateway {
        Gateway::start_in(tempfile::tempdir().unwrap(), yaml).await
    }

    /// Starts with the config written into `dir` (for files the config refers to).
    pub async fn start_in(dir: tempfile::TempDir, yaml: impl AsRef<str>) -> Gateway {
        match Gateway::try_start_in(dir, yaml.as_ref()).await {
            Ok(gw) => gw,
            Err(e) => panic!("the gateway did not start:\n{e}"),
        }
    }

    pub async fn try_start_in(dir: tempfile::TempDir, yaml: &str) -> Result<Gateway, StartError> {
        let path = write_config(dir.path(), yaml);
        let handle = server::start(Options {
            source: ConfigSource::File(path),
            watch: false,
            sighup: false,
        })
        .await?;
        let addr = handle.addr();
        Ok(Gateway {
            handle,
            addr,
            client: client(),
            dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// GET through to an echo upstream: what it saw.
    pub async fn seen(&self, path: &str) -> Seen {
        seen(self.get(path).await).await
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// GET `path` exactly as written, over a fresh TCP connection.
    pub async fn raw_get(&self, path: &str) -> Raw {
        self.raw(&format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        ))
        .await
    }

    /// Sends `request` byte for byte over a fresh TCP connection and reads one response.
    pub async fn raw(&self, request: &str) -> Raw {
        raw(self.addr, request.as_bytes()).await
    }

    pub async fn stop(self) {
        self.handle.shutdown_within(Duration::from_secs(2)).await;
    }
}

// ---------------------------------------------------------------- clients

/// A rustls client config (aws-lc-rs) trusting `roots`, offering `alpn`.
pub fn tls_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// reqwest with no proxy from the environment, no redirects, a timeout, and a TLS config
/// that trusts nothing (plain HTTP only).
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls(tls_config(&[], &[b"http/1.1"]))
}

/// An HTTP/1.1 client.
pub fn client() -> reqwest::Client {
    client_builder().http1_only().build().unwrap()
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2c_client() -> reqwest::Client {
    client_builder().http2_prior_knowledge().build().unwrap()
}

/// A client that sends requests for each of `names` to `addr` (so `Host` is that name).
pub fn client_resolving(names: &[&str], addr: SocketAddr) -> reqwest::Client {
    names
        .iter()
        .fold(client_builder().http1_only(), |b, n| b.resolve(n, addr))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- raw HTTP/1.1

/// A response read off a raw TCP connection.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.head, self.text()))
    }

    /// The echo upstream's answer.
    pub fn seen(&self) -> Seen {
        assert_eq!(self.status, 200, "{}\n{}", self.head, self.text());
        Seen(self.json())
    }

    /// Checks this is the gateway's problem+json with `status`; returns the problem.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}\n{}", self.head, self.text());
        check_problem(
            status,
            self.header("content-type"),
            self.header("x-request-id"),
            &self.body,
        )
    }
}

/// Writes `request` and reads one response (until it is complete or the peer closes).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if parse_response(&buf).is_some() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no complete response within 20s");
    parse_response(&buf).unwrap_or_else(|| {
        panic!(
            "incomplete response: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(2000)])
        )
    })
}

/// What came back on one raw connection: every response, in order, and whether the
/// gateway closed the connection afterwards.
#[derive(Debug)]
pub struct Conversation {
    pub responses: Vec<Raw>,
    pub closed: bool,
}

/// Writes each of `writes` (with `pause` between them), then reads until the gateway closes
/// the connection or nothing comes for 3 s; parses every response received.
pub async fn converse(addr: SocketAddr, writes: &[&[u8]], pause: Duration) -> Conversation {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for (i, w) in writes.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        // The gateway may stop reading (and close) before everything is written.
        if s.write_all(w).await.is_err() {
            break;
        }
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    let mut responses = Vec::new();
    let mut rest = &buf[..];
    while let Some((r, used)) = parse_response_len(rest) {
        responses.push(r);
        rest = &rest[used..];
    }
    assert!(
        rest.is_empty(),
        "unparsed bytes after {} responses: {:?}",
        responses.len(),
        String::from_utf8_lossy(rest)
    );
    Conversation { responses, closed }
}

/// A complete response in `buf`, if there is one (Content-Length or chunked framing).
fn parse_response(buf: &[u8]) -> Option<Raw> {
    parse_response_len(buf).map(|(r, _)| r)
}

/// A complete response at the start of `buf` and the bytes it took.
fn parse_response_len(buf: &[u8]) -> Option<(Raw, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut r = Raw {
        status,
        head,
        body: Vec::new(),
    };
    let rest = &buf[end..];
    let used = if r
        .header("transfer-encoding")
        .is_some_and(|te| te.contains("chunked"))
    {
        let (body, used) = dechunk(rest)?;
        r.body = body;
        used
    } else {
        let len: usize = r.header("content-length").map_or(0, |v| v.parse().unwrap());
        r.body = rest.get(..len)?.to_vec();
        len
    };
    Some((r, end + used))
}

/// A chunked body (no trailers) and the bytes it took.
fn dechunk(all: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut b = all;
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            b = b.strip_prefix(b"\r\n")?;
            return Some((out, all.len() - b.len()));
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------- problems

/// Checks an RFC 9457 body as the gateway writes it: content type, the five keys, `status`
/// equal to the response status and `request_id` equal to the response's `X-Request-Id`.
pub fn check_problem(
    status: u16,
    content_type: Option<&str>,
    request_id_header: Option<&str>,
    body: &[u8],
) -> Value {
    assert_eq!(content_type, Some("application/problem+json"));
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "problem body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    for key in ["type", "title", "status", "detail", "request_id"] {
        assert!(v.get(key).is_some(), "problem without {key:?}: {v}");
    }
    assert!(
        v["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:portcullis:problem:"),
        "{v}"
    );
    assert_eq!(v["status"], status, "{v}");
    assert!(!v["title"].as_str().unwrap().is_empty(), "{v}");
    assert!(!v["detail"].as_str().unwrap().is_empty(), "{v}");
    let id = v["request_id"].as_str().unwrap();
    assert!(!id.is_empty(), "{v}");
    assert_eq!(
        Some(id),
        request_id_header,
        "request_id differs from the header"
    );
    v
}

/// Checks a reqwest response is the gateway's problem+json with `status`; returns the problem.
pub async fn problem(res: reqwest::Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let ct = header(&res, "content-type");
    let id = header(&res, "x-request-id");
    let body = res.bytes().await.unwrap();
    assert_eq!(got, status, "{}", String::from_utf8_lossy(&body));
    check_problem(status, ct.as_deref(), id.as_deref(), &body)
}

/// A response header as text.
pub fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// The problem `type` ends with this slug.
pub fn assert_type(p: &Value, slug: &str) {
    assert_eq!(p["type"], format!("urn:portcullis:problem:{slug}"), "{p}");
}
