//! The access log: one line per request, JSON (default; keys selectable with `fields`) or
//! text, written by a background thread so the request path never blocks on stdout or a file.
//!
//! The line is emitted when the response body has been sent (or dropped), so it carries the
//! real byte count and total latency. Only the fields below are logged; headers and query
//! strings never are, so credentials (Authorization, cookies, API keys in a query) cannot
//! leak through it. When the writer falls behind, lines are dropped and counted rather than
//! slowing requests down. A file is reopened after SIGUSR1 ([`reopen_all`]), so `logrotate`
//! can rename it and signal the gateway.

use crate::config::{AccessLogField, AccessLogFormat};
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
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
    /// Hex trace id when tracing is on.
    pub trace_id: Option<String>,
}

/// Every JSON key, in the default order.
pub const ALL_FIELDS: &[AccessLogField] = &[
    AccessLogField::Time,
    AccessLogField::RequestId,
    AccessLogField::TraceId,
    AccessLogField::Client,
    AccessLogField::Method,
    AccessLogField::Host,
    AccessLogField::Path,
    AccessLogField::Protocol,
    AccessLogField::Route,
    AccessLogField::Upstream,
    AccessLogField::Status,
    AccessLogField::BytesIn,
    AccessLogField::BytesOut,
    AccessLogField::DurationMs,
    AccessLogField::UpstreamMs,
];

impl AccessLogField {
    pub fn key(self) -> &'static str {
        match self {
            AccessLogField::Time => "time",
            AccessLogField::RequestId => "request_id",
            AccessLogField::TraceId => "trace_id",
            AccessLogField::Client => "client",
            AccessLogField::Method => "method",
            AccessLogField::Host => "host",
            AccessLogField::Path => "path",
            AccessLogField::Protocol => "protocol",
            AccessLogField::Route => "route",
            AccessLogField::Upstream => "upstream",
            AccessLogField::Status => "status",
            AccessLogField::BytesIn => "bytes_in",
            AccessLogField::BytesOut => "bytes_out",
            AccessLogField::DurationMs => "duration_ms",
            AccessLogField::UpstreamMs => "upstream_ms",
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

pub fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl Record {
    /// The line in `format`; `fields` chooses and orders the JSON keys (`None` = all).
    pub fn format(&self, format: AccessLogFormat, fields: Option<&[AccessLogField]>) -> Vec<u8> {
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
                if let Some(t) = &self.trace_id {
                    s.push_str(&format!(" trace={t}"));
                }
                s.push_str(&format!(
                    " id={}\n",
                    sanitize(self.request_id.to_str().unwrap_or("-"))
                ));
                s.into_bytes()
            }
            _ => {
                let fields = fields.unwrap_or(ALL_FIELDS);
                let mut v = Vec::with_capacity(64 + 24 * fields.len());
                v.push(b'{');
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        v.push(b',');
                    }
                    v.push(b'"');
                    v.extend_from_slice(f.key().as_bytes());
                    v.extend_from_slice(b"\":");
                    let _ = match f {
                        AccessLogField::Time => serde_json::to_writer(&mut v, &time),
                        AccessLogField::RequestId => {
                            serde_json::to_writer(&mut v, self.request_id.to_str().unwrap_or(""))
                        }
                        AccessLogField::TraceId => serde_json::to_writer(&mut v, &self.trace_id),
                        AccessLogField::Client => {
                            serde_json::to_writer(&mut v, &self.client.to_string())
                        }
                        AccessLogField::Method => {
                            serde_json::to_writer(&mut v, self.method.as_str())
                        }
                        AccessLogField::Host => serde_json::to_writer(&mut v, &self.host),
                        AccessLogField::Path => serde_json::to_writer(&mut v, &self.path),
                        AccessLogField::Protocol => {
                            serde_json::to_writer(&mut v, version_str(self.version))
                        }
                        AccessLogField::Route => {
                            serde_json::to_writer(&mut v, &self.route.as_deref())
                        }
                        AccessLogField::Upstream => {
                            serde_json::to_writer(&mut v, &self.target.as_deref())
                        }
                        AccessLogField::Status => serde_json::to_writer(&mut v, &self.status),
                        AccessLogField::BytesIn => serde_json::to_writer(&mut v, &self.bytes_in),
                        AccessLogField::BytesOut => serde_json::to_writer(&mut v, &self.bytes_out),
                        AccessLogField::DurationMs => {
                            serde_json::to_writer(&mut v, &ms(self.duration))
                        }
                        AccessLogField::UpstreamMs => {
                            serde_json::to_writer(&mut v, &self.upstream.map(ms))
                        }
                    };
                }
                v.extend_from_slice(b"}\n");
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

/// Bumped by [`reopen_all`]; every file writer reopens its path when it sees a change.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Makes every file sink reopen its path (SIGUSR1: after `logrotate` renamed the file).
pub fn reopen_all() {
    REOPEN.fetch_add(1, Ordering::AcqRel);
}

impl Sink {
    /// A sink writing to stdout, or appending to `path` (reopened after [`reopen_all`]).
    pub fn open(path: Option<&str>) -> std::io::Result<Sink> {
        let open_file = |p: &str| -> std::io::Result<Box<dyn Write + Send>> {
            Ok(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ))
        };
        let out: Box<dyn Write + Send> = match path {
            None => Box::new(std::io::stdout()),
            Some(p) => open_file(p)?,
        };
        let path = path.map(str::to_owned);
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
                let mut seen = REOPEN.load(Ordering::Acquire);
                loop {
                    // Wake up now and then without lines, so a rotated file is recreated
                    // promptly after SIGUSR1 even when no requests come.
                    let first = match rx.recv_timeout(Duration::from_millis(250)) {
                        Ok(line) => Some(line),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    let now = REOPEN.load(Ordering::Acquire);
                    if now != seen {
                        seen = now;
                        if let Some(p) = &path {
                            let _ = w.flush();
                            match open_file(p) {
                                Ok(f) => w = std::io::BufWriter::with_capacity(64 * 1024, f),
                                Err(e) => {
                                    tracing::error!(path = %p, error = %e, "cannot reopen the access log; writing to the old file")
                                }
                            }
                        }
                    }
                    let Some(line) = first else { continue };
                    let _ = w.write_all(&line);
                    // Write what is queued, then flush once the queue is empty.
                    while let Ok(line) = rx.try_recv() {
                        let _ = w.write_all(&line);
                    }
                    let _ = w.flush();
                }
                let _ = w.flush();
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
            trace_id: None,
        }
    }

    #[test]
    fn json_line() {
        let line = record().format(AccessLogFormat::Json, None);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["path"], "/a\"b\n");
        assert_eq!(v["route"], "r");
        assert!(v["upstream"].is_null());
        assert_eq!(v.as_object().unwrap().len(), ALL_FIELDS.len());
    }

    #[test]
    fn json_line_with_selected_fields() {
        let fields = [AccessLogField::Status, AccessLogField::Route];
        let line = record().format(AccessLogFormat::Json, Some(&fields));
        assert_eq!(line, b"{\"status\":200,\"route\":\"r\"}\n");
    }

    #[test]
    fn text_line_is_one_line() {
        let line = String::from_utf8(record().format(AccessLogFormat::Text, None)).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains("\"GET h/a?b? HTTP/1.1\" 200"), "{line}");
    }
}
