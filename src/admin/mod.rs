//! The admin listener (`admin.bind`): the operator's API, separate from client traffic.
//!
//! - [`handle`] is what the server calls per admin request: it checks the bearer token (when
//!   `admin.token` is set, in constant time, before anything else, so an unauthenticated
//!   client learns nothing, not even which paths exist), then hands the request to an axum
//!   router. axum runs only here; the proxy path stays hand-written hyper.
//! - [`api`] has the endpoints. Each is an axum handler with a `#[utoipa::path]` annotation,
//!   and the router and the OpenAPI document (`GET /openapi.json`) are built from the same
//!   list, so they cannot disagree.
//! - [`redact`] keeps secrets out of `GET /config`.
//!
//! Every error is RFC 9457 problem+json, like everything else the gateway says: 401 without
//! or with a wrong token, 404 for an unknown path, 405 (with `Allow`) for a wrong method,
//! 422 for a config that does not compile.
//!
//! A non-loopback `admin.bind` without a token is refused when the config is compiled.

pub mod api;
pub mod redact;

use crate::body::{self, Body};
use crate::error::problem;
use crate::observe::request_id;
use crate::proxy::Snapshot;
use crate::server::ServerHandle;
use http::{header, HeaderValue, Request, Response, StatusCode};

/// The id of one admin request (an axum extension), echoed in `X-Request-Id` and problems.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

pub async fn handle<B>(h: &ServerHandle, snap: &Snapshot, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let rid = request_id::generate();
    let mut res = if authorized(snap, &req) {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(RequestId(rid.clone()));
        api::call(h.clone(), req).await.map(body::boxed)
    } else {
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "admin-unauthorized",
            "a valid admin bearer token is required (Authorization: Bearer TOKEN)",
            rid.to_str().unwrap_or(""),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
        );
        r
    };
    res.headers_mut().insert("x-request-id", rid);
    res.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// Whether the request may use the admin API: no token configured, or the right one.
fn authorized<B>(snap: &Snapshot, req: &Request<B>) -> bool {
    let Some(token) = snap.gateway.admin.as_ref().and_then(|a| a.token.as_deref()) else {
        return true;
    };
    let mut all = req.headers().get_all(header::AUTHORIZATION).iter();
    let given = match (all.next(), all.next()) {
        (Some(v), None) => v.as_bytes(),
        _ => return false,
    };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let Some(given) = given
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case(b"bearer "))
        .map(|_| &given[7..])
    else {
        return false;
    };
    constant_time_eq(given, token.as_bytes())
}

/// Compares without an early exit on the first differing byte, so response timing does not
/// reveal how much of a guess was right. (The length is not secret.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The JSON response of an admin endpoint.
pub(crate) fn json_response<T: serde::Serialize>(
    status: StatusCode,
    v: &T,
) -> Response<axum::body::Body> {
    let mut r = Response::new(axum::body::Body::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    ));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
