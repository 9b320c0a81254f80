//! Helpers for the observability and admin tests: the admin token, polling, a Prometheus
//! text parser and an OTLP/HTTP collector.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const TOKEN: &str = "adm1n-t0ken-for-tests";

// ---------------------------------------------------------------- polling

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
