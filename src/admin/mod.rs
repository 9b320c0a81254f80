//! The admin listener (`admin.bind`): operator endpoints, separate from client traffic.
//!
//! For now: `GET /status` (version, config generation, reload counts, listeners),
//! `GET /routes` (the compiled route table) and `GET /upstreams` (every upstream's targets
//! with health, in-flight requests and last error, breaker, bulkhead, retry budget,
//! discovery). Metrics and the full admin API grow here. A
//! configured `admin.token` is required as `Authorization: Bearer TOKEN`, compared in
//! constant time; a non-loopback `bind` without a token is refused at config compile.

use crate::body::{self, Body};
use crate::error::problem;
use crate::proxy::Snapshot;
use crate::server::ServerHandle;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

pub async fn handle<B>(h: &ServerHandle, snap: &Snapshot, req: Request<B>) -> Response<Body> {
    if let Some(token) = snap.gateway.admin.as_ref().and_then(|a| a.token.as_deref()) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            let mut r = problem(
                StatusCode::UNAUTHORIZED,
                "admin-unauthorized",
                "a valid admin bearer token is required",
                "",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
            );
            return r;
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "the admin endpoints accept GET",
            "",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/status" => json(&h.status()),
        "/upstreams" => json(&serde_json::json!({ "upstreams": h.upstream_states() })),
        "/routes" => {
            let mut r = Response::new(body::full(snap.gateway.route_table()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        _ => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such admin endpoint; try /status, /routes or /upstreams",
            "",
        ),
    }
}

fn json(v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(body::full(serde_json::to_vec_pretty(v).unwrap_or_default()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
