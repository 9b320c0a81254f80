//! An upstream's response header fields carried to an HTTP/1 client as the upstream wrote
//! them, without a `HeaderMap` in between.
//!
//! Building a map of an HTTP/1 upstream's fields (a name lookup, a hash and an entry per
//! field) and encoding it again for an HTTP/1 client was about a tenth of the gateway's
//! work per proxied request, for fields nothing in between reads. So when nothing will read
//! them, the wire client ([`crate::upstream::h1pool`]) leaves the end-to-end fields as runs
//! of the upstream's head bytes ([`RawFields`]), which travel beside the response (the
//! backend puts them in the request's `Ctx`, the pipeline hands them to the connection with
//! the response, and `Via` and the request id join them), and the gateway's HTTP/1 server
//! ([`crate::server::h1`]) copies those runs into its response head before the fields in
//! the map, which then holds only what policies might add (none: no policies).
//!
//! "Nothing will read them" is decided per request before it is sent: the client is on the
//! gateway's own HTTP/1 server (hyper, serving HTTP/2, would not see the runs), and the
//! route has no policies (any policy may read or change response fields). Per response, the
//! wire client keeps the map whenever the raw form could say something different from what
//! the map would: a field the gateway sets itself (`Via`, the request-id field), a
//! `Connection` that names other fields to drop, a line not ended by CRLF, or a value with
//! no bytes. Framing fields (`Content-Length`, `Transfer-Encoding`) and hop-by-hop fields
//! are never in the runs: the connection writes its own framing, as for every response.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// Runs kept inline; a head that would need more is carried in a map instead.
const MAX_RUNS: usize = 6;

/// End-to-end header fields of an upstream response, as byte runs of its head. Boxed where
/// it travels: moved through several layers of futures per request, the inline runs cost
/// more in copies than the one allocation (callgrind, bench route: 24.0k instructions per
/// request unboxed, 22.8k boxed; 23.8k when they went in the response's extensions).
#[derive(Clone, Debug)]
pub struct RawFields {
    head: Bytes,
    runs: [(u32, u32); MAX_RUNS],
    len: u8,
    /// The runs include a `Date` field (the connection then adds none).
    pub date: bool,
    /// The body length the upstream declared (`Content-Length`, not in the runs).
    pub length: Option<u64>,
    /// The gateway's own fields, written after the runs: `Via` and the request id (the
    /// wire client kept the map when the upstream sent either).
    pub via: Option<HeaderValue>,
    pub request_id: Option<(HeaderName, HeaderValue)>,
}

impl RawFields {
    pub fn new(head: Bytes) -> RawFields {
        RawFields {
            head,
            runs: [(0, 0); MAX_RUNS],
            len: 0,
            date: false,
            length: None,
            via: None,
            request_id: None,
        }
    }

    /// The head the runs are offsets into, when it was not at hand at [`RawFields::new`].
    pub fn set_head(&mut self, head: Bytes) {
        self.head = head;
    }

    /// Adds the field line at `start..end` of the head (its CRLF included); adjacent lines
    /// join one run. `false` when the runs are full.
    pub fn push(&mut self, start: usize, end: usize) -> bool {
        let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(end)) else {
            return false;
        };
        if let Some(last) = self.len.checked_sub(1).map(usize::from) {
            if self.runs[last].1 == start {
                self.runs[last].1 = end;
                return true;
            }
        }
        if usize::from(self.len) == MAX_RUNS {
            return false;
        }
        self.runs[usize::from(self.len)] = (start, end);
        self.len += 1;
        true
    }

    /// Appends the field lines to a response head being written.
    pub fn write_to(&self, w: &mut Vec<u8>) {
        for &(s, e) in &self.runs[..usize::from(self.len)] {
            w.extend_from_slice(&self.head[s as usize..e as usize]);
        }
        if let Some(v) = &self.via {
            line(w, b"via", v);
        }
        if let Some((n, v)) = &self.request_id {
            line(w, n.as_str().as_bytes(), v);
        }
    }

    /// The field lines, for tests and diagnostics.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

fn line(w: &mut Vec<u8>, name: &[u8], value: &HeaderValue) {
    w.reserve(name.len() + value.len() + 4);
    w.extend_from_slice(name);
    w.extend_from_slice(b": ");
    w.extend_from_slice(value.as_bytes());
    w.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_lines_join_and_gaps_start_a_run() {
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n");
        let mut r = RawFields::new(head.clone());
        let line = |s: &str| {
            let at = head
                .windows(s.len())
                .position(|w| w == s.as_bytes())
                .unwrap();
            (at, at + s.len())
        };
        let (a, b, d) = (line("A: 1\r\n"), line("B: 2\r\n"), line("D: 4\r\n"));
        assert!(r.push(a.0, a.1));
        assert!(r.push(b.0, b.1));
        assert!(r.push(d.0, d.1));
        assert_eq!(r.len, 2);
        assert_eq!(r.to_vec(), b"A: 1\r\nB: 2\r\nD: 4\r\n");
    }

    #[test]
    fn runs_are_bounded() {
        let head = Bytes::from(vec![b'x'; 100]);
        let mut r = RawFields::new(head);
        for i in 0..MAX_RUNS {
            assert!(r.push(i * 10, i * 10 + 5));
        }
        assert!(!r.push(90, 95));
        // Adjacent to the last run still fits.
        assert!(r.push(55, 60));
    }
}
