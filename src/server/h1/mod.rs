//! The gateway's own HTTP/1.1 server connection: reads request heads, hands each request to
//! the pipeline and writes its response, one request at a time, in the connection's task.
//!
//! Why not hyper's server here: hyper parses a head into a `HeaderMap` only after the
//! gateway's own checks have had to look at the same bytes (hyper resolves ambiguous
//! framing itself and answers some bad heads with bare, body-less errors), arms a fresh
//! header-read timer for every request, and runs a dispatcher between the socket and the
//! service. Here each head is parsed once ([`head`]), checked in the same pass, and turned
//! into the request the pipeline sees; the response head is encoded straight from its
//! `HeaderMap`, and a body that is ready goes out in the same write.
//!
//! - *Ownership.* The connection task alone touches the socket. A request body is handed to
//!   the pipeline through a one-frame channel ([`body::RequestBody`]) that the connection
//!   fills while the pipeline runs and while the response is written (full duplex: an
//!   upstream may answer before the upload is done). `100 Continue` is sent when the body
//!   is first asked for, so an early answer (401, 413) never makes the client send it.
//! - *Keep-alive.* After a response, the connection reads the next head, unless the client
//!   or the response said `close`, the client is HTTP/1.0 without `keep-alive`, the
//!   response is delimited by the close, a request body was left unread (dropped by an
//!   early answer; the input is then discarded for a moment before closing, so the client
//!   reads the answer rather than a reset), or the server is shutting down. Pipelined
//!   requests are answered in order.
//! - *Refused heads* ([`head::Reject`]) get the pipeline's problem+json answer through
//!   [`Call::Refused`], with `Connection: close`; nothing after a refused head is read as
//!   HTTP.
//! - *Hand-off to hyper.* The h2c preface at connection start, and any acceptable `CONNECT`
//!   or HTTP/1.1 `Upgrade` request, end this loop: the connection and what was read of it go
//!   to hyper ([`Ended::Handoff`]), which serves the upgrade (WebSocket) and whatever
//!   follows on that connection.
//! - *Timers.* One per connection: the header-read deadline moves forward with every
//!   request, and the timer is re-armed only when it fires early, so a busy connection
//!   does not touch the timer wheel per request.

mod body;
pub mod head;

pub use body::{BodyError, RequestBody};
pub use head::Reject;

use crate::body::Body;
use crate::raw_head::RawFields;
use bytes::{Buf, Bytes, BytesMut};
use head::{BodyKind, Head, Parsed, H2_PREFACE};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as HttpBody;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

/// How much room each read asks for.
const READ_SIZE: usize = 8 * 1024;
/// Response bytes gathered before a write, at most (a larger frame is written on its own).
const WRITE_GATHER: usize = 64 * 1024;
/// After a refusal or an unread body, how long and how much the closing connection keeps
/// reading (and discarding) so that unread client bytes do not turn the close into a reset
/// that destroys the answer in flight (nginx's lingering close).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The largest request head (`server.max_header_size`).
    pub max_head: usize,
    /// How long a client may take to send a complete head, idle time before it included.
    pub header_timeout: Duration,
}

/// What the connection asks the pipeline to answer.
// Moved once per request; boxing the common variant would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
pub enum Call {
    Request(Request<RequestBody>),
    /// A refused head, with its method and path as the access log should show them.
    Refused(Reject, (Method, String)),
}

/// How the loop ended.
pub enum Ended<S> {
    Closed,
    /// hyper takes over: the connection, what was read of it and not consumed, and the
    /// shutdown signal it was served under.
    Handoff(Rewind<S>, watch::Receiver<()>),
}

/// Serves one HTTP/1 connection until it closes or is handed to hyper. `stop` fires on
/// graceful shutdown: an idle connection closes, a busy one after its response.
pub async fn serve<S, F, Fut>(io: S, cfg: Config, stop: watch::Receiver<()>, service: F) -> Ended<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Call) -> Fut,
    Fut: Future<Output = (Response<Body>, Option<Box<RawFields>>)>,
{
    let deadline = crate::clock::recent_tokio() + cfg.header_timeout;
    let mut stopped = stop.clone();
    let conn = Conn {
        io,
        rbuf: BytesMut::new(),
        wbuf: Vec::new(),
        cfg,
        deadline,
        timer: Box::pin(tokio::time::sleep_until(deadline)),
        stop,
        stopped: Some(Box::pin(async move {
            let _ = stopped.changed().await;
        })),
    };
    conn.run(service).await
}

type StopFut = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Conn<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    cfg: Config,
    /// When the head being waited for must be complete.
    deadline: Instant,
    /// Fires at or before `deadline` (re-armed lazily).
    timer: Pin<Box<Sleep>>,
    stop: watch::Receiver<()>,
    /// Completes on shutdown; polled only while a head is awaited.
    stopped: Option<StopFut>,
}

enum Next {
    Head(Head),
    Switch,
    Refused(Reject, (Method, String)),
    Closed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn run<F, Fut>(mut self, mut service: F) -> Ended<S>
    where
        F: FnMut(Call) -> Fut,
        Fut: Future<Output = (Response<Body>, Option<Box<RawFields>>)>,
    {
        let mut first = true;
        loop {
            let next = self.next_head(first).await;
            first = false;
            let head = match next {
                Next::Head(h) => h,
                Next::Closed => return Ended::Closed,
                Next::Switch => {
                    return Ended::Handoff(
                        Rewind {
                            prefix: self.rbuf.freeze(),
                            io: self.io,
                        },
                        self.stop,
                    )
                }
                Next::Refused(reason, line) => {
                    let (res, raw) = service(Call::Refused(reason, line)).await;
                    let _ = self
                        .respond(res, raw, None, false, Version::HTTP_11, true)
                        .await;
                    self.close(true).await;
                    return Ended::Closed;
                }
            };
            match self.exchange(head, &mut service).await {
                Some(true) => {}
                Some(false) => {
                    self.close(false).await;
                    return Ended::Closed;
                }
                None => {
                    self.close(true).await;
                    return Ended::Closed;
                }
            }
        }
    }

    /// One request and its response. `Some(keep_alive)`, or `None` to close after
    /// discarding what the client may still send.
    async fn exchange<F, Fut>(&mut self, head: Head, service: &mut F) -> Option<bool>
    where
        F: FnMut(Call) -> Fut,
        Fut: Future<Output = (Response<Body>, Option<Box<RawFields>>)>,
    {
        let Head {
            request,
            body,
            keep_alive,
            expect_continue,
        } = head;
        let (parts, ()) = request.into_parts();
        let head_request = parts.method == Method::HEAD;
        let version = parts.version;
        let (req_body, mut pump) = match body {
            BodyKind::None => (RequestBody::empty(), None),
            BodyKind::Length(n) => {
                let (b, tx, shared) = RequestBody::channel(Some(n));
                (
                    b,
                    Some(Pump::new(Framing::Length(n), tx, shared, expect_continue)),
                )
            }
            BodyKind::Chunked => {
                let (b, tx, shared) = RequestBody::channel(None);
                let f = Framing::Chunked(crate::upstream::h1pool::wire::Chunk::Size);
                (b, Some(Pump::new(f, tx, shared, expect_continue)))
            }
        };
        let mut fut = pin!(service(Call::Request(Request::from_parts(parts, req_body))));
        let res = poll_fn(|cx| {
            let body_done = match pump.as_mut() {
                Some(p) => p.poll(cx, &mut self.io, &mut self.rbuf).is_ready(),
                None => true,
            };
            if let Poll::Ready(res) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(res));
            }
            // A client that goes away cancels its request (as nginx and hyper do): the
            // socket is watched once the body is in. Pipelined bytes are kept, up to one
            // read's worth. With tokio's readiness tracking this costs no system call
            // while nothing arrives.
            if body_done && self.rbuf.len() < READ_SIZE {
                if self.rbuf.capacity() - self.rbuf.len() < READ_SIZE / 2 {
                    self.rbuf.reserve(READ_SIZE);
                }
                match poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => cx.waker().wake_by_ref(),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        let Some((res, raw)) = res else {
            // The pipeline's future is dropped here: the upstream exchange is abandoned.
            return Some(false);
        };
        let stopping = self.stop.has_changed().unwrap_or(true);
        let mut close = !keep_alive || stopping;
        if let Some(p) = pump.as_mut() {
            // A body that will not be read to its end (dropped by an early answer, or a
            // `100 Continue` never sent) ends the connection: say so.
            if p.abandoned() {
                close = true;
            }
        }
        let Ok(keep) = self
            .respond(res, raw, pump.as_mut(), head_request, version, close)
            .await
        else {
            return Some(false);
        };
        // The response is out; a body the upload is still reading is read to its end.
        if let Some(p) = pump.as_mut() {
            poll_fn(|cx| p.poll(cx, &mut self.io, &mut self.rbuf)).await;
            match p.state {
                State::Done => {}
                State::Failed => return Some(false),
                // Unread (an early answer dropped it, or it was never asked for): what
                // the client sends of it would be taken for the next request.
                State::Running | State::Gone => return None,
            }
        }
        Some(keep)
    }

    /// Waits for the next head. Idle connections close on shutdown and at the header
    /// deadline.
    async fn next_head(&mut self, first: bool) -> Next {
        // Seconds-scale: the thread's last clock reading (taken as the previous response
        // finished, or as the thread woke for this connection) is close enough.
        self.deadline = crate::clock::recent_tokio() + self.cfg.header_timeout;
        loop {
            head::skip_empty_lines(&mut self.rbuf);
            if first && is_preface_start(&self.rbuf) {
                if self.rbuf.len() >= H2_PREFACE.len() {
                    return Next::Switch;
                }
            } else if !self.rbuf.is_empty() {
                match head::parse(&mut self.rbuf, self.cfg.max_head) {
                    Parsed::Partial => {}
                    Parsed::Head(h) => return Next::Head(h),
                    Parsed::Switch => return Next::Switch,
                    Parsed::Refused(r) => {
                        return Next::Refused(r, head::request_line(&self.rbuf));
                    }
                }
            }
            match poll_fn(|cx| self.poll_read_head(cx)).await {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
    }

    /// No request is in progress while a head is awaited (even half of one is no work
    /// begun), so shutdown closes the connection here whatever is buffered.
    fn poll_read_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.stop.has_changed().unwrap_or(true) {
            return Poll::Ready(Ok(0));
        }
        if self.rbuf.capacity() - self.rbuf.len() < READ_SIZE / 2 {
            self.rbuf.reserve(READ_SIZE);
        }
        match poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => {
                if self.poll_deadline(cx) {
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                if let Some(s) = self.stopped.as_mut() {
                    if s.as_mut().poll(cx).is_ready() {
                        self.stopped = None;
                        return Poll::Ready(Ok(0));
                    }
                }
                Poll::Pending
            }
        }
    }

    /// True once the header deadline has passed. The timer fires at an older deadline at
    /// most once per `header_timeout` and is then moved to the current one.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= self.deadline {
                return true;
            }
            let d = self.deadline;
            self.timer.as_mut().reset(d);
        }
    }

    /// Writes `res`, feeding the request body on the side. `Ok(keep_alive)`.
    async fn respond(
        &mut self,
        res: Response<Body>,
        raw: Option<Box<RawFields>>,
        mut pump: Option<&mut Pump>,
        head_request: bool,
        version: Version,
        mut close: bool,
    ) -> io::Result<bool> {
        let (parts, body) = res.into_parts();
        if parts
            .headers
            .get(header::CONNECTION)
            .is_some_and(|v| has_token(v, b"close"))
        {
            close = true;
        }
        let status = parts.status;
        let no_body = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        // The connection writes `Content-Length` itself, once: from the response's own
        // value(s) when they agree (a list of equal values is one length), else from the
        // body when its size is known.
        let raw = raw.as_deref();
        let declared = match raw {
            Some(r) => r.length,
            None => declared_length(&parts.headers),
        };
        let mut length = None;
        let mut out = if no_body {
            // HEAD and 304 keep the length of what a GET would get; a 204 has none.
            if status != StatusCode::NO_CONTENT {
                length = declared;
            }
            Out::None
        } else if let Some(n) = declared.or_else(|| body.size_hint().exact()) {
            length = Some(n);
            Out::Length(n)
        } else if version == Version::HTTP_11 {
            Out::Chunked
        } else {
            close = true;
            Out::Close
        };
        // A `100 Continue` not sent yet never will be: the answer goes first.
        if let Some(p) = pump.as_deref_mut() {
            if p.cancel_continue() {
                close = true;
            }
        }
        self.wbuf.clear();
        encode_head(&mut self.wbuf, &parts, raw, out, length, close, version);
        drop(parts);

        let mut body = if no_body { None } else { Some(body) };
        let mut wpos = 0usize;
        let result = poll_fn(|cx| {
            if let Some(p) = pump.as_deref_mut() {
                let _ = p.poll(cx, &mut self.io, &mut self.rbuf);
            }
            loop {
                let mut waiting = false;
                if let Some(b) = body.as_mut() {
                    if self.wbuf.len() < WRITE_GATHER {
                        match Pin::new(&mut *b).poll_frame(cx) {
                            Poll::Pending => waiting = true,
                            Poll::Ready(None) => {
                                body = None;
                                match out {
                                    Out::Chunked => self.wbuf.extend_from_slice(b"0\r\n\r\n"),
                                    Out::Length(0) | Out::None | Out::Close => {}
                                    // Shorter than its Content-Length: the client must
                                    // not wait for the rest, or take it from the next.
                                    Out::Length(_) => {
                                        return Poll::Ready(
                                            Err(io::ErrorKind::UnexpectedEof.into()),
                                        )
                                    }
                                }
                            }
                            Poll::Ready(Some(Ok(frame))) => {
                                if let Ok(data) = frame.into_data() {
                                    if let Err(e) = encode_data(&mut self.wbuf, &mut out, &data) {
                                        return Poll::Ready(Err(e));
                                    }
                                }
                                continue;
                            }
                            Poll::Ready(Some(Err(e))) => {
                                tracing::debug!(error = %e, "response body failed; closing");
                                return Poll::Ready(Err(io::Error::other("response body failed")));
                            }
                        }
                    }
                }
                while wpos < self.wbuf.len() {
                    match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[wpos..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(n)) => wpos += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                self.wbuf.clear();
                wpos = 0;
                if body.is_none() || waiting {
                    match Pin::new(&mut self.io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                    if body.is_none() {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Pending;
                }
            }
        })
        .await;
        // The response body (and what it records when dropped) is done with here.
        drop(body);
        if self.wbuf.capacity() > WRITE_GATHER * 2 {
            self.wbuf = Vec::new();
        }
        result?;
        Ok(!close && !matches!(out, Out::Close))
    }

    /// Ends the connection: shuts the write side and, when the client may still be
    /// sending, discards its input for a moment so the answer is read rather than reset.
    async fn close(&mut self, linger: bool) {
        use tokio::io::AsyncWriteExt;
        let _ = self.io.shutdown().await;
        if !linger {
            return;
        }
        let mut seen = 0usize;
        let mut scratch = vec![0u8; 4096];
        let drain = async {
            use tokio::io::AsyncReadExt;
            while let Ok(n) = self.io.read(&mut scratch).await {
                seen += n;
                if n == 0 || seen > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    }
}

/// The response's `Content-Length`: one value, or several lines or list items that all
/// agree. `None` when absent or when they disagree or are not lengths (the body's own size,
/// or chunked, frames it then).
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut found = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for item in v.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n = std::str::from_utf8(item).ok()?.parse::<u64>().ok()?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

fn is_preface_start(buf: &[u8]) -> bool {
    !buf.is_empty() && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())])
}

fn has_token(v: &HeaderValue, token: &[u8]) -> bool {
    v.as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy)]
enum Out {
    None,
    /// Bytes still to send.
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, unknown length).
    Close,
}

fn encode_head(
    w: &mut Vec<u8>,
    parts: &http::response::Parts,
    raw: Option<&RawFields>,
    out: Out,
    length: Option<u64>,
    close: bool,
    version: Version,
) {
    let status = parts.status;
    w.extend_from_slice(b"HTTP/1.1 ");
    w.extend_from_slice(status.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    w.extend_from_slice(b"\r\n");
    // An upstream's own fields as it wrote them, then what the gateway added.
    let mut date = false;
    if let Some(r) = raw {
        r.write_to(w);
        date = r.date;
    }
    for (name, value) in &parts.headers {
        // Framing and connection management are this connection's to say.
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        if name == header::DATE {
            date = true;
        }
        w.extend_from_slice(name.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(value.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
    if let Some(n) = length {
        w.extend_from_slice(b"content-length: ");
        w.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        w.extend_from_slice(b"\r\n");
    }
    if matches!(out, Out::Chunked) {
        w.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        w.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        w.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !date {
        w.extend_from_slice(b"date: ");
        http_date(w);
        w.extend_from_slice(b"\r\n");
    }
    w.extend_from_slice(b"\r\n");
}

fn encode_data(w: &mut Vec<u8>, out: &mut Out, data: &Bytes) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    match out {
        Out::None => {}
        Out::Length(left) => {
            if data.len() as u64 > *left {
                // Longer than its Content-Length: what fits goes out, then the close.
                let n = *left as usize;
                w.extend_from_slice(&data[..n]);
                *left = 0;
                return Err(io::Error::other("response body longer than its length"));
            }
            *left -= data.len() as u64;
            w.extend_from_slice(data);
        }
        Out::Chunked => {
            let mut hex = [0u8; 16];
            let s = format_hex(data.len(), &mut hex);
            w.extend_from_slice(s);
            w.extend_from_slice(b"\r\n");
            w.extend_from_slice(data);
            w.extend_from_slice(b"\r\n");
        }
        Out::Close => w.extend_from_slice(data),
    }
    Ok(())
}

fn format_hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The `Date` value, formatted once per second per thread.
fn http_date(w: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::SystemTime;
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        w.extend_from_slice(c.1.as_bytes());
    });
}

// ------------------------------------------------------------------- request body pump

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(crate::upstream::h1pool::wire::Chunk),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Read to its end.
    Done,
    /// The pipeline dropped the body before its end.
    Gone,
    /// The client's body broke (malformed, cut short, I/O error).
    Failed,
}

/// Moves one request body from the socket into its channel.
struct Pump {
    framing: Framing,
    tx: body::Tx,
    shared: Arc<body::Shared>,
    /// `100 Continue` still to be written (bytes of it sent so far).
    expect: Option<usize>,
    state: State,
}

impl Pump {
    fn new(framing: Framing, tx: body::Tx, shared: Arc<body::Shared>, expect: bool) -> Pump {
        Pump {
            framing,
            tx,
            shared,
            expect: expect.then_some(0),
            state: State::Running,
        }
    }

    fn finish(&mut self, state: State) {
        if state == State::Done {
            self.shared.set_complete();
        }
        // A reserved slot holds a sender of its own: give it back, or the channel would
        // stay open and the body never end.
        self.tx.abort_send();
        self.tx.close();
        self.state = state;
    }

    /// Whether the body will not be read to its end: the pipeline dropped it, or the
    /// client was never asked for it.
    fn abandoned(&mut self) -> bool {
        if self.state == State::Running && self.receiver_gone() {
            self.finish(State::Gone);
        }
        self.state == State::Gone || (self.state == State::Running && self.expect == Some(0))
    }

    /// Drops a `100 Continue` that has not been sent (the final answer is about to be
    /// written); true when the body is thereby left unread. A half-written one is finished
    /// first by the caller's poll.
    fn cancel_continue(&mut self) -> bool {
        if self.state == State::Running && self.expect == Some(0) {
            self.finish(State::Gone);
            return true;
        }
        false
    }

    fn receiver_gone(&self) -> bool {
        self.tx.get_ref().is_none_or(|s| s.is_closed())
    }

    fn fail(&mut self, e: BodyError) {
        // A slot is reserved whenever this is called.
        let _ = self.tx.send_item(Err(e));
        self.finish(State::Failed);
    }

    /// Ready once the body is no longer running.
    fn poll<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        rbuf: &mut BytesMut,
    ) -> Poll<()> {
        use crate::upstream::h1pool::wire::{decode, Decoded};
        loop {
            if self.state != State::Running {
                return Poll::Ready(());
            }
            // The pipeline dropped the body (an early answer): nothing more is read of it.
            // (Its drop wakes this task through `shared`, registered below.)
            if self.receiver_gone() {
                self.finish(State::Gone);
                continue;
            }
            self.shared.register(cx);
            if let Some(sent) = self.expect {
                if !self.shared.poll_wanted(cx) {
                    return Poll::Pending;
                }
                match Pin::new(&mut *io).poll_write(cx, &CONTINUE[sent..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        let sent = sent + n;
                        self.expect = (sent < CONTINUE.len()).then_some(sent);
                        if self.expect.is_none() {
                            let _ = Pin::new(&mut *io).poll_flush(cx);
                        }
                        continue;
                    }
                    Poll::Ready(_) => {
                        self.finish(State::Failed);
                        continue;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            match self.tx.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    self.finish(State::Gone);
                    continue;
                }
                Poll::Pending => return Poll::Pending,
            }
            let step = match &mut self.framing {
                Framing::Length(left) => {
                    if rbuf.is_empty() {
                        Ok(Decoded::More)
                    } else {
                        let n = (*left).min(rbuf.len() as u64) as usize;
                        *left -= n as u64;
                        Ok(Decoded::Data(rbuf.split_to(n).freeze()))
                    }
                }
                Framing::Chunked(state) => decode(state, rbuf),
            };
            match step {
                Ok(Decoded::Data(b)) => {
                    let _ = self.tx.send_item(Ok(b));
                    if matches!(self.framing, Framing::Length(0)) {
                        self.finish(State::Done);
                    }
                }
                Ok(Decoded::End) => self.finish(State::Done),
                Ok(Decoded::More) => {
                    if rbuf.capacity() - rbuf.len() < READ_SIZE / 2 {
                        rbuf.reserve(READ_SIZE * 2);
                    }
                    match poll_read_buf(Pin::new(&mut *io), cx, rbuf) {
                        Poll::Ready(Ok(0)) => self.fail(BodyError::Truncated),
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => self.fail(BodyError::Io(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => self.fail(BodyError::Malformed(match e {
                    crate::upstream::h1pool::wire::WireError::Malformed(what) => what,
                    _ => "invalid chunked framing",
                })),
            }
        }
    }
}

// ------------------------------------------------------------------------ hand-off

/// A connection with bytes already read in front of it, for hyper to read first.
pub struct Rewind<S> {
    prefix: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S> Rewind<S> {
    /// A connection with nothing read ahead.
    pub fn new(io: S) -> Rewind<S> {
        Rewind {
            prefix: Bytes::new(),
            io,
        }
    }
}
