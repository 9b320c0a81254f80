//! The HTTP backend: forwards a request to one target of an upstream over a pooled
//! keep-alive connection and streams the response back.
//!
//! The request that goes upstream is the normalised one (same path the router and policies
//! saw), rewritten as the route says, with hop-by-hop headers removed and the gateway's own
//! headers (`X-Forwarded-*`, `Via`, request id) set last so nothing the client sent can undo
//! them. Each try carries a `traceparent` naming its own span when tracing is on, and counts
//! as in flight on its target until the response body is done.

use crate::body::{self, Body};
use crate::compile::{Route, Settings};
use crate::error::GatewayError;
use crate::forwarded;
use crate::observe::metrics::InFlight;
use crate::observe::trace::TryOutcome;
use crate::policy::Ctx;
use crate::upstream::Upstream;
use http::{header, uri, HeaderValue, Request, Response, Uri, Version};
use std::net::IpAddr;
use std::time::Instant;

/// Facts about the client connection the forwarder needs.
pub struct Peer {
    pub ip: IpAddr,
    pub trusted: bool,
    pub tls: bool,
}

pub async fn forward(
    up: &Upstream,
    route: &Route,
    settings: &Settings,
    cx: &mut Ctx,
    peer: &Peer,
    req: Request<Body>,
) -> Result<Response<Body>, GatewayError> {
    let target = up.pick().ok_or_else(|| GatewayError::NoTarget {
        upstream: up.name.to_string(),
    })?;
    cx.target = Some(target.label.clone());

    let (mut parts, body) = req.into_parts();
    // The host the client asked for, as routing saw it: the request target's authority
    // (HTTP/2 `:authority`, HTTP/1.1 absolute-form), else the Host header. An HTTP/2 client
    // sends no Host header at all.
    let original_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());

    // Path: normalised, rewritten, under the target's base path; query as the client sent it.
    let path = route.rewrite.apply(&cx.path, &cx.params);
    let query = parts.uri.query();
    let mut pq = String::with_capacity(
        target.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&target.base_path);
    pq.push_str(&path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let pq: uri::PathAndQuery = pq
        .parse()
        .map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded"))?;
    parts.uri = Uri::from_parts({
        let mut u = uri::Parts::default();
        u.scheme = Some(target.scheme.clone());
        u.authority = Some(target.authority.clone());
        u.path_and_query = Some(pq);
        u
    })
    .map_err(|_| GatewayError::Internal)?;

    // Headers.
    let client_version = parts.version;
    forwarded::strip_hop_by_hop(
        &mut parts.headers,
        &route.protected,
        &settings.request_id_header,
    );
    forwarded::set_forwarded(
        &mut parts.headers,
        peer.ip,
        peer.trusted,
        peer.tls,
        original_host.as_ref(),
    );
    let host = match &original_host {
        Some(h) if route.preserve_host => h.clone(),
        _ => target.host_header.clone(),
    };
    parts.headers.insert(header::HOST, host);
    if let Some((v11, v2)) = &settings.via {
        forwarded::append_via(
            &mut parts.headers,
            if client_version == Version::HTTP_2 {
                v2
            } else {
                v11
            },
        );
    }
    parts
        .headers
        .insert(settings.request_id_header.clone(), cx.request_id.clone());
    parts.version = match up.protocol {
        crate::config::UpstreamProtocol::Http1 => Version::HTTP_11,
        crate::config::UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    if parts.version == Version::HTTP_2 {
        // h2 carries the authority in :authority; a Host header too would be redundant.
        parts.headers.remove(header::HOST);
    }

    let span = cx.trace.as_mut().map(|t| t.start_try());
    if let (Some(t), Some(s)) = (&cx.trace, &span) {
        t.inject(s, &mut parts.headers);
    }
    let method = parts.method.clone();

    let timeout = route.request_timeout.unwrap_or(up.request_timeout);
    let in_flight = target.stats.in_flight_guard();
    let sent = Instant::now();
    let result =
        tokio::time::timeout(timeout, up.client.request(Request::from_parts(parts, body))).await;
    cx.upstream_latency = Some(sent.elapsed());
    let result = match result {
        Err(_) => Err(GatewayError::UpstreamTimeout {
            upstream: up.name.to_string(),
            timeout_ms: timeout.as_millis(),
        }),
        Ok(Err(e)) => Err(classify(&e, up)),
        Ok(Ok(res)) => Ok(res),
    };
    if let (Some(t), Some(s)) = (&cx.trace, span) {
        let outcome = match &result {
            Ok(r) => TryOutcome::Status(r.status().as_u16()),
            Err(e) => TryOutcome::Error(e.slug()),
        };
        t.end_try(s, &method, &up.name, &target.label, outcome);
    }
    let res = result?;

    let (mut parts, body) = res.into_parts();
    forwarded::strip_response_hop_by_hop(&mut parts.headers);
    if let Some((v11, v2)) = &settings.via {
        forwarded::append_via(
            &mut parts.headers,
            if parts.version == Version::HTTP_2 {
                v2
            } else {
                v11
            },
        );
    }
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(
        parts,
        body::boxed(Counted {
            inner: body,
            _in_flight: in_flight,
        }),
    ))
}

pin_project_lite::pin_project! {
    /// An upstream response body that keeps its request counted as in flight on the target
    /// until the body is done or dropped.
    struct Counted<B> {
        #[pin]
        inner: B,
        _in_flight: InFlight,
    }
}

impl<B: http_body::Body> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Maps a client error to what the user should hear. A body cut by our own size limit is the
/// client's fault (413), not the upstream's.
fn classify(e: &hyper_util::client::legacy::Error, up: &Upstream) -> GatewayError {
    let upstream = up.name.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut timed_out = false;
    while let Some(s) = source {
        if let Some(tl) = s.downcast_ref::<crate::body::TooLarge>() {
            return GatewayError::BodyTooLarge { limit: tl.0 };
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                timed_out = true;
            }
        }
        source = s.source();
    }
    if e.is_connect() {
        if timed_out {
            GatewayError::UpstreamConnectTimeout { upstream }
        } else {
            GatewayError::UpstreamConnect { upstream }
        }
    } else {
        tracing::debug!(upstream = %up.name, error = %e, "upstream request failed");
        GatewayError::UpstreamProtocol { upstream }
    }
}
