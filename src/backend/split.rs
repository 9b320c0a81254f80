//! The split backend: a weighted choice among upstreams, for canaries and blue/green moves.
//!
//! ```yaml
//! split:
//!   upstreams: [ { upstream: users-v2, weight: 10 }, { upstream: users, weight: 90 } ]
//!   override: { header: X-Canary, cookie: canary }   # value = an upstream of the split
//!   sticky: client_ip                                # or consumer, header:NAME, cookie:NAME
//! ```
//!
//! Per request: an override header or cookie naming one of the split's upstreams wins;
//! otherwise the draw is random, or — with `sticky` — a hash of the key placed on the
//! cumulative weights, so the same caller always lands on the same upstream. The hash is
//! mapped to a fraction of the total, so raising the canary from 10 to 20 keeps the first
//! 10% on the canary and moves only the next 10%.
//!
//! The chosen upstream is then forwarded to like any `upstream:` route, with its own
//! balancer, health, retries and breaker.

use crate::config::SplitConfig;
use crate::policy::Ctx;
use crate::upstream::balancer::{cookie, hash, hash_ip};
use crate::upstream::Upstream;
use http::{HeaderMap, HeaderName};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// How a sticky split recognises a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    ClientIp,
    /// The authenticated consumer; the client address for anonymous callers.
    Consumer,
    Header(HeaderName),
    Cookie(String),
}

pub struct Split {
    entries: Vec<(Arc<Upstream>, u32)>,
    total: u32,
    override_header: Option<HeaderName>,
    override_cookie: Option<String>,
    sticky: Option<Sticky>,
}

impl Split {
    /// Compiles the `split` at field path `at`; errors are (field path, message). An
    /// upstream that is `defined` but failed to build is reported at its own definition,
    /// not here.
    pub fn build(
        cfg: &SplitConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        defined: &[&str],
        at: &str,
    ) -> Result<Split, Vec<(String, String)>> {
        let base = at;
        let list = if cfg.long_form {
            format!("{at}.upstreams")
        } else {
            at.to_owned()
        };
        let prefix = list.as_str();
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        if cfg.upstreams.is_empty() {
            errors.push((
                prefix.to_owned(),
                "a split needs at least one upstream".to_owned(),
            ));
        }
        for (i, e) in cfg.upstreams.iter().enumerate() {
            let at = format!("{prefix}[{i}]");
            if e.weight == 0 && cfg.upstreams.len() == 1 {
                errors.push((
                    format!("{at}.weight"),
                    "the only upstream needs a weight above 0".into(),
                ));
            }
            if cfg.upstreams[..i].iter().any(|o| o.upstream == e.upstream) {
                errors.push((
                    format!("{at}.upstream"),
                    format!("{:?} is listed twice", e.upstream),
                ));
            }
            match upstreams.get(&e.upstream) {
                Some(up) => entries.push((up.clone(), e.weight)),
                None if defined.contains(&e.upstream.as_str()) => {} // reported there
                None => errors.push((
                    format!("{at}.upstream"),
                    if defined.is_empty() {
                        format!("unknown upstream {:?}; none are defined", e.upstream)
                    } else {
                        format!(
                            "unknown upstream {:?}; known: {}",
                            e.upstream,
                            defined.join(", ")
                        )
                    },
                )),
            }
        }
        let total: u64 = cfg.upstreams.iter().map(|e| u64::from(e.weight)).sum();
        if total == 0 && !cfg.upstreams.is_empty() {
            errors.push((prefix.to_owned(), "the weights add up to 0".to_owned()));
        }
        if total > u64::from(u32::MAX) {
            errors.push((prefix.to_owned(), "the weights are too large".to_owned()));
        }
        let mut override_header = None;
        let mut override_cookie = None;
        if let Some(o) = &cfg.override_by {
            if o.header.is_none() && o.cookie.is_none() {
                errors.push((
                    format!("{base}.override"),
                    "give a `header` and/or a `cookie`".into(),
                ));
            }
            if let Some(h) = &o.header {
                match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(n) => override_header = Some(n),
                    Err(_) => errors.push((
                        format!("{base}.override.header"),
                        format!("{h:?} is not a valid header name"),
                    )),
                }
            }
            override_cookie = o.cookie.clone();
        }
        let sticky = match cfg.sticky.as_deref() {
            None => None,
            Some(s) => match parse_sticky(s) {
                Ok(st) => Some(st),
                Err(m) => {
                    errors.push((format!("{base}.sticky"), m));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Split {
            entries,
            total: total as u32,
            override_header,
            override_cookie,
            sticky,
        })
    }

    /// The upstream for this request.
    pub fn choose(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        consumer: Option<&str>,
    ) -> &Arc<Upstream> {
        if let Some(up) = self.overridden(headers) {
            return up;
        }
        let point = match &self.sticky {
            None => fastrand::u32(0..self.total),
            Some(s) => {
                let h = match s {
                    Sticky::ClientIp => hash_ip(client),
                    Sticky::Consumer => match consumer {
                        Some(c) => hash(c.as_bytes()),
                        None => hash_ip(client),
                    },
                    Sticky::Header(h) => headers
                        .get(h)
                        .map(|v| hash(v.as_bytes()))
                        .unwrap_or_else(|| hash_ip(client)),
                    Sticky::Cookie(c) => cookie(headers, c)
                        .map(|v| hash(v.as_bytes()))
                        .unwrap_or_else(|| hash_ip(client)),
                };
                ((u128::from(h) * u128::from(self.total)) >> 64) as u32
            }
        };
        let mut left = point;
        for (up, w) in &self.entries {
            if left < *w {
                return up;
            }
            left -= w;
        }
        &self.entries[self.entries.len() - 1].0
    }

    fn overridden(&self, headers: &HeaderMap) -> Option<&Arc<Upstream>> {
        let by_header = self
            .override_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok());
        let by_cookie = self
            .override_cookie
            .as_deref()
            .and_then(|c| cookie(headers, c));
        [by_header, by_cookie]
            .into_iter()
            .flatten()
            .find_map(|name| {
                let name = name.trim();
                self.entries
                    .iter()
                    .find(|(up, _)| &*up.name == name)
                    .map(|(up, _)| up)
            })
    }

    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|(u, w)| format!("{} {w}", u.name))
            .collect();
        format!("split {}", parts.join(" / "))
    }
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn parse_sticky(s: &str) -> Result<Sticky, String> {
    if let Some(h) = s.strip_prefix("header:") {
        return HeaderName::from_bytes(h.trim().as_bytes())
            .map(Sticky::Header)
            .map_err(|_| format!("{h:?} is not a valid header name"));
    }
    if let Some(c) = s.strip_prefix("cookie:") {
        return Ok(Sticky::Cookie(c.trim().to_owned()));
    }
    match s {
        "client_ip" => Ok(Sticky::ClientIp),
        "consumer" => Ok(Sticky::Consumer),
        _ => Err(format!(
            "{s:?}: expected client_ip, consumer, header:NAME or cookie:NAME"
        )),
    }
}

/// The caller's consumer name, for `sticky: consumer`, as the `authenticate` policy recorded
/// it; anonymous callers fall back to the client address.
pub fn consumer_of(cx: &Ctx) -> Option<&str> {
    cx.identity.as_ref()?.consumer.as_deref().map(|c| &*c.name)
}

/// Chooses the upstream of a split route for this request.
pub fn choose<'a>(split: &'a Split, cx: &Ctx, headers: &HeaderMap) -> &'a Arc<Upstream> {
    split.choose(headers, cx.client.ip(), consumer_of(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::upstream::{SplitEntry, SplitOverride};
    use crate::config::UpstreamConfig;
    use crate::upstream::{build, Defaults, Pools};
    use std::time::Duration;

    fn upstreams(names: &[&str]) -> BTreeMap<String, Arc<Upstream>> {
        let pools = Pools::default();
        let defaults = Defaults {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            per_try_timeout: None,
            base_dir: ".".into(),
        };
        names
            .iter()
            .map(|n| {
                let cfg: UpstreamConfig = serde_json::from_value(serde_json::json!({
                    "targets": [{"url": "http://127.0.0.1:9"}]
                }))
                .unwrap();
                (
                    n.to_string(),
                    Arc::new(build(n, &cfg, &defaults, &pools).unwrap()),
                )
            })
            .collect()
    }

    fn split(sticky: Option<&str>, over: Option<SplitOverride>) -> Split {
        let cfg = SplitConfig {
            upstreams: vec![
                SplitEntry {
                    upstream: "canary".into(),
                    weight: 10,
                },
                SplitEntry {
                    upstream: "stable".into(),
                    weight: 90,
                },
            ],
            override_by: over,
            sticky: sticky.map(str::to_owned),
            long_form: true,
        };
        Split::build(&cfg, &upstreams(&["canary", "stable"]), &[], "split").unwrap()
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn weights_hold() {
        let s = split(None, None);
        let h = HeaderMap::new();
        let canary = (0..20_000)
            .filter(|_| &*s.choose(&h, ip(1), None).name == "canary")
            .count();
        let share = canary as f64 / 20_000.0;
        assert!((share - 0.1).abs() < 0.01, "{share}");
    }

    #[test]
    fn sticky_by_client_and_consumer() {
        let h = HeaderMap::new();
        let s = split(Some("client_ip"), None);
        let mut canary = 0;
        for i in 0..5_000 {
            let first = s.choose(&h, ip(i), None).name.clone();
            for _ in 0..3 {
                assert_eq!(s.choose(&h, ip(i), None).name, first);
            }
            canary += usize::from(&*first == "canary");
        }
        let share = canary as f64 / 5_000.0;
        assert!((share - 0.1).abs() < 0.02, "{share}");

        let s = split(Some("consumer"), None);
        // Same consumer from different addresses: same upstream.
        let alice: Vec<_> = (0..20)
            .map(|i| s.choose(&h, ip(i), Some("alice")).name.clone())
            .collect();
        assert!(alice.iter().all(|n| *n == alice[0]));
        // Anonymous callers stick by address.
        assert_eq!(
            s.choose(&h, ip(7), None).name,
            s.choose(&h, ip(7), None).name
        );
    }

    #[test]
    fn raising_the_canary_keeps_its_users() {
        let h = HeaderMap::new();
        let small = split(Some("client_ip"), None);
        let cfg = SplitConfig {
            upstreams: vec![
                SplitEntry {
                    upstream: "canary".into(),
                    weight: 20,
                },
                SplitEntry {
                    upstream: "stable".into(),
                    weight: 80,
                },
            ],
            override_by: None,
            sticky: Some("client_ip".into()),
            long_form: true,
        };
        let big = Split::build(&cfg, &upstreams(&["canary", "stable"]), &[], "split").unwrap();
        for i in 0..2_000 {
            if &*small.choose(&h, ip(i), None).name == "canary" {
                assert_eq!(&*big.choose(&h, ip(i), None).name, "canary");
            }
        }
    }

    #[test]
    fn override_by_header_or_cookie() {
        let s = split(
            None,
            Some(SplitOverride {
                header: Some("X-Canary".into()),
                cookie: Some("canary".into()),
            }),
        );
        let mut h = HeaderMap::new();
        h.insert("x-canary", "canary".parse().unwrap());
        for _ in 0..50 {
            assert_eq!(&*s.choose(&h, ip(1), None).name, "canary");
        }
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=b; canary=stable".parse().unwrap());
        for _ in 0..50 {
            assert_eq!(&*s.choose(&h, ip(1), None).name, "stable");
        }
        // An unknown name is ignored: the normal draw applies.
        let mut h = HeaderMap::new();
        h.insert("x-canary", "nope".parse().unwrap());
        let names: std::collections::HashSet<_> = (0..500)
            .map(|_| s.choose(&h, ip(1), None).name.clone())
            .collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn build_errors() {
        let ups = upstreams(&["a"]);
        let cfg = SplitConfig {
            upstreams: vec![
                SplitEntry {
                    upstream: "a".into(),
                    weight: 1,
                },
                SplitEntry {
                    upstream: "zz".into(),
                    weight: 1,
                },
                SplitEntry {
                    upstream: "a".into(),
                    weight: 1,
                },
            ],
            override_by: None,
            sticky: Some("moon".into()),
            long_form: false,
        };
        let errs = Split::build(&cfg, &ups, &["a"], "routes[0].split").unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "routes[0].split[1].upstream",
                "routes[0].split[2].upstream",
                "routes[0].split.sticky"
            ]
        );
    }
}
