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
    #[error("{0}")]
    Gone(String),
    #[error("no target of upstream {upstream:?} is available")]
    NoTarget { upstream: String },
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
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            RouteNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            BadRequest(_) | ClientBody => StatusCode::BAD_REQUEST,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Gone(_) => StatusCode::GONE,
            NoTarget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamConnect { .. } | UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            UpstreamConnectTimeout { .. } | UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
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
            BodyTooLarge { .. } => "body-too-large",
            HeadersTooLarge { .. } => "headers-too-large",
            Gone(_) => "gone",
            NoTarget { .. } => "no-upstream-target",
            UpstreamConnect { .. } => "upstream-unreachable",
            UpstreamConnectTimeout { .. } => "upstream-connect-timeout",
            UpstreamTimeout { .. } => "upstream-timeout",
            UpstreamProtocol { .. } => "upstream-bad-response",
            Internal => "internal",
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
            | Gone(_) => Fault::Client,
            NoTarget { .. }
            | UpstreamConnect { .. }
            | UpstreamConnectTimeout { .. }
            | UpstreamTimeout { .. }
            | UpstreamProtocol { .. } => Fault::Upstream,
            Internal => Fault::Gateway,
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
        if let GatewayError::MethodNotAllowed { allow } = self {
            res.headers_mut().insert(header::ALLOW, allow.clone());
        }
        res
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
    fn method_not_allowed_has_allow() {
        let res = GatewayError::MethodNotAllowed {
            allow: HeaderValue::from_static("GET, HEAD"),
        }
        .to_response("x");
        assert_eq!(res.headers()[header::ALLOW], "GET, HEAD");
    }
}
