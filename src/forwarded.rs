//! Proxy headers: hop-by-hop removal, `X-Forwarded-*`, `Via`, and who the client is.
//!
//! `X-Forwarded-For` is only believed from `server.trusted_proxies`: from anyone else it is
//! replaced, so a client cannot pick the address that logs, IP filters and rate limits see.
//! A client's `Connection` header may name hop-by-hop headers to drop, but never one the
//! gateway checked (route predicates, `Host`, credentials) or sets itself.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;
use std::net::IpAddr;

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers the gateway sets on the upstream request; never removable through `Connection`.
fn gateway_owned(name: &HeaderName, request_id: &HeaderName) -> bool {
    name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
        || name == header::VIA
        || name == request_id
}

/// Removes hop-by-hop headers and the ones the `Connection` header lists, except `protected`
/// and gateway-owned ones. `Upgrade` goes too: this gateway does not tunnel upgrades yet.
pub fn strip_hop_by_hop(
    headers: &mut HeaderMap,
    protected: &[HeaderName],
    request_id: &HeaderName,
) {
    let present = hop_by_hop_present(headers);
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        for name in connection_listed(headers) {
            if !protected.contains(&name) && !gateway_owned(&name, request_id) {
                headers.remove(&name);
            }
        }
    }
    remove_present(headers, present);
}

/// Which hop-by-hop headers are present: bit `i` for `HOP_BY_HOP[i]` (bit 0 is
/// `Connection`), bit 8 for `Upgrade`. One pass over a message's few names (standard names
/// compare as enum tags) instead of nine hashed removes; most messages carry none, or only
/// `Connection: keep-alive`.
fn hop_by_hop_present(headers: &HeaderMap) -> u16 {
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(bit) = hop_bit(k.as_str()) {
            present |= 1 << bit;
        }
    }
    present
}

/// `HOP_BY_HOP`'s index of a lower-case name, 8 for `Upgrade`. A match on the name: a
/// length switch and at most one compare, where comparing with each of nine `HeaderName`s
/// cost more than the rest of the scan.
fn hop_bit(name: &str) -> Option<u16> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Whether a response header is one [`strip_response_hop_by_hop`] removes by name (lower
/// case), for readers that leave such fields out as they parse (the wire client).
pub fn is_hop_by_hop(name: &str) -> bool {
    hop_bit(name).is_some()
}

/// The header names a `Connection` value lists, without `close` and `keep-alive` (which
/// name no header to drop).
pub fn connection_tokens(value: &[u8]) -> impl Iterator<Item = HeaderName> + '_ {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        })
        .filter_map(|t| HeaderName::from_bytes(t).ok())
}

fn remove_present(headers: &mut HeaderMap, present: u16) {
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if present & (1 << 8) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Header names listed in every `Connection` header, without `close` and `keep-alive`.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| connection_tokens(v.as_bytes()))
        .collect()
}

/// Removes hop-by-hop headers from an upstream response.
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap) {
    let present = hop_by_hop_present(headers);
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        for n in connection_listed(headers) {
            headers.remove(n);
        }
    }
    remove_present(headers, present);
}

pub fn is_trusted(ip: IpAddr, trusted: &[ipnet::IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        for part in v.to_str().unwrap_or("").split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(canonical(ip)),
                // An unparsable hop ends what can be believed.
                Err(_) => hops.clear(),
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip, trusted))
        .unwrap_or(peer)
}

/// The peer's address as an `X-Forwarded-For` entry (IPv4-mapped IPv6 as IPv4). Built once
/// per connection, so forwarding a request formats no address.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&canonical(peer).to_string()).expect("an IP address is a header value")
}

/// What one of the gateway's own request fields becomes.
#[derive(Debug, Clone)]
pub enum Set<'a> {
    /// The client's value (if any) goes on.
    Keep,
    /// This value, in place of any the client sent. Borrowed where the value already exists
    /// (the peer's entry, the host, `Via`, the request id): a `HeaderValue` clone is an
    /// atomic reference count up and down again, five of them a request.
    Put(Cow<'a, HeaderValue>),
    /// None, whatever the client sent.
    Drop,
}

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

static VIA: HeaderName = header::VIA;
static HOST: HeaderName = header::HOST;

/// The fields the gateway sets on a request going upstream (`X-Forwarded-For/-Proto/-Host`,
/// `Via`, the request id, `Host`), each replacing whatever the client sent under its name.
/// Worked out once per request from the client's fields, then either put into the map
/// ([`Own::apply`], for hyper's client) or written after the client's fields by the wire
/// client, which leaves the client's fields of these names out
/// ([`crate::upstream::h1pool`]): no map insert per field on that path.
#[derive(Debug, Clone)]
pub struct Own<'a> {
    fields: [(&'a HeaderName, Set<'a>); 6],
}

impl<'a> Own<'a> {
    /// `peer` is [`peer_value`] of the connection's peer; `via` this gateway's `Via` entry
    /// (`None`: Via is off). `Host` starts as [`Set::Keep`] (see [`Own::set_host`]).
    pub fn new(
        headers: &HeaderMap,
        peer: &'a HeaderValue,
        peer_trusted: bool,
        tls: bool,
        original_host: Option<&'a HeaderValue>,
        via: Option<&'a HeaderValue>,
        request_id: (&'a HeaderName, &'a HeaderValue),
    ) -> Own<'a> {
        let prior = if peer_trusted {
            let prior: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!prior.is_empty()).then(|| prior.join(", "))
        } else {
            None
        };
        let owned = |v: HeaderValue| Set::Put(Cow::Owned(v));
        let xff = match prior {
            None => Set::Put(Cow::Borrowed(peer)),
            Some(p) => HeaderValue::from_str(&format!("{p}, {}", peer.to_str().unwrap_or("")))
                .map_or(Set::Keep, owned),
        };
        let xfp = if peer_trusted && headers.contains_key(&X_FORWARDED_PROTO) {
            Set::Keep
        } else {
            Set::Put(Cow::Borrowed(if tls { &HTTPS } else { &HTTP }))
        };
        let xfh = if peer_trusted && headers.contains_key(&X_FORWARDED_HOST) {
            Set::Keep
        } else {
            original_host.map_or(Set::Drop, |h| Set::Put(Cow::Borrowed(h)))
        };
        let via = match via {
            None => Set::Keep,
            Some(ours) => match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
                Some(prev) if !prev.is_empty() => {
                    HeaderValue::from_str(&format!("{prev}, {}", ours.to_str().unwrap_or("")))
                        .map_or(Set::Keep, owned)
                }
                _ => Set::Put(Cow::Borrowed(ours)),
            },
        };
        Own {
            fields: [
                (&X_FORWARDED_FOR, xff),
                (&X_FORWARDED_PROTO, xfp),
                (&X_FORWARDED_HOST, xfh),
                (&VIA, via),
                (request_id.0, Set::Put(Cow::Borrowed(request_id.1))),
                (&HOST, Set::Keep),
            ],
        }
    }

    /// Sets nothing: the client's fields go as they are (unit tests of the clients).
    #[cfg(test)]
    pub fn keep_all() -> Own<'static> {
        static RID: HeaderName = HeaderName::from_static("x-request-id");
        Own {
            fields: [
                (&X_FORWARDED_FOR, Set::Keep),
                (&X_FORWARDED_PROTO, Set::Keep),
                (&X_FORWARDED_HOST, Set::Keep),
                (&VIA, Set::Keep),
                (&RID, Set::Keep),
                (&HOST, Set::Keep),
            ],
        }
    }

    /// The `Host` the upstream gets (it depends on the target, so it is set per try).
    pub fn set_host(&mut self, host: Set<'a>) {
        self.fields[5].1 = host;
    }

    /// Puts the fields into `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, set) in &self.fields {
            match set {
                Set::Keep => {}
                Set::Put(v) => {
                    headers.insert(*name, v.as_ref().clone());
                }
                Set::Drop => {
                    headers.remove(*name);
                }
            }
        }
    }

    /// Whether a client field of this name gives way to the gateway's.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        self.fields
            .iter()
            .any(|(n, set)| !matches!(set, Set::Keep) && *n == name)
    }

    /// Appends the fields the gateway puts as request head lines.
    pub fn write_to(&self, w: &mut Vec<u8>) {
        // Each fixed name with its ": " as one constant (copied inline, where a name of
        // unknown length is a `memcpy` call); only the request id's name is configured.
        #[inline(always)]
        fn line(w: &mut Vec<u8>, prefix: &[u8], v: &HeaderValue) {
            w.extend_from_slice(prefix);
            w.extend_from_slice(v.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        let f = &self.fields;
        if let Set::Put(v) = &f[0].1 {
            line(w, b"x-forwarded-for: ", v);
        }
        if let Set::Put(v) = &f[1].1 {
            line(w, b"x-forwarded-proto: ", v);
        }
        if let Set::Put(v) = &f[2].1 {
            line(w, b"x-forwarded-host: ", v);
        }
        if let Set::Put(v) = &f[3].1 {
            line(w, b"via: ", v);
        }
        if let Set::Put(v) = &f[4].1 {
            w.extend_from_slice(f[4].0.as_str().as_bytes());
            line(w, b": ", v);
        }
        if let Set::Put(v) = &f[5].1 {
            line(w, b"host: ", v);
        }
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host` for the upstream request in the map. `peer` is
/// [`peer_value`] of the connection's peer.
#[cfg(test)]
fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    peer_trusted: bool,
    tls: bool,
    original_host: Option<&HeaderValue>,
) {
    static RID: HeaderName = HeaderName::from_static("x-request-id");
    static ID: HeaderValue = HeaderValue::from_static("t");
    let mut own = Own::new(
        headers,
        peer,
        peer_trusted,
        tls,
        original_host,
        None,
        (&RID, &ID),
    );
    // Only the forwarding fields, as this helper always did.
    own.fields[4].1 = Set::Keep;
    own.apply(headers);
}

/// Appends this gateway to `Via`.
pub fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => {
            if let Ok(v) = HeaderValue::from_str(&format!("{prev}, {}", via.to_str().unwrap_or("")))
            {
                headers.insert(header::VIA, v);
            }
        }
        _ => {
            headers.insert(header::VIA, via.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_bits_follow_the_hop_by_hop_list() {
        for (i, h) in HOP_BY_HOP.iter().enumerate() {
            let mut m = HeaderMap::new();
            m.insert(h.clone(), HeaderValue::from_static("x"));
            m.insert(header::CONTENT_TYPE, HeaderValue::from_static("x"));
            assert_eq!(hop_by_hop_present(&m), 1 << i, "{h}");
        }
        let mut m = HeaderMap::new();
        m.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(hop_by_hop_present(&m), 1 << 8);
    }

    fn nets(s: &[&str]) -> Vec<ipnet::IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    /// The unrolled writer says what the field list says, in its order.
    #[test]
    fn own_fields_are_written_as_name_colon_value_lines() {
        static RID: HeaderName = HeaderName::from_static("x-trace-me");
        static ID: HeaderValue = HeaderValue::from_static("id-1");
        let peer = HeaderValue::from_static("1.2.3.4");
        let host = HeaderValue::from_static("api.example");
        let via = HeaderValue::from_static("1.1 portcullis");
        let mut own = Own::new(
            &HeaderMap::new(),
            &peer,
            false,
            true,
            Some(&host),
            Some(&via),
            (&RID, &ID),
        );
        own.set_host(Set::Put(Cow::Borrowed(&host)));
        let mut want = Vec::new();
        for (name, set) in &own.fields {
            if let Set::Put(v) = set {
                want.extend_from_slice(format!("{name}: {}\r\n", v.to_str().unwrap()).as_bytes());
            }
        }
        let mut got = Vec::new();
        own.write_to(&mut got);
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want).unwrap()
        );
        assert!(String::from_utf8_lossy(&{
            let mut v = Vec::new();
            own.write_to(&mut v);
            v
        })
        .starts_with("x-forwarded-for: 1.2.3.4\r\nx-forwarded-proto: https\r\nx-forwarded-host: api.example\r\nvia: 1.1 portcullis\r\nx-trace-me: id-1\r\nhost: api.example\r\n"));
    }

    #[test]
    fn xff_only_from_trusted() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, "6.6.6.6, 1.2.3.4".parse().unwrap());
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &[]), peer);
        assert_eq!(
            client_ip(peer, &h, &nets(&["10.0.0.0/8"])),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, &h, &nets(&["10.0.0.0/8", "1.2.3.0/24"])),
            "6.6.6.6".parse::<IpAddr>().unwrap()
        );
        let untrusted: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(untrusted, &h, &nets(&["10.0.0.0/8"])), untrusted);
    }

    #[test]
    fn set_forwarded_replaces_untrusted() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        h.insert(&X_FORWARDED_PROTO, "https".parse().unwrap());
        let host = HeaderValue::from_static("api.example.com");
        set_forwarded(
            &mut h,
            &peer_value("1.2.3.4".parse().unwrap()),
            false,
            false,
            Some(&host),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "api.example.com");

        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        set_forwarded(
            &mut h,
            &peer_value("::ffff:10.0.0.1".parse().unwrap()),
            true,
            true,
            None,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "6.6.6.6, 10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn connection_cannot_strip_protected() {
        let rid = HeaderName::from_static("x-request-id");
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "close, x-api-key, authorization, x-forwarded-for, x-custom"
                .parse()
                .unwrap(),
        );
        h.insert("x-api-key", "k".parse().unwrap());
        h.insert(header::AUTHORIZATION, "a".parse().unwrap());
        h.insert("x-custom", "c".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        strip_hop_by_hop(
            &mut h,
            &[header::AUTHORIZATION, HeaderName::from_static("x-api-key")],
            &rid,
        );
        assert!(h.contains_key("x-api-key"));
        assert!(h.contains_key(header::AUTHORIZATION));
        assert!(!h.contains_key("x-custom"));
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn response_hop_by_hop_goes_and_the_rest_stays() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-hop".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::TRAILER, "x-t".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        strip_response_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));

        // Nothing hop-by-hop: untouched.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        let before = h.clone();
        strip_response_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn via_appends() {
        let mut h = HeaderMap::new();
        append_via(&mut h, &HeaderValue::from_static("1.1 portcullis"));
        assert_eq!(h[header::VIA], "1.1 portcullis");
        append_via(&mut h, &HeaderValue::from_static("1.1 portcullis"));
        assert_eq!(h[header::VIA], "1.1 portcullis, 1.1 portcullis");
    }
}
