//! The request pipeline, in one place and one order:
//!
//! ```text
//! (HTTP/1: the connection may have refused the head already, server/h1/head.rs → 400/431/414)
//! request id → head checks (size 431, duplicate credentials/Host, framing 400)
//!   → normalise path (400) → route (404 / 405)
//!   → request policies (registry order; may answer early)
//!   → body limit (413) → backend (upstream 502/503/504, or direct response)
//!   → response policies (reverse order, also for early answers and errors)
//!   → request id on the response → metrics, access log and request span when the body
//!     is done
//! ```
//!
//! The snapshot (`Gateway`) is loaded once per request and held to the end, so a reload
//! never changes the config under a request in flight.

use crate::backend::{self, http::Peer, Backend};
use crate::body::{self, Body, BodyStats, Limited};
use crate::compile::Gateway;
use crate::error::GatewayError;
use crate::forwarded;
use crate::normalize::{normalize_path, PathError};
use crate::observe::access_log::{Record, Sink};
use crate::observe::metrics::{Finished, RouteTable};
use crate::observe::request_id;
use crate::observe::trace::{RequestEnd, RequestTrace, Tracer};
use crate::policy::{self, Ctx};
use crate::raw_head::RawFields;
use crate::router::{Match, RequestView};
use http::{header, HeaderMap, HeaderValue, Request, Response, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

/// One config snapshot with the access-log sink, metric handles and tracer it records to.
pub struct Snapshot {
    pub gateway: Gateway,
    pub log: Option<Sink>,
    pub generation: u64,
    /// Per-route metric handles, resolved at install time.
    pub metrics: RouteTable,
    pub tracer: Option<Tracer>,
}

/// Facts about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer`'s address as an `X-Forwarded-For` entry ([`forwarded::peer_value`]).
    pub peer_value: HeaderValue,
    pub tls: bool,
    /// The client certificate verified in the TLS handshake, parsed once per connection.
    pub client_cert: Option<Arc<crate::auth::mtls::ClientCert>>,
    /// Served by the gateway's own HTTP/1 server, which writes an upstream's fields as
    /// they came when nothing reads them ([`crate::raw_head`]).
    pub raw_head: bool,
}

// Credentials that must appear at most once (with two, the gateway might check one and
// the upstream use the other): `Authorization`, `Host`, `X-API-Key`, counted in
// `check_head`; the configured API-key headers in `auth::Registry::check_single`.

pub fn handle<B>(
    snap: Arc<Snapshot>,
    conn: ConnInfo,
    req: Request<B>,
) -> impl std::future::Future<Output = Response<Body>>
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    // Raw fields never come back: only the gateway's own HTTP/1 server asks for them
    // (`ConnInfo::raw_head`), and it calls `serve` itself.
    let fut = serve(snap, conn, req, None);
    async move { fut.await.0 }
}

/// Answers a request the connection's HTTP/1 server refused (`server/h1/head.rs`): `req` is
/// a stand-in, never routed or forwarded, and `line` the refused head's method and path for
/// the access log. The answer goes the way of every other early answer (request id,
/// metrics, access-log line, span) and carries `Connection: close`, since nothing after a
/// refused head can be trusted.
pub fn refuse<B>(
    snap: Arc<Snapshot>,
    conn: ConnInfo,
    req: Request<B>,
    error: GatewayError,
    line: Option<(http::Method, String)>,
) -> impl std::future::Future<Output = Response<Body>>
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let fut = serve(snap, conn, req, Some((error, line)));
    async move { fut.await.0 }
}

/// The whole pipeline for one request; `refused` carries the answer to a head the
/// connection refused (see [`refuse`]).
pub async fn serve<B>(
    snap: Arc<Snapshot>,
    conn: ConnInfo,
    req: Request<B>,
    refused: Option<(GatewayError, Option<(http::Method, String)>)>,
) -> (Response<Body>, Option<Box<RawFields>>)
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let started = crate::clock::now();
    // Wall-clock time is only for the access-log line.
    let time = if snap.log.is_some() {
        SystemTime::now()
    } else {
        SystemTime::UNIX_EPOCH
    };
    let gw = &snap.gateway;
    let s = &gw.settings;
    let request_id =
        request_id::for_request(req.headers(), &s.request_id_header, s.trust_incoming_id);
    let peer_trusted =
        !s.trusted_proxies.is_empty() && forwarded::is_trusted(conn.peer.ip(), &s.trusted_proxies);
    let client = if peer_trusted {
        forwarded::client_ip(conn.peer.ip(), req.headers(), &s.trusted_proxies)
    } else {
        conn.peer.ip()
    };
    let mut method = req.method().clone();
    let version = req.version();
    let host = host_of(&req);

    let mut cx = Ctx {
        request_id,
        client: SocketAddr::new(client, conn.peer.port()),
        tls: conn.tls,
        started,
        route: usize::MAX,
        route_name: no_route(),
        params: Default::default(),
        path: String::new(),
        target: None,
        upstream_latency: None,
        identity: None,
        client_cert: conn.client_cert,
        consumer: None,
        api_key: None,
        traffic: Default::default(),
        trace: snap.tracer.as_ref().map(|t| t.start_request(req.headers())),
        raw_head: None,
    };
    let peer = Peer {
        xff: &conn.peer_value,
        trusted: peer_trusted,
        tls: conn.tls,
        raw_head: conn.raw_head,
        host_field: match &host {
            Host::Shared(v, _) => Some(v),
            Host::Owned(_) => None,
        },
    };
    let mut stats = None;
    let refused_head = refused.is_some();
    let res = match refused {
        Some((e, line)) => {
            // The log names what the client sent, not the connection's stand-in.
            if let Some((m, p)) = line {
                method = m;
                cx.path = p;
            }
            Err(e)
        }
        None => {
            // A client that goes away mid-request drops this future (the connection cancels
            // the request): the guard still records it, as nginx's 499.
            // It borrows the request's context rather than copying the request id and the
            // URI for a case that is rare.
            let mut abandoned = Abandoned {
                snap: &snap,
                started,
                time,
                client,
                method: &method,
                host: &host,
                version,
                cx: &mut cx,
                armed: true,
            };
            let res = pipeline(gw, abandoned.cx, &peer, host.as_str(), req, &mut stats).await;
            abandoned.armed = false;
            res
        }
    };
    let answered = res.is_ok();
    let mut res = match res {
        Ok(r) => r,
        Err(e) => {
            // Load shed on purpose (open breaker, full bulkhead, no healthy target) is not
            // logged per request: the state change that causes it is logged once.
            if e.fault() != crate::error::Fault::Client && e.retry_after().is_none() {
                tracing::warn!(request_id = cx.request_id_str(), route = &*cx.route_name, error = %e, "request failed");
            }
            let mut r = e.to_response(cx.request_id_str());
            // Response policies of the matched route still run (CORS, lifecycle headers).
            if let Some(route) = gw.routes.get(cx.route) {
                let _ =
                    policy::run_response(&route.chain, route.chain.len(), &mut cx, &mut r).await;
            }
            r
        }
    };
    let mut raw = cx.raw_head.take().filter(|_| answered);
    if refused_head {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }

    // Everything below is recorded when the response body is done (bytes, total time).
    let path = if cx.path.is_empty() {
        "-".to_owned()
    } else {
        std::mem::take(&mut cx.path)
    };
    let status = res.status().as_u16();
    let trace_id = cx.trace.as_ref().map(RequestTrace::trace_id_hex);
    // Boxed: the record is most of `Pending`'s size, and `Pending` is moved (copied) into
    // the body and out of it again on every request, log or none.
    let log = snap.log.clone().map(|sink| {
        Box::new((
            sink,
            Record {
                time,
                request_id: cx.request_id.clone(),
                client,
                method: method.clone(),
                host: host.as_str().to_owned(),
                path: path.clone(),
                version,
                route: (cx.route != usize::MAX).then(|| cx.route_name.clone()),
                target: cx.target.clone(),
                status,
                bytes_in: 0,
                bytes_out: 0,
                duration: Default::default(),
                upstream: cx.upstream_latency,
                trace_id,
            },
        ))
    });
    let span = cx.trace.take().map(|t| {
        Box::new(SpanEnd {
            trace: t,
            request_id: cx.request_id.clone(),
            path: path.clone(),
            host: host.as_str().to_owned(),
            client,
            version,
        })
    });
    // The request id goes back last, moved rather than copied. The upstream's fields stayed
    // raw (HTTP/1 client, no policies): it goes with them and the map stays empty.
    let request_id = std::mem::replace(&mut cx.request_id, HeaderValue::from_static(""));
    match raw.as_mut() {
        Some(r) => r.request_id = Some((s.request_id_header.clone(), request_id)),
        None => {
            res.headers_mut()
                .insert(s.request_id_header.clone(), request_id);
        }
    }
    // Inline in the (already boxed) body: one allocation per request for all of it.
    let pending = Pending {
        snap,
        route: cx.route,
        method,
        status,
        upstream: cx.upstream_latency,
        log,
        span,
        started,
        stats,
    };
    let res = res.map(|b| {
        body::boxed_plain(Observed {
            inner: b,
            bytes: 0,
            pending: Some(pending),
        })
    });
    (res, raw)
}

/// The route name before routing; shared so that it costs no allocation.
fn no_route() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

/// The host the client asked for, as routing sees it: lower case, without port, userinfo
/// or a trailing dot.
#[derive(Clone)]
enum Host {
    /// The usual case, a `Host` header already in that form: a slice of it, no copy.
    Shared(HeaderValue, usize),
    Owned(String),
}

impl Host {
    fn as_str(&self) -> &str {
        match self {
            // Only plain ASCII is ever kept shared (see `host_of`).
            Host::Shared(v, end) => std::str::from_utf8(&v.as_bytes()[..*end]).unwrap_or(""),
            Host::Owned(s) => s,
        }
    }
}

fn host_of<B>(req: &Request<B>) -> Host {
    if req.uri().authority().is_none() {
        if let Some(v) = req.headers().get(header::HOST) {
            let b = v.as_bytes();
            // `name` or `name:port` in lower-case letters, digits, `-` and `.`, not ending
            // in a dot: nothing to change, so nothing to copy.
            let end = b.iter().position(|&c| c == b':').unwrap_or(b.len());
            let plain = b[..end]
                .iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
            if plain && end > 0 && b[end - 1] != b'.' {
                return Host::Shared(v.clone(), end);
            }
        }
    }
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    let no_userinfo = raw.rsplit('@').next().unwrap_or(raw);
    let host = if no_userinfo.starts_with('[') {
        no_userinfo
            .split_inclusive(']')
            .next()
            .unwrap_or(no_userinfo)
    } else {
        no_userinfo.split(':').next().unwrap_or(no_userinfo)
    };
    Host::Owned(host.trim_end_matches('.').to_ascii_lowercase())
}

fn head_size<B>(req: &Request<B>) -> u64 {
    let uri = req.uri();
    let mut n = (uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + 16) as u64;
    for (k, v) in req.headers() {
        n += (k.as_str().len() + v.len() + 4) as u64;
    }
    n
}

/// Checks the head; answers the announced body length (a valid `Content-Length`), found
/// in the same pass.
fn check_head<B>(req: &Request<B>, max: u64) -> Result<Option<u64>, GatewayError> {
    if head_size(req) > max {
        return Err(GatewayError::HeadersTooLarge { limit: max });
    }
    let h: &HeaderMap = req.headers();
    // One pass over the fields, counting the few that matter (cheaper than a hashed lookup
    // per name for the usual handful of headers).
    let (mut auth, mut host, mut key, mut cls, mut te) = (0u32, 0u32, 0u32, 0u32, false);
    let mut length = None;
    for (name, value) in h.iter() {
        match name.as_str() {
            "authorization" => auth += 1,
            "host" => host += 1,
            "x-api-key" => key += 1,
            "content-length" => {
                cls += 1;
                length = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
            }
            "transfer-encoding" => te = true,
            _ => {}
        }
    }
    if auth > 1 {
        return Err(GatewayError::BadRequest(
            "the request repeats a credential header",
        ));
    }
    if host > 1 {
        return Err(GatewayError::BadRequest(
            "the request has more than one Host header",
        ));
    }
    if key > 1 {
        return Err(GatewayError::BadRequest(
            "the request repeats a credential header",
        ));
    }
    if req.version() == Version::HTTP_11 && req.uri().authority().is_none() && host == 0 {
        return Err(GatewayError::BadRequest(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    if cls > 1 {
        return Err(GatewayError::BadRequest(
            "the request has more than one Content-Length",
        ));
    }
    if cls == 1 && te {
        return Err(GatewayError::BadRequest(
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    // A byte scan: `str::contains(char)` goes through the generic `memchr`, which costs more
    // than the scan itself for a path this short.
    if req.uri().path().as_bytes().contains(&b'#') {
        return Err(GatewayError::BadRequest(
            "the request target contains a fragment",
        ));
    }
    Ok(length)
}

async fn pipeline<B>(
    gw: &Gateway,
    cx: &mut Ctx,
    peer: &Peer<'_>,
    host: &str,
    req: Request<B>,
    stats: &mut Option<Arc<BodyStats>>,
) -> Result<Response<Body>, GatewayError>
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let announced = check_head(&req, gw.settings.max_header_size)?;
    gw.auth.check_single(req.headers())?;
    let path = normalize_path(req.uri().path()).map_err(|e| {
        GatewayError::BadRequest(match e {
            PathError::NotAbsolute => "the request target must be an absolute path",
            PathError::BadEscape => "the path contains a malformed percent-escape",
            PathError::EncodedSeparator => "the path contains an encoded '/' or '\\'",
            PathError::Backslash => "the path contains a backslash",
            PathError::Nul => "the path contains a NUL byte",
        })
    })?;
    cx.path = path.into_owned();

    let found = gw.router.find(&RequestView {
        host,
        method: req.method(),
        path: &cx.path,
        headers: req.headers(),
        query: req.uri().query(),
    });
    let (route_idx, params) = match found {
        Match::Found { route, params } => (route, params),
        Match::MethodNotAllowed { allow } => return Err(GatewayError::MethodNotAllowed { allow }),
        Match::NotFound => return Err(GatewayError::RouteNotFound),
    };
    let route = &gw.routes[route_idx];
    cx.route = route_idx;
    cx.route_name = route.name.clone();
    cx.params = params;

    // Body: refuse what is announced too large before reading any of it; cap the rest as it
    // streams.
    let (parts, incoming) = req.into_parts();
    if let Some(len) = announced {
        if len > route.max_body {
            // HTTP/1 only: h2 resets just the stream, and a client that asked for
            // `100-continue` has not sent the body (reading it would ask for it).
            let expects = parts.headers.contains_key(header::EXPECT);
            if parts.version <= Version::HTTP_11 && !expects && !incoming.is_end_stream() {
                body::linger(incoming);
            }
            return Err(GatewayError::BodyTooLarge {
                limit: route.max_body,
            });
        }
    }
    let body = if incoming.is_end_stream() {
        body::empty()
    } else {
        let st = Arc::new(BodyStats::default());
        *stats = Some(st.clone());
        body::boxed(Limited::new(incoming, route.max_body, st))
    };
    let mut req = Request::from_parts(parts, body);
    // Identity headers are the gateway's to set: a client's copies never reach a policy or
    // an upstream, whatever the route.
    gw.auth.strip_identity_headers(req.headers_mut());

    // A route without policies skips even building the chain's future (it is large).
    let (ran, early) = if route.chain.is_empty() {
        (0, Ok(None))
    } else {
        policy::run_request(&route.chain, cx, &mut req).await
    };
    let mut res = match early {
        Ok(Some(res)) => res,
        Ok(None) => match &route.backend {
            Backend::Respond(r) => r.respond(),
            Backend::Http(_) | Backend::Split(_) => {
                let up = match &route.backend {
                    Backend::Split(s) => backend::split::choose(s, cx, req.headers()),
                    Backend::Http(up) => up,
                    Backend::Respond(_) => unreachable!("matched above"),
                };
                match backend::http::forward(up, route, &gw.settings, cx, peer, req).await {
                    Ok(r) => r,
                    Err(e) => {
                        // The limit tripping mid-stream, or the client's body breaking,
                        // surfaces as an upstream send error: it is the client's.
                        let seen = |f: fn(&BodyStats) -> &std::sync::atomic::AtomicBool| {
                            stats.as_ref().is_some_and(|s| f(s).load(Ordering::Acquire))
                        };
                        let e = if seen(|s| &s.tripped) {
                            GatewayError::BodyTooLarge {
                                limit: route.max_body,
                            }
                        } else if seen(|s| &s.broken) {
                            GatewayError::ClientBody
                        } else {
                            e
                        };
                        let mut r = e.to_response(cx.request_id_str());
                        policy::run_response(&route.chain, ran, cx, &mut r).await?;
                        return Ok(r);
                    }
                }
            }
        },
        Err(e) => {
            let mut r = e.to_response(cx.request_id_str());
            policy::run_response(&route.chain, ran, cx, &mut r).await?;
            return Ok(r);
        }
    };
    policy::run_response(&route.chain, ran, cx, &mut res).await?;
    Ok(res)
}

/// Status recorded for a request whose client went away before it was answered (nginx's).
pub const CLIENT_CLOSED: u16 = 499;

/// Records a request dropped before the pipeline produced its answer: metrics under no
/// route, and an access-log line with status [`CLIENT_CLOSED`] and the path as routed (the
/// pipeline normalises it before its first wait, so a request can only be dropped after).
struct Abandoned<'a> {
    snap: &'a Snapshot,
    started: Instant,
    time: SystemTime,
    client: std::net::IpAddr,
    method: &'a http::Method,
    host: &'a Host,
    version: Version,
    /// The request's context, lent to the pipeline while it runs.
    cx: &'a mut Ctx,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let duration = crate::clock::now().saturating_duration_since(self.started);
        self.snap.metrics.route(usize::MAX).record(
            self.method,
            Finished {
                status: CLIENT_CLOSED,
                duration,
                upstream: None,
                bytes_in: 0,
                bytes_out: 0,
            },
        );
        if let Some(sink) = &self.snap.log {
            let record = Record {
                time: self.time,
                request_id: self.cx.request_id.clone(),
                client: self.client,
                method: self.method.clone(),
                host: self.host.as_str().to_owned(),
                path: if self.cx.path.is_empty() {
                    "-".to_owned()
                } else {
                    self.cx.path.clone()
                },
                version: self.version,
                route: None,
                target: None,
                status: CLIENT_CLOSED,
                bytes_in: 0,
                bytes_out: 0,
                duration,
                upstream: None,
                trace_id: None,
            };
            let s = &self.snap.gateway.settings.access_log;
            sink.write(record.format(s.format, s.fields.as_deref()));
        }
    }
}

/// What is recorded once the response body is done: metrics always, the access-log line and
/// the request span when they are on.
struct Pending {
    snap: Arc<Snapshot>,
    route: usize,
    method: http::Method,
    status: u16,
    upstream: Option<std::time::Duration>,
    log: Option<Box<(Sink, Record)>>,
    span: Option<Box<SpanEnd>>,
    started: Instant,
    stats: Option<Arc<BodyStats>>,
}

/// The request span, waiting for the end of the response.
struct SpanEnd {
    trace: RequestTrace,
    request_id: HeaderValue,
    path: String,
    host: String,
    client: std::net::IpAddr,
    version: Version,
}

impl Pending {
    fn finish(self, bytes_out: u64) {
        let duration = crate::clock::now().saturating_duration_since(self.started);
        let bytes_in = self
            .stats
            .as_ref()
            .map_or(0, |s| s.bytes.load(Ordering::Relaxed));
        self.snap.metrics.route(self.route).record(
            &self.method,
            Finished {
                status: self.status,
                duration,
                upstream: self.upstream,
                bytes_in,
                bytes_out,
            },
        );
        if let Some(log) = self.log {
            let (sink, mut record) = *log;
            record.bytes_out = bytes_out;
            record.bytes_in = bytes_in;
            record.duration = duration;
            let s = &self.snap.gateway.settings.access_log;
            sink.write(record.format(s.format, s.fields.as_deref()));
        }
        if let Some(end) = self.span {
            end.trace.finish(RequestEnd {
                method: &self.method,
                path: &end.path,
                host: &end.host,
                route: self.snap.gateway.routes.get(self.route).map(|r| &*r.name),
                status: self.status,
                client: end.client,
                protocol: crate::observe::access_log::version_str(end.version),
                request_id: end.request_id.to_str().unwrap_or(""),
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// Counts response bytes and records the request (metrics, access log, span) when the
    /// body is done or dropped (client gone).
    struct Observed {
        #[pin]
        inner: Body,
        bytes: u64,
        pending: Option<Pending>,
    }

    impl PinnedDrop for Observed {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(p) = this.pending.take() {
                p.finish(*this.bytes);
            }
        }
    }
}

impl HttpBody for Observed {
    type Data = bytes::Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                *this.bytes += d.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Answers used by the listener when a request cannot even reach the pipeline.
pub fn internal_error() -> Response<Body> {
    let mut r = GatewayError::Internal.to_response("");
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
