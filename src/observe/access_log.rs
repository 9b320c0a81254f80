//! The access log: one line per request, JSON (default) or text, written by a background
//! thread so the request path never blocks on stdout or a file.
//!
//! The line is emitted when the response body has been sent (or dropped), so it carries the
//! real byte count and total latency. Only the fields below are logged; headers and query
//! strings never are, so credentials (Authorization, cookies, API keys in a query) cannot
//! leak through it. When the writer falls behind, lines are dropped and counted rather than
//! slowing requests down.

use crate::config::AccessLogFormat;
use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What one request left behind.
#[derive(Debug)]
pub struct Record {
    pub time: SystemTime,
    pub request_id: http::HeaderValue,
    pub client: IpAddr,
    pub method: http::Method,
    pub host: String,
    pub path: String,
    pub version: http::Version,
    pub route: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream: Option<Duration>,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    request_id: &'a str,
    client: String,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    protocol: &'a str,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream_ms: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl Record {
    pub fn format(&self, format: AccessLogFormat) -> Vec<u8> {
        let time = super::time::rfc3339_millis(self.time);
        match format {
            AccessLogFormat::Text => {
                let mut s = format!(
                    "{time} {client} \"{method} {host}{path} {proto}\" {status} in={bin} out={bout} {dur}ms",
                    client = self.client,
                    method = self.method,
                    host = sanitize(&self.host),
                    path = sanitize(&self.path),
                    proto = version_str(self.version),
                    status = self.status,
                    bin = self.bytes_in,
                    bout = self.bytes_out,
                    dur = ms(self.duration),
                );
                if let Some(r) = &self.route {
                    s.push_str(&format!(" route={r}"));
                }
                if let Some(t) = &self.target {
                    s.push_str(&format!(" upstream={t}"));
                }
                if let Some(u) = self.upstream {
                    s.push_str(&format!(" upstream_ms={}", ms(u)));
                }
                s.push_str(&format!(
                    " id={}\n",
                    sanitize(self.request_id.to_str().unwrap_or("-"))
                ));
                s.into_bytes()
            }
            _ => {
                let line = JsonLine {
                    time,
                    request_id: self.request_id.to_str().unwrap_or(""),
                    client: self.client.to_string(),
                    method: self.method.as_str(),
                    host: &self.host,
                    path: &self.path,
                    protocol: version_str(self.version),
                    route: self.route.as_deref(),
                    upstream: self.target.as_deref(),
                    status: self.status,
                    bytes_in: self.bytes_in,
                    bytes_out: self.bytes_out,
                    duration_ms: ms(self.duration),
                    upstream_ms: self.upstream.map(ms),
                };
                let mut v = serde_json::to_vec(&line).unwrap_or_default();
                v.push(b'\n');
                v
            }
        }
    }
}

/// Text lines must stay one line: control characters become `?`.
fn sanitize(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_control() || b == b'"') {
        s.chars()
            .map(|c| if c.is_control() || c == '"' { '?' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// Where lines go. Cloning shares the writer thread.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

/// Lines buffered before new ones are dropped.
const QUEUE: usize = 16_384;

impl Sink {
    /// A sink writing to stdout, or appending to `path`.
    pub fn open(path: Option<&str>) -> std::io::Result<Sink> {
        let out: Box<dyn Write + Send> = match path {
            None => Box::new(std::io::stdout()),
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
                while let Ok(line) = rx.recv() {
                    let _ = w.write_all(&line);
                    // Write what is queued, then flush once the queue is empty.
                    while let Ok(line) = rx.try_recv() {
                        let _ = w.write_all(&line);
                    }
                    let _ = w.flush();
                }
            })?;
        Ok(Sink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn write(&self, line: Vec<u8>) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines lost because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH,
            request_id: http::HeaderValue::from_static("rid"),
            client: "1.2.3.4".parse().unwrap(),
            method: http::Method::GET,
            host: "h".into(),
            path: "/a\"b\n".into(),
            version: http::Version::HTTP_11,
            route: Some("r".into()),
            target: None,
            status: 200,
            bytes_in: 1,
            bytes_out: 2,
            duration: Duration::from_micros(1500),
            upstream: None,
        }
    }

    #[test]
    fn json_line() {
        let line = record().format(AccessLogFormat::Json);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["path"], "/a\"b\n");
        assert_eq!(v["route"], "r");
        assert!(v["upstream"].is_null());
    }

    #[test]
    fn text_line_is_one_line() {
        let line = String::from_utf8(record().format(AccessLogFormat::Text)).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains("\"GET h/a?b? HTTP/1.1\" 200"), "{line}");
    }
}
