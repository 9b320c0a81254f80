//! The policy seam: per-route request/response steps, built once from config and run per
//! request in one fixed phase order.
//!
//! A policy is a value built from its config at compile time ([`Build`]) that is then called
//! for every request ([`Policy`]). A policy that answers early returns [`Flow::Respond`]; the
//! short-circuit is a typed, `#[must_use]` value, never a bool. The [`policies!`] list below is
//! the one registry: list position is the phase order, and each entry expands into the config
//! enum ([`PolicyConfig`]) and the static-dispatch enum ([`AnyPolicy`]).
//!
//! Adding a policy = its own file + one line in the registry.

pub mod authenticate;
pub mod authorize;
pub mod concurrency_limit;
pub mod deprecation;
pub mod ip_filter;
pub mod rate_limit;

use crate::body::Body;
use crate::error::GatewayError;
use crate::router::Params;
use http::{HeaderValue, Request, Response};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What the pipeline and its policies learn about a request, for later policies, the backend
/// and the access log.
#[derive(Debug)]
pub struct Ctx {
    pub request_id: HeaderValue,
    pub client: SocketAddr,
    /// The connection came over TLS.
    pub tls: bool,
    pub started: Instant,
    /// Index of the matched route in the gateway snapshot.
    pub route: usize,
    pub route_name: Arc<str>,
    pub params: Params,
    /// The normalised request path (what routing saw and what is forwarded).
    pub path: String,
    /// `host:port` of the upstream target that served the request, for the access log.
    pub target: Option<Arc<str>>,
    /// Time from sending upstream until the response headers came back.
    pub upstream_latency: Option<std::time::Duration>,
    /// Who the caller is, once `authenticate` accepted them.
    pub identity: Option<crate::auth::Identity>,
    /// The client certificate the TLS handshake verified (mTLS listeners).
    pub client_cert: Option<Arc<crate::auth::mtls::ClientCert>>,
    /// The caller's consumer name, for `consumer` rate-limit keys and a consumer's own
    /// limits; set by `authenticate`. `None` = anonymous.
    pub consumer: Option<Arc<str>>,
    /// The verified API key's identity (never the key itself), for `api_key` rate-limit
    /// keys. Filled by authentication like `consumer`.
    pub api_key: Option<Arc<str>>,
    /// Traffic control's per-request state: rate-limit results for the response headers and
    /// in-flight permits held until the response body ends.
    pub traffic: rate_limit::Traffic,
    /// The request's trace context when tracing is on; upstream tries are its child spans.
    pub trace: Option<crate::observe::trace::RequestTrace>,
    /// The upstream response's fields when they stayed raw ([`crate::raw_head`]): set by
    /// the HTTP backend, handed to the connection with the response.
    pub raw_head: Option<Box<crate::raw_head::RawFields>>,
}

impl Ctx {
    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }
}

/// The outcome of a request policy.
#[must_use]
pub enum Flow {
    Continue,
    Respond(Response<Body>),
}

/// A request/response step. Policies are immutable after build; per-request state goes in
/// [`Ctx`], shared state (counters) in `state`.
pub trait Policy: Send + Sync + 'static {
    /// Runs before the backend, in registry order.
    fn on_request(
        &self,
        cx: &mut Ctx,
        req: &mut Request<Body>,
    ) -> impl Future<Output = Result<Flow, GatewayError>> + Send;

    /// Runs after the backend in reverse order, also for early answers of later policies.
    fn on_response(
        &self,
        _cx: &mut Ctx,
        _res: &mut Response<Body>,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send {
        async { Ok(()) }
    }
}

/// What a policy may look at while it is built, besides its own config.
pub struct BuildCx<'a> {
    /// Consumers and identity providers (`consumers:`, `auth:`).
    pub auth: &'a crate::auth::Registry,
    /// Every policy of the route (e.g. `authorize` needs an `authenticate`).
    pub route: &'a [PolicyConfig],
    /// The route's name, params and the long-lived state (rate limits).
    pub env: &'a BuildEnv<'a>,
}

/// Why a policy could not be built: messages, each at a field below the policy's config path
/// (`""` for the policy itself, `"[2]"`, `".allow[0]"`).
#[derive(Debug, Default)]
pub struct BuildError(pub Vec<(String, String)>);

impl BuildError {
    pub fn at(field: impl Into<String>, msg: impl Into<String>) -> BuildError {
        BuildError(vec![(field.into(), msg.into())])
    }
}

impl From<String> for BuildError {
    /// Messages made by [`field_error`] point at their field.
    fn from(msg: String) -> Self {
        match split_field_error(&msg) {
            (Some(field), m) => BuildError::at(format!(".{field}"), m),
            (None, m) => BuildError::at("", m),
        }
    }
}

impl From<&str> for BuildError {
    fn from(msg: &str) -> Self {
        BuildError::at("", msg)
    }
}

/// A `BuildCx` with nothing configured, for unit tests of policies.
#[cfg(test)]
pub fn test_cx<R>(f: impl FnOnce(&BuildCx<'_>) -> R) -> R {
    let auth = crate::auth::Registry::empty();
    let slot = crate::state::StateSlot::default();
    let consumer_limits = Arc::new(rate_limit::ConsumerLimits::new());
    let env = BuildEnv {
        route: "",
        params: &[],
        state: &slot,
        consumer_limits: &consumer_limits,
    };
    f(&BuildCx {
        auth: &auth,
        route: &[],
        env: &env,
    })
}

/// Building a policy from its config at compile time.
pub trait Build: Sized {
    type Config;
    fn build(cfg: &Self::Config, cx: &BuildCx<'_>) -> Result<Self, BuildError>;
}

/// What a policy may use besides its own config when it is built.
pub struct BuildEnv<'a> {
    /// The route's name (rate-limit counters are scoped by route).
    pub route: &'a str,
    /// The route's path parameter names (for `param:NAME` keys).
    pub params: &'a [Box<str>],
    /// The slot through which the snapshot's policies reach the long-lived state store.
    pub state: &'a crate::state::StateSlot,
    /// Consumers' own rate limits, by consumer name.
    pub consumer_limits: &'a Arc<rate_limit::ConsumerLimits>,
}

/// A build error about one field inside the policy's config (`per`, `limits[1].burst`), so
/// that the diagnostic points at that field rather than at the policy.
pub fn field_error(field: &str, msg: impl std::fmt::Display) -> String {
    format!("\u{1}{field}\u{1}{msg}")
}

/// Splits what [`field_error`] made into (field, message); other errors have no field.
pub fn split_field_error(e: &str) -> (Option<&str>, &str) {
    match e.strip_prefix('\u{1}').and_then(|r| r.split_once('\u{1}')) {
        Some((field, msg)) => (Some(field), msg),
        None => (None, e),
    }
}

/// The registry: `Variant = "yaml_key" => module::Type`. Order = phase order.
macro_rules! policies {
    ($($variant:ident = $key:literal => $ty:ty),* $(,)?) => {
        /// One entry of a route's `policies:` list.
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub enum PolicyConfig {
            $( #[serde(rename = $key)] $variant(<$ty as Build>::Config), )*
        }

        /// A built policy (static dispatch).
        pub enum AnyPolicy {
            $( $variant($ty), )*
        }

        /// Phase order, as YAML keys.
        pub const ORDER: &[&str] = &[$($key),*];

        impl PolicyConfig {
            pub fn key(&self) -> &'static str {
                match self { $( PolicyConfig::$variant(_) => $key, )* }
            }
            fn phase(&self) -> usize {
                ORDER.iter().position(|k| *k == self.key()).unwrap_or(usize::MAX)
            }
            pub fn build(&self, cx: &BuildCx<'_>) -> Result<AnyPolicy, BuildError> {
                match self { $( PolicyConfig::$variant(c) => Ok(AnyPolicy::$variant(<$ty as Build>::build(c, cx)?)), )* }
            }
        }

        impl AnyPolicy {
            pub async fn on_request(&self, cx: &mut Ctx, req: &mut Request<Body>) -> Result<Flow, GatewayError> {
                match self { $( AnyPolicy::$variant(p) => p.on_request(cx, req).await, )* }
            }
            pub async fn on_response(&self, cx: &mut Ctx, res: &mut Response<Body>) -> Result<(), GatewayError> {
                match self { $( AnyPolicy::$variant(p) => p.on_response(cx, res).await, )* }
            }
        }
    };
}

policies! {
    // Address filtering first: a refused network gets a 403 and nothing else, not even the
    // lifecycle headers, and it costs the least.
    IpFilter = "ip_filter" => ip_filter::IpFilter,
    // Lifecycle next: a retired API answers 410 to everyone before any credential check
    // spends work (argon2, JWKS fetches, introspection calls) on it; 401s of a deprecated
    // route still carry its Deprecation/Sunset headers.
    Deprecation = "deprecation" => deprecation::Deprecation,
    // Who is calling, then what they may do.
    Authenticate = "authenticate" => authenticate::Authenticate,
    Authorize = "authorize" => authorize::Authorize,
    // Traffic control after identity (authentication/authorization go before this line), so
    // that `consumer` keys see the caller; rate limits before concurrency limits, so that a
    // refused request never takes an in-flight slot.
    RateLimit = "rate_limit" => rate_limit::RateLimit,
    ConcurrencyLimit = "concurrency_limit" => concurrency_limit::ConcurrencyLimit,
}

/// Sorts a route's policy configs into phase order (stable: same-kind entries keep file order).
pub fn in_phase_order(mut list: Vec<(usize, PolicyConfig)>) -> Vec<(usize, PolicyConfig)> {
    list.sort_by_key(|(_, p)| p.phase());
    list
}

/// A route's ready-made chain.
pub type Chain = Arc<[AnyPolicy]>;

/// Runs the request side of a chain. Returns how many policies ran (the response side runs
/// for exactly those, in reverse) and the early answer if one came.
pub async fn run_request(
    chain: &[AnyPolicy],
    cx: &mut Ctx,
    req: &mut Request<Body>,
) -> (usize, Result<Option<Response<Body>>, GatewayError>) {
    for (i, p) in chain.iter().enumerate() {
        match p.on_request(cx, req).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Respond(res)) => return (i + 1, Ok(Some(res))),
            Err(e) => return (i + 1, Err(e)),
        }
    }
    (chain.len(), Ok(None))
}

/// Runs the response side for the first `ran` policies, last first.
pub async fn run_response(
    chain: &[AnyPolicy],
    ran: usize,
    cx: &mut Ctx,
    res: &mut Response<Body>,
) -> Result<(), GatewayError> {
    for p in chain[..ran].iter().rev() {
        p.on_response(cx, res).await?;
    }
    Ok(())
}
