//! Raw HTTP/1.1 over TCP: exact bytes out, parsed responses back.

use super::problem::check_problem;
use super::upstream::Seen;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off a raw TCP connection.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.head, self.text()))
    }

    /// The echo upstream's answer.
    pub fn seen(&self) -> Seen {
        assert_eq!(self.status, 200, "{}\n{}", self.head, self.text());
        Seen(self.json())
    }

    /// Checks this is the gateway's problem+json with `status`; returns the problem.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}\n{}", self.head, self.text());
        check_problem(
            status,
            self.header("content-type"),
            self.header("x-request-id"),
            &self.body,
        )
    }
}

/// Writes `request` and reads one response (until it is complete or the peer closes).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if parse_response(&buf).is_some() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no complete response within 20s");
    parse_response(&buf).unwrap_or_else(|| {
        panic!(
            "incomplete response: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(2000)])
        )
    })
}

/// What came back on one raw connection: every response, in order, and whether the
/// gateway closed the connection afterwards.
#[derive(Debug)]
pub struct Conversation {
    pub responses: Vec<Raw>,
    pub closed: bool,
}

/// Writes each of `writes` (with `pause` between them), then reads until the gateway closes
/// the connection or nothing comes for 3 s; parses every response received.
pub async fn converse(addr: SocketAddr, writes: &[&[u8]], pause: Duration) -> Conversation {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for (i, w) in writes.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        // The gateway may stop reading (and close) before everything is written.
        if s.write_all(w).await.is_err() {
            break;
        }
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    let mut responses = Vec::new();
    let mut rest = &buf[..];
    while let Some((r, used)) = parse_response_len(rest) {
        responses.push(r);
        rest = &rest[used..];
    }
    assert!(
        rest.is_empty(),
        "unparsed bytes after {} responses: {:?}",
        responses.len(),
        String::from_utf8_lossy(rest)
    );
    Conversation { responses, closed }
}

/// A complete response in `buf`, if there is one (Content-Length or chunked framing).
fn parse_response(buf: &[u8]) -> Option<Raw> {
    parse_response_len(buf).map(|(r, _)| r)
}

/// A complete response at the start of `buf` and the bytes it took.
fn parse_response_len(buf: &[u8]) -> Option<(Raw, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut r = Raw {
        status,
        head,
        body: Vec::new(),
    };
    let rest = &buf[end..];
    let used = if r
        .header("transfer-encoding")
        .is_some_and(|te| te.contains("chunked"))
    {
        let (body, used) = dechunk(rest)?;
        r.body = body;
        used
    } else {
        let len: usize = r.header("content-length").map_or(0, |v| v.parse().unwrap());
        r.body = rest.get(..len)?.to_vec();
        len
    };
    Some((r, end + used))
}

/// A chunked body (no trailers) and the bytes it took.
fn dechunk(all: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut b = all;
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            b = b.strip_prefix(b"\r\n")?;
            return Some((out, all.len() - b.len()));
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
