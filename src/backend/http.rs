//! The HTTP backend: forwards a request to an upstream over pooled keep-alive connections,
//! with the upstream's circuit breaker, bulkhead, balancer, health and retries, and streams
//! the response back.
//!
//! Order for one request (each step can answer before the next):
//!
//! ```text
//! circuit breaker (open → 503 + Retry-After, or the fallback response)
//!   → request body kept for replay when retries may need it (small, known length)
//!   → bulkhead permit (full → 503 at once, or a short wait in the queue)
//!   → try: pick a target (healthy, not tried yet) → send with the per-try timeout
//!          → record the outcome (target counters, passive health, breaker)
//!          → retry? (condition, method, replayable body, attempts, budget, breaker,
//!            total deadline) → backoff with jitter → next try on another target
//!   → response headers to the client: from here on nothing is retried
//! ```
//!
//! The request that goes upstream is the normalised one (same path the router and policies
//! saw), rewritten as the route says, with hop-by-hop headers removed and the gateway's own
//! headers (`X-Forwarded-*`, `Via`, request id) set last so nothing the client sent can undo
//! them. The bulkhead permit and the target's in-flight count are held by the response body
//! until it is done or dropped. Each try carries a
//! `traceparent` naming its own span when tracing is on.

use crate::body::{self, Body};
use crate::compile::{Route, Settings};
use crate::error::GatewayError;
use crate::forwarded;

use crate::observe::trace::TryOutcome;
use crate::policy::Ctx;
use crate::upstream::breaker::{Admit, Breaker};
use crate::upstream::h1pool::Outgoing;
use crate::upstream::h1pool::{Pooled, SendError};
use crate::upstream::retry::Failure;
use crate::upstream::state::{TargetState, UpstreamState};
use crate::upstream::window::now_ms;
use crate::upstream::{health, TargetRt, Upstream};
use bytes::Bytes;
use http::{header, uri, HeaderMap, HeaderValue, Request, Response, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// Facts about the client connection the forwarder needs.
pub struct Peer<'a> {
    /// The connection peer's address as an `X-Forwarded-For` entry, formatted once per
    /// connection.
    pub xff: &'a HeaderValue,
    pub trusted: bool,
    pub tls: bool,
    /// The client is on the gateway's own HTTP/1 server, which can write an upstream's
    /// fields as they came ([`crate::raw_head`]).
    pub raw_head: bool,
    /// The client's `Host` field when routing took the host from it as it is (no authority
    /// in the request target): the host the upstream is told of, with no second lookup.
    pub host_field: Option<&'a HeaderValue>,
}

/// A breaker admission: a half-open probe that ends without an outcome gives its slot back.
struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.release_probe();
        }
    }
}

/// The request body across tries.
enum ReqBody {
    Empty,
    /// Kept in memory: every try sends it again.
    Kept(Bytes),
    /// Streamed: only the first try can send it.
    Stream(Option<Body>),
}

impl ReqBody {
    fn take(&mut self) -> Body {
        match self {
            ReqBody::Empty => body::empty(),
            ReqBody::Kept(b) => body::full(b.clone()),
            ReqBody::Stream(b) => b.take().unwrap_or_else(body::empty),
        }
    }

    fn replayable(&self) -> bool {
        !matches!(self, ReqBody::Stream(_))
    }
}

/// What came of one try.
// Lives on the request's stack for one try; boxing the response would cost an allocation
// per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Response(Response<Pooled>),
    Failed(Failure, GatewayError),
}

pub async fn forward(
    up: &Upstream,
    route: &Route,
    settings: &Settings,
    cx: &mut Ctx,
    peer: &Peer<'_>,
    req: Request<Body>,
) -> Result<Response<Body>, GatewayError> {
    let st: &UpstreamState = &up.state;

    // Circuit breaker first: an open circuit costs no permit, no target, no connection.
    let mut ticket = Ticket {
        breaker: &st.breaker,
        probe: false,
        recorded: false,
    };
    if let Some(b) = &up.breaker {
        match st.breaker.admit(b, now_ms(), &up.name) {
            Admit::Pass => {}
            Admit::Probe => ticket.probe = true,
            Admit::Reject { retry_after } => {
                if let Some(fallback) = &up.breaker_fallback {
                    return Ok(fallback.respond());
                }
                return Err(GatewayError::CircuitOpen {
                    upstream: up.name.to_string(),
                    retry_after: retry_after.as_secs_f64().ceil() as u64,
                });
            }
        }
    }

    let (mut parts, incoming) = req.into_parts();
    let path = route.rewrite.apply(&cx.path, &cx.params);
    // When routing's normal form is what the client sent and nothing rewrites it, the
    // client's own (already parsed) path and query go on as they are.
    let unchanged = (*path == *parts.uri.path())
        .then(|| parts.uri.path_and_query())
        .flatten();
    let mut path_and_query = String::new();
    if unchanged.is_none() {
        let query = parts.uri.query();
        path_and_query.reserve(path.len() + query.map_or(0, |q| q.len() + 1));
        path_and_query.push_str(&path);
        if let Some(q) = query {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
    }

    // Headers: everything but `Host`, which depends on the target. The host the client asked
    // for, as routing saw it: the request target's authority (HTTP/2 `:authority`, HTTP/1.1
    // absolute-form), else the Host header. An HTTP/2 client sends no Host header at all.
    let looked_up;
    let original_host = match peer.host_field {
        Some(h) => Some(h),
        None => {
            looked_up = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .or_else(|| parts.headers.get(header::HOST).cloned());
            looked_up.as_ref()
        }
    };
    let client_version = parts.version;
    forwarded::strip_hop_by_hop(
        &mut parts.headers,
        &route.protected,
        &settings.request_id_header,
    );
    // The gateway's own fields: written after the client's by the wire client, put into
    // the map for hyper's.
    let via = settings.via.as_ref().map(|(v11, v2)| {
        if client_version == Version::HTTP_2 {
            v2
        } else {
            v11
        }
    });
    let mut own = forwarded::Own::new(
        &parts.headers,
        peer.xff,
        peer.trusted,
        peer.tls,
        original_host,
        via,
        (&settings.request_id_header, &cx.request_id),
    );
    let version = match up.protocol {
        crate::config::UpstreamProtocol::Http2 => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let keep_host = route.preserve_host && original_host.is_some();
    let kept_host = original_host.filter(|_| keep_host);

    // Body: kept in memory when a retry may have to send it again and it is small and of
    // known length; otherwise streamed, and then only the first try can carry it.
    let retry = up.retry.as_ref();
    let mut req_body = if incoming.is_end_stream() {
        ReqBody::Empty
    } else {
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match (retry, length) {
            (Some(r), Some(len)) if r.may_retry(&parts.method) && len <= r.buffer => {
                let collected = incoming.collect().await.map_err(|e| {
                    if e.downcast_ref::<crate::body::TooLarge>().is_some() {
                        GatewayError::BodyTooLarge {
                            limit: route.max_body,
                        }
                    } else {
                        GatewayError::ClientBody
                    }
                })?;
                ReqBody::Kept(collected.to_bytes())
            }
            _ => ReqBody::Stream(Some(incoming)),
        }
    };

    // Bulkhead: one permit for the whole request, released when its response body is done.
    // Taken after the body is read, so a slow client does not hold the upstream's slots.
    let permit = match &up.bulkhead {
        None => None,
        Some(b) => Some(
            b.acquire()
                .await
                .map_err(|full| GatewayError::UpstreamBusy {
                    upstream: up.name.to_string(),
                    limit: full.0,
                })?,
        ),
    };

    let total = route.request_timeout.unwrap_or(up.request_timeout);
    let per_try = route.per_try_timeout.or(up.per_try_timeout);
    // The thread's last clock reading: the request's own start (`proxy::serve` reads the
    // clock exactly) or, after a wait that parked the thread, its wake-up; never before the
    // request's start (a task that moved to another worker finds that worker's reading).
    // One clock read fewer per request: the deadline and the upstream latency count from
    // microseconds earlier than the first try, under load.
    let started = crate::clock::recent().max(cx.started);
    let deadline = started + total;
    let set = up.targets();
    let key = up.hash_key(&parts.headers, cx.client.ip());
    if let Some(r) = retry {
        st.budget.record_request(&r.budget, now_ms());
    }
    let mut tried: Vec<usize> = Vec::new();
    let mut retries = 0u32;
    loop {
        let now = now_ms();
        let Some(idx) = up.pick(&set, key, now, &tried) else {
            return Err(if set.targets.is_empty() {
                GatewayError::NoTarget {
                    upstream: up.name.to_string(),
                }
            } else {
                GatewayError::NoHealthyTarget {
                    upstream: up.name.to_string(),
                    retry_after: health::next_recovery(up, now).as_secs_f64().ceil() as u64,
                }
            });
        };
        let t = &set.targets[idx];
        cx.target = Some(t.target.label.clone());
        let pooled = up.h1.filter(|_| t.target.scheme == uri::Scheme::HTTP);
        own.set_host(if version == Version::HTTP_2 {
            // h2 carries the authority in :authority; a Host header too would be redundant.
            forwarded::Set::Drop
        } else {
            forwarded::Set::Put(std::borrow::Cow::Borrowed(
                kept_host.unwrap_or(&t.target.host_header),
            ))
        });
        // Each try is its own span; the upstream sees it as its parent.
        let span = cx.trace.as_mut().map(|tr| tr.start_try());
        // Our own pool, and no trace field to add: the wire client encodes the request
        // straight from the client's parts, with no `Uri`, `Request` or header copy made
        // for it (`Outgoing::encode`). Otherwise a request is built.
        let direct = pooled.is_some() && span.is_none();
        let request = if direct {
            None
        } else {
            // Without a retry policy this is the only try: the headers move instead of
            // copying.
            let headers = if retry.is_none() {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };
            let mut request = build_request(
                (parts.method.clone(), headers, req_body.take()),
                (unchanged, &path_and_query),
                t,
                version,
                pooled.is_some(),
            )?;
            if pooled.is_none() {
                own.apply(request.headers_mut());
            }
            if let (Some(tr), Some(sp)) = (&cx.trace, &span) {
                tr.inject(sp, request.headers_mut());
            }
            Some(request)
        };

        // The first try starts as the request's time does: no clock read for it (two per
        // try counted, with the timeout's own).
        let try_start = if retries == 0 {
            started
        } else {
            Instant::now()
        };
        let remaining = if retries == 0 {
            total
        } else {
            deadline.saturating_duration_since(try_start)
        };
        let limit = try_limit(per_try, remaining);
        let until = tokio::time::Instant::from_std(try_start) + limit;
        let guard = InFlight::new(t.state.clone(), up.state.clone());
        let rid = &settings.request_id_header;
        // Each branch says its outcome itself (the response is moved once fewer than through
        // a nested result); `Err` is the client's fault, the request's answer.
        let timed_out = || {
            Ok(Outcome::Failed(
                Failure::Timeout,
                GatewayError::UpstreamTimeout {
                    upstream: up.name.to_string(),
                    timeout_ms: limit.as_millis(),
                },
            ))
        };
        let failed = |c: Result<(Failure, GatewayError), GatewayError>| {
            c.map(|(f, err)| Outcome::Failed(f, err))
        };
        let outcome: Result<Outcome, GatewayError> = match (pooled, request) {
            (Some(settings), request) => {
                let out = match request {
                    Some(r) => {
                        let (p, b) = r.into_parts();
                        Outgoing::new(&p, &own, b)
                    }
                    None => {
                        // The client's own target was parsed as one; a rewritten one is
                        // checked as `build_request` would.
                        let pq = match &unchanged {
                            Some(pq) => pq.as_str(),
                            None => {
                                if path_and_query.parse::<uri::PathAndQuery>().is_err() {
                                    return Err(GatewayError::BadRequest(
                                        "the request target cannot be forwarded",
                                    ));
                                }
                                path_and_query.as_str()
                            }
                        };
                        Outgoing::encode(
                            &parts.method,
                            (&t.target.base_path, pq),
                            &parts.headers,
                            &own,
                            req_body.take(),
                        )
                    }
                };
                // Raw fields only where nothing reads the response's fields: no policies.
                let raw = (peer.raw_head && route.chain.is_empty()).then_some(rid);
                // The pool keeps the deadline itself, on the connection's own timer.
                let sent = t
                    .state
                    .pool
                    .send_out(t.target.authority.as_str(), out, &settings, (raw, until))
                    .await;
                match sent {
                    Ok(res) => Ok(Outcome::Response(res)),
                    Err(SendError::TimedOut) => timed_out(),
                    // The client's body broke (a bad chunk, a client gone): its fault, not
                    // the target's, and never retried.
                    Err(e) if e.is_request_body() => Err(match classify(&e, false, up) {
                        Err(too_large) => too_large,
                        Ok(_) => GatewayError::ClientBody,
                    }),
                    Err(e) => failed(classify(&e, e.is_connect(), up)),
                }
            }
            (None, Some(request)) => {
                match tokio::time::timeout_at(until, up.client.request(request)).await {
                    Ok(Ok(res)) => Ok(Outcome::Response(res.map(Pooled::detached))),
                    Ok(Err(e)) => failed(classify(&e, e.is_connect(), up)),
                    Err(_elapsed) => timed_out(),
                }
            }
            // `direct` needs the pool.
            (None, None) => return Err(GatewayError::Internal),
        };
        cx.upstream_latency = Some(crate::clock::now().saturating_duration_since(started));
        let outcome = outcome?;

        if let (Some(tr), Some(sp)) = (&cx.trace, span) {
            let o = match &outcome {
                Outcome::Response(r) => TryOutcome::Status(r.status().as_u16()),
                Outcome::Failed(_, e) => TryOutcome::Error(e.slug()),
            };
            tr.end_try(sp, &parts.method, &up.name, &t.target.label, o);
        }

        // Record what the try said about the target and the upstream.
        let now = now_ms();
        let (target_ok, breaker_ok) = match &outcome {
            Outcome::Response(r) => {
                let s = r.status().as_u16();
                (!up.is_failure(s), !up.is_breaker_failure(s))
            }
            Outcome::Failed(..) => (false, false),
        };
        if !target_ok {
            t.state.failures.fetch_add(1, Ordering::Relaxed);
            t.state.set_last_error(match &outcome {
                Outcome::Response(r) => format!("status {}", r.status().as_u16()),
                Outcome::Failed(_, e) => e.to_string(),
            });
        }
        health::record_passive(up, &t.state, &t.target.label, now, target_ok);
        if let Some(b) = &up.breaker {
            st.breaker
                .record(b, now, breaker_ok, ticket.probe, &up.name);
            ticket.recorded = true;
        }

        // Retry?
        let failure = match &outcome {
            Outcome::Response(r) => Some(Failure::Status(r.status().as_u16())),
            Outcome::Failed(f, _) => Some(*f),
        };
        let retry_ok = match (retry, failure) {
            (Some(r), Some(f)) => {
                retries < r.attempts
                    && r.retries(f, &parts.method)
                    && req_body.replayable()
                    && !(f == Failure::Timeout && limit == remaining)
                    && !matches!(st.breaker.state(), crate::upstream::breaker::BreakerState::Open if up.breaker.is_some())
                    && st.budget.try_retry(&r.budget, now)
            }
            _ => false,
        };
        if retry_ok {
            let r = retry.expect("checked above");
            retries += 1;
            tried.push(idx);
            let wait = r.backoff(retries);
            let left = deadline.saturating_duration_since(Instant::now());
            if wait < left {
                drop(outcome);
                drop(guard);
                tracing::debug!(upstream = %up.name, target = %t.target.label, retry = retries, ?failure, "retrying on another target");
                tokio::time::sleep(wait).await;
                continue;
            }
        }

        return match outcome {
            Outcome::Failed(_, e) => {
                if matches!(e, GatewayError::UpstreamTimeout { .. }) && limit == remaining {
                    // The total ran out, not a per-try limit: say the total.
                    return Err(GatewayError::UpstreamTimeout {
                        upstream: up.name.to_string(),
                        timeout_ms: total.as_millis(),
                    });
                }
                Err(e)
            }
            Outcome::Response(res) => Ok(finish(res, settings, guard, permit, &mut cx.raw_head)),
        };
    }
}

/// One try's request (method, headers and body of the client's), aimed at target `t`.
fn build_request(
    (method, headers, body): (http::Method, HeaderMap, Body),
    (unchanged, path_and_query): (Option<&uri::PathAndQuery>, &str),
    t: &TargetRt,
    version: Version,
    origin_form: bool,
) -> Result<Request<Body>, GatewayError> {
    let target = &t.target;
    let pq: uri::PathAndQuery = match unchanged {
        Some(pq) if target.base_path.is_empty() => Ok(pq.clone()),
        Some(pq) => format!("{}{pq}", target.base_path).parse(),
        None if target.base_path.is_empty() => path_and_query.parse(),
        None => format!("{}{path_and_query}", target.base_path).parse(),
    }
    .map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded"))?;
    // The pooled client picks its connection by the absolute URI and writes origin-form
    // itself; a connection of our own pool is already the target's, so origin-form here.
    let uri = if origin_form {
        Uri::from(pq)
    } else {
        Uri::from_parts({
            let mut u = uri::Parts::default();
            u.scheme = Some(target.scheme.clone());
            u.authority = Some(target.authority.clone());
            u.path_and_query = Some(pq);
            u
        })
        .map_err(|_| GatewayError::Internal)?
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(req)
}

fn finish(
    res: Response<Pooled>,
    settings: &Settings,
    guard: InFlight,
    permit: Option<OwnedSemaphorePermit>,
    raw_out: &mut Option<Box<crate::raw_head::RawFields>>,
) -> Response<Body> {
    let (mut parts, mut body) = res.into_parts();
    // The wire client leaves hop-by-hop fields out as it parses.
    if !body.is_wire() {
        forwarded::strip_response_hop_by_hop(&mut parts.headers);
    }
    let via = settings.via.as_ref().map(|(v11, v2)| {
        if parts.version == Version::HTTP_2 {
            v2
        } else {
            v11
        }
    });
    // Raw fields go beside the response to the connection, Via with them (the wire client
    // kept the map if the upstream sent a Via of its own).
    *raw_out = body.take_raw().map(|mut r| {
        r.via = via.cloned();
        r
    });
    if raw_out.is_none() {
        if let Some(v) = via {
            forwarded::append_via(&mut parts.headers, v);
        }
    }
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        body::boxed_plain(Tracked {
            inner: body,
            _guard: guard,
            _permit: permit,
        }),
    )
}

/// Maps a client error (the pooled client's, or our pool's) to a retry condition and what
/// the user should hear. A body cut by our own size limit is the client's fault (413), not
/// the upstream's: `Err`, never retried.
fn classify(
    e: &(dyn std::error::Error + 'static),
    is_connect: bool,
    up: &Upstream,
) -> Result<(Failure, GatewayError), GatewayError> {
    let upstream = up.name.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut timed_out = matches!(
        e.downcast_ref::<SendError>(),
        Some(SendError::ConnectTimeout { .. })
    );
    while let Some(s) = source {
        if let Some(tl) = s.downcast_ref::<crate::body::TooLarge>() {
            return Err(GatewayError::BodyTooLarge { limit: tl.0 });
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                timed_out = true;
            }
        }
        source = s.source();
    }
    Ok(if is_connect {
        tracing::debug!(upstream = %up.name, error = %e, "connecting upstream failed");
        if timed_out {
            (
                Failure::Connect,
                GatewayError::UpstreamConnectTimeout { upstream },
            )
        } else {
            (Failure::Connect, GatewayError::UpstreamConnect { upstream })
        }
    } else {
        tracing::debug!(upstream = %up.name, error = ?e, "upstream request failed");
        (Failure::Reset, GatewayError::UpstreamProtocol { upstream })
    })
}

/// Counts a request in flight on its target and upstream until dropped.
struct InFlight {
    target: Arc<TargetState>,
    upstream: Arc<UpstreamState>,
}

impl InFlight {
    fn new(target: Arc<TargetState>, upstream: Arc<UpstreamState>) -> InFlight {
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        target.requests.fetch_add(1, Ordering::Relaxed);
        upstream.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { target, upstream }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The upstream's response body, holding the request's in-flight count and bulkhead
    /// permit until it is done or dropped.
    struct Tracked {
        #[pin]
        inner: Pooled,
        _guard: InFlight,
        _permit: Option<OwnedSemaphorePermit>,
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a try may take: the per-try timeout, never beyond what is left of the total.
fn try_limit(per_try: Option<Duration>, remaining: Duration) -> Duration {
    per_try.map_or(remaining, |p| p.min(remaining))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_try_never_exceeds_the_total() {
        let s = Duration::from_secs;
        assert_eq!(try_limit(None, s(5)), s(5));
        assert_eq!(try_limit(Some(s(1)), s(5)), s(1));
        assert_eq!(try_limit(Some(s(9)), s(5)), s(5));
    }

    #[test]
    fn only_kept_bodies_replay() {
        assert!(ReqBody::Empty.replayable());
        assert!(ReqBody::Kept(Bytes::from_static(b"x")).replayable());
        let mut s = ReqBody::Stream(Some(body::full("x")));
        assert!(!s.replayable());
        let _ = s.take();
        assert!(s.take().is_end_stream());
    }
}
