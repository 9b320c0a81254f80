//! `ip_filter`: allow and deny lists of IPv4/IPv6 CIDRs (or single addresses).
//!
//! ```yaml
//! - ip_filter: { allow: [10.0.0.0/8, "2001:db8::/32"], deny: [10.0.13.0/24] }
//! ```
//!
//! A `deny` match always refuses; with an `allow` list only addresses in it pass. The address
//! is the client's as the pipeline computed it: the peer, or the `X-Forwarded-For` hop chosen
//! through `server.trusted_proxies`, so a client cannot pick the address it is judged by.
//! IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`, seen on dual-stack listeners) count as IPv4.
//! Refused requests get 403.

use super::{Build, BuildCx, BuildError, Ctx, Flow, Policy};
use crate::body::Body;
use crate::config::auth::IpFilterConfig;
use crate::error::GatewayError;
use http::Request;
use ipnet::IpNet;
use std::net::IpAddr;

pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

fn parse_list(list: &[String], field: &str, errs: &mut BuildError) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let net = s
            .parse::<IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(n) => out.push(n),
            Err(_) => errs.0.push((
                format!(".{field}[{i}]"),
                format!("{s:?}: expected an address or CIDR like 10.0.0.0/8 or 2001:db8::/32"),
            )),
        }
    }
    out
}

impl Build for IpFilter {
    type Config = IpFilterConfig;

    fn build(cfg: &IpFilterConfig, _cx: &BuildCx<'_>) -> Result<Self, BuildError> {
        let mut errs = BuildError::default();
        let allow = parse_list(&cfg.allow, "allow", &mut errs);
        let deny = parse_list(&cfg.deny, "deny", &mut errs);
        if cfg.allow.is_empty() && cfg.deny.is_empty() {
            errs.0
                .push((String::new(), "expected `allow` and/or `deny`".into()));
        }
        if !errs.0.is_empty() {
            return Err(errs);
        }
        Ok(IpFilter { allow, deny })
    }
}

impl IpFilter {
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

impl Policy for IpFilter {
    async fn on_request(
        &self,
        cx: &mut Ctx,
        _req: &mut Request<Body>,
    ) -> Result<Flow, GatewayError> {
        if self.admits(cx.client.ip()) {
            Ok(Flow::Continue)
        } else {
            Err(GatewayError::Forbidden { challenge: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> Result<IpFilter, BuildError> {
        let cfg = IpFilterConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        crate::policy::test_cx(|cx| IpFilter::build(&cfg, cx))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allow_and_deny() {
        let f = filter(
            &["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"],
            &["10.0.13.0/24"],
        )
        .unwrap();
        assert!(f.admits(ip("10.1.2.3")));
        assert!(f.admits(ip("::ffff:10.1.2.3")));
        assert!(!f.admits(ip("10.0.13.9")));
        assert!(!f.admits(ip("::ffff:10.0.13.9")));
        assert!(f.admits(ip("2001:db8::1")));
        assert!(!f.admits(ip("2001:db9::1")));
        assert!(f.admits(ip("192.0.2.7")));
        assert!(!f.admits(ip("192.0.2.8")));
        let deny_only = filter(&[], &["203.0.113.0/24", "::1"]).unwrap();
        assert!(deny_only.admits(ip("198.51.100.1")));
        assert!(!deny_only.admits(ip("203.0.113.5")));
        assert!(!deny_only.admits(ip("::1")));
    }

    #[test]
    fn bad_entries_are_located() {
        let e = filter(&["10.0.0.0/8", "10.0.0.0/33"], &["nope"])
            .err()
            .unwrap();
        let fields: Vec<_> = e.0.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, [".allow[1]", ".deny[0]"]);
        assert!(filter(&[], &[]).is_err());
    }
}
