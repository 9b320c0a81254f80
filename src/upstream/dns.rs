//! A minimal DNS client for SRV records (RFC 1035 wire format, RFC 2782 SRV).
//!
//! The system resolver (`getaddrinfo`, used for A/AAAA through `tokio::net::lookup_host`)
//! cannot answer SRV queries, and a full resolver crate is a lot of code for one record type.
//! This asks the configured name servers (default: `/etc/resolv.conf`) over UDP with EDNS0,
//! falls back to TCP when the answer is truncated, and parses SRV answers including
//! compressed names. Target names are then resolved by the connector like any host name.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Without the trailing dot.
    pub target: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("malformed DNS message: {0}")]
    Malformed(&'static str),
    #[error("the name server answered {0}")]
    Rcode(&'static str),
    #[error("{0} is not a valid DNS name")]
    BadName(String),
    #[error("no name server answered: {0}")]
    Unreachable(String),
}

const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;

/// Encodes an SRV query with the recursion-desired bit and an EDNS0 OPT record (4096-byte
/// UDP answers).
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // 1 question, 1 additional
    encode_name(&mut q, name)?;
    q.extend_from_slice(&TYPE_SRV.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
                                              // OPT: root name, type 41, class = UDP payload size, ttl 0, no data.
    q.push(0);
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&4096u16.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(q)
}

fn encode_name(out: &mut Vec<u8>, name: &str) -> Result<(), DnsError> {
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(DnsError::BadName(name.to_owned()));
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsError::BadName(name.to_owned()));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// What a response said.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Records(Vec<Srv>),
    /// The TC bit: ask again over TCP.
    Truncated,
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DnsError> {
        let b = *self
            .msg
            .get(self.pos)
            .ok_or(DnsError::Malformed("too short"))?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, DnsError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn skip(&mut self, n: usize) -> Result<(), DnsError> {
        if self.pos + n > self.msg.len() {
            return Err(DnsError::Malformed("too short"));
        }
        self.pos += n;
        Ok(())
    }
    /// A possibly compressed name; follows at most 16 pointers.
    fn name(&mut self) -> Result<String, DnsError> {
        let mut out = String::new();
        let mut pos = self.pos;
        let mut jumped = false;
        let mut jumps = 0;
        loop {
            let len = *self
                .msg
                .get(pos)
                .ok_or(DnsError::Malformed("name past the end"))?;
            match len {
                0 => {
                    if !jumped {
                        self.pos = pos + 1;
                    }
                    return Ok(out);
                }
                l if l & 0xC0 == 0xC0 => {
                    let lo = *self
                        .msg
                        .get(pos + 1)
                        .ok_or(DnsError::Malformed("bad pointer"))?;
                    if !jumped {
                        self.pos = pos + 2;
                    }
                    jumped = true;
                    jumps += 1;
                    if jumps > 16 {
                        return Err(DnsError::Malformed("compression loop"));
                    }
                    pos = (usize::from(l & 0x3F) << 8) | usize::from(lo);
                }
                l if l & 0xC0 == 0 => {
                    let l = usize::from(l);
                    let label = self
                        .msg
                        .get(pos + 1..pos + 1 + l)
                        .ok_or(DnsError::Malformed("label past the end"))?;
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&String::from_utf8_lossy(label));
                    pos += 1 + l;
                }
                _ => return Err(DnsError::Malformed("unknown label type")),
            }
        }
    }
}

/// Parses a response to the query with `id`.
pub fn parse_response(msg: &[u8], id: u16) -> Result<Answer, DnsError> {
    let mut r = Reader { msg, pos: 0 };
    if r.u16()? != id {
        return Err(DnsError::Malformed("answer to another query"));
    }
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not a response"));
    }
    if flags & 0x0200 != 0 {
        return Ok(Answer::Truncated);
    }
    match flags & 0x000F {
        0 => {}
        // NXDOMAIN: the name does not exist, so there are no records.
        3 => return Ok(Answer::Records(Vec::new())),
        2 => return Err(DnsError::Rcode("SERVFAIL")),
        5 => return Err(DnsError::Rcode("REFUSED")),
        _ => return Err(DnsError::Rcode("an error")),
    }
    let (qd, an) = (r.u16()?, r.u16()?);
    r.skip(4)?; // authority and additional counts: not needed
    for _ in 0..qd {
        r.name()?;
        r.skip(4)?;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        r.name()?;
        let rtype = r.u16()?;
        r.skip(6)?; // class, ttl
        let len = usize::from(r.u16()?);
        let end = r.pos + len;
        if end > msg.len() {
            return Err(DnsError::Malformed("record past the end"));
        }
        if rtype == TYPE_SRV {
            let priority = r.u16()?;
            let weight = r.u16()?;
            let port = r.u16()?;
            let target = r.name()?;
            // "." means "no service here" (RFC 2782).
            if !target.is_empty() {
                out.push(Srv {
                    priority,
                    weight,
                    port,
                    target,
                });
            }
        }
        r.pos = end;
    }
    Ok(Answer::Records(out))
}

/// Name servers from `/etc/resolv.conf` (port 53).
pub fn system_nameservers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let ip = rest.trim().split('%').next()?;
            ip.parse::<std::net::IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Looks up SRV records, asking each name server in turn.
pub async fn lookup_srv(
    name: &str,
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<Srv>, DnsError> {
    let mut last = String::from("no name servers configured");
    for &server in servers {
        let id = fastrand::u16(..);
        let query = encode_query(id, name)?;
        let answer = match tokio::time::timeout(timeout, udp(server, &query)).await {
            Ok(Ok(bytes)) => parse_response(&bytes, id),
            Ok(Err(e)) => {
                last = format!("{server}: {e}");
                continue;
            }
            Err(_) => {
                last = format!("{server}: no answer within {timeout:?}");
                continue;
            }
        };
        match answer {
            Ok(Answer::Records(r)) => return Ok(r),
            Ok(Answer::Truncated) => {
                match tokio::time::timeout(timeout, tcp(server, &query)).await {
                    Ok(Ok(bytes)) => match parse_response(&bytes, id)? {
                        Answer::Records(r) => return Ok(r),
                        Answer::Truncated => return Err(DnsError::Malformed("truncated over TCP")),
                    },
                    Ok(Err(e)) => last = format!("{server} (tcp): {e}"),
                    Err(_) => last = format!("{server} (tcp): no answer within {timeout:?}"),
                }
            }
            Err(e @ DnsError::Rcode(_)) => last = format!("{server}: {e}"),
            Err(e) => return Err(e),
        }
    }
    Err(DnsError::Unreachable(last))
}

async fn udp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(server).await?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).await?;
    let len = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Builds an SRV response (for tests: this module's, and fake name servers in black-box
/// tests). Names in answers point back at the question with a compression pointer.
pub fn encode_response(query: &[u8], records: &[Srv], truncated: bool) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&[0x81 | if truncated { 0x02 } else { 0 }, 0x80]);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    // The question, copied from the query (up to the end of its type and class).
    let mut r = Reader {
        msg: query,
        pos: 12,
    };
    let _ = r.name();
    let qend = (r.pos + 4).min(query.len());
    out.extend_from_slice(&query[12..qend]);
    for rec in records {
        out.extend_from_slice(&[0xC0, 12]);
        out.extend_from_slice(&TYPE_SRV.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
        let mut rdata = Vec::new();
        rdata.extend_from_slice(&rec.priority.to_be_bytes());
        rdata.extend_from_slice(&rec.weight.to_be_bytes());
        rdata.extend_from_slice(&rec.port.to_be_bytes());
        let _ = encode_name(&mut rdata, &rec.target);
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    #[test]
    fn query_and_response_round_trip() {
        let q = encode_query(0x1234, "_http._tcp.users.internal.").unwrap();
        assert_eq!(&q[..2], &[0x12, 0x34]);
        let recs = vec![
            srv(10, 5, 8080, "a.users.internal"),
            srv(20, 1, 8081, "b.users.internal"),
        ];
        let resp = encode_response(&q, &recs, false);
        assert_eq!(parse_response(&resp, 0x1234), Ok(Answer::Records(recs)));
        assert!(parse_response(&resp, 0x9999).is_err());
        assert_eq!(
            parse_response(&encode_response(&q, &[], true), 0x1234),
            Ok(Answer::Truncated)
        );
        assert!(encode_query(1, "bad..name").is_err());
    }

    #[test]
    fn compressed_target_names() {
        // A hand-built answer whose SRV target is "node1" + a pointer to "users.test" in the
        // question, as real servers write it.
        let q = encode_query(7, "_h._tcp.users.test").unwrap();
        let mut resp = encode_response(&q, &[], false);
        resp[7] = 1; // one answer
        let users_at = 12 + 1 + 2 + 1 + 4; // offset of "users" in the question
        resp.extend_from_slice(&[0xC0, 12, 0, 33, 0, 1, 0, 0, 0, 30]);
        let rdata = [
            &[0, 1, 0, 2, 0x1F, 0x90][..],
            &[5, b'n', b'o', b'd', b'e', b'1', 0xC0, users_at as u8][..],
        ]
        .concat();
        resp.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        resp.extend_from_slice(&rdata);
        assert_eq!(
            parse_response(&resp, 7),
            Ok(Answer::Records(vec![srv(1, 2, 8080, "node1.users.test")]))
        );
        // A pointer to itself is refused, not followed forever.
        let mut looped = resp.clone();
        let at = looped.len() - 2;
        looped[at] = 0xC0;
        looped[at + 1] = (at) as u8;
        assert!(parse_response(&looped, 7).is_err());
    }

    #[test]
    fn errors_and_nxdomain() {
        let q = encode_query(3, "x.test").unwrap();
        let mut r = encode_response(&q, &[], false);
        r[3] = 0x83; // NXDOMAIN
        assert_eq!(parse_response(&r, 3), Ok(Answer::Records(vec![])));
        r[3] = 0x82;
        assert_eq!(parse_response(&r, 3), Err(DnsError::Rcode("SERVFAIL")));
        assert!(parse_response(&r[..5], 3).is_err());
    }

    #[test]
    fn resolv_conf() {
        let t = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver ::1\n";
        let s = parse_resolv_conf(t);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], "10.0.0.2:53".parse().unwrap());
        assert_eq!(s[2], "[::1]:53".parse().unwrap());
    }

    /// A real exchange over UDP, then TCP after a truncated answer, with a fake name server
    /// on 127.0.0.1.
    #[tokio::test]
    async fn udp_then_tcp_on_truncation() {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
        let recs = vec![srv(0, 1, 9000, "localhost")];
        let tcp_recs = recs.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            let resp = encode_response(&buf[..n], &[], true);
            udp.send_to(&resp, peer).await.unwrap();
        });
        tokio::spawn(async move {
            let (mut s, _) = tcp.accept().await.unwrap();
            let len = s.read_u16().await.unwrap();
            let mut q = vec![0u8; usize::from(len)];
            s.read_exact(&mut q).await.unwrap();
            let resp = encode_response(&q, &tcp_recs, false);
            s.write_all(&(resp.len() as u16).to_be_bytes())
                .await
                .unwrap();
            s.write_all(&resp).await.unwrap();
        });
        let got = lookup_srv("_x._tcp.test", &[addr], Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(got, recs);
    }
}
