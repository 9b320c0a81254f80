//! The HTTP/1 head guard: sits between the socket (plain or TLS) and hyper, and makes sure
//! hyper never parses a request head whose framing is ambiguous or that hyper would refuse
//! with one of its own bare, body-less 400/431 answers.
//!
//! Why: hyper resolves framing before the service sees a request (with `Content-Length` and
//! `Transfer-Encoding` chunked wins and the length is dropped; equal duplicate lengths are
//! merged), so the gateway could neither refuse such requests nor answer them in its own
//! problem+json voice. The guard looks at the bytes first.
//!
//! How ([`Guarded`], with the pure core in [`scan`]):
//! - Bytes are read straight into hyper's read buffer (the tokio `ReadBuf` that `TokioIo`
//!   lays over it), and the new bytes are scanned where they lie: per head one `memchr` pass
//!   for line ends plus a look at the few header names that decide framing, then httparse
//!   once (see [`VALIDATE`]). Bodies are skipped by `Content-Length` or walked by a chunked
//!   state machine mirroring hyper's, so the next head (keep-alive, pipelining) is found
//!   exactly where hyper will look. No copy and no allocation when a head arrives whole.
//! - A head that is not complete at the end of a read is held back in a small per-connection
//!   stash and delivered once it is complete and checked; the scan keeps its place, so a
//!   dribbled head costs one look per byte. The auto builder's first 24-byte read (HTTP/2
//!   preface detection) also goes through the stash: one copy of the first head per connection.
//! - A bad head is never shown to hyper: in its place hyper gets a harmless synthetic head
//!   ([`SYNTHETIC`]), the [`Verdict`] records "request N on this connection is refused, for
//!   this reason", and the guard reads nothing more from the socket (nothing after a bad head
//!   is ever interpreted). The service counts the requests it sees and answers request N
//!   with the gateway's own problem+json and `Connection: close`; earlier pipelined requests
//!   are answered first, in order, by hyper. On close the guard discards input for a moment
//!   (a lingering close), so unread client bytes do not turn the close into a reset that
//!   destroys the answer in flight.
//! - Pass-through: HTTP/2 (ALPN h2, or the h2c preface at connection start), and everything
//!   after an HTTP/1 request with `Upgrade` (HTTP/1.1) or method `CONNECT`, because what
//!   follows such a request may not be HTTP/1 at all. On such a connection a later HTTP/1
//!   request is framed by hyper alone (the old behaviour).
//!
//! It is a tokio `AsyncRead`/`AsyncWrite` under `TokioIo` rather than a `hyper::rt::Read`
//! over it: hyper's read cursor can only be advanced with `unsafe`, which this crate forbids,
//! while tokio's `ReadBuf` lets the guard inspect and cut the freshly read bytes safely.

mod scan;

pub use scan::{Framer, Limits, Reject, Step, H2_PREFACE};

use crate::error::GatewayError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Whether complete heads are also checked with httparse (hyper's parser, hyper's default
/// config) and the URI parser, so that hyper never answers with its bare 400. It is a second
/// parse of each head; see ARCHITECTURE.md for what it costs.
pub const VALIDATE: bool = true;

/// What hyper parses in place of a refused head: no body, and `Connection: close` so hyper
/// ends the connection after the answer even if the response said otherwise.
pub const SYNTHETIC: &[u8] = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";

/// Below this much room in the caller's buffer, bytes are read into the stash instead (the
/// auto builder's 24-byte preface read): a head must be complete before any of it is shown.
const DIRECT_MIN: usize = 1024;

/// How much the stash reads at a time.
const STASH_READ: usize = 4096;

/// After a refusal, how long and how much the closing connection keeps reading (and
/// discarding) so that the client's unread bytes do not turn the close into a reset that
/// could destroy the answer in flight (nginx's lingering close).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

impl Reject {
    /// The detail of the problem+json answer.
    pub fn detail(self) -> &'static str {
        match self {
            Reject::LengthAndChunked => "the request has both Content-Length and Transfer-Encoding",
            Reject::DuplicateLength => "the request has more than one Content-Length",
            Reject::InvalidLength => "the request's Content-Length is not a valid length",
            Reject::TransferCoding => "the request's Transfer-Encoding is not exactly chunked",
            Reject::TransferEncodingHttp10 => "an HTTP/1.0 request cannot have Transfer-Encoding",
            Reject::Malformed => "the request head is malformed",
            Reject::TooLarge => "the request head is too large",
            Reject::TargetTooLong => "the request target is too long",
        }
    }

    /// The gateway's answer; `limit` is `server.max_header_size`.
    pub fn error(self, limit: u64) -> GatewayError {
        match self {
            Reject::TooLarge => GatewayError::HeadersTooLarge { limit },
            Reject::TargetTooLong => GatewayError::UriTooLong,
            other => GatewayError::BadRequest(other.detail()),
        }
    }
}

/// The guard's word to the service on one connection: which request (if any) is refused.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Requests the service has seen.
    seen: AtomicU64,
    /// `request << 8 | reason`, 0 for none. Set before hyper can parse the synthetic head.
    refused: AtomicU64,
    /// The refused head's method and path, for the access log (hyper only sees the
    /// stand-in). Touched once per refusal, never on the request path of good heads.
    line: std::sync::Mutex<Option<(http::Method, String)>>,
}

impl Verdict {
    fn refuse(&self, request: u64, reason: Reject, head: &[u8]) {
        *self.line.lock().unwrap_or_else(|e| e.into_inner()) = Some(request_line(head));
        self.refused.store(
            request.wrapping_shl(8) | u64::from(reason.code()),
            Ordering::Release,
        );
    }

    /// The refused head's method and path (query cut off), taken once.
    pub fn refused_line(&self) -> Option<(http::Method, String)> {
        self.line.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Called by the service once per request, in arrival order: the refusal for this
    /// request, if it is the refused one.
    pub fn next_request(&self) -> Option<Reject> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let v = self.refused.load(Ordering::Acquire);
        if v == 0 || v >> 8 != n & (u64::MAX >> 8) {
            return None;
        }
        Reject::from_code(v as u8)
    }
}

/// What the access log shows of a refused head: its method and path when they are plain
/// (visible ASCII, of sane length), `-` for either otherwise. The query is cut off, as for
/// every logged path.
fn request_line(head: &[u8]) -> (http::Method, String) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let dash = || http::Method::from_bytes(b"-").expect("- is a token");
    let method = parts
        .next()
        .filter(|m| !m.is_empty() && m.len() <= 32)
        .and_then(|m| http::Method::from_bytes(m).ok())
        .unwrap_or_else(dash);
    let path = parts
        .next()
        .map(|t| t.split(|&b| b == b'?').next().unwrap_or(&[]))
        .filter(|p| p.starts_with(b"/") && p.len() <= 2048)
        .filter(|p| p.iter().all(|b| (0x21..0x7f).contains(b)))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "-".to_owned());
    (method, path)
}

/// A connection's byte stream with the guard in front (see the module doc).
pub struct Guarded<T> {
    io: T,
    framer: Framer,
    verdict: Arc<Verdict>,
    /// Bytes read but not yet given to hyper: `stash[pos..ready]` are checked and waiting,
    /// `stash[ready..]` is the start of a head that is not complete yet.
    stash: Vec<u8>,
    pos: usize,
    ready: usize,
    /// After a refusal or a broken body: reads stay pending for good.
    blocked: bool,
    /// Closing after a refusal: the write side is shut, input is being discarded.
    shut: bool,
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    lingered: usize,
}

impl<T> Guarded<T> {
    /// Guards an HTTP/1 (or h2c-by-preface) connection.
    pub fn new(io: T, limits: Limits) -> Guarded<T> {
        Guarded::with(io, Framer::new(limits))
    }

    /// Delivers everything unchanged (HTTP/2 by ALPN, the admin listener).
    pub fn passthrough(io: T) -> Guarded<T> {
        Guarded::with(io, Framer::passthrough())
    }

    fn with(io: T, framer: Framer) -> Guarded<T> {
        Guarded {
            io,
            framer,
            verdict: Arc::default(),
            stash: Vec::new(),
            pos: 0,
            ready: 0,
            blocked: false,
            shut: false,
            linger: None,
            lingered: 0,
        }
    }

    pub fn verdict(&self) -> Arc<Verdict> {
        self.verdict.clone()
    }

    fn stash_drained(&mut self) {
        if self.pos == self.stash.len() {
            // Idle keep-alive connections keep no buffer.
            self.stash = Vec::new();
            self.pos = 0;
            self.ready = 0;
        }
    }

    /// Applies a step taken on `stash[..]` (held bytes first).
    fn apply_to_stash(&mut self, step: Step) {
        match step {
            Step::Deliver(n) => self.ready = n,
            Step::Reject {
                at,
                request,
                reason,
            } => {
                self.verdict.refuse(request, reason, &self.stash[at..]);
                self.stash.truncate(at);
                self.stash.extend_from_slice(SYNTHETIC);
                self.ready = self.stash.len();
                self.blocked = true;
            }
            Step::Halt { at } => {
                self.stash.truncate(at);
                self.ready = at;
                self.blocked = true;
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Checked bytes waiting in the stash go first.
            if this.pos < this.ready {
                let n = (this.ready - this.pos).min(buf.remaining());
                buf.put_slice(&this.stash[this.pos..this.pos + n]);
                this.pos += n;
                this.stash_drained();
                return Poll::Ready(Ok(()));
            }
            if this.blocked {
                // Nothing after a refused head is read. hyper needs nothing more: it answers
                // the synthetic head and closes.
                return Poll::Pending;
            }
            if this.stash.is_empty() {
                if this.framer.is_passthrough() {
                    return Pin::new(&mut this.io).poll_read(cx, buf);
                }
                if buf.remaining() >= DIRECT_MIN {
                    // The common case: read into hyper's buffer and scan the bytes in place.
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                    let got = buf.filled().len() - before;
                    if got == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    match this.framer.feed(&buf.filled()[before..]) {
                        Step::Deliver(n) => {
                            if n < got {
                                this.stash.extend_from_slice(&buf.filled()[before + n..]);
                                buf.set_filled(before + n);
                            }
                            if n > 0 {
                                return Poll::Ready(Ok(()));
                            }
                            // Only part of a head so far: nothing to show hyper yet.
                            continue;
                        }
                        Step::Reject {
                            at,
                            request,
                            reason,
                        } => {
                            this.verdict
                                .refuse(request, reason, &buf.filled()[before + at..]);
                            this.blocked = true;
                            buf.set_filled(before + at);
                            let k = SYNTHETIC.len().min(buf.remaining());
                            buf.put_slice(&SYNTHETIC[..k]);
                            if k < SYNTHETIC.len() {
                                this.stash.extend_from_slice(&SYNTHETIC[k..]);
                                this.pos = 0;
                                this.ready = this.stash.len();
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Step::Halt { at } => {
                            this.blocked = true;
                            buf.set_filled(before + at);
                            if at == 0 {
                                return Poll::Pending;
                            }
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
            }
            // Read into the stash: after a held-back partial head, or when the caller's
            // buffer is too small to hold a head.
            if this.pos > 0 {
                this.stash.drain(..this.pos);
                this.pos = 0;
                this.ready = 0;
            }
            let held = this.stash.len();
            this.stash.resize(held + STASH_READ, 0);
            let mut rb = ReadBuf::new(&mut this.stash[held..]);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut rb);
            let got = rb.filled().len();
            this.stash.truncate(held + got);
            ready!(polled)?;
            if got == 0 {
                // The client went away inside a head: hyper sees a clean end of stream.
                this.stash = Vec::new();
                return Poll::Ready(Ok(()));
            }
            let step = this.framer.feed(&this.stash);
            this.apply_to_stash(step);
            if this.ready == 0 && this.blocked {
                return Poll::Pending;
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.shut = true;
        }
        if this.blocked {
            ready!(this.poll_linger(cx));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> Guarded<T> {
    /// Reads and discards until the client closes, or for [`LINGER_TIME`] /
    /// [`LINGER_BYTES`]. Nothing read here is interpreted.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER_TIME)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let mut scratch = [0u8; 2048];
        loop {
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    self.lingered += rb.filled().len();
                    if self.lingered > LINGER_BYTES {
                        return Poll::Ready(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: Limits = Limits {
        max_head: 1024,
        validate: true,
    };

    /// Writes `chunks` (flushing each) into a guarded pipe; returns what a reader with
    /// `buf_len`-byte reads gets before the guard stops delivering, and the verdict.
    async fn through(chunks: Vec<Vec<u8>>, buf_len: usize) -> (Vec<u8>, Arc<Verdict>) {
        let (mut client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, LIMITS);
        let verdict = g.verdict();
        tokio::spawn(async move {
            for c in chunks {
                if client.write_all(&c).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            // Keep the pipe open: a blocked guard must not need EOF to stop.
            std::future::pending::<()>().await;
        });
        let mut out = Vec::new();
        let mut buf = vec![0u8; buf_len];
        loop {
            let read =
                tokio::time::timeout(std::time::Duration::from_millis(200), g.read(&mut buf));
            match read.await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("{e}"),
            }
        }
        (out, verdict)
    }

    #[tokio::test]
    async fn valid_streams_pass_unchanged_whatever_the_read_size() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
            POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n"
            .to_vec();
        for buf_len in [24, 4096] {
            let chunks: Vec<Vec<u8>> = stream.chunks(7).map(<[u8]>::to_vec).collect();
            let (out, v) = through(chunks, buf_len).await;
            assert_eq!(out, stream, "reads of {buf_len}");
            assert_eq!(v.next_request(), None);
        }
    }

    #[tokio::test]
    async fn a_bad_head_becomes_the_synthetic_one_and_nothing_after_it_is_read() {
        let good = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        let bad = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n".to_vec();
        for (chunks, buf_len) in [
            (vec![[good.clone(), bad.clone()].concat()], 4096),
            (vec![good.clone(), bad.clone()], 4096),
            (
                [good.clone(), bad.clone()]
                    .concat()
                    .chunks(1)
                    .map(<[u8]>::to_vec)
                    .collect(),
                4096,
            ),
            (vec![[good.clone(), bad.clone()].concat()], 24),
        ] {
            let (out, v) = through(chunks, buf_len).await;
            assert_eq!(out, [&good[..], SYNTHETIC].concat());
            assert_eq!(v.next_request(), None);
            assert_eq!(v.next_request(), Some(Reject::LengthAndChunked));
            assert_eq!(v.next_request(), None);
        }
    }

    #[tokio::test]
    async fn h2_preface_passes_through() {
        let mut stream = H2_PREFACE.to_vec();
        stream.extend_from_slice(
            b"\0\0\0\x04\0\0\0\0\0 Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
        );
        let (out, v) = through(vec![stream.clone()], 24).await;
        assert_eq!(out, stream);
        assert_eq!(v.next_request(), None);
    }
}
