//! HTTP/1.1 on the wire for the target-owned pool: one exchange on one connection, driven
//! by the task of the request that makes it.
//!
//! Why not hyper's `client::conn::http1` here: it runs every connection in a task of its
//! own, so each exchange crosses a channel to that task and back and wakes two tasks per
//! direction, and it turns the whole response head into a fresh `HeaderMap` by copying.
//! Here the request head is written from the headers the pipeline already checked, the
//! response head is parsed with httparse (the parser hyper uses) into header values that
//! are slices of the read buffer, and the response body is read straight off the socket by
//! whoever polls it (the client connection's task). No task, no channel, no copy of the
//! body.
//!
//! What it does, after RFC 9112:
//! - request: `Content-Length` when the client's request had one, else chunked when there
//!   is a body; `Expect` is not sent on (the gateway answered it to the client already);
//!   a body that is ready at once (a kept body) goes out in the same write as the head;
//! - an upstream that answers while the body is still going up (an early 413, a 401, an
//!   echo) is heard: its answer streams back while the upload goes on beside it, and the
//!   connection is not reused (what the upstream did not read would be taken for the next
//!   request); the body is held to its `Content-Length`, never more or fewer bytes;
//! - response: interim 1xx answers are skipped (a 101 is an error: nothing here asks to
//!   upgrade); no body for `HEAD`, 204 and 304; chunked when the last transfer coding is
//!   `chunked` (trailers are read and dropped), else `Content-Length` (differing values are
//!   an error), else until the upstream closes;
//! - a connection is reused only after a complete, length-delimited HTTP/1.1 response with
//!   no `Connection: close` and nothing left over.

use crate::body::{Body, BoxError};
use crate::forwarded::Own;
use crate::raw_head::RawFields;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The largest response head read from an upstream.
/// (About hyper's default read buffer limit, so upstreams with large `Set-Cookie` heads
/// work as they did.)
pub const MAX_HEAD: usize = 400 * 1024;
/// Response header fields at most.
const MAX_HEADERS: usize = 128;
/// How much room each read asks for.
const READ_CHUNK: usize = 16 * 1024;
/// A chunk-size line or a trailer line longer than this is malformed.
const MAX_LINE: usize = 4096;
/// Trailers are read and dropped, up to this much.
const MAX_TRAILERS: usize = 16 * 1024;
/// A first body frame up to this size goes out in the same write as the head.
const COALESCE: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("upstream connection: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing of a response came before the upstream closed or reset the connection.
    #[error("the upstream closed the connection without a response")]
    NoResponse,
    #[error("malformed response from the upstream: {0}")]
    Malformed(&'static str),
    #[error("the upstream's response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the upstream closed the connection before the end of the body")]
    Truncated,
    #[error("reading the request body failed")]
    RequestBody(#[source] BoxError),
    /// The exchange's deadline passed before the response head was in.
    #[error("the upstream did not answer in time")]
    TimedOut,
}

impl WireError {
    /// The upstream cannot have acted on the request: it said nothing before closing (the
    /// classic race with a keep-alive connection it was closing as we reused it).
    pub fn nothing_received(&self) -> bool {
        match self {
            WireError::NoResponse => true,
            WireError::Io(e) => matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// One upstream connection and what has been read from it but not used yet.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    buf: BytesMut,
    /// The exchange deadline's timer, kept from one exchange to the next (see
    /// [`Conn::arm`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The socket, or its read half while a task of the exchange's still writes the request
/// body on the other half (an upstream that answers as the body goes up).
#[derive(Debug)]
enum Io {
    Whole(TcpStream),
    Read(OwnedReadHalf),
    /// Taken apart for a moment (reads as end of stream).
    Gone,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Whole(s) => Pin::new(s).poll_read(cx, buf),
            Io::Read(r) => Pin::new(r).poll_read(cx, buf),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io: Io::Whole(io),
            buf: BytesMut::new(),
            timer: None,
        }
    }

    /// The connection's timer, set to `until`. Why one per connection rather than a
    /// `tokio::time::timeout` per exchange: a new timer takes the runtime's timer lock
    /// twice (into the wheel on its first poll, out of it when dropped), while moving a
    /// registered one to a later deadline is one atomic exchange (tokio's
    /// `TimerEntry::reset` extends in place; the wheel finds the new deadline when the old
    /// one comes round). Deadlines on one connection only move forward, so after the first
    /// exchange that is the usual case. The timer stays registered while the connection is
    /// idle; when it comes due it wakes the task that last waited on it, once, for nothing.
    fn arm(&mut self, until: tokio::time::Instant) -> Pin<Box<tokio::time::Sleep>> {
        match self.timer.take() {
            Some(mut t) => {
                t.as_mut().reset(until);
                t
            }
            None => Box::pin(tokio::time::sleep_until(until)),
        }
    }

    /// Whether a connection just done with its exchange can go back to the pool: whole, with
    /// nothing unasked buffered. What the socket says is left to [`Conn::alive`] at
    /// checkout, which must ask anyway (time passes in the pool): asking here too cost a
    /// readiness poll a request for a socket whose last read had just drained it.
    pub fn reusable(&self) -> bool {
        matches!(self.io, Io::Whole(_)) && self.buf.is_empty()
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it
    /// nor sent anything unasked. Costs no system call unless the socket has news (the
    /// reactor's readiness is looked at first; a short read already cleared it).
    pub fn alive(&mut self) -> bool {
        let Io::Whole(io) = &self.io else {
            return false;
        };
        if !self.buf.is_empty() {
            return false;
        }
        // With the task's cooperative budget spent, readiness reads as pending whatever the
        // socket says: ask the socket itself then.
        let mut cx = Context::from_waker(Waker::noop());
        let readiness = if tokio::task::coop::has_budget_remaining() {
            io.poll_read_ready(&mut cx)
        } else {
            Poll::Ready(Ok(()))
        };
        match readiness {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(io.try_read(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more into the buffer; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        self.io.read_buf(&mut self.buf).await
    }
}

/// A request head on the wire, with as much of the body as was ready at once.
pub struct Outgoing {
    bytes: Vec<u8>,
    /// The rest of the body still to send; `None` once all of it is in `bytes`.
    body: Option<Body>,
    /// A frame read ahead but too large to copy into `bytes`: it goes first.
    pending: Option<Bytes>,
    /// The whole request is in `bytes` and its method is idempotent: it can go out again
    /// after a failure that shows the upstream never answered. Decided once, before any
    /// try takes the body.
    resendable: bool,
    /// The body's length as the head announces it (`Content-Length`), to hold the body to.
    declared: Option<u64>,
    /// Body bytes put on the wire (or into `bytes`) so far, when `declared` is set.
    counted: u64,
    chunked: bool,
    head: bool,
    /// The response's end-to-end fields may stay raw ([`crate::raw_head`]); the request-id
    /// field's name, which the gateway sets on the response itself.
    raw: Option<HeaderName>,
    /// The body failed while being read ahead (the size limit tripped, the client went).
    failed: Option<BoxError>,
}

impl Outgoing {
    /// Encodes `parts` (origin-form URI) with the gateway's own fields in place of the
    /// client's of the same names, and the start of `body`.
    pub fn new(parts: &http::request::Parts, own: &Own<'_>, body: Body) -> Outgoing {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        Outgoing::encode(&parts.method, ("", pq), &parts.headers, own, body)
    }

    /// [`Outgoing::new`] from the pieces, the request target as `base` then `pq` (a valid
    /// origin-form target together): the proxy's path, which so builds no `Uri` and no
    /// `Request` just to take them apart again here.
    pub fn encode(
        method: &Method,
        (base, pq): (&str, &str),
        headers: &http::HeaderMap,
        own: &Own<'_>,
        body: Body,
    ) -> Outgoing {
        let mut bytes = Vec::with_capacity(256 + headers.len() * 32);
        bytes.extend_from_slice(method.as_str().as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(base.as_bytes());
        bytes.extend_from_slice(pq.as_bytes());
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        let has_body = !body.is_end_stream();
        let mut has_length = false;
        for (name, value) in headers {
            if name == header::EXPECT || name == header::TRANSFER_ENCODING || own.replaces(name) {
                continue;
            }
            has_length |= name == header::CONTENT_LENGTH;
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        own.write_to(&mut bytes);
        let chunked = has_body && !has_length;
        if chunked {
            bytes.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        let mut out = Outgoing {
            bytes,
            body: has_body.then_some(body),
            chunked,
            head: method == Method::HEAD,
            raw: None,
            failed: None,
            pending: None,
            resendable: false,
            declared: None,
            counted: 0,
        };
        if has_body && has_length {
            out.declared = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| parse_length(v.as_bytes()));
        }
        out.take_ready();
        out.resendable = out.body.is_none() && out.failed.is_none() && method.is_idempotent();
        out
    }

    /// Moves body frames that are ready without waiting (a kept body is) into `bytes`, so
    /// head and body leave in one write and the request can be sent again as it is.
    fn take_ready(&mut self) {
        let Some(body) = self.body.as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        while self.bytes.len() < COALESCE {
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if self.bytes.len() + data.len() > COALESCE {
                            self.pending = Some(data);
                            return;
                        }
                        if let Err(e) = count(&mut self.counted, self.declared, data.len()) {
                            self.failed = Some(e);
                            self.body = None;
                            return;
                        }
                        encode_data(&mut self.bytes, &data, self.chunked);
                    }
                }
                Poll::Ready(None) => {
                    self.finish_ready();
                    return;
                }
                Poll::Ready(Some(Err(e))) => {
                    self.failed = Some(e);
                    self.body = None;
                    return;
                }
                Poll::Pending => return,
            }
            if body.is_end_stream() {
                self.finish_ready();
                return;
            }
        }
    }

    /// The body ended while being read ahead: close it, and hold it to its length.
    fn finish_ready(&mut self) {
        self.body = None;
        if let Err(e) = complete(self.counted, self.declared) {
            self.failed = Some(e);
        } else if self.chunked {
            self.bytes.extend_from_slice(b"0\r\n\r\n");
        }
    }

    /// The error of a body that failed while being read ahead: the request cannot be sent.
    pub fn failure(&mut self) -> Option<WireError> {
        self.failed.take().map(WireError::RequestBody)
    }

    /// Lets the response's end-to-end fields stay raw ([`crate::raw_head`]).
    pub fn keep_raw(&mut self, request_id: &HeaderName) {
        self.raw = Some(request_id.clone());
    }

    /// Whether the whole request is in hand, so it can go out again on another connection.
    pub fn resendable(&self) -> bool {
        self.resendable
    }
}

/// The body is longer than its `Content-Length`: sending more would put bytes on the
/// connection that the upstream reads as the next request.
#[derive(Debug, thiserror::Error)]
#[error("the request body does not match its Content-Length")]
pub struct LengthMismatch;

fn count(counted: &mut u64, declared: Option<u64>, n: usize) -> Result<(), BoxError> {
    *counted += n as u64;
    match declared {
        Some(d) if *counted > d => Err(Box::new(LengthMismatch)),
        _ => Ok(()),
    }
}

fn complete(counted: u64, declared: Option<u64>) -> Result<(), BoxError> {
    match declared {
        Some(d) if counted != d => Err(Box::new(LengthMismatch)),
        _ => Ok(()),
    }
}

/// A `Content-Length` value: ASCII digits, optionally a list of equal values (`5, 5`, which
/// some senders merge duplicates into); nothing else (`+5`, `0x5`, `5 6`).
fn parse_length(v: &[u8]) -> Option<u64> {
    let mut out: Option<u64> = None;
    for part in v.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if out.is_some_and(|o| o != n) {
            return None;
        }
        out = Some(n);
    }
    out
}

fn encode_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// What was read of a response before its body.
pub struct Head {
    pub parts: http::response::Parts,
    framing: Framing,
    /// The connection may carry another exchange after this body.
    keep: bool,
    /// The end-to-end fields, when they stayed raw ([`crate::raw_head`]).
    raw: Option<Box<RawFields>>,
}

/// The request body's upload, when it goes on beside the response; stopped when dropped
/// (the response is over or abandoned, so no one would hear the rest).
#[derive(Debug)]
struct Upload(JoinHandle<(OwnedWriteHalf, Result<(), WireError>)>);

impl Drop for Upload {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `out` (taking its remaining body) on `conn` and reads the response head; the
/// response body is then read through the returned [`WireBody`].
pub async fn exchange(
    mut conn: Conn,
    out: &mut Outgoing,
    until: tokio::time::Instant,
) -> Result<(http::response::Parts, WireBody), WireError> {
    if let Some(e) = out.failure() {
        return Err(e);
    }
    let mut timer = conn.arm(until);
    let (head, upload, reuse) = {
        let io = std::pin::pin!(exchange_io(&mut conn, out));
        Deadline {
            io,
            timer: timer.as_mut(),
        }
        .await?
    };
    conn.timer = Some(timer);
    let body = WireBody {
        conn: Some(conn),
        framing: head.framing,
        keep: head.keep && reuse,
        upload,
        raw: head.raw,
    };
    Ok((head.parts, body))
}

/// An exchange up to its response head, or [`WireError::TimedOut`] when the timer fires
/// first.
struct Deadline<'a, F> {
    io: Pin<&'a mut F>,
    timer: Pin<&'a mut tokio::time::Sleep>,
}

impl<F, T> std::future::Future for Deadline<'_, F>
where
    F: std::future::Future<Output = Result<T, WireError>>,
{
    type Output = Result<T, WireError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(r) = self.io.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(WireError::TimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The exchange's I/O: the request out, the response head in. Also says how the upload
/// ended and whether the connection may be reused after the response.
async fn exchange_io(
    conn: &mut Conn,
    out: &mut Outgoing,
) -> Result<(Head, Option<Upload>, bool), WireError> {
    let Io::Whole(io) = &mut conn.io else {
        return Err(WireError::Malformed("a connection still busy was reused"));
    };
    io.write_all(&out.bytes).await?;
    let mut upload = None;
    let mut reuse = true;
    let mut broken = None;
    if let Some(body) = out.body.take() {
        let rest = Rest {
            first: out.pending.take(),
            body,
            chunked: out.chunked,
            declared: out.declared,
            counted: out.counted,
        };
        match send_rest(conn, rest).await? {
            Sent::All => {}
            // The answer began before the body was all sent: whatever of the body the
            // upstream has not read would be taken for the next request. Never reused.
            Sent::Early(u) => {
                reuse = false;
                upload = u;
            }
            // The upstream stopped reading (and maybe answered first): look for an answer
            // before reporting the broken write.
            Sent::Broken(e) => {
                reuse = false;
                broken = Some(e);
            }
        }
    }
    let head = match read_head(conn, out.head, out.raw.as_ref()).await {
        Ok(head) => head,
        Err(e) => return Err(broken.map_or(e, WireError::Io)),
    };
    Ok((head, upload, reuse))
}

/// The part of a request body not in the head's write.
struct Rest {
    first: Option<Bytes>,
    body: Body,
    chunked: bool,
    declared: Option<u64>,
    counted: u64,
}

/// How the upload of the rest of a body ended.
enum Sent {
    All,
    /// The upstream answered (or closed) first; the upload goes on in this task, if any.
    Early(Option<Upload>),
    /// Writing failed at the transport.
    Broken(std::io::Error),
}

/// Streams the rest of the request body while listening for the response. An upstream
/// that starts answering first (an early 413 or 401, or one that echoes as it reads) is
/// heard: the upload carries on in a task of its own beside the response, and is stopped
/// when the response ends.
async fn send_rest(conn: &mut Conn, rest: Rest) -> Result<Sent, WireError> {
    let Io::Whole(io) = std::mem::replace(&mut conn.io, Io::Gone) else {
        return Err(WireError::Malformed("a connection still busy was reused"));
    };
    let (rd, wr) = io.into_split();
    let mut sending = Box::pin(async move {
        let mut wr = wr;
        let r = send_body(&mut wr, rest).await;
        (wr, r)
    });
    enum Step {
        Sent(OwnedWriteHalf, Result<(), WireError>),
        Readable(std::io::Result<()>),
    }
    loop {
        let step = tokio::select! {
            biased;
            (wr, r) = &mut sending => Step::Sent(wr, r),
            r = rd.readable() => Step::Readable(r),
        };
        match step {
            Step::Sent(wr, Ok(())) => {
                let io = rd
                    .reunite(wr)
                    .map_err(|_| WireError::Malformed("the halves of a connection differ"))?;
                conn.io = Io::Whole(io);
                return Ok(Sent::All);
            }
            Step::Sent(_, Err(WireError::Io(e))) => {
                conn.io = Io::Read(rd);
                return Ok(Sent::Broken(e));
            }
            Step::Sent(_, Err(e)) => return Err(e),
            Step::Readable(r) => {
                r?;
                match rd.try_read_buf(&mut conn.buf) {
                    Ok(0) => {
                        // Closed: the head read reports it; the upload is dropped.
                        conn.io = Io::Read(rd);
                        return Ok(Sent::Early(None));
                    }
                    Ok(_) => {
                        conn.io = Io::Read(rd);
                        return Ok(Sent::Early(Some(Upload(tokio::spawn(sending)))));
                    }
                    // A readiness left over from before: nothing new.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

async fn send_body<W: AsyncWrite + Unpin>(wr: &mut W, rest: Rest) -> Result<(), WireError> {
    use http_body_util::BodyExt;
    let Rest {
        first,
        mut body,
        chunked,
        declared,
        mut counted,
    } = rest;
    if let Some(data) = first {
        count(&mut counted, declared, data.len()).map_err(WireError::RequestBody)?;
        write_data(wr, data, chunked).await?;
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(WireError::RequestBody)?;
        // Trailers are not forwarded.
        if let Ok(data) = frame.into_data() {
            count(&mut counted, declared, data.len()).map_err(WireError::RequestBody)?;
            write_data(wr, data, chunked).await?;
        }
    }
    complete(counted, declared).map_err(WireError::RequestBody)?;
    if chunked {
        wr.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}

async fn write_data<W: AsyncWrite + Unpin>(
    wr: &mut W,
    data: Bytes,
    chunked: bool,
) -> Result<(), WireError> {
    if data.is_empty() {
        return Ok(());
    }
    if chunked {
        let size = Bytes::from(format!("{:x}\r\n", data.len()));
        let mut b = size.chain(data).chain(&b"\r\n"[..]);
        wr.write_all_buf(&mut b).await?;
    } else {
        let mut data = data;
        wr.write_all_buf(&mut data).await?;
    }
    Ok(())
}

/// Reads until a final (non-1xx) response head is complete.
async fn read_head(
    conn: &mut Conn,
    head_request: bool,
    raw: Option<&HeaderName>,
) -> Result<Head, WireError> {
    // Whether anything came back at all (an interim answer consumed counts): only with
    // nothing may the request be taken as unseen.
    let mut any = !conn.buf.is_empty();
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, head_request, raw)? {
                Parsed::Final(head) => return Ok(head),
                // What follows an interim answer may be complete already.
                Parsed::Interim => continue,
                Parsed::Partial => {}
            }
        }
        match conn.fill().await {
            Ok(0) if !any => return Err(WireError::NoResponse),
            Ok(0) => {
                return Err(WireError::Malformed(
                    "the connection closed inside the response head",
                ))
            }
            Ok(_) => any = true,
            Err(e) if !any => return Err(e.into()),
            Err(_) => {
                return Err(WireError::Malformed(
                    "the connection broke inside the response head",
                ))
            }
        }
    }
}

/// What [`parse_head`] made of the front of the buffer.
enum Parsed {
    Final(Head),
    /// An interim 1xx answer, consumed.
    Interim,
    Partial,
}

/// Parses one head off the front of `buf`.
/// `raw`: the request-id field's name when the end-to-end fields may stay raw
/// ([`crate::raw_head`]).
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    raw: Option<&HeaderName>,
) -> Result<Parsed, WireError> {
    // Uninitialised slots: zeroing a hundred of them per response cost more than parsing.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD {
                Err(WireError::HeadTooLarge)
            } else {
                Ok(Parsed::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError::Malformed("too many header fields"))
        }
        Err(_) => return Err(WireError::Malformed("not an HTTP/1.x response head")),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| WireError::Malformed("the status code is out of range"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(WireError::Malformed(
            "101 to a request that asked no upgrade",
        ));
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // One pass over the fields, still in the read buffer, for framing, and for the runs
    // the client can be sent as they are (`raw_head`) when that was asked for and nothing
    // stands in its way. Offsets are from the start of the head, which is frozen after.
    let base = buf.as_ptr() as usize;
    let at = |p: *const u8| p as usize - base;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut has_te = false;
    let mut close = version == Version::HTTP_10;
    let mut listed_any = false;
    let mut runs = raw.map(|_| Box::new(RawFields::new(Bytes::new())));
    let head_bytes = &buf[..len];
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let (no, vo, vl) = (at(name.as_ptr()), at(value.as_ptr()), value.len());
        let kind = field_kind(name);
        match kind {
            Field::ContentLength => {
                let v =
                    parse_length(value).ok_or(WireError::Malformed("invalid Content-Length"))?;
                if length.is_some_and(|l| l != v) {
                    return Err(WireError::Malformed("differing Content-Length values"));
                }
                length = Some(v);
            }
            Field::TransferEncoding => {
                has_te = true;
                // Only the last coding counts: chunked must be last to frame the body.
                chunked = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            Field::Connection => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        if version == Version::HTTP_10 {
                            close = false;
                        }
                    } else if !token.is_empty() {
                        listed_any = true;
                    }
                }
            }
            _ => {}
        }
        let Some(r) = runs.as_mut() else { continue };
        let keep = match kind {
            Field::Other => true,
            Field::Date => {
                r.date = true;
                true
            }
            Field::Via => false,
            _ => continue, // framing and hop-by-hop: never in the runs
        };
        let end = vo + vl;
        let crlf = head_bytes.get(end..end + 2) == Some(b"\r\n".as_slice());
        let own = raw.is_some_and(|rid| name.eq_ignore_ascii_case(rid.as_str().as_bytes()));
        if !keep || own || listed_any || vl == 0 || !crlf || !r.push(no, end + 2) {
            runs = None;
        }
    }
    if listed_any {
        runs = None;
    }
    // Where each field sits, for the values of a map (slices of the frozen head): only
    // when the fields do not stay raw.
    let spans: Vec<(usize, usize, usize, usize)> = if runs.is_some() {
        Vec::new()
    } else {
        res.headers
            .iter()
            .map(|h| {
                let (name, value) = (h.name.as_bytes(), h.value);
                (
                    at(name.as_ptr()),
                    name.len(),
                    at(value.as_ptr()),
                    value.len(),
                )
            })
            .collect()
    };
    let n = res.headers.len();
    let head = buf.split_to(len).freeze();

    // `None`: the fields stay raw, and the response keeps the empty map it is made with
    // (replacing it would drop one map and build another for nothing).
    let headers = if let Some(r) = runs.as_mut() {
        // The runs' bytes: the head itself, moved rather than shared.
        r.set_head(head);
        None
    } else {
        // Hop-by-hop fields, and those the upstream's `Connection` lists, are left out here
        // rather than removed from the map later (`forwarded::strip_response_hop_by_hop`,
        // which the gateway skips for this client's responses).
        let mut listed: Vec<HeaderName> = Vec::new();
        if listed_any {
            for &(no, nl, vo, vl) in &spans {
                if field_kind(&head[no..no + nl]) == Field::Connection {
                    listed.extend(crate::forwarded::connection_tokens(&head[vo..vo + vl]));
                }
            }
        }
        // With room for what the gateway adds on the way back (Via, request id, policies').
        let mut headers = HeaderMap::with_capacity(n + 4);
        for &(no, nl, vo, vl) in &spans {
            let name = HeaderName::from_bytes(&head[no..no + nl])
                .map_err(|_| WireError::Malformed("invalid header field name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vo..vo + vl))
                .map_err(|_| WireError::Malformed("invalid header field value"))?;
            if crate::forwarded::is_hop_by_hop(name.as_str()) || listed.contains(&name) {
                continue;
            }
            headers.append(name, value);
        }
        if has_te && length.is_some() {
            // The length is not what frames this body (RFC 9112 6.3): it must not reach
            // the client, whose framing it would then decide.
            headers.remove(header::CONTENT_LENGTH);
        }
        Some(headers)
    };

    if has_te && version == Version::HTTP_10 {
        return Err(WireError::Malformed(
            "Transfer-Encoding in an HTTP/1.0 response",
        ));
    }
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Done
    } else if has_te {
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::Done,
            Some(l) => Framing::Length(l),
            None => Framing::Close,
        }
    };
    // Both framings at once: the length is ignored (RFC 9112 6.3), but such a connection
    // is not trusted with another exchange.
    let keep = !(close || matches!(framing, Framing::Close) || (has_te && length.is_some()));

    let mut res = Response::new(());
    *res.status_mut() = status;
    *res.version_mut() = version;
    if let Some(h) = headers {
        *res.headers_mut() = h;
    }
    let raw = runs.map(|mut r| {
        // A length beside Transfer-Encoding frames nothing (see above).
        r.length = length.filter(|_| !has_te);
        r
    });
    let (parts, ()) = res.into_parts();
    Ok(Parsed::Final(Head {
        parts,
        framing,
        keep,
        raw,
    }))
}

/// What a response field name means to the wire client, whatever its case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Connection,
    /// The other hop-by-hop names (`forwarded::is_hop_by_hop`).
    HopByHop,
    Date,
    Via,
    Other,
}

fn field_kind(name: &[u8]) -> Field {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    let is8 = |s: &str| eq_folded(name, s.as_bytes());
    // A length switch and at most two compares; eight bytes at a time for the long names.
    match name.len() {
        2 if is("te") => Field::HopByHop,
        3 if is("via") => Field::Via,
        4 if is("date") => Field::Date,
        7 if is("trailer") || is("upgrade") => Field::HopByHop,
        10 if is8("connection") => Field::Connection,
        10 if is8("keep-alive") => Field::HopByHop,
        14 if is8("content-length") => Field::ContentLength,
        16 if is8("proxy-connection") => Field::HopByHop,
        17 if is8("transfer-encoding") => Field::TransferEncoding,
        18 if is8("proxy-authenticate") => Field::HopByHop,
        19 if is8("proxy-authorization") => Field::HopByHop,
        _ => Field::Other,
    }
}

/// `name` is `lower` but for ASCII case, where `lower` (at least eight bytes, as long as
/// `name`) holds only lower-case letters and `-`: compared a word at a time, each byte of
/// `name` with its 0x20 bit set. That bit maps upper-case letters to lower-case and keeps
/// lower-case letters and `-`; the only other byte it maps onto one of those is CR (onto
/// `-`), which httparse never lets into a field name, so a match is a real one.
fn eq_folded(name: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let word = |b: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let n = lower.len();
    if name.len() != n || n < 8 {
        return name.eq_ignore_ascii_case(lower);
    }
    let mut at = 0;
    while at + 8 < n {
        if word(name, at) | FOLD != word(lower, at) {
            return false;
        }
        at += 8;
    }
    // The last word may overlap the one before it.
    word(name, n - 8) | FOLD == word(lower, n - 8)
}

/// How the rest of a response body is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes.
    Close,
    Done,
}

/// Where a chunked decoder is (also the gateway's own server's, for request bodies).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines until the empty one; the count is what was read of them.
    Trailers(usize),
}

/// A response body read off its connection as it is polled.
#[derive(Debug)]
pub struct WireBody {
    conn: Option<Conn>,
    framing: Framing,
    keep: bool,
    upload: Option<Upload>,
    /// The head's end-to-end fields, when they stayed raw; taken by the backend.
    raw: Option<Box<RawFields>>,
}

impl WireBody {
    /// The response's end-to-end fields, when they stayed raw ([`crate::raw_head`]).
    pub fn take_raw(&mut self) -> Option<Box<RawFields>> {
        self.raw.take()
    }

    /// The connection, once the body ended cleanly and it can carry another exchange.
    pub fn take_idle(&mut self) -> Option<Conn> {
        if !matches!(self.framing, Framing::Done) || !self.keep {
            return None;
        }
        if self.upload.is_some() {
            return None;
        }
        let conn = self.conn.take()?;
        conn.buf.is_empty().then_some(conn)
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, WireError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = (*left).min(conn.buf.len() as u64) as usize;
                        *left -= n as u64;
                        if *left == 0 {
                            self.framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(conn.buf.split_to(n).freeze())));
                    }
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(conn.buf.split().freeze())));
                    }
                }
                Framing::Chunked(state) => match decode(state, &mut conn.buf) {
                    Ok(Decoded::Data(b)) => return Poll::Ready(Some(Ok(b))),
                    Ok(Decoded::End) => {
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::More) => {}
                    Err(e) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
            let conn = self.conn.as_mut().expect("checked at the top of the loop");
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(match self.framing {
                        Framing::Close => None,
                        _ => Some(Err(WireError::Truncated)),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl HttpBody for WireBody {
    type Data = Bytes;
    type Error = WireError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        self.get_mut()
            .poll_next(cx)
            .map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

pub(crate) enum Decoded {
    Data(Bytes),
    End,
    /// Needs more bytes.
    More,
}

/// One step of the chunked decoder over what is buffered.
pub(crate) fn decode(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, WireError> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(eol) = find_line(buf)? else {
                    return Ok(Decoded::More);
                };
                let line = &buf[..eol];
                // chunk-size [ ; extensions ]: the extensions are ignored.
                let digits = line
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or(&[])
                    .trim_ascii();
                if digits.is_empty() || digits.len() > 15 {
                    return Err(WireError::Malformed("invalid chunk size"));
                }
                let mut size = 0u64;
                for &d in digits {
                    let v = (d as char)
                        .to_digit(16)
                        .ok_or(WireError::Malformed("invalid chunk size"))?;
                    size = size * 16 + u64::from(v);
                }
                buf.advance(eol + 2);
                *state = if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = left.min(buf.len() as u64) as usize;
                *state = if n as u64 == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                };
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(WireError::Malformed("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers(read) => {
                let Some(eol) = find_line(buf)? else {
                    return Ok(Decoded::More);
                };
                buf.advance(eol + 2);
                if eol == 0 {
                    return Ok(Decoded::End);
                }
                if read + eol > MAX_TRAILERS {
                    return Err(WireError::Malformed("trailers too large"));
                }
                *state = Chunk::Trailers(read + eol + 2);
            }
        }
    }
}

/// The offset of the CRLF ending the first line, if buffered.
fn find_line(buf: &[u8]) -> Result<Option<usize>, WireError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(WireError::Malformed("a line not ended by CRLF")),
        None if buf.len() > MAX_LINE => Err(WireError::Malformed("line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, head_request: bool) -> Result<Option<Head>, WireError> {
        let mut b = BytesMut::from(s);
        parse_head(&mut b, head_request, None).map(|p| match p {
            Parsed::Final(h) => Some(h),
            Parsed::Interim | Parsed::Partial => None,
        })
    }

    fn decode_all(input: &[u8], step: usize) -> Result<Vec<u8>, WireError> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            match decode(&mut state, &mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::End => return Ok(out),
                Decoded::More => {
                    if rest.is_empty() {
                        return Err(WireError::Truncated);
                    }
                    let n = step.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Length(5)) && h.keep);
        assert_eq!(h.parts.headers["content-length"], "5");

        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Done), "no body to HEAD");

        let h = parse(
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Framing::Done));

        let h = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Framing::Chunked(_)) && h.keep);

        let h = parse("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Close) && !h.keep);

        let h = parse("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert!(matches!(h.framing, Framing::Close) && !h.keep);

        let h = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Framing::Chunked(_)) && !h.keep);

        let h = parse(
            "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep);
        let h = parse("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.keep && h.parts.version == Version::HTTP_10);
        let h = parse(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep);
    }

    #[test]
    fn bad_heads_are_errors_and_interim_answers_are_skipped() {
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n", false)
            .unwrap()
            .is_none());
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse(bad, false).is_err(), "{bad:?}");
        }
        let h = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Framing::Length(5)));

        let mut b = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert!(matches!(
            parse_head(&mut b, false, None),
            Ok(Parsed::Interim)
        ));
        let Ok(Parsed::Final(h)) = parse_head(&mut b, false, None) else {
            panic!("a final head after the interim one")
        };
        assert_eq!(h.parts.status, 204);
        assert!(b.is_empty());
    }

    #[test]
    fn lengths_are_digits_only_and_a_chunked_body_drops_its_length() {
        assert_eq!(parse_length(b"5"), Some(5));
        assert_eq!(parse_length(b" 5 "), Some(5));
        assert_eq!(parse_length(b"5, 5"), Some(5));
        for bad in [
            &b"+5"[..],
            b"0x5",
            b"5, 6",
            b"5 6",
            b"",
            b",",
            b"-1",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let h = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.parts.headers.contains_key("content-length"));
        assert!(parse(
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            false
        )
        .is_err());
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_lists_are_left_out() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n\
             Connection: keep-alive, X-Secret\r\nUpgrade: h2c\r\nTrailer: x\r\n\
             Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
            false,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = h.parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "content-length"]);
        assert!(h.keep, "framing still read the Connection header");
    }

    fn parse_raw(s: &str) -> Head {
        let mut b = BytesMut::from(s);
        let rid = HeaderName::from_static("x-request-id");
        match parse_head(&mut b, false, Some(&rid)).unwrap() {
            Parsed::Final(h) => h,
            _ => panic!("not a final head"),
        }
    }

    fn raw_of(h: &Head) -> Option<String> {
        h.raw
            .as_ref()
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
    }

    #[test]
    fn end_to_end_fields_stay_raw_without_framing_or_hop_by_hop() {
        let h = parse_raw(
            "HTTP/1.1 200 OK\r\nServer: up\r\nDate: Mon, 07 Dec 2026 10:00:00 GMT\r\n\
             Content-Length: 5\r\nKeep-Alive: timeout=5\r\nX-Case: Kept As Sent\r\n\
             Connection: keep-alive\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\nhello",
        );
        assert_eq!(
            raw_of(&h).as_deref(),
            Some(
                "Server: up\r\nDate: Mon, 07 Dec 2026 10:00:00 GMT\r\nX-Case: Kept As Sent\r\n\
                 Set-Cookie: a=1\r\nset-cookie: b=2\r\n"
            )
        );
        let r = h.raw.as_ref().unwrap();
        assert!(r.date);
        assert_eq!(r.length, Some(5));
        assert!(
            h.parts.headers.is_empty(),
            "nothing in the map: {:?}",
            h.parts.headers
        );
        assert!(matches!(h.framing, Framing::Length(5)) && h.keep);

        // A length beside chunked frames nothing, raw or not.
        let h = parse_raw(
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        );
        let r = h.raw.as_ref().unwrap();
        assert_eq!((r.length, r.date), (None, false));
        assert_eq!(raw_of(&h).as_deref(), Some("X-A: 1\r\n"));
        assert!(matches!(h.framing, Framing::Chunked(_)));
    }

    #[test]
    fn fields_that_could_read_differently_raw_keep_the_map() {
        for (why, head) in [
            (
                "the gateway sets Via",
                "HTTP/1.1 200 OK\r\nVia: 1.1 other\r\nX-A: 1\r\n\r\n",
            ),
            (
                "the gateway sets the request id",
                "HTTP/1.1 200 OK\r\nX-Request-Id: up\r\n\r\n",
            ),
            (
                "Connection names a field to drop",
                "HTTP/1.1 200 OK\r\nX-Secret: s\r\nConnection: X-Secret\r\nX-A: 1\r\n\r\n",
            ),
            ("a bare LF", "HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\n\r\n"),
            (
                "an empty value",
                "HTTP/1.1 200 OK\r\nX-A:\r\nX-B: 2\r\n\r\n",
            ),
            (
                "more runs than fit",
                "HTTP/1.1 200 OK\r\nA: 1\r\nTE: x\r\nB: 1\r\nTE: x\r\nC: 1\r\nTE: x\r\nD: 1\r\n\
                 TE: x\r\nE: 1\r\nTE: x\r\nF: 1\r\nTE: x\r\nG: 1\r\n\r\n",
            ),
        ] {
            let h = parse_raw(head);
            assert!(raw_of(&h).is_none(), "{why}: raw anyway");
            assert!(!h.parts.headers.is_empty(), "{why}: fields lost");
            assert!(!h.parts.headers.contains_key("connection"), "{why}");
            assert!(!h.parts.headers.contains_key("x-secret"), "{why}");
        }
        // Without the wish, never raw.
        let h = parse("HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(raw_of(&h).is_none());
        assert_eq!(h.parts.headers["x-a"], "1");
    }

    #[test]
    fn field_kinds_agree_with_the_hop_by_hop_list() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(crate::forwarded::is_hop_by_hop(name));
            let upper = name.to_ascii_uppercase();
            assert!(
                !matches!(
                    field_kind(upper.as_bytes()),
                    Field::Other | Field::Date | Field::Via
                ),
                "{name}"
            );
        }
        for name in ["content-type", "server", "x-te", "vias"] {
            assert_eq!(field_kind(name.as_bytes()), Field::Other, "{name}");
        }
        assert_eq!(field_kind(b"Content-Length"), Field::ContentLength);
        assert_eq!(field_kind(b"CONTENT-LENGTH"), Field::ContentLength);
        assert_eq!(field_kind(b"Proxy-Authorization"), Field::HopByHop);
        // One byte off, in the first word, the overlap or the last byte.
        for near in [
            "dontent-length",
            "content_length",
            "content-lengtg",
            "connectiom",
        ] {
            assert_eq!(field_kind(near.as_bytes()), Field::Other, "{near}");
        }
        assert_eq!(field_kind(b"DATE"), Field::Date);
        assert_eq!(field_kind(b"Via"), Field::Via);
    }

    #[test]
    fn a_body_is_held_to_its_length() {
        let mut counted = 0;
        assert!(count(&mut counted, Some(5), 3).is_ok());
        assert!(complete(counted, Some(5)).is_err(), "short");
        assert!(count(&mut counted, Some(5), 3).is_err(), "long");
        assert!(complete(0, None).is_ok());
    }

    #[test]
    fn values_are_slices_of_the_head() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nx-a: one\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.parts.headers["x-a"], "one");
        let cookies: Vec<_> = h.parts.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n";
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(
                decode_all(wire, step).unwrap(),
                b"hello world",
                "step {step}"
            );
        }
        assert!(decode_all(b"zz\r\n", 64).is_err());
        assert!(decode_all(b"5\r\nhelloXX0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"5\nhello\r\n0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"ffffffffffffffff\r\n", 64).is_err());
        assert!(decode_all(b"5\r\nhel", 64).is_err(), "truncated");
    }
}
