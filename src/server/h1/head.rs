//! One HTTP/1 request head off the front of a connection's read buffer: parsed once with
//! httparse (the parser hyper uses, with hyper's default config) into an `http::Request`
//! whose header values are slices of the buffer, and checked for the framing the gateway
//! refuses, in the same pass over the fields.
//!
//! Refused (RFC 9112 §6, and what a smuggling attempt needs): `Content-Length` with
//! `Transfer-Encoding` (any order, any case), more than one `Content-Length` (lines or a
//! list), an invalid length, a `Transfer-Encoding` that is not exactly `chunked` (the
//! gateway drops it as hop-by-hop, so any other coding would reach the upstream
//! unannounced), `Transfer-Encoding` on HTTP/1.0, anything httparse or `http::Uri` refuses
//! (400); a head over the limit or with more than [`MAX_HEADERS`] fields (431); a target
//! over [`MAX_TARGET`] bytes (414).

use bytes::{Buf, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};
use std::mem::MaybeUninit;

/// The HTTP/2 connection preface (h2c with prior knowledge).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Header fields at most (hyper's default; more is a 431).
pub const MAX_HEADERS: usize = 100;

/// Header fields whose places in the head are kept on the stack (more go to the heap).
const INLINE_FIELDS: usize = 24;

/// The longest request target (`http::Uri`'s limit; beyond is a 414).
pub const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Why a head was refused. Each becomes a gateway problem+json answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("the request has both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
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
    /// The gateway's answer; `limit` is `server.max_header_size`.
    pub fn error(self, limit: u64) -> crate::error::GatewayError {
        use crate::error::GatewayError;
        match self {
            Reject::TooLarge => GatewayError::HeadersTooLarge { limit },
            Reject::TargetTooLong => GatewayError::UriTooLong,
            Reject::LengthAndChunked => GatewayError::BadRequest(
                "the request has both Content-Length and Transfer-Encoding",
            ),
            Reject::DuplicateLength => {
                GatewayError::BadRequest("the request has more than one Content-Length")
            }
            Reject::InvalidLength => {
                GatewayError::BadRequest("the request's Content-Length is not a valid length")
            }
            Reject::TransferCoding => {
                GatewayError::BadRequest("the request's Transfer-Encoding is not exactly chunked")
            }
            Reject::TransferEncodingHttp10 => {
                GatewayError::BadRequest("an HTTP/1.0 request cannot have Transfer-Encoding")
            }
            Reject::Malformed => GatewayError::BadRequest("the request head is malformed"),
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// A parsed, accepted head.
#[derive(Debug)]
pub struct Head {
    pub request: Request<()>,
    pub body: BodyKind,
    /// The client allows another request on this connection after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// What the front of the buffer holds.
// Moved once per request; boxing the common variant would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// Not a complete head yet.
    Partial,
    /// A head, taken off the buffer.
    Head(Head),
    /// An acceptable `CONNECT` or HTTP/1.1 `Upgrade` request: what follows it may not be
    /// HTTP/1, so it is left in the buffer for hyper to serve with the rest of the
    /// connection.
    Switch,
    Refused(Reject),
}

/// Parses the head at the front of `buf` (limit: `max_head` bytes, leading empty lines
/// included).
pub fn parse(buf: &mut BytesMut, max_head: usize) -> Parsed {
    match parse_inner(buf, max_head) {
        Ok(p) => p,
        Err(r) => Parsed::Refused(r),
    }
}

fn parse_inner(buf: &mut BytesMut, max_head: usize) -> Result<Parsed, Reject> {
    // Uninitialised slots, as hyper does: zeroing a hundred of them per request would cost
    // more than parsing a small head.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(Reject::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(_) => return Err(Reject::Malformed),
    };
    if len > max_head {
        return Err(Reject::TooLarge);
    }
    let target = req.path.unwrap_or("").as_bytes();
    if target.len() > MAX_TARGET {
        return Err(Reject::TargetTooLong);
    }
    let http10 = req.version == Some(0);
    let method = req.method.unwrap_or("");
    let connect = method == "CONNECT";

    // Framing facts and where each field sits, so that values can be slices of the head
    // once it is frozen.
    let base = buf.as_ptr() as usize;
    let n = req.headers.len();
    // Room for the usual head inline; zeroing room for all hundred fields cost more than
    // the allocation a long head takes instead.
    let mut inline = [[0u32; 4]; INLINE_FIELDS];
    let mut long = Vec::new();
    let spans: &mut [[u32; 4]] = if n <= INLINE_FIELDS {
        &mut inline[..n]
    } else {
        long.resize(n, [0u32; 4]);
        &mut long[..]
    };
    let (mut length, mut te, mut chunked, mut upgrade) = (None::<u64>, false, false, false);
    let (mut close, mut keep, mut expect) = (false, false, false);
    for (h, span) in req.headers.iter().zip(spans.iter_mut()) {
        let name = h.name.as_bytes();
        let value = h.value;
        *span = [
            (name.as_ptr() as usize - base) as u32,
            name.len() as u32,
            (value.as_ptr() as usize - base) as u32,
            value.len() as u32,
        ];
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if te {
                    return Err(Reject::LengthAndChunked);
                }
                if length.is_some() || value.contains(&b',') {
                    return Err(Reject::DuplicateLength);
                }
                length = Some(parse_length(value.trim_ascii()).ok_or(Reject::InvalidLength)?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if length.is_some() {
                    return Err(Reject::LengthAndChunked);
                }
                te = true;
                // Only `chunked`, once: any other coding would reach the upstream
                // unannounced, since Transfer-Encoding is hop-by-hop.
                for coding in value.split(|&b| b == b',') {
                    let coding = coding.trim_ascii();
                    if coding.is_empty() {
                        continue;
                    }
                    if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                        return Err(Reject::TransferCoding);
                    }
                    chunked = true;
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep = true;
                    }
                }
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade = true,
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expect = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
    }
    if te {
        if http10 {
            return Err(Reject::TransferEncodingHttp10);
        }
        if !chunked {
            return Err(Reject::TransferCoding);
        }
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| Reject::Malformed)?;
    let (target_at, target_len) = (target.as_ptr() as usize - base, target.len());
    if connect || (upgrade && !http10) {
        // Checked like any head (a bad one is refused here), then left for hyper.
        Uri::try_from(&buf[target_at..target_at + target_len]).map_err(|_| Reject::Malformed)?;
        return Ok(Parsed::Switch);
    }

    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target_at..target_at + target_len))
        .map_err(|_| Reject::Malformed)?;
    // The fields go straight into the request's own map (one built, none dropped), with
    // room for what the gateway adds on the way to the upstream.
    let mut request = Request::new(());
    let headers = request.headers_mut();
    headers.reserve(n + 8);
    for &[no, nl, vo, vl] in spans.iter() {
        let (no, nl, vo, vl) = (no as usize, nl as usize, vo as usize, vl as usize);
        let name = HeaderName::from_bytes(&head[no..no + nl]).map_err(|_| Reject::Malformed)?;
        // httparse has checked the value's bytes (no controls but tab), which is all
        // `HeaderValue` checks.
        let value = HeaderValue::from_maybe_shared(head.slice(vo..vo + vl))
            .map_err(|_| Reject::Malformed)?;
        headers.append(name, value);
    }
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let body = match length {
        _ if chunked => BodyKind::Chunked,
        Some(0) | None => BodyKind::None,
        Some(n) => BodyKind::Length(n),
    };
    Ok(Parsed::Head(Head {
        request,
        body,
        keep_alive: if http10 { keep && !close } else { !close },
        expect_continue: expect && !http10 && body != BodyKind::None,
    }))
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
    (n <= u64::MAX - 2).then_some(n)
}

/// Skips what precedes a head that httparse would skip too (empty lines), so that an idle
/// connection's buffer holds nothing.
pub fn skip_empty_lines(buf: &mut BytesMut) {
    let n = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if n > 0 && n == buf.len() {
        buf.advance(n);
    }
}

/// What the access log shows of a refused head: its method and path when they are plain
/// (visible ASCII, of sane length), `-` for either otherwise. The query is cut off, as for
/// every logged path.
pub fn request_line(head: &[u8]) -> (Method, String) {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let line = head[start..].split(|&b| b == b'\n').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let dash = || Method::from_bytes(b"-").expect("- is a token");
    let method = parts
        .next()
        .filter(|m| !m.is_empty() && m.len() <= 32)
        .and_then(|m| Method::from_bytes(m).ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(head: &str) -> Parsed {
        parse(&mut BytesMut::from(head.as_bytes()), 1024)
    }

    fn reject_of(head: &str) -> Option<Reject> {
        match parse_str(head) {
            Parsed::Refused(r) => Some(r),
            _ => None,
        }
    }

    fn head_of(head: &str) -> Head {
        match parse_str(head) {
            Parsed::Head(h) => h,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    #[test]
    fn parses_a_head_into_a_request_with_values_sliced_from_it() {
        let mut buf = BytesMut::from(
            &b"POST /a/b?x=1 HTTP/1.1\r\nHost: a.example\r\nX-Multi: 1\r\nx-multi: 2\r\n\
               Content-Length: 3\r\n\r\nabcGET"[..],
        );
        let Parsed::Head(h) = parse(&mut buf, 1024) else {
            panic!()
        };
        assert_eq!(&buf[..], b"abcGET", "the head is taken off, the rest stays");
        let r = &h.request;
        assert_eq!((r.method(), r.uri().path()), (&Method::POST, "/a/b"));
        assert_eq!(r.uri().query(), Some("x=1"));
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(r.headers()["host"], "a.example");
        let multi: Vec<_> = r.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["1", "2"]);
        assert_eq!(h.body, BodyKind::Length(3));
        assert!(h.keep_alive && !h.expect_continue);
    }

    #[test]
    fn keep_alive_expect_and_body_kinds() {
        let h = head_of("GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head_of("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = head_of("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head_of("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n");
        assert!(h.expect_continue);
        let h = head_of("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        assert!(!h.expect_continue, "nothing to continue without a body");
        let h = head_of("POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n");
        assert_eq!(h.body, BodyKind::Chunked);
        let h = head_of("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.body, BodyKind::None);
        // Empty lines before the request line are skipped (RFC 9112 §2.2), bare LF accepted.
        let h = head_of("\r\n\nGET /x HTTP/1.1\nHost: a\n\n");
        assert_eq!(h.request.uri().path(), "/x");
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
            // An upgrade does not excuse bad framing.
            (
                "GET / HTTP/1.1\r\nUpgrade: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Reject::DuplicateLength,
            ),
        ] {
            assert_eq!(reject_of(head), Some(want), "{head:?}");
        }
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
            "CONNECT [::1 HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(reject_of(head), Some(Reject::Malformed), "{head:?}");
        }
        let h = head_of("GET http://a.example/x HTTP/1.1\r\n\r\n");
        assert_eq!(h.request.uri().host(), Some("a.example"));
    }

    #[test]
    fn refuses_oversize_heads_complete_or_not() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(60));
        assert!(matches!(
            parse(&mut BytesMut::from(big.as_bytes()), 64),
            Parsed::Refused(Reject::TooLarge)
        ));
        // Endless, without a line end: partial up to the limit, refused beyond it.
        let mut buf = BytesMut::from(&b"GET /aaaaaaaa"[..]);
        assert!(matches!(parse(&mut buf, 64), Parsed::Partial));
        buf.extend_from_slice(&[b'a'; 80]);
        assert!(matches!(
            parse(&mut buf, 64),
            Parsed::Refused(Reject::TooLarge)
        ));
        let many: String = "GET / HTTP/1.1\r\n".to_owned() + &"X: y\r\n".repeat(101) + "\r\n";
        assert_eq!(reject_of(&many), Some(Reject::TooLarge));
        let ok: String = "GET / HTTP/1.1\r\n".to_owned() + &"X: y\r\n".repeat(100) + "\r\n";
        assert_eq!(reject_of(&ok), None);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET));
        assert!(matches!(
            parse(&mut BytesMut::from(long.as_bytes()), 1 << 20),
            Parsed::Refused(Reject::TargetTooLong)
        ));
    }

    #[test]
    fn connect_and_upgrades_are_left_for_hyper() {
        let mut buf = BytesMut::from(
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05"[..],
        );
        let before = buf.clone();
        assert!(matches!(parse(&mut buf, 1024), Parsed::Switch));
        assert_eq!(buf, before, "nothing is taken off");
        assert!(matches!(
            parse_str("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            Parsed::Switch
        ));
        // Upgrade means nothing on HTTP/1.0.
        assert!(matches!(
            parse_str("GET / HTTP/1.0\r\nUpgrade: x\r\n\r\n"),
            Parsed::Head(_)
        ));
    }

    #[test]
    fn the_logged_line_of_a_refused_head() {
        assert_eq!(
            request_line(b"\r\nPOST /a/b?secret=1 HTTP/1.1\r\n"),
            (Method::POST, "/a/b".to_owned())
        );
        assert_eq!(request_line(b"G\x01T \xff HTTP/1.1").1, "-");
    }

    proptest::proptest! {
        /// Any bytes at all: never a panic; a head taken off never takes more than it had.
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse(&mut buf, 128);
            proptest::prop_assert!(buf.len() <= bytes.len());
        }
    }
}
