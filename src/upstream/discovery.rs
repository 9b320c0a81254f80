//! Discovery: where an upstream's targets come from when they are not listed in the file.
//!
//! A source implements [`Discover`]: one async `resolve` that returns the current endpoints.
//! The loop here calls it every `refresh` (and at once after a reload), and when the answer
//! changed it builds a new target set for the live upstream and swaps it in. Requests in
//! flight keep the set (and connections) they started with, so removing a target never cuts
//! a request; added targets get traffic from the next pick. A failed or empty answer keeps
//! the last good set (a DNS hiccup must not empty an upstream).
//!
//! Sources today: `dns` (A/AAAA through the system resolver) and `srv` (SRV records through
//! [`super::dns`]). Consul or Kubernetes endpoints are one more type implementing
//! [`Discover`] — a watch-style source simply returns from `resolve` when its blocking query
//! (Consul's `index`, a Kubernetes watch) reports a change, with a short `refresh`.

use super::dns;
use super::state::UpstreamState;
use crate::config::upstream::AddressFamily;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// One discovered server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// `host:port` to connect to: an IP address for `dns`, a host name for `srv`.
    pub authority: String,
    pub weight: u32,
    /// The `Host` header (and TLS name) to send; default the authority.
    pub host: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot resolve {name}: {reason}")]
    Lookup { name: String, reason: String },
    #[error("{0} resolved to no usable address")]
    Empty(String),
}

pub type Resolving<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Endpoint>, DiscoveryError>> + Send + 'a>>;

/// A source of endpoints.
pub trait Discover: Send + Sync + 'static {
    /// The current endpoints. An error or an empty list keeps the previous ones.
    fn resolve(&self) -> Resolving<'_>;
    /// For logs and the admin view: `dns users.internal:8080`.
    fn describe(&self) -> String;
}

/// The compiled `discover` setting of an upstream.
#[derive(Clone)]
pub struct DiscoverySpec {
    pub source: Arc<dyn Discover>,
    pub refresh: Duration,
    pub scheme: http::uri::Scheme,
}

impl std::fmt::Debug for DiscoverySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} every {:?}", self.source.describe(), self.refresh)
    }
}

// === dns: A/AAAA ===

/// A/AAAA records of a name, all on one port.
pub struct Dns {
    pub name: String,
    pub port: u16,
    pub family: AddressFamily,
    /// `Host` header value: the name, with the port unless it is the scheme's default.
    pub host: String,
}

impl Discover for Dns {
    fn resolve(&self) -> Resolving<'_> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((self.name.as_str(), self.port))
                .await
                .map_err(|e| DiscoveryError::Lookup {
                    name: self.name.clone(),
                    reason: e.to_string(),
                })?;
            let eps: Vec<Endpoint> = addrs
                .filter(|a| match self.family {
                    AddressFamily::Any => true,
                    AddressFamily::Ipv4 => a.is_ipv4(),
                    AddressFamily::Ipv6 => a.is_ipv6(),
                })
                .map(|a: SocketAddr| Endpoint {
                    authority: a.to_string(),
                    weight: 1,
                    host: Some(self.host.clone()),
                })
                .collect();
            if eps.is_empty() {
                return Err(DiscoveryError::Empty(self.name.clone()));
            }
            Ok(eps)
        })
    }

    fn describe(&self) -> String {
        format!("dns {}:{}", self.name, self.port)
    }
}

// === srv ===

/// SRV records of a name: each record is a target with its own port and weight. Only the
/// records of the lowest priority are used (RFC 2782: higher priorities are fallbacks).
pub struct SrvSource {
    pub name: String,
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
}

/// Turns SRV records into endpoints: lowest priority only, weight 0 counted as 1.
pub fn srv_endpoints(records: &[dns::Srv]) -> Vec<Endpoint> {
    let Some(best) = records.iter().map(|r| r.priority).min() else {
        return Vec::new();
    };
    records
        .iter()
        .filter(|r| r.priority == best)
        .map(|r| Endpoint {
            authority: format!("{}:{}", r.target, r.port),
            weight: u32::from(r.weight.max(1)),
            host: None,
        })
        .collect()
}

impl Discover for SrvSource {
    fn resolve(&self) -> Resolving<'_> {
        Box::pin(async move {
            let servers = if self.nameservers.is_empty() {
                dns::system_nameservers()
            } else {
                self.nameservers.clone()
            };
            let records = dns::lookup_srv(&self.name, &servers, self.timeout)
                .await
                .map_err(|e| DiscoveryError::Lookup {
                    name: self.name.clone(),
                    reason: e.to_string(),
                })?;
            let eps = srv_endpoints(&records);
            if eps.is_empty() {
                return Err(DiscoveryError::Empty(self.name.clone()));
            }
            Ok(eps)
        })
    }

    fn describe(&self) -> String {
        format!("srv {}", self.name)
    }
}

// === the loop ===

/// Resolves once; on a changed answer installs it in the live upstream. Returns whether
/// the endpoints changed.
pub async fn refresh_once(state: &UpstreamState, spec: &DiscoverySpec) -> bool {
    let limit = spec
        .refresh
        .clamp(Duration::from_secs(1), Duration::from_secs(10));
    let result = match tokio::time::timeout(limit, spec.source.resolve()).await {
        Ok(r) => r,
        Err(_) => Err(DiscoveryError::Lookup {
            name: spec.source.describe(),
            reason: format!("no answer within {limit:?}"),
        }),
    };
    let now = crate::observe::time::rfc3339_millis(std::time::SystemTime::now());
    match result {
        Ok(eps) => {
            let count = eps.len();
            let before = state.endpoints().unwrap_or_default();
            let changed = state.set_endpoints(eps);
            {
                let mut st = state.discovery.lock().unwrap_or_else(|e| e.into_inner());
                st.source = spec.source.describe();
                st.last_refresh = Some(now);
                st.last_error = None;
                st.endpoints = count;
            }
            if changed {
                let after = state.endpoints().unwrap_or_default();
                let added: Vec<&str> = after
                    .iter()
                    .filter(|e| !before.contains(e))
                    .map(|e| e.authority.as_str())
                    .collect();
                let removed: Vec<&str> = before
                    .iter()
                    .filter(|e| !after.contains(e))
                    .map(|e| e.authority.as_str())
                    .collect();
                tracing::info!(upstream = %state.name, source = %spec.source.describe(), ?added, ?removed, "discovered targets changed");
                if let Some(up) = state.live() {
                    up.install_endpoints(&after);
                }
            }
            changed
        }
        Err(e) => {
            tracing::warn!(upstream = %state.name, error = %e, "discovery failed; keeping the last known targets");
            let mut st = state.discovery.lock().unwrap_or_else(|e| e.into_inner());
            st.source = spec.source.describe();
            st.last_error = Some(format!("{now}: {e}"));
            false
        }
    }
}

/// The discovery loop of one upstream. Ends when the upstream is gone from the config or
/// no longer discovers.
pub async fn run(state: Arc<UpstreamState>) {
    let mut changes = state.changes();
    loop {
        let Some(up) = state.live() else { return };
        let Some(spec) = up.discovery.clone() else {
            return;
        };
        drop(up);
        refresh_once(&state, &spec).await;
        tokio::select! {
            _ = tokio::time::sleep(spec.refresh) => {}
            _ = changes.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, port: u16) -> dns::Srv {
        dns::Srv {
            priority,
            weight,
            port,
            target: "node.test".into(),
        }
    }

    #[test]
    fn srv_lowest_priority_only() {
        let eps = srv_endpoints(&[rec(20, 5, 1), rec(10, 0, 2), rec(10, 3, 3)]);
        assert_eq!(
            eps,
            vec![
                Endpoint {
                    authority: "node.test:2".into(),
                    weight: 1,
                    host: None
                },
                Endpoint {
                    authority: "node.test:3".into(),
                    weight: 3,
                    host: None
                },
            ]
        );
        assert!(srv_endpoints(&[]).is_empty());
    }

    #[tokio::test]
    async fn dns_localhost_ipv4() {
        let d = Dns {
            name: "localhost".into(),
            port: 8080,
            family: AddressFamily::Ipv4,
            host: "localhost:8080".into(),
        };
        let eps = d.resolve().await.unwrap();
        assert!(
            eps.iter().any(|e| e.authority == "127.0.0.1:8080"),
            "{eps:?}"
        );
        assert!(eps
            .iter()
            .all(|e| e.host.as_deref() == Some("localhost:8080")));
    }
}
