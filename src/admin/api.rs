//! The admin endpoints and their OpenAPI document.
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /status` | status, version, uptime, config generation, reload counts |
//! | `GET /config` | the running config (after `${VAR}` interpolation), secrets redacted |
//! | `GET /routes` | the compiled routes |
//! | `GET /upstreams` | upstreams and their targets with live state |
//! | `GET /consumers` | consumers without their credentials |
//! | `POST /reload` | re-read and apply the config file (diagnostics on failure) |
//! | `POST /validate` | compile a candidate config (the body) without applying it |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//! | `GET /openapi.json` | this API as OpenAPI 3.1 |
//!
//! The router and the document come from one `OpenApiRouter` built from the handlers'
//! `#[utoipa::path]` annotations ([`API`]), so every documented path is served and every
//! served path is documented.

use super::redact::redact;
use super::{json_response, RequestId};
use crate::backend::Backend;
use crate::compile::Gateway;
use crate::config::Diagnostics;
use crate::error::problem_ext;
use crate::server::{ServerHandle, StartError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use serde::Serialize;
use serde_json::Value;
use std::sync::LazyLock;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Handler state: the server, for its current snapshot, reloads and metrics.
#[derive(Clone)]
pub struct Admin {
    h: ServerHandle,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis admin API",
        description = "Operate a running Portcullis gateway. Every error is RFC 9457 problem+json. \
                       When `admin.token` is set, every endpoint needs `Authorization: Bearer TOKEN`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(Problem, Diagnostic))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The router (without state) and the OpenAPI document as JSON, built once.
pub static API: LazyLock<(axum::Router<Admin>, String)> = LazyLock::new(|| {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(config))
        .routes(routes!(routes_list))
        .routes(routes!(upstreams))
        .routes(routes!(consumers))
        .routes(routes!(reload))
        .routes(routes!(validate))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
        .split_for_parts();
    (
        router,
        doc.to_pretty_json().expect("the document serialises"),
    )
});

/// The OpenAPI document (JSON).
pub fn openapi_json() -> &'static str {
    &API.1
}

/// Runs one (authorised) admin request.
pub async fn call(h: ServerHandle, req: Request<axum::body::Body>) -> Response {
    use tower_service::Service;
    let mut router = API
        .0
        .clone()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Admin { h });
    match router.call(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

// === shapes ===

/// An RFC 9457 problem, as every admin error is answered.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `urn:portcullis:problem:SLUG`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub request_id: String,
    /// Config problems (`POST /reload`, `POST /validate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Vec<Diagnostic>>,
}

/// One config problem, located.
#[derive(Serialize, ToSchema)]
pub struct Diagnostic {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// Field path such as `routes[2].upstream`.
    pub path: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    /// Always `ok` while the gateway answers.
    pub status: String,
    pub version: String,
    pub uptime_seconds: u64,
    /// 1 after start, +1 per successful reload.
    pub config_generation: u64,
    pub reloads: Reloads,
    pub routes: usize,
    pub upstreams: Vec<String>,
    pub listeners: Vec<Listener>,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: u64,
    /// Spans dropped because the exporter fell behind.
    pub spans_dropped: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Reloads {
    pub ok: u64,
    pub failed: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Listener {
    pub name: String,
    pub addr: String,
}

/// The running config.
#[derive(Serialize, ToSchema)]
pub struct RunningConfig {
    /// The file it was read from.
    pub file: String,
    pub generation: u64,
    /// The config after `${VAR}` interpolation, secrets replaced by `[redacted]`.
    #[schema(value_type = Object)]
    pub config: Value,
}

#[derive(Serialize, ToSchema)]
pub struct RouteView {
    pub name: String,
    /// Hosts the route matches; empty = any host.
    pub hosts: Vec<String>,
    /// Methods the route matches; empty = any method.
    pub methods: Vec<String>,
    pub path: String,
    /// `upstream` or `respond`.
    pub backend: String,
    /// The upstream, for `backend: upstream`.
    pub upstream: Option<String>,
    /// Policy names in the order the route lists them.
    pub policies: Vec<String>,
    /// One line as `portcullis routes` prints it.
    pub summary: String,
}

#[derive(Serialize, ToSchema)]
pub struct UpstreamView {
    pub name: String,
    /// `http1`, `http2` or `auto` (ALPN over TLS).
    pub protocol: String,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub targets: Vec<TargetView>,
    /// Everything the upstream code keeps about it: balancer, per-target health, ejections,
    /// requests and failures, circuit breaker window, bulkhead, retry budget, discovery.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct TargetView {
    /// `host:port`.
    pub target: String,
    pub url: String,
    pub weight: u64,
    pub state: TargetState,
}

/// Live state of a target.
#[derive(Serialize, ToSchema)]
pub struct TargetState {
    /// False while health checking has ejected the target.
    pub healthy: bool,
    /// Requests waiting for or streaming a response from it.
    pub in_flight: i64,
    /// `closed`, `half_open` or `open` (the upstream's breaker).
    pub circuit: String,
    /// The last failure seen on this target, if any.
    pub last_error: Option<String>,
}

/// A consumer as the admin API shows it: never its credentials.
#[derive(Serialize, ToSchema)]
pub struct ConsumerView {
    pub name: String,
    pub roles: Vec<String>,
    /// Which kinds of credential it has (`api_keys`, `basic`, ...), never their values.
    pub credentials: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Reloaded {
    /// `reloaded`.
    pub status: String,
    pub generation: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Validated {
    pub valid: bool,
    pub routes: usize,
    pub upstreams: usize,
    pub listeners: usize,
}

// === handlers ===

/// Status and version.
#[utoipa::path(get, path = "/status", tag = "status",
    responses(
        (status = 200, description = "The gateway is up", body = Status),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn status(State(a): State<Admin>) -> Response {
    let h = &a.h;
    let snap = h.current();
    let (ok, failed) = h.reload_counts();
    json_response(
        StatusCode::OK,
        &Status {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: h.uptime().as_secs(),
            config_generation: snap.generation,
            reloads: Reloads { ok, failed },
            routes: snap.gateway.routes.len(),
            upstreams: snap.gateway.upstreams.keys().cloned().collect(),
            listeners: h
                .addrs()
                .into_iter()
                .map(|(name, a)| Listener {
                    name,
                    addr: a.to_string(),
                })
                .collect(),
            access_log_dropped: snap.log.as_ref().map_or(0, |l| l.dropped()),
            spans_dropped: snap.tracer.as_ref().map_or(0, |t| t.dropped()),
        },
    )
}

/// The running config with secrets redacted.
#[utoipa::path(get, path = "/config", tag = "config",
    responses(
        (status = 200, description = "The running config", body = RunningConfig),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn config(State(a): State<Admin>) -> Response {
    let snap = a.h.current();
    let src = &snap.gateway.source;
    json_response(
        StatusCode::OK,
        &RunningConfig {
            file: src.file.clone(),
            generation: snap.generation,
            config: src.effective.as_ref().map(redact).unwrap_or(Value::Null),
        },
    )
}

/// The compiled routes.
#[utoipa::path(get, path = "/routes", tag = "config",
    responses(
        (status = 200, description = "Routes in config order", body = Vec<RouteView>),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn routes_list(State(a): State<Admin>) -> Response {
    json_response(StatusCode::OK, &route_views(&a.h.current().gateway))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn route_views(gw: &Gateway) -> Vec<RouteView> {
    let cfg = gw.source.effective.as_ref();
    gw.routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // A running config compiled every route, so compiled and written routes align.
            let written = cfg.and_then(|c| c["routes"].get(i)).unwrap_or(&Value::Null);
            let m = &written["match"];
            let mut policies: Vec<String> = written["policies"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_object()?.keys().next().cloned())
                        .collect()
                })
                .unwrap_or_default();
            if !written["deprecation"].is_null() {
                policies.push("deprecation".into());
            }
            let (backend, upstream) = match &r.backend {
                Backend::Http(u) => ("upstream", Some(u.name.to_string())),
                Backend::Split(_) => ("split", None),
                Backend::Respond(_) => ("respond", None),
            };
            RouteView {
                name: r.name.to_string(),
                hosts: strings(&m["hosts"]),
                methods: strings(&m["methods"]),
                path: m["path"].as_str().unwrap_or("/{*rest}").to_owned(),
                backend: backend.into(),
                upstream,
                policies,
                summary: r.summary.trim_end().to_owned(),
            }
        })
        .collect()
}

/// Upstreams and their targets with live state.
#[utoipa::path(get, path = "/upstreams", tag = "config",
    responses(
        (status = 200, description = "Upstreams by name", body = Vec<UpstreamView>),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn upstreams(State(a): State<Admin>) -> Response {
    let snap = a.h.current();
    let gw = &snap.gateway;
    let views: Vec<UpstreamView> = gw
        .upstreams
        .values()
        .map(|u| UpstreamView {
            name: u.name.to_string(),
            protocol: match u.protocol {
                crate::config::UpstreamProtocol::Http1 => "http1",
                crate::config::UpstreamProtocol::Http2 => "http2",
                crate::config::UpstreamProtocol::Auto => "auto",
            }
            .into(),
            connect_timeout_ms: u.connect_timeout.as_millis() as u64,
            request_timeout_ms: u.request_timeout.as_millis() as u64,
            targets: {
                let now = crate::upstream::window::now_ms();
                let circuit = match u.state.breaker.state() {
                    crate::upstream::breaker::BreakerState::Closed => "closed",
                    crate::upstream::breaker::BreakerState::HalfOpen => "half_open",
                    crate::upstream::breaker::BreakerState::Open => "open",
                };
                u.targets()
                    .targets
                    .iter()
                    .map(|t| TargetView {
                        target: t.target.label.to_string(),
                        url: format!(
                            "{}://{}{}",
                            t.target.scheme, t.target.authority, t.target.base_path
                        ),
                        weight: u64::from(t.weight),
                        state: TargetState {
                            healthy: t.state.health.available(now),
                            in_flight: t.state.in_flight.load(std::sync::atomic::Ordering::Relaxed)
                                as i64,
                            circuit: circuit.into(),
                            last_error: t.state.last_error().map(|e| e.message.clone()),
                        },
                    })
                    .collect()
            },
            detail: serde_json::to_value(u.status()).unwrap_or_default(),
        })
        .collect();
    json_response(StatusCode::OK, &views)
}

/// Consumers, without their credentials.
#[utoipa::path(get, path = "/consumers", tag = "config",
    responses(
        (status = 200, description = "Consumers in config order (empty when none are configured)", body = Vec<ConsumerView>),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn consumers(State(a): State<Admin>) -> Response {
    let snap = a.h.current();
    json_response(StatusCode::OK, &consumer_views(&snap.gateway))
}

/// Consumers as written in the config's `consumers:` list. Only the name, the roles and the
/// *kinds* of credential are taken, so no credential can reach the response whatever the
/// authentication code stores.
fn consumer_views(gw: &Gateway) -> Vec<ConsumerView> {
    let list = gw
        .source
        .effective
        .as_ref()
        .and_then(|c| c["consumers"].as_array().cloned())
        .unwrap_or_default();
    list.iter()
        .map(|c| ConsumerView {
            name: c["name"].as_str().unwrap_or("").to_owned(),
            roles: strings(&c["roles"]),
            credentials: c
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, v)| {
                            !matches!(k.as_str(), "name" | "roles" | "limits" | "tags")
                                && !v.is_null()
                        })
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// Re-reads the config file and applies it. On failure the running config stays.
#[utoipa::path(post, path = "/reload", tag = "control",
    responses(
        (status = 200, description = "Reloaded", body = Reloaded),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file has errors; the previous config keeps serving", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The new config could not be applied (a listener could not bind, ...); the previous config keeps serving", body = Problem, content_type = "application/problem+json"),
    ))]
async fn reload(State(a): State<Admin>, Extension(rid): Extension<RequestId>) -> Response {
    match a.h.reload().await {
        Ok(generation) => json_response(
            StatusCode::OK,
            &Reloaded {
                status: "reloaded".into(),
                generation,
            },
        ),
        Err(StartError::Config(d)) => invalid(
            &d,
            "the config has errors; the previous config keeps serving",
            &rid,
        ),
        Err(e) => problem_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reload-failed",
            &format!("{e}; the previous config keeps serving"),
            &rid,
            None,
        ),
    }
}

/// Compiles a candidate config (the request body, YAML) without applying it.
#[utoipa::path(post, path = "/validate", tag = "control",
    request_body(content = String, content_type = "application/yaml", description = "A whole config file"),
    responses(
        (status = 200, description = "The config is valid", body = Validated),
        (status = 400, description = "The body is not UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 2 MB", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The config has errors", body = Problem, content_type = "application/problem+json"),
    ))]
async fn validate(
    State(a): State<Admin>,
    Extension(rid): Extension<RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        // Too large (axum's 2 MB default) or cut off: still a problem+json answer.
        Err(e) => {
            let status = e.status();
            let slug = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body-too-large"
            } else {
                "bad-request-body"
            };
            return problem_response(status, slug, &e.body_text(), &rid, None);
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return problem_response(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "the body must be a UTF-8 YAML document",
            &rid,
            None,
        );
    };
    // Compiling reads certificate files: keep it off the async workers.
    let h = a.h.clone();
    let text = text.to_owned();
    let compiled = tokio::task::spawn_blocking(move || h.validate("candidate", &text)).await;
    match compiled {
        Ok(Ok(gw)) => json_response(
            StatusCode::OK,
            &Validated {
                valid: true,
                routes: gw.routes.len(),
                upstreams: gw.upstreams.len(),
                listeners: gw.listeners.len(),
            },
        ),
        Ok(Err(d)) => invalid(&d, "the config has errors", &rid),
        Err(_) => problem_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "validation failed unexpectedly",
            &rid,
            None,
        ),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "status",
    responses(
        (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn metrics(State(a): State<Admin>) -> Response {
    let mut r = Response::new(axum::body::Body::from(a.h.metrics().encode()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "status",
    responses(
        (status = 200, description = "OpenAPI 3.1 document of the admin API", body = Object),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn openapi() -> Response {
    let mut r = Response::new(axum::body::Body::from(openapi_json()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

// === errors ===

fn problem_response(
    status: StatusCode,
    slug: &str,
    detail: &str,
    rid: &RequestId,
    diagnostics: Option<&Diagnostics>,
) -> Response {
    let mut ext = serde_json::Map::new();
    if let Some(d) = diagnostics {
        let list: Vec<Diagnostic> =
            d.0.iter()
                .map(|d| Diagnostic {
                    file: d.file.clone(),
                    line: d.line,
                    column: d.column,
                    path: d.path.clone(),
                    message: d.message.clone(),
                })
                .collect();
        ext.insert(
            "diagnostics".into(),
            serde_json::to_value(list).unwrap_or_default(),
        );
    }
    problem_ext(status, slug, detail, rid.as_str(), ext).map(axum::body::Body::new)
}

fn invalid(d: &Diagnostics, detail: &str, rid: &RequestId) -> Response {
    problem_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        "config-invalid",
        &format!("{detail} ({} found)", d.0.len()),
        rid,
        Some(d),
    )
}

async fn not_found(uri: Uri, Extension(rid): Extension<RequestId>) -> Response {
    problem_response(
        StatusCode::NOT_FOUND,
        "not-found",
        &format!(
            "no admin endpoint {}; GET /openapi.json lists them",
            uri.path()
        ),
        &rid,
        None,
    )
}

async fn method_not_allowed(
    uri: Uri,
    method: Method,
    Extension(rid): Extension<RequestId>,
) -> Response {
    let allow = allowed_methods(uri.path());
    let mut r = problem_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        &format!(
            "{} does not accept {method}; it accepts {allow}",
            uri.path()
        ),
        &rid,
        None,
    );
    if let Ok(v) = HeaderValue::from_str(&allow) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// The methods the document lists for `path` (GET implies HEAD, as axum serves it).
fn allowed_methods(path: &str) -> String {
    let doc: Value = serde_json::from_str(openapi_json()).unwrap_or_default();
    let mut out: Vec<String> = doc["paths"][path]
        .as_object()
        .map(|ops| ops.keys().map(|m| m.to_ascii_uppercase()).collect())
        .unwrap_or_default();
    if out.iter().any(|m| m == "GET") {
        out.push("HEAD".into());
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_endpoint() {
        let doc: Value = serde_json::from_str(openapi_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        for p in [
            "/status",
            "/config",
            "/routes",
            "/upstreams",
            "/consumers",
            "/reload",
            "/validate",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.iter().any(|x| *x == p), "{p} missing from {paths:?}");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert_eq!(allowed_methods("/reload"), "POST");
        assert_eq!(allowed_methods("/status"), "GET, HEAD");
    }
}
