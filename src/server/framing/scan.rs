//! The pure core of the HTTP/1 head guard: where each message of a request stream begins and
//! ends, and whether its head is one the gateway accepts.
//!
//! [`Framer::feed`] is given bytes in stream order and answers how many of them may go on to
//! hyper. Bytes of a head that is not complete yet are *held back* (the caller presents them
//! again, followed by what arrives next); the scan keeps its place inside them, so a head
//! dribbled one byte at a time is still examined once per byte. Bodies are skipped by
//! `Content-Length`, or walked by a chunked state machine that mirrors hyper's decoder, so the
//! next head is found exactly where hyper will look for it.

use memchr::memchr;

/// The HTTP/2 connection preface (h2c with prior knowledge).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's default limit on header lines (more is its bare 431).
pub const MAX_HEADERS: usize = 100;

/// The longest request target hyper accepts (`http::Uri`'s limit; beyond is its bare 414).
pub const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Why a head was refused. Each becomes a gateway problem+json answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum Reject {
    #[error("the request has both Content-Length and Transfer-Encoding")]
    LengthAndChunked = 1,
    #[error("the request has more than one Content-Length")]
    DuplicateLength,
    #[error("the request's Content-Length is not a valid length")]
    InvalidLength,
    #[error("the request's Transfer-Encoding is not exactly chunked")]
    TransferCoding,
    #[error("an HTTP/1.0 request cannot have Transfer-Encoding")]
    TransferEncodingHttp10,
    #[error("the request head is malformed")]
    Malformed,
    #[error("the request head is too large")]
    TooLarge,
    #[error("the request target is too long")]
    TargetTooLong,
}

impl Reject {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(c: u8) -> Option<Reject> {
        use Reject::*;
        [
            LengthAndChunked,
            DuplicateLength,
            InvalidLength,
            TransferCoding,
            TransferEncodingHttp10,
            Malformed,
            TooLarge,
            TargetTooLong,
        ]
        .into_iter()
        .find(|r| r.code() == c)
    }
}

/// What the caller may do with the bytes it fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `data[..n]` may be delivered; `data[n..]` is the start of a head that is not complete
    /// and must be fed again, first, with whatever arrives next.
    Deliver(usize),
    /// `data[..at]` may be delivered; the head starting at `at` (request number `request` on
    /// the connection, counting from 1) is refused, and nothing from `at` on may be delivered.
    Reject {
        at: usize,
        request: u64,
        reason: Reject,
    },
    /// A chunked body is broken at `data[at - 1]`: deliver `data[..at]` (hyper will fail the
    /// body on that same byte and close) and nothing after it.
    Halt { at: usize },
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest head, in bytes from the end of the previous message to the end of the
    /// empty line (leading empty lines count).
    pub max_head: usize,
    /// Also run httparse (hyper's parser, hyper's default config) and the URI check on each
    /// complete head, so that nothing hyper would refuse with its bare 400 gets through.
    pub validate: bool,
}

#[derive(Debug)]
enum State {
    /// Connection start: the HTTP/2 preface or an HTTP/1 head.
    Start,
    Head(HeadScan),
    Length(u64),
    Chunked(Chunked),
    /// HTTP/2, or what follows an upgrade/CONNECT request: not HTTP/1 any more.
    Passthrough,
    /// After a refusal or a broken body: nothing more is delivered.
    Stopped,
}

/// Tracks HTTP/1 message boundaries of one connection's request stream.
#[derive(Debug)]
pub struct Framer {
    state: State,
    limits: Limits,
    /// Heads accepted so far.
    requests: u64,
}

impl Framer {
    /// A framer for a connection that may start with the HTTP/2 preface or an HTTP/1 head.
    pub fn new(limits: Limits) -> Framer {
        Framer {
            state: State::Start,
            limits,
            requests: 0,
        }
    }

    /// A framer that delivers everything (HTTP/2 chosen by ALPN, unguarded listeners).
    pub fn passthrough() -> Framer {
        Framer {
            state: State::Passthrough,
            limits: Limits {
                max_head: 0,
                validate: false,
            },
            requests: 0,
        }
    }

    pub fn is_passthrough(&self) -> bool {
        matches!(self.state, State::Passthrough)
    }

    /// Heads accepted so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Feeds the next bytes of the stream: any bytes held back by the previous call's
    /// [`Step::Deliver`], then the new ones.
    pub fn feed(&mut self, data: &[u8]) -> Step {
        let mut p = 0;
        loop {
            match &mut self.state {
                State::Passthrough => return Step::Deliver(data.len()),
                State::Stopped => return Step::Halt { at: p },
                State::Start => {
                    let n = data.len().min(H2_PREFACE.len());
                    if data[..n] != H2_PREFACE[..n] {
                        self.state = State::Head(HeadScan::default());
                    } else if n < H2_PREFACE.len() {
                        // Could still be either: wait for more.
                        return Step::Deliver(0);
                    } else {
                        self.state = State::Passthrough;
                    }
                }
                State::Head(scan) => {
                    let head = &data[p..];
                    match scan.advance(head, &self.limits) {
                        Ok(None) => return Step::Deliver(p),
                        Ok(Some(done)) => {
                            self.requests += 1;
                            p += done.len;
                            self.state = match done.next {
                                Next::Head => State::Head(HeadScan::default()),
                                Next::Length(n) => State::Length(n),
                                Next::Chunked => State::Chunked(Chunked::default()),
                                Next::Passthrough => State::Passthrough,
                            };
                        }
                        Err(reason) => {
                            self.state = State::Stopped;
                            return Step::Reject {
                                at: p,
                                request: self.requests + 1,
                                reason,
                            };
                        }
                    }
                }
                State::Length(rem) => {
                    let avail = (data.len() - p) as u64;
                    let take = (*rem).min(avail);
                    p += take as usize;
                    *rem -= take;
                    if *rem > 0 {
                        return Step::Deliver(p);
                    }
                    self.state = State::Head(HeadScan::default());
                }
                State::Chunked(c) => match c.advance(&data[p..]) {
                    ChunkProgress::More => return Step::Deliver(data.len()),
                    ChunkProgress::Done(n) => {
                        p += n;
                        self.state = State::Head(HeadScan::default());
                    }
                    ChunkProgress::Invalid(n) => {
                        self.state = State::Stopped;
                        return Step::Halt { at: p + n };
                    }
                },
            }
        }
    }
}

// ---------------------------------------------------------------------------- heads

/// What follows a complete head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Head,
    Length(u64),
    Chunked,
    Passthrough,
}

#[derive(Debug)]
struct Done {
    /// Bytes of the head, leading empty lines included.
    len: usize,
    next: Next,
}

/// Progress through one head. Offsets are from the head's first byte.
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes already searched for line ends.
    scanned: usize,
    /// Where the current, unfinished line starts.
    line_start: usize,
    /// Past any leading empty lines and the request line.
    started: bool,
    /// Where the request line starts (after leading empty lines).
    request_line: usize,
    headers: usize,
    http10: bool,
    connect: bool,
    upgrade: bool,
    content_length: Option<u64>,
    te: bool,
    chunked: bool,
}

impl HeadScan {
    /// Scans what is new in `head` (which starts at the head's first byte). `Ok(None)`: not
    /// complete yet.
    fn advance(&mut self, head: &[u8], limits: &Limits) -> Result<Option<Done>, Reject> {
        loop {
            let Some(i) = memchr(b'\n', &head[self.scanned..]) else {
                self.scanned = head.len();
                if head.len() > limits.max_head {
                    return Err(Reject::TooLarge);
                }
                return Ok(None);
            };
            let lf = self.scanned + i;
            self.scanned = lf + 1;
            if lf + 1 > limits.max_head {
                return Err(Reject::TooLarge);
            }
            let mut line = &head[self.line_start..lf];
            let start = self.line_start;
            self.line_start = lf + 1;
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if !self.started {
                // httparse skips empty lines before the request line (RFC 9112 §2.2).
                if !line.is_empty() {
                    self.started = true;
                    self.request_line = start;
                    self.request_line_facts(line);
                }
                continue;
            }
            if line.is_empty() {
                let len = lf + 1;
                let next = self.finish()?;
                if limits.validate {
                    validate(&head[self.request_line..len])?;
                }
                return Ok(Some(Done { len, next }));
            }
            self.headers += 1;
            if self.headers > MAX_HEADERS {
                return Err(Reject::TooLarge);
            }
            self.header_line(line)?;
        }
    }

    fn request_line_facts(&mut self, line: &[u8]) {
        self.connect = line.starts_with(b"CONNECT ");
        self.http10 = line.ends_with(b" HTTP/1.0");
    }

    fn header_line(&mut self, line: &[u8]) -> Result<(), Reject> {
        // A name with whitespace before the colon is not one of ours; httparse refuses it.
        let Some(colon) = memchr(b':', line) else {
            return Ok(());
        };
        let name = &line[..colon];
        let value = trim_ows(&line[colon + 1..]);
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if self.te {
                    return Err(Reject::LengthAndChunked);
                }
                if self.content_length.is_some() || value.contains(&b',') {
                    return Err(Reject::DuplicateLength);
                }
                self.content_length = Some(parse_length(value).ok_or(Reject::InvalidLength)?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if self.content_length.is_some() {
                    return Err(Reject::LengthAndChunked);
                }
                self.te = true;
                // Only `chunked`, once, is accepted: the gateway drops Transfer-Encoding as
                // hop-by-hop, so any other coding would reach the upstream unannounced.
                for coding in value.split(|&b| b == b',') {
                    let coding = trim_ows(coding);
                    if coding.is_empty() {
                        continue;
                    }
                    if self.chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                        return Err(Reject::TransferCoding);
                    }
                    self.chunked = true;
                }
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => self.upgrade = true,
            _ => {}
        }
        Ok(())
    }

    fn finish(&self) -> Result<Next, Reject> {
        if self.te {
            if self.http10 {
                return Err(Reject::TransferEncodingHttp10);
            }
            if !self.chunked {
                return Err(Reject::TransferCoding);
            }
        }
        // hyper treats CONNECT, and Upgrade on HTTP/1.1, as a possible switch away from
        // HTTP/1: what follows may not be HTTP, so the guard stops interpreting it.
        if self.connect || (self.upgrade && !self.http10) {
            return Ok(Next::Passthrough);
        }
        Ok(match self.content_length {
            _ if self.chunked => Next::Chunked,
            Some(0) | None => Next::Head,
            Some(n) => Next::Length(n),
        })
    }
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `1*DIGIT`, within what hyper accepts as a length.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    // hyper reserves the two largest values for its own markers.
    (n <= u64::MAX - 2).then_some(n)
}

/// What hyper checks beyond framing: httparse with its default config, the target's length
/// and `http::Uri`'s parse. `head` starts at the request line.
fn validate(head: &[u8]) -> Result<(), Reject> {
    // Uninitialised slots (as hyper does): zeroing 100 headers would cost more than the parse
    // of a small head.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return Err(Reject::Malformed),
    }
    let target = req.path.unwrap_or("").as_bytes();
    if target.len() > MAX_TARGET {
        return Err(Reject::TargetTooLong);
    }
    // Origin-form in printable ASCII but for `"<>` and backquote (which http::Uri refuses in
    // some places) is what http::Uri accepts without question (a unit test pins that);
    // anything else (absolute-form, authority-form, UTF-8, those four) is rare and is parsed
    // the way hyper will parse it.
    let plain = target.first() == Some(&b'/')
        && target
            .iter()
            .all(|&b| (0x21..0x7f).contains(&b) && !matches!(b, b'"' | b'<' | b'>' | b'`'));
    if !plain && http::Uri::try_from(target).is_err() {
        return Err(Reject::Malformed);
    }
    Ok(())
}

// ---------------------------------------------------------------------------- chunked

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// hyper's chunked decoder (`proto::h1::decode::ChunkedState`), state for state, so that both
/// end the body on the same byte. Its extension and trailer size limits are not copied: past
/// them hyper fails the body and closes, and nothing after matters.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    size: u64,
}

enum ChunkProgress {
    /// Everything given was body; more is needed.
    More,
    /// The body ended after this many bytes.
    Done(usize),
    /// The byte before this offset is invalid.
    Invalid(usize),
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

impl Chunked {
    fn advance(&mut self, data: &[u8]) -> ChunkProgress {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            if self.state == Data {
                let take = self.size.min((data.len() - i) as u64);
                i += take as usize;
                self.size -= take;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            let next = match (self.state, b) {
                (Start, b) => hex(b).map(|d| {
                    self.size = d;
                    Size
                }),
                (Size, b'\t' | b' ') | (SizeLws, b'\t' | b' ') => Some(SizeLws),
                (Size | SizeLws, b';') => Some(Extension),
                (Size | SizeLws, b'\r') => Some(SizeLf),
                (Size, b) => hex(b).and_then(|d| {
                    self.size = self.size.checked_mul(16)?.checked_add(d)?;
                    Some(Size)
                }),
                (SizeLws, _) => None,
                (Extension, b'\r') => Some(SizeLf),
                (Extension, b'\n') => None,
                (Extension, _) => Some(Extension),
                (SizeLf, b'\n') => Some(if self.size == 0 { EndCr } else { Data }),
                (SizeLf, _) => None,
                (DataCr, b'\r') => Some(DataLf),
                (DataCr, _) => None,
                (DataLf, b'\n') => Some(Start),
                (DataLf, _) => None,
                (EndCr, b'\r') => Some(EndLf),
                (EndCr, _) => Some(Trailer),
                (Trailer, b'\r') => Some(TrailerLf),
                (Trailer, _) => Some(Trailer),
                (TrailerLf, b'\n') => Some(EndCr),
                (TrailerLf, _) => None,
                (EndLf, b'\n') => {
                    *self = Chunked::default();
                    return ChunkProgress::Done(i);
                }
                (EndLf, _) => None,
                (Data, _) => unreachable!("handled above"),
            };
            match next {
                Some(s) => self.state = s,
                None => return ChunkProgress::Invalid(i),
            }
        }
        ChunkProgress::More
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_head: 8192,
        validate: true,
    };

    /// Feeds `chunks` the way the adapter does (held bytes first); returns the delivered
    /// stream and the final step.
    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Option<Step>, Framer) {
        let mut f = Framer::new(LIMITS);
        let mut held: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            held.extend_from_slice(c);
            match f.feed(&held) {
                Step::Deliver(n) => {
                    out.extend_from_slice(&held[..n]);
                    held.drain(..n);
                }
                s @ (Step::Reject { at, .. } | Step::Halt { at }) => {
                    out.extend_from_slice(&held[..at]);
                    return (out, Some(s), f);
                }
            }
        }
        (out, None, f)
    }

    fn reject_of(head: &str) -> Option<Reject> {
        match run(&[head.as_bytes()]).1 {
            Some(Step::Reject { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn accepts_plain_heads_and_bodies() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n\
            GET /z HTTP/1.1\r\nHost: a\r\n\r\n";
        let (out, step, f) = run(&[stream]);
        assert_eq!(step, None);
        assert_eq!(out, stream);
        assert_eq!(f.requests(), 4);
    }

    #[test]
    fn holds_back_an_incomplete_head() {
        let mut f = Framer::new(LIMITS);
        assert_eq!(
            f.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HT"),
            Step::Deliver(27)
        );
        assert_eq!(f.feed(b"GET /b HTTP/1.1\r\n\r\n"), Step::Deliver(19));
        assert_eq!(f.requests(), 2);
    }

    #[test]
    fn refuses_ambiguous_framing() {
        for (head, want) in [
            (
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Reject::LengthAndChunked,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Reject::LengthAndChunked,
            ),
            (
                "POST / HTTP/1.1\r\ncOnTeNt-LeNgTh: 3\r\ntransfer-ENCODING: chunked\r\n\r\n",
                Reject::LengthAndChunked,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Reject::DuplicateLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Reject::DuplicateLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
                Reject::DuplicateLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
                Reject::DuplicateLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
                Reject::InvalidLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
                Reject::InvalidLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                Reject::InvalidLength,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                Reject::TransferCoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Reject::TransferCoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Reject::TransferCoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Reject::TransferCoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
                Reject::TransferCoding,
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Reject::TransferEncodingHttp10,
            ),
        ] {
            assert_eq!(reject_of(head), Some(want), "{head:?}");
        }
        // Whitespace around the value and case are fine.
        assert_eq!(
            reject_of("POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n0\r\n\r\n"),
            None
        );
    }

    #[test]
    fn refuses_what_httparse_or_the_uri_parser_refuses() {
        for head in [
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length : 3\r\n\r\n",
            "GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "GET http://[::1 HTTP/1.1\r\n\r\n",
            "G\u{1}T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(reject_of(head), Some(Reject::Malformed), "{head:?}");
        }
        assert_eq!(reject_of("GET http://a.example/x HTTP/1.1\r\n\r\n"), None);
        assert_eq!(reject_of("\r\n\nGET / HTTP/1.1\nHost: a\n\n"), None);
    }

    #[test]
    fn the_guard_refuses_a_target_exactly_when_http_uri_does() {
        // `validate` skips http::Uri for origin-forms in printable ASCII other than four
        // bytes; this pins that the shortcut agrees with the parser for every byte, in the
        // path and in the query.
        let mut refused = String::new();
        for b in 0x21u8..0x7f {
            for target in [vec![b'/', b'a', b], vec![b'/', b'?', b]] {
                let uri_refuses = http::Uri::try_from(&target[..]).is_err();
                let head = [b"GET ".as_slice(), &target, b" HTTP/1.1\r\n\r\n"].concat();
                let guard = reject_of(std::str::from_utf8(&head).unwrap());
                assert_eq!(guard.is_some(), uri_refuses, "{:?}", char::from(b));
                if uri_refuses {
                    refused.push(char::from(b));
                }
            }
        }
        assert!(!refused.is_empty());
        assert!(refused.chars().all(|c| "\"<>`".contains(c)), "{refused}");
    }

    #[test]
    fn refuses_oversize_heads_complete_or_not() {
        let limits = Limits {
            max_head: 64,
            validate: true,
        };
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(60));
        let mut f = Framer::new(limits);
        assert!(matches!(
            f.feed(big.as_bytes()),
            Step::Reject {
                reason: Reject::TooLarge,
                ..
            }
        ));
        // Endless, without a line end.
        let mut f = Framer::new(limits);
        assert_eq!(f.feed(b"GET /aaaaaaaa"), Step::Deliver(0));
        assert!(matches!(
            f.feed(&[b'a'; 80]),
            Step::Reject {
                at: 0,
                reason: Reject::TooLarge,
                ..
            }
        ));
        let many: String = "GET / HTTP/1.1\r\n".to_owned() + &"X: y\r\n".repeat(101) + "\r\n";
        assert_eq!(reject_of(&many), Some(Reject::TooLarge));
        let ok: String = "GET / HTTP/1.1\r\n".to_owned() + &"X: y\r\n".repeat(100) + "\r\n";
        assert_eq!(reject_of(&ok), None);
    }

    #[test]
    fn refusal_names_the_request_and_keeps_what_came_before() {
        let good = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi".as_slice();
        let bad = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        let stream = [good, good, bad].concat();
        let (out, step, _) = run(&[&stream]);
        assert_eq!(out, [good, good].concat());
        assert_eq!(
            step,
            Some(Step::Reject {
                at: 2 * good.len(),
                request: 3,
                reason: Reject::DuplicateLength
            })
        );
    }

    #[test]
    fn a_dribbled_head_is_refused_and_nothing_of_it_delivered() {
        let bad = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunks: Vec<&[u8]> = bad.chunks(1).collect();
        let (out, step, _) = run(&chunks);
        assert!(out.is_empty());
        assert!(matches!(
            step,
            Some(Step::Reject {
                at: 0,
                request: 1,
                ..
            })
        ));
    }

    #[test]
    fn h2_preface_and_upgrades_switch_to_passthrough() {
        let mut f = Framer::new(LIMITS);
        assert_eq!(f.feed(&H2_PREFACE[..10]), Step::Deliver(0));
        let mut all = H2_PREFACE.to_vec();
        all.extend_from_slice(b"\0\0\x12\x04 anything");
        assert_eq!(f.feed(&all), Step::Deliver(all.len()));
        assert!(f.is_passthrough());
        // `PRI` as an HTTP/1 method is just a head.
        let (_, step, f) = run(&[b"PRIX / HTTP/1.1\r\n\r\n"]);
        assert_eq!((step, f.requests()), (None, 1));

        let up = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let stream = [&up[..], b"\x81\x05hello not http\r\n\r\n"].concat();
        let (out, step, f) = run(&[&stream]);
        assert_eq!(
            (out.len(), step, f.is_passthrough()),
            (stream.len(), None, true)
        );
        let (_, _, f) = run(&[b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"]);
        assert!(f.is_passthrough());
        // Upgrade means nothing to hyper on HTTP/1.0.
        let (_, _, f) = run(&[b"GET / HTTP/1.0\r\nUpgrade: x\r\n\r\n"]);
        assert!(!f.is_passthrough());
    }

    #[test]
    fn broken_chunked_bodies_halt_on_the_bad_byte() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice();
        for (body, bad_at) in [
            (b"5\r\nhelloX".as_slice(), 9),
            (b"z\r\n".as_slice(), 1),
            (b"5 x\r\n".as_slice(), 3),
            (b"5;a\nb\r\n".as_slice(), 4),
            (b"0\r\nX: y\rZ".as_slice(), 9),
            (b"fffffffffffffffff\r\n".as_slice(), 17),
        ] {
            let stream = [head, body, b"GET / HTTP/1.1\r\n\r\n"].concat();
            let (out, step, _) = run(&[&stream]);
            assert_eq!(
                step,
                Some(Step::Halt {
                    at: head.len() + bad_at
                }),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(out.len(), head.len() + bad_at);
        }
    }

    /// A valid request: method, target, and a body framed one of three ways.
    fn request() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
            "/[a-z0-9/?=&%]{0,20}",
            0u8..3,
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(1usize..9, 0..4),
            any::<bool>(),
        )
            .prop_map(|(method, path, framing, body, splits, trailer)| {
                let mut r = format!("{method} {path} HTTP/1.1\r\nHost: a\r\nX-N: 1\r\n");
                match framing {
                    0 => r.push_str("\r\n"),
                    1 => r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len())),
                    _ => r.push_str("Transfer-Encoding: chunked\r\n\r\n"),
                }
                let mut r = r.into_bytes();
                match framing {
                    0 => {}
                    1 => r.extend_from_slice(&body),
                    _ => {
                        let mut rest = &body[..];
                        for s in splits {
                            let n = s.min(rest.len());
                            if n == 0 {
                                break;
                            }
                            r.extend_from_slice(format!("{n:x};e=v\r\n").as_bytes());
                            r.extend_from_slice(&rest[..n]);
                            r.extend_from_slice(b"\r\n");
                            rest = &rest[n..];
                        }
                        if !rest.is_empty() {
                            r.extend_from_slice(format!("{:X}\r\n", rest.len()).as_bytes());
                            r.extend_from_slice(rest);
                            r.extend_from_slice(b"\r\n");
                        }
                        r.extend_from_slice(b"0\r\n");
                        if trailer {
                            r.extend_from_slice(b"X-T: 1\r\n");
                        }
                        r.extend_from_slice(b"\r\n");
                    }
                }
                r
            })
    }

    proptest! {
        /// Split anywhere, a valid pipelined stream is delivered whole, as the same number of
        /// requests, with nothing held back at the end.
        #[test]
        fn splits_do_not_change_boundaries(
            reqs in proptest::collection::vec(request(), 1..5),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let stream = reqs.concat();
            let (whole, step, f) = run(&[&stream]);
            prop_assert_eq!(step, None);
            prop_assert_eq!(&whole, &stream);
            prop_assert_eq!(f.requests(), reqs.len() as u64);

            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            points.dedup();
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
            let (split, step, g) = run(&chunks);
            prop_assert_eq!(step, None);
            prop_assert_eq!(split, stream);
            prop_assert_eq!(g.requests(), reqs.len() as u64);
        }

        /// Any bytes at all: never a panic, and never more delivered than was fed.
        #[test]
        fn arbitrary_input_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        ) {
            let refs: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
            let (out, _, _) = run(&refs);
            prop_assert!(out.len() <= chunks.iter().map(Vec::len).sum::<usize>());
        }
    }
}
