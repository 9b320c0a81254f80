//! Distributed tracing: W3C Trace Context in, child spans out, exported over OTLP/HTTP.
//!
//! For every request the gateway keeps the client's `traceparent` (the request span becomes
//! its child, and the client's sampled flag decides recording: parent-based sampling) or
//! starts a new trace (recorded for `sample_ratio` of trace ids). Each upstream try is a
//! child span of the request span, and the upstream receives a `traceparent` naming that try
//! span, plus the client's `tracestate` unchanged.
//!
//! Spans go through a bounded channel to one exporter task per tracer, which batches them and
//! POSTs OTLP/HTTP with the JSON encoding to `{endpoint}/v1/traces` (see ARCHITECTURE.md for
//! why this is hand-written rather than the OpenTelemetry SDK). When the channel is full,
//! spans are dropped and counted, never waited for.
//!
//! Only names the gateway chose go into spans: method, normalised path, route, upstream,
//! target, status. No header values, no query strings, no bodies.

use crate::config::TracingConfig;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Spans buffered before new ones are dropped.
const QUEUE: usize = 8192;
/// Largest batch per export request.
const BATCH: usize = 512;
/// How long a batch waits to fill up before it is sent.
const BATCH_DELAY: Duration = Duration::from_millis(500);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `tracing.otlp`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// Full URL of the traces endpoint (`…/v1/traces`).
    pub endpoint: Uri,
    pub headers: HeaderMap,
    pub sample_ratio: f64,
    pub service_name: String,
}

/// Compiles `tracing`; problems go to `diag(field path, message)`.
pub fn compile(cfg: &TracingConfig, diag: &mut dyn FnMut(&str, String)) -> Option<TraceSettings> {
    let o = cfg.otlp.as_ref()?;
    let mut ok = true;
    match o.protocol.as_deref().unwrap_or("http/json") {
        "http/json" | "http" => {}
        p @ ("http/protobuf" | "grpc") => {
            diag(
                "tracing.otlp.protocol",
                format!("{p:?} is not built in; use \"http/json\" (OTLP over HTTP with JSON, which every OpenTelemetry collector accepts)"),
            );
            ok = false;
        }
        p => {
            diag(
                "tracing.otlp.protocol",
                format!("unknown protocol {p:?}; expected \"http/json\""),
            );
            ok = false;
        }
    }
    let endpoint = {
        let base = o.endpoint.trim_end_matches('/');
        let full = if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        };
        match full.parse::<Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => Some(u),
            Ok(u) if u.scheme_str() == Some("https") => {
                diag(
                    "tracing.otlp.endpoint",
                    format!("{:?}: https collectors are not supported yet; use http:// (for example a local collector agent)", o.endpoint),
                );
                None
            }
            _ => {
                diag(
                    "tracing.otlp.endpoint",
                    format!("{:?} is not a URL; expected http://host:port", o.endpoint),
                );
                None
            }
        }
    };
    let ratio = o.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&ratio) {
        diag(
            "tracing.otlp.sample_ratio",
            format!("{ratio} is not between 0.0 and 1.0"),
        );
        ok = false;
    }
    let mut headers = HeaderMap::new();
    for (k, v) in &o.headers {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(mut v)) => {
                v.set_sensitive(true);
                headers.insert(n, v);
            }
            (Err(_), _) => {
                diag(
                    &format!("tracing.otlp.headers.{k}"),
                    format!("{k:?} is not a valid header name"),
                );
                ok = false;
            }
            (_, Err(_)) => {
                // The value may be a secret: do not echo it.
                diag(
                    &format!("tracing.otlp.headers.{k}"),
                    "not a valid header value".to_owned(),
                );
                ok = false;
            }
        }
    }
    let service_name = o
        .service_name
        .clone()
        .unwrap_or_else(|| "portcullis".into());
    if !ok {
        return None;
    }
    Some(TraceSettings {
        endpoint: endpoint?,
        headers,
        sample_ratio: ratio,
        service_name,
    })
}

// === ids ===

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A random-looking, never-zero u64: a counter mixed with a random per-process seed (no
/// syscall per id).
fn next_u64() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    splitmix(n ^ seed).max(1)
}

fn new_span_id() -> [u8; 8] {
    next_u64().to_be_bytes()
}

fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&next_u64().to_be_bytes());
    id[8..].copy_from_slice(&next_u64().to_be_bytes());
    id
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A parsed `traceparent`: trace id, parent span id, sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Parses a W3C `traceparent` (version 00, or a later version's first four fields).
pub fn parse_traceparent(v: &str) -> Option<Parent> {
    let v = v.trim();
    let mut parts = v.splitn(5, '-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    let version = unhex::<1>(version)?[0];
    if version == 0xff || (version == 0 && rest.is_some()) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more after a '-'.
    if version == 0 && flags.len() != 2 {
        return None;
    }
    let flags = unhex::<1>(flags.get(..2)?)?[0];
    let trace_id = unhex::<16>(trace)?;
    let span_id = unhex::<8>(span)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

// === impl Tracer ===

/// Records spans and hands them to the exporter task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tracer {
    inner: Arc<TracerInner>,
}

#[derive(Debug)]
struct TracerInner {
    settings: TraceSettings,
    tx: mpsc::Sender<Span>,
    dropped: AtomicU64,
}

impl Tracer {
    /// Starts the exporter task on the current tokio runtime.
    pub fn start(settings: TraceSettings) -> Tracer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export_loop(settings.clone(), rx));
        Tracer {
            inner: Arc::new(TracerInner {
                settings,
                tx,
                dropped: AtomicU64::new(0),
            }),
        }
    }

    pub fn settings(&self) -> &TraceSettings {
        &self.inner.settings
    }

    /// Spans lost because the exporter fell behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The trace of a new request: continues the client's trace, or starts one.
    pub fn start_request(&self, headers: &HeaderMap) -> RequestTrace {
        let parent =
            single(headers, &TRACEPARENT).and_then(|v| parse_traceparent(v.to_str().ok()?));
        let (trace_id, parent_id, sampled, trace_state) = match parent {
            Some(p) => {
                // tracestate belongs to the trace; kept only with a valid traceparent.
                let state = join_tracestate(headers);
                (p.trace_id, Some(p.span_id), p.sampled, state)
            }
            None => {
                let id = new_trace_id();
                (id, None, self.sample(&id), None)
            }
        };
        RequestTrace {
            tracer: self.clone(),
            trace_id,
            span_id: new_span_id(),
            parent_id,
            sampled,
            trace_state,
            start_unix: unix_nanos(),
            started: Instant::now(),
            tries: 0,
        }
    }

    /// Ratio-based sampling of new traces on the trace id's low 8 bytes (as OpenTelemetry's
    /// `TraceIdRatioBased` does, so every service with the same ratio agrees).
    fn sample(&self, trace_id: &[u8; 16]) -> bool {
        let ratio = self.inner.settings.sample_ratio;
        if ratio >= 1.0 {
            return true;
        }
        if ratio <= 0.0 {
            return false;
        }
        let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
        (low >> 1) < (ratio * (1u64 << 63) as f64) as u64
    }

    fn emit(&self, span: Span) {
        if self.inner.tx.try_send(span).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

fn join_tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut all = headers.get_all(&TRACESTATE).iter();
    let first = all.next()?;
    let mut joined = first.as_bytes().to_vec();
    for v in all {
        joined.extend_from_slice(b",");
        joined.extend_from_slice(v.as_bytes());
    }
    // The spec's limit; a longer list may be dropped whole.
    if joined.len() > 512 {
        return None;
    }
    HeaderValue::from_bytes(&joined).ok()
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

// === impl RequestTrace ===

/// The trace context of one request (in `Ctx`).
pub struct RequestTrace {
    tracer: Tracer,
    pub trace_id: [u8; 16],
    /// The request span.
    pub span_id: [u8; 8],
    /// The client's span, if it sent a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
    trace_state: Option<HeaderValue>,
    start_unix: u64,
    started: Instant,
    tries: u32,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("trace_id", &hex(&self.trace_id))
            .field("span_id", &hex(&self.span_id))
            .field("sampled", &self.sampled)
            .finish()
    }
}

/// One upstream try, open until [`RequestTrace::end_try`].
#[derive(Debug)]
pub struct TrySpan {
    span_id: [u8; 8],
    start_unix: u64,
    started: Instant,
    attempt: u32,
}

/// How an upstream try ended.
#[derive(Debug, Clone, Copy)]
pub enum TryOutcome {
    Status(u16),
    /// The problem slug of the failure (`upstream-timeout`, ...).
    Error(&'static str),
}

/// What the pipeline knows when the request is done.
#[derive(Debug)]
pub struct RequestEnd<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub host: &'a str,
    pub route: Option<&'a str>,
    pub status: u16,
    pub client: std::net::IpAddr,
    pub protocol: &'static str,
    pub request_id: &'a str,
}

impl RequestTrace {
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    fn flags(&self) -> &'static str {
        if self.sampled {
            "01"
        } else {
            "00"
        }
    }

    /// Opens a span for one upstream try.
    pub fn start_try(&mut self) -> TrySpan {
        self.tries += 1;
        TrySpan {
            span_id: new_span_id(),
            start_unix: unix_nanos(),
            started: Instant::now(),
            attempt: self.tries,
        }
    }

    /// Sets `traceparent` (naming the try span) and `tracestate` on the upstream request.
    pub fn inject(&self, span: &TrySpan, headers: &mut HeaderMap) {
        let tp = format!(
            "00-{}-{}-{}",
            hex(&self.trace_id),
            hex(&span.span_id),
            self.flags()
        );
        headers.insert(
            TRACEPARENT.clone(),
            HeaderValue::from_str(&tp).expect("hex and dashes"),
        );
        match &self.trace_state {
            Some(s) => {
                headers.insert(TRACESTATE.clone(), s.clone());
            }
            None => {
                headers.remove(&TRACESTATE);
            }
        }
    }

    /// Closes an upstream try span.
    pub fn end_try(
        &self,
        span: TrySpan,
        method: &Method,
        upstream: &str,
        target: &str,
        outcome: TryOutcome,
    ) {
        if !self.sampled {
            return;
        }
        let (host, port) = target.rsplit_once(':').unwrap_or((target, ""));
        let mut attrs = vec![
            ("http.request.method", Attr::Str(method.as_str().into())),
            ("server.address", Attr::Str(host.into())),
            ("portcullis.upstream", Attr::Str(upstream.into())),
            ("portcullis.target", Attr::Str(target.into())),
            ("portcullis.try", Attr::Int(span.attempt as i64)),
        ];
        if let Ok(p) = port.parse::<i64>() {
            attrs.push(("server.port", Attr::Int(p)));
        }
        let error = match outcome {
            TryOutcome::Status(s) => {
                attrs.push(("http.response.status_code", Attr::Int(s as i64)));
                s >= 500
            }
            TryOutcome::Error(slug) => {
                attrs.push(("error.type", Attr::Str(slug.into())));
                true
            }
        };
        self.tracer.emit(Span {
            trace_id: self.trace_id,
            span_id: span.span_id,
            parent_id: Some(self.span_id),
            trace_state: None,
            name: format!("upstream {upstream}"),
            kind: SpanKind::Client,
            start: span.start_unix,
            end: span.start_unix + span.started.elapsed().as_nanos() as u64,
            attrs,
            error,
        });
    }

    /// Closes the request span.
    pub fn finish(self, end: RequestEnd<'_>) {
        if !self.sampled {
            return;
        }
        let name = match end.route {
            Some(r) => format!("{} {r}", end.method),
            None => end.method.to_string(),
        };
        let mut attrs = vec![
            ("http.request.method", Attr::Str(end.method.as_str().into())),
            ("url.path", Attr::Str(end.path.into())),
            ("server.address", Attr::Str(end.host.into())),
            ("http.response.status_code", Attr::Int(end.status as i64)),
            ("client.address", Attr::Str(end.client.to_string())),
            ("network.protocol.version", Attr::Str(end.protocol.into())),
            ("portcullis.request_id", Attr::Str(end.request_id.into())),
        ];
        if let Some(r) = end.route {
            attrs.push(("portcullis.route", Attr::Str(r.into())));
        }
        self.tracer.emit(Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_id: self.parent_id,
            trace_state: self
                .trace_state
                .as_ref()
                .and_then(|s| s.to_str().ok())
                .map(str::to_owned),
            name,
            kind: SpanKind::Server,
            start: self.start_unix,
            end: self.start_unix + self.started.elapsed().as_nanos() as u64,
            attrs,
            error: end.status >= 500,
        });
    }
}

// === spans and OTLP/JSON ===

#[derive(Debug, Clone, Copy)]
enum SpanKind {
    Server = 2,
    Client = 3,
}

#[derive(Debug)]
enum Attr {
    Str(String),
    Int(i64),
}

#[derive(Debug)]
struct Span {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    trace_state: Option<String>,
    name: String,
    kind: SpanKind,
    start: u64,
    end: u64,
    attrs: Vec<(&'static str, Attr)>,
    error: bool,
}

impl Span {
    /// One span in the OTLP/JSON mapping: ids as hex, 64-bit integers as strings.
    fn to_json(&self) -> Value {
        let attrs: Vec<Value> = self
            .attrs
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Attr::Str(s) => json!({ "stringValue": s }),
                    Attr::Int(i) => json!({ "intValue": i.to_string() }),
                };
                json!({ "key": k, "value": value })
            })
            .collect();
        let mut s = json!({
            "traceId": hex(&self.trace_id),
            "spanId": hex(&self.span_id),
            "name": self.name,
            "kind": self.kind as u8,
            "startTimeUnixNano": self.start.to_string(),
            "endTimeUnixNano": self.end.to_string(),
            "attributes": attrs,
            // 1 = OK is for the application to set; errors are 2, the rest unset (0).
            "status": { "code": if self.error { 2 } else { 0 } },
        });
        if let Some(p) = self.parent_id {
            s["parentSpanId"] = Value::String(hex(&p));
        }
        if let Some(ts) = &self.trace_state {
            s["traceState"] = Value::String(ts.clone());
        }
        s
    }
}

fn export_body(service: &str, spans: &[Span]) -> Vec<u8> {
    let body = json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": service } },
                { "key": "service.version", "value": { "stringValue": env!("CARGO_PKG_VERSION") } },
            ]},
            "scopeSpans": [{
                "scope": { "name": "portcullis", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans.iter().map(Span::to_json).collect::<Vec<_>>(),
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

async fn export_loop(settings: TraceSettings, mut rx: mpsc::Receiver<Span>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut batch = Vec::with_capacity(BATCH);
    // A collector that is down would otherwise log twice a second.
    let mut last_warning: Option<Instant> = None;
    let mut failed = 0u64;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < BATCH {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        let body = export_body(&settings.service_name, &batch);
        batch.clear();
        let mut req = Request::post(settings.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("valid request");
        for (k, v) in &settings.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let problem = match tokio::time::timeout(EXPORT_TIMEOUT, client.request(req)).await {
            Ok(Ok(res)) if res.status().is_success() => None,
            Ok(Ok(res)) => Some(format!("the collector answered {}", res.status())),
            Ok(Err(e)) => Some(format!("cannot reach the collector: {e}")),
            Err(_) => Some("the export timed out".to_owned()),
        };
        if let Some(problem) = problem {
            failed += 1;
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                last_warning = Some(Instant::now());
                tracing::warn!(
                    endpoint = %settings.endpoint,
                    failed_batches = failed,
                    "spans were not exported: {problem}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!p.sampled);
        // A later version may add fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    fn settings(ratio: f64) -> TraceSettings {
        TraceSettings {
            endpoint: "http://127.0.0.1:1/v1/traces".parse().unwrap(),
            headers: HeaderMap::new(),
            sample_ratio: ratio,
            service_name: "t".into(),
        }
    }

    #[tokio::test]
    async fn keeps_the_parent_and_propagates_a_child() {
        let t = Tracer::start(settings(0.0));
        let mut h = HeaderMap::new();
        h.insert(
            &TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        h.insert(&TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        let mut rt = t.start_request(&h);
        // Parent-based: the parent's sampled flag wins over a ratio of 0.
        assert!(rt.sampled);
        assert_eq!(rt.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            rt.parent_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let span = rt.start_try();
        let mut up = HeaderMap::new();
        rt.inject(&span, &mut up);
        let tp = parse_traceparent(up[&TRACEPARENT].to_str().unwrap()).unwrap();
        assert_eq!(tp.trace_id, rt.trace_id);
        assert_eq!(tp.span_id, span.span_id);
        assert_ne!(tp.span_id, rt.span_id);
        assert_eq!(up[&TRACESTATE], "congo=t61rcWkgMzE");
    }

    #[tokio::test]
    async fn sampling_ratio_applies_to_new_traces() {
        let none = Tracer::start(settings(0.0));
        let all = Tracer::start(settings(1.0));
        let half = Tracer::start(settings(0.5));
        let h = HeaderMap::new();
        assert!(!none.start_request(&h).sampled);
        assert!(all.start_request(&h).sampled);
        let n = (0..2000).filter(|_| half.start_request(&h).sampled).count();
        assert!((800..1200).contains(&n), "{n} of 2000 sampled at 0.5");
        // An invalid traceparent starts a new trace and drops tracestate.
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, "garbage".parse().unwrap());
        h.insert(&TRACESTATE, "a=b".parse().unwrap());
        let mut rt = all.start_request(&h);
        assert!(rt.parent_id.is_none());
        let s = rt.start_try();
        let mut up = h.clone();
        rt.inject(&s, &mut up);
        assert!(up.get(&TRACESTATE).is_none());
    }

    #[test]
    fn otlp_json_shape() {
        let span = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            trace_state: None,
            name: "GET r".into(),
            kind: SpanKind::Server,
            start: 1,
            end: 2,
            attrs: vec![("http.response.status_code", Attr::Int(200))],
            error: false,
        };
        let v: Value = serde_json::from_slice(&export_body("svc", &[span])).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "01010101010101010101010101010101");
        assert_eq!(s["parentSpanId"], "0303030303030303");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "1");
        assert_eq!(s["attributes"][0]["value"]["intValue"], "200");
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
    }
}
