//! Everything the gateway says itself, in one enum with one exhaustive mapping to an
//! RFC 9457 `application/problem+json` response.
//!
//! Each variant records whose fault it was ([`Fault`]), which later decides logging, metrics
//! and whether a retry on another target is safe. The body always has the same shape:
//! `type`, `title`, `status`, `detail` and `request_id`.

use crate::body::{self, Body};
use http::{header, HeaderValue, Response, StatusCode};

/// Who caused a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Gateway,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches this request")]
    RouteNotFound,
    #[error("this route does not accept the method")]
    MethodNotAllowed { allow: HeaderValue },
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: u64 },
    #[error("the request target is too long")]
    UriTooLong,
    #[error("{0}")]
    Gone(String),
    #[error("no target of upstream {upstream:?} is available")]
    NoTarget { upstream: String },
    #[error("no target of upstream {upstream:?} is healthy")]
    NoHealthyTarget { upstream: String, retry_after: u64 },
    #[error("the circuit breaker of upstream {upstream:?} is open")]
    CircuitOpen { upstream: String, retry_after: u64 },
    #[error("upstream {upstream:?} has {limit} requests in flight, its limit")]
    UpstreamBusy { upstream: String, limit: usize },
    #[error("could not connect to upstream {upstream:?}")]
    UpstreamConnect { upstream: String },
    #[error("connecting to upstream {upstream:?} timed out")]
    UpstreamConnectTimeout { upstream: String },
    #[error("upstream {upstream:?} did not answer within {timeout_ms} ms")]
    UpstreamTimeout { upstream: String, timeout_ms: u128 },
    #[error("upstream {upstream:?} sent an invalid response")]
    UpstreamProtocol { upstream: String },
    #[error("the request body could not be read")]
    ClientBody,
    /// No valid credentials. The challenges become `WWW-Authenticate` headers; the detail never
    /// says which check failed.
    #[error("valid credentials are required for this resource")]
    Unauthorized {
        challenges: std::sync::Arc<[HeaderValue]>,
    },
    /// Authenticated (or refused by address) but not allowed. `challenge` is the RFC 6750
    /// `insufficient_scope` answer for bearer tokens.
    #[error("access to this resource is not allowed")]
    Forbidden { challenge: Option<HeaderValue> },
    /// An identity provider (JWKS, introspection) could not be asked.
    #[error("the identity provider could not be reached; try again later")]
    AuthUnavailable,
    #[error("internal error")]
    Internal,
    #[error("rate limit {policy:?} exceeded; retry in {retry_after} s")]
    RateLimited { policy: String, retry_after: u64 },
    #[error("more than {max} requests in flight {}", if *route_wide { "on this route" } else { "for this client" })]
    ConcurrencyLimited { max: u64, route_wide: bool },
    #[error("rate limits cannot be checked: the shared state is unavailable")]
    StateUnavailable,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            RouteNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            BadRequest(_) | ClientBody => StatusCode::BAD_REQUEST,
            Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            UriTooLong => StatusCode::URI_TOO_LONG,
            Gone(_) => StatusCode::GONE,
            NoTarget { .. } | NoHealthyTarget { .. } | CircuitOpen { .. } | UpstreamBusy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamConnect { .. } | UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            UpstreamConnectTimeout { .. } | UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            // Keyed by client, the client is over its share: 429. A route-wide cap means the
            // backend's capacity is used up, which is no one client's fault: 503.
            ConcurrencyLimited {
                route_wide: false, ..
            } => StatusCode::TOO_MANY_REQUESTS,
            ConcurrencyLimited {
                route_wide: true, ..
            }
            | StateUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The last part of the problem `type` URI; stable, for clients to switch on.
    pub fn slug(&self) -> &'static str {
        use GatewayError::*;
        match self {
            RouteNotFound => "route-not-found",
            MethodNotAllowed { .. } => "method-not-allowed",
            BadRequest(_) => "bad-request",
            ClientBody => "bad-request-body",
            Unauthorized { .. } => "unauthorized",
            Forbidden { .. } => "forbidden",
            AuthUnavailable => "identity-provider-unavailable",
            BodyTooLarge { .. } => "body-too-large",
            HeadersTooLarge { .. } => "headers-too-large",
            UriTooLong => "uri-too-long",
            Gone(_) => "gone",
            NoTarget { .. } => "no-upstream-target",
            NoHealthyTarget { .. } => "no-healthy-target",
            CircuitOpen { .. } => "circuit-open",
            UpstreamBusy { .. } => "upstream-busy",
            UpstreamConnect { .. } => "upstream-unreachable",
            UpstreamConnectTimeout { .. } => "upstream-connect-timeout",
            UpstreamTimeout { .. } => "upstream-timeout",
            UpstreamProtocol { .. } => "upstream-bad-response",
            Internal => "internal",
            RateLimited { .. } => "rate-limited",
            ConcurrencyLimited { .. } => "concurrency-limited",
            StateUnavailable => "rate-limit-unavailable",
        }
    }

    pub fn fault(&self) -> Fault {
        use GatewayError::*;
        match self {
            RouteNotFound
            | MethodNotAllowed { .. }
            | BadRequest(_)
            | ClientBody
            | BodyTooLarge { .. }
            | HeadersTooLarge { .. }
            | UriTooLong
            | Gone(_)
            | Unauthorized { .. }
            | Forbidden { .. }
            | RateLimited { .. }
            | ConcurrencyLimited { .. } => Fault::Client,
            AuthUnavailable => Fault::Upstream,
            NoTarget { .. }
            | NoHealthyTarget { .. }
            | CircuitOpen { .. }
            | UpstreamBusy { .. }
            | UpstreamConnect { .. }
            | UpstreamConnectTimeout { .. }
            | UpstreamTimeout { .. }
            | UpstreamProtocol { .. } => Fault::Upstream,
            Internal | StateUnavailable => Fault::Gateway,
        }
    }

    /// Whether the request certainly never reached the upstream, so another try is safe
    /// whatever the method.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamConnect { .. } | GatewayError::UpstreamConnectTimeout { .. }
        )
    }

    /// The problem+json response for this error.
    pub fn to_response(&self, request_id: &str) -> Response<Body> {
        let mut res = problem(self.status(), self.slug(), &self.to_string(), request_id);
        match self {
            GatewayError::MethodNotAllowed { allow } => {
                res.headers_mut().insert(header::ALLOW, allow.clone());
            }
            GatewayError::Unauthorized { challenges } => {
                for c in challenges.iter() {
                    res.headers_mut()
                        .append(header::WWW_AUTHENTICATE, c.clone());
                }
            }
            GatewayError::Forbidden { challenge: Some(c) } => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, c.clone());
            }
            _ => {}
        }
        if let Some(secs) = self.retry_after() {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        let retry_after = match self {
            GatewayError::RateLimited { retry_after, .. } => Some((*retry_after).max(1)),
            GatewayError::ConcurrencyLimited { .. } | GatewayError::StateUnavailable => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }

    /// Seconds for `Retry-After` on the 503s that say "come back later".
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::NoHealthyTarget { retry_after, .. }
            | GatewayError::CircuitOpen { retry_after, .. } => Some((*retry_after).max(1)),
            GatewayError::UpstreamBusy { .. } => Some(1),
            _ => None,
        }
    }
}

/// Builds an RFC 9457 response. Used by [`GatewayError`] and by anything else that must speak
/// in the gateway's own voice (the admin listener).
pub fn problem(status: StatusCode, slug: &str, detail: &str, request_id: &str) -> Response<Body> {
    problem_ext(status, slug, detail, request_id, serde_json::Map::new())
}

/// [`problem`] with RFC 9457 extension members (e.g. the admin API's `diagnostics`).
pub fn problem_ext(
    status: StatusCode,
    slug: &str,
    detail: &str,
    request_id: &str,
    extensions: serde_json::Map<String, serde_json::Value>,
) -> Response<Body> {
    let mut json = serde_json::json!({
        "type": format!("urn:portcullis:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "request_id": request_id,
    });
    if let Some(obj) = json.as_object_mut() {
        for (k, v) in extensions {
            obj.entry(k).or_insert(v);
        }
    }
    let bytes = serde_json::to_vec(&json).unwrap_or_default();
    let mut res = Response::new(body::full(bytes));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problem_shape() {
        let res = GatewayError::BodyTooLarge { limit: 10 }.to_response("abc");
        assert_eq!(res.status(), 413);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], "urn:portcullis:problem:body-too-large");
        assert_eq!(v["title"], "Payload Too Large");
        assert_eq!(v["status"], 413);
        assert_eq!(v["request_id"], "abc");
        assert!(v["detail"].as_str().unwrap().contains("10 bytes"));
    }

    #[test]
    fn unavailable_has_retry_after() {
        let res = GatewayError::CircuitOpen {
            upstream: "u".into(),
            retry_after: 7,
        }
        .to_response("x");
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()[header::RETRY_AFTER], "7");
        let res = GatewayError::NoHealthyTarget {
            upstream: "u".into(),
            retry_after: 0,
        }
        .to_response("x");
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let res = GatewayError::UpstreamBusy {
            upstream: "u".into(),
            limit: 3,
        }
        .to_response("x");
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        assert!(GatewayError::RouteNotFound
            .to_response("x")
            .headers()
            .get(header::RETRY_AFTER)
            .is_none());
    }

    #[test]
    fn unauthorized_has_every_challenge() {
        let res = GatewayError::Unauthorized {
            challenges: vec![
                HeaderValue::from_static("Bearer realm=\"x\""),
                HeaderValue::from_static("Basic realm=\"x\""),
            ]
            .into(),
        }
        .to_response("x");
        assert_eq!(res.status(), 401);
        let all: Vec<_> = res
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .collect();
        assert_eq!(all, ["Bearer realm=\"x\"", "Basic realm=\"x\""]);
        let res = GatewayError::Forbidden { challenge: None }.to_response("x");
        assert_eq!(res.status(), 403);
        assert!(!res.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn method_not_allowed_has_allow() {
        let res = GatewayError::MethodNotAllowed {
            allow: HeaderValue::from_static("GET, HEAD"),
        }
        .to_response("x");
        assert_eq!(res.headers()[header::ALLOW], "GET, HEAD");
    }
}
