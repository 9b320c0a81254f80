//! Helpers for the observability and admin tests: a gateway started from YAML with its admin
//! listener, test upstreams that record what they received, an OTLP/HTTP collector, an admin
//! client and a Prometheus text parser.
//!
//! Each test binary uses part of this module.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::server::{self, ConfigSource, Options, ServerHandle, StartError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const TOKEN: &str = "adm1n-t0ken-for-tests";

// ---------------------------------------------------------------- gateway

/// A running gateway with its admin listener.
pub struct Gw {
    pub handle: ServerHandle,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub client: reqwest::Client,
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

/// The snippet plus a proxy listener on a free port, an admin listener with [`TOKEN`] on a
/// free loopback port, and the access log off, unless the snippet has its own.
pub fn full_config(yaml: &str) -> String {
    let yaml = dedent(yaml);
    let mut out = String::new();
    if !yaml.lines().any(|l| l.starts_with("listeners:")) {
        out.push_str("listeners: [{ bind: \"127.0.0.1:0\" }]\n");
    }
    if !yaml.lines().any(|l| l.starts_with("admin:")) {
        out.push_str(&format!(
            "admin: {{ bind: \"127.0.0.1:0\", token: \"{TOKEN}\" }}\n"
        ));
    }
    if !yaml.lines().any(|l| l.starts_with("access_log:")) {
        out.push_str("access_log: { format: off }\n");
    }
    out + &yaml
}

impl Gw {
    pub async fn start(yaml: &str) -> Gw {
        match Gw::try_start(yaml).await {
            Ok(g) => g,
            Err(e) => panic!("the gateway did not start:\n{e}"),
        }
    }

    pub async fn try_start(yaml: &str) -> Result<Gw, StartError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, full_config(yaml)).unwrap();
        let handle = server::start(Options {
            source: ConfigSource::File(path.clone()),
            watch: false,
            sighup: false,
        })
        .await?;
        Ok(Gw {
            addr: handle.addr(),
            admin: handle.admin_addr().expect("an admin listener"),
            handle,
            dir,
            path,
            client: client(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// An admin request with the right token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.admin_url(path))
            .bearer_auth(TOKEN)
    }

    /// `GET` an admin endpoint with the token; insists on 200 and returns the JSON.
    pub async fn admin_json(&self, path: &str) -> Value {
        let r = self.admin(reqwest::Method::GET, path).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// The metrics text.
    pub async fn metrics(&self) -> Metrics {
        let r = self
            .admin(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        Metrics::parse(&r.text().await.unwrap())
    }

    /// Replaces the config file (for `POST /reload`).
    pub fn rewrite(&self, yaml: &str) {
        std::fs::write(&self.path, full_config(yaml)).unwrap();
    }

    pub async fn stop(self) {
        self.handle.shutdown_within(Duration::from_secs(2)).await;
    }
}

/// reqwest without proxies from the environment, HTTP/1.1 only, with a timeout. Its TLS
/// config (aws-lc-rs, trusting nothing) is never used: every test speaks plain HTTP.
pub fn client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(20))
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

/// Checks a problem+json answer with `status`; returns the problem.
pub async fn problem(res: reqwest::Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let rid = res
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    assert_eq!(ct.as_deref(), Some("application/problem+json"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], status, "{v}");
    assert!(
        v["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:portcullis:problem:"),
        "{v}"
    );
    assert!(!v["title"].as_str().unwrap().is_empty(), "{v}");
    assert!(!v["detail"].as_str().unwrap().is_empty(), "{v}");
    assert_eq!(v["request_id"].as_str(), rid.as_deref(), "{v}");
    v
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- metrics text

/// Samples of a Prometheus/OpenMetrics text, by series (`name{labels}` as written).
#[derive(Debug)]
pub struct Metrics {
    pub text: String,
    pub samples: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("bad line {l:?}"));
                (series.to_owned(), value.parse::<f64>().unwrap())
            })
            .collect();
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of one series; panics (showing the text) if it is missing.
    pub fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("no series {series} in\n{}", self.text),
        }
    }

    pub fn opt(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }
}

// ---------------------------------------------------------------- upstreams

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A test upstream on 127.0.0.1 that records every request. Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Answers with `respond(path)`: a status and a body.
    pub async fn start(respond: fn(&str) -> (u16, &'static str)) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let rec = rec.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let (status, text) = respond(parts.uri.path());
                            rec.lock().unwrap().push(Received {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "text/plain")
                                    .body(Full::new(Bytes::from_static(text.as_bytes())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            received,
            task,
        }
    }

    /// Answers 200 `hello` to everything.
    pub async fn hello() -> Upstream {
        Upstream::start(|_| (200, "hello")).await
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// An address on 127.0.0.1 where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------- OTLP collector

/// An OTLP/HTTP collector written for the tests: accepts `POST /v1/traces` with the JSON
/// encoding and keeps every span (with its resource's `service.name`) and every raw body.
pub struct Collector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<Vec<String>>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let (s, r, n) = (spans.clone(), raw.clone(), notify.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, r, n) = (s.clone(), r.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let (s, r, n) = (s.clone(), r.clone(), n.clone());
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/v1/traces"
                                && req
                                    .headers()
                                    .get("content-type")
                                    .is_some_and(|v| v == "application/json");
                            let headers = format!("{:?}", req.headers());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let status = if ok {
                                let text = String::from_utf8(body.to_vec()).unwrap();
                                let v: Value = serde_json::from_str(&text).unwrap();
                                let mut got = Vec::new();
                                for rs in v["resourceSpans"].as_array().unwrap() {
                                    let service = rs["resource"]["attributes"]
                                        .as_array()
                                        .unwrap()
                                        .iter()
                                        .find(|a| a["key"] == "service.name")
                                        .map(|a| a["value"]["stringValue"].clone())
                                        .unwrap_or(Value::Null);
                                    for ss in rs["scopeSpans"].as_array().unwrap() {
                                        for span in ss["spans"].as_array().unwrap() {
                                            let mut span = span.clone();
                                            span["service"] = service.clone();
                                            got.push(span);
                                        }
                                    }
                                }
                                r.lock().unwrap().push(format!("{headers}\n{text}"));
                                s.lock().unwrap().extend(got);
                                n.notify_waiters();
                                200
                            } else {
                                404
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from_static(b"{}")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector {
            addr,
            spans,
            raw,
            notify,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Spans received so far.
    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }

    /// Every export request as received: headers, then the body.
    pub fn raw(&self) -> String {
        self.raw.lock().unwrap().join("\n")
    }

    /// Waits until `n` spans of trace `trace_id` have arrived; returns them.
    pub async fn wait_for(&self, trace_id: &str, n: usize) -> Vec<Value> {
        eventually(
            Duration::from_secs(15),
            "spans at the collector",
            || async {
                let of: Vec<Value> = self
                    .spans()
                    .into_iter()
                    .filter(|s| s["traceId"] == trace_id)
                    .collect();
                (of.len() >= n).then_some(of)
            },
        )
        .await
    }
}

/// The value of a span attribute (`stringValue` or `intValue`, as text).
pub fn attr(span: &Value, key: &str) -> Option<String> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| {
            let v = &a["value"];
            v["stringValue"]
                .as_str()
                .or_else(|| v["intValue"].as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        })
}
