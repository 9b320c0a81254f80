//! Config → runtime: resolves names, builds the router, every route's policy chain and
//! backend, upstream pools and TLS configs into one immutable [`Gateway`].
//!
//! A reload compiles a whole new `Gateway` off the request path and swaps it in; nothing
//! here runs per request. Every semantic problem (unknown upstream, bad template, unreadable
//! certificate, ...) becomes a located [`Diagnostic`], and all of them are reported together.

use crate::backend::{Backend, DirectResponse, Rewrite};
use crate::config::load::FieldPath;
use crate::config::{
    AccessLogConfig, AccessLogFormat, Diagnostic, Diagnostics, Loaded, RouteConfig, SourceMap,
};
use crate::policy::{self, AnyPolicy, PolicyConfig};
use crate::router::{Predicates, RouteSpec, Router, ValueMatch};
use crate::upstream::{self, Pools, Upstream};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_BIND: &str = "0.0.0.0:8080";
pub const DEFAULT_MAX_BODY: u64 = 10 << 20;
pub const DEFAULT_MAX_HEADER: u64 = 32 << 10;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// A compiled listener.
pub struct ListenerRt {
    pub name: String,
    /// The `bind` text as written: listeners are matched across reloads by it.
    pub bind_key: String,
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub struct AdminRt {
    pub bind_key: String,
    pub addr: SocketAddr,
    pub token: Option<String>,
}

/// A compiled route.
pub struct Route {
    pub name: Arc<str>,
    pub backend: Backend,
    pub rewrite: Rewrite,
    pub chain: policy::Chain,
    pub max_body: u64,
    pub request_timeout: Option<Duration>,
    /// Overrides the upstream's per-try timeout (retries).
    pub per_try_timeout: Option<Duration>,
    pub preserve_host: bool,
    /// Headers the route looked at: a client's `Connection` list may not strip them.
    pub protected: Arc<[HeaderName]>,
    /// One line for `portcullis routes`.
    pub summary: String,
}

/// Settings read per request, precomputed.
pub struct Settings {
    pub request_id_header: HeaderName,
    pub trust_incoming_id: bool,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_header_size: u64,
    pub shutdown_grace: Duration,
    /// `Via` values for HTTP/1.1 and HTTP/2 requests; `None` = off.
    pub via: Option<(HeaderValue, HeaderValue)>,
    pub access_log: AccessLogConfig,
    /// `tracing.otlp`, compiled; `None` = no spans.
    pub tracing: Option<crate::observe::trace::TraceSettings>,
}

/// The immutable runtime built from one config file.
pub struct Gateway {
    pub listeners: Vec<ListenerRt>,
    pub admin: Option<AdminRt>,
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub settings: Settings,
    pub workers: Option<usize>,
    pub source: Arc<SourceMap>,
    /// Consumers and identity providers (`consumers:`, `auth:`).
    pub auth: Arc<crate::auth::Registry>,
    /// The `state:` section and the slot through which policies reach the store; the server
    /// binds it to its long-lived stores when it installs the snapshot.
    pub state: crate::state::Binding,
}

/// What compilation needs besides the config.
pub struct CompileEnv<'a> {
    /// Directory that relative paths (certificates) are taken from.
    pub base_dir: PathBuf,
    pub pools: &'a Pools,
}

impl CompileEnv<'_> {
    pub fn for_file<'a>(file: &Path, pools: &'a Pools) -> CompileEnv<'a> {
        CompileEnv {
            base_dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
            pools,
        }
    }
}

struct Diags<'a> {
    source: &'a SourceMap,
    list: Vec<Diagnostic>,
}

impl Diags<'_> {
    fn at(&mut self, path: &str, msg: impl Into<String>) {
        self.list
            .push(self.source.diag(&FieldPath::parse(path), msg));
    }
}

/// Parses `host:port` (IPv4, `[IPv6]`, or `localhost`).
pub fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(p) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
        }
    }
    Err(format!(
        "{s:?} is not an address; expected host:port like 0.0.0.0:8080 or [::]:8443"
    ))
}

pub fn compile(loaded: &Loaded, env: &CompileEnv<'_>) -> Result<Gateway, Diagnostics> {
    let cfg = &loaded.config;
    let mut d = Diags {
        source: &loaded.source,
        list: Vec::new(),
    };

    // --- listeners
    let mut listeners = Vec::new();
    let mut seen_binds = HashSet::new();
    if cfg.listeners.is_empty() {
        listeners.push(ListenerRt {
            name: "default".into(),
            bind_key: DEFAULT_BIND.into(),
            addr: parse_bind(DEFAULT_BIND).expect("valid default"),
            tls: None,
        });
    }
    for l in &cfg.listeners {
        let i = l.index;
        let addr = match parse_bind(&l.bind) {
            Ok(a) => a,
            Err(e) => {
                d.at(&format!("listeners[{i}].bind"), e);
                continue;
            }
        };
        if addr.port() != 0 && !seen_binds.insert(addr) {
            d.at(
                &format!("listeners[{i}].bind"),
                format!("{} is used by another listener", l.bind),
            );
        }
        let tls = match &l.tls {
            None => None,
            Some(t) => match crate::server::tls::server_config(t, &env.base_dir) {
                Ok(c) => Some(c),
                Err(errs) => {
                    for (field, msg) in errs {
                        let path = if field.is_empty() {
                            format!("listeners[{i}].tls")
                        } else {
                            format!("listeners[{i}].tls.{field}")
                        };
                        d.at(&path, msg);
                    }
                    None
                }
            },
        };
        // A listener is known across reloads by its address text (same text → same socket);
        // listeners that share an address text (several port-0 test listeners) also by name.
        let name = match &l.name {
            Some(n) => {
                if listeners.iter().any(|x: &ListenerRt| &x.name == n) {
                    d.at(
                        &format!("listeners[{i}].name"),
                        format!("listener name {n:?} is used twice"),
                    );
                }
                n.clone()
            }
            None if listeners.iter().any(|x| x.name == l.bind) => format!("{}#{i}", l.bind),
            None => l.bind.clone(),
        };
        let shared = cfg.listeners.iter().filter(|x| x.bind == l.bind).count() > 1;
        listeners.push(ListenerRt {
            bind_key: if shared {
                format!("{name}|{}", l.bind)
            } else {
                l.bind.clone()
            },
            name,
            addr,
            tls,
        });
    }

    // --- admin
    let admin = cfg.admin.as_ref().and_then(|a| match parse_bind(&a.bind) {
        Ok(addr) => {
            if !addr.ip().is_loopback() && a.token.as_deref().is_none_or(str::is_empty) {
                d.at(
                    "admin.token",
                    format!(
                        "admin.bind {} is not a loopback address, so a `token` is required",
                        a.bind
                    ),
                );
            }
            Some(AdminRt {
                bind_key: a.bind.clone(),
                addr,
                token: a.token.clone().filter(|t| !t.is_empty()),
            })
        }
        Err(e) => {
            d.at("admin.bind", e);
            None
        }
    });

    // --- defaults and server settings
    if cfg.defaults.timeouts.connect.is_some_and(|t| t.0.is_zero()) {
        d.at("defaults.timeouts.connect", "must be more than 0");
    }
    if cfg.defaults.timeouts.request.is_some_and(|t| t.0.is_zero()) {
        d.at("defaults.timeouts.request", "must be more than 0");
    }
    if cfg.defaults.timeouts.per_try.is_some_and(|t| t.0.is_zero()) {
        d.at("defaults.timeouts.per_try", "must be more than 0");
    }
    let up_defaults = upstream::Defaults {
        connect_timeout: cfg
            .defaults
            .timeouts
            .connect
            .map(|d| d.0)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        request_timeout: cfg
            .defaults
            .timeouts
            .request
            .map(|d| d.0)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
        per_try_timeout: cfg.defaults.timeouts.per_try.map(|d| d.0),
        base_dir: env.base_dir.clone(),
    };
    let default_max_body = cfg
        .defaults
        .max_body
        .map(|s| s.0)
        .unwrap_or(DEFAULT_MAX_BODY);
    let request_id_header = match cfg.server.request_id.header.as_deref() {
        None => HeaderName::from_static("x-request-id"),
        Some(h) => HeaderName::from_bytes(h.as_bytes()).unwrap_or_else(|_| {
            d.at(
                "server.request_id.header",
                format!("{h:?} is not a valid header name"),
            );
            HeaderName::from_static("x-request-id")
        }),
    };
    let via = match cfg.server.via.as_deref() {
        Some("") => None,
        other => {
            let pseudonym = other.unwrap_or("portcullis");
            if !pseudonym
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                d.at(
                    "server.via",
                    format!("{pseudonym:?}: expected a token (letters, digits, - . _)"),
                );
                None
            } else {
                Some((
                    HeaderValue::from_str(&format!("1.1 {pseudonym}")).expect("token"),
                    HeaderValue::from_str(&format!("2 {pseudonym}")).expect("token"),
                ))
            }
        }
    };
    let max_header_size = cfg
        .server
        .max_header_size
        .map(|s| s.0)
        .unwrap_or(DEFAULT_MAX_HEADER);
    if !(1024..=1 << 20).contains(&max_header_size) {
        d.at(
            "server.max_header_size",
            "expected a size between 1KiB and 1MiB",
        );
    }
    let settings = Settings {
        request_id_header,
        trust_incoming_id: cfg.server.request_id.trust_incoming,
        trusted_proxies: cfg.server.trusted_proxies.clone(),
        max_header_size,
        shutdown_grace: cfg
            .server
            .shutdown_grace
            .map(|d| d.0)
            .unwrap_or(DEFAULT_GRACE),
        via,
        access_log: cfg.access_log.clone(),
        tracing: crate::observe::trace::compile(&cfg.tracing, &mut |p, m| d.at(p, m)),
    };
    if cfg.access_log.fields.is_some() && cfg.access_log.format != AccessLogFormat::Json {
        d.at(
            "access_log.fields",
            "`fields` chooses the keys of `format: json`; the text format has a fixed layout",
        );
    }
    if let Some(w) = cfg.workers {
        if w == 0 || w > 1024 {
            d.at("workers", "expected a number of threads from 1 to 1024");
        }
    }

    // --- state (rate-limit counters)
    let state = crate::state::Binding::new(compile_state(&cfg.state, &mut d));
    // Consumers' own rate limits, by consumer name; filled from `consumers:` (identity) before
    // the routes are compiled, since each rate_limit policy takes what it needs from it.
    let mut consumer_limits = policy::rate_limit::ConsumerLimits::new();
    for c in &cfg.consumers {
        let limits: Vec<policy::rate_limit::ConsumerLimit> = c
            .limits
            .iter()
            .map(|l| policy::rate_limit::ConsumerLimit {
                requests: l.requests,
                per: l.per.0,
                algorithm: l.algorithm,
                burst: l.burst,
                name: l.name.clone(),
            })
            .collect();
        if let Err((field, msg)) = consumer_limits.insert(&c.name, &limits) {
            d.at(&format!("consumers[{}].limits{field}", c.index), msg);
        }
    }
    let consumer_limits = Arc::new(consumer_limits);

    // --- upstreams
    let mut upstreams = BTreeMap::new();
    for (name, u) in &cfg.upstreams {
        match upstream::build(name, u, &up_defaults, env.pools) {
            Ok(up) => {
                upstreams.insert(name.clone(), Arc::new(up));
            }
            Err(errs) => {
                for (field, msg) in errs {
                    d.at(&format!("upstreams.{name}.{field}"), msg);
                }
            }
        }
    }

    // --- consumers and identity providers
    let (auth, auth_errors) = crate::auth::compile(cfg, &loaded.source, &env.base_dir);
    for (path, msg) in auth_errors {
        d.at(&path, msg);
    }
    let auth = Arc::new(auth);

    // --- routes
    let mut routes = Vec::new();
    let mut specs = Vec::new();
    let mut names = HashSet::new();
    for r in &cfg.routes {
        let i = r.index;
        let name: Arc<str> = r
            .name
            .clone()
            .unwrap_or_else(|| format!("route-{i}"))
            .into();
        if !names.insert(name.clone()) {
            d.at(
                &format!("routes[{i}].name"),
                format!("route name {name:?} is used twice"),
            );
        }
        let traffic = (&state.slot, &consumer_limits);
        let Some((route, spec)) = compile_route(
            i,
            name,
            r,
            cfg,
            &upstreams,
            &auth,
            default_max_body,
            traffic,
            &mut d,
        ) else {
            continue;
        };
        specs.push(RouteSpec {
            route: routes.len(),
            ..spec
        });
        routes.push((i, route));
    }
    let router = match Router::build(&specs) {
        Ok(r) => Some(r),
        Err(errs) => {
            for (route_idx, e) in errs {
                let cfg_idx = routes.get(route_idx).map(|(i, _)| *i).unwrap_or(0);
                d.at(&format!("routes[{cfg_idx}].match.path"), e.to_string());
            }
            None
        }
    };

    if !d.list.is_empty() {
        d.list.sort_by_key(|x| (x.line, x.column));
        return Err(Diagnostics(d.list));
    }
    Ok(Gateway {
        listeners,
        admin,
        router: router.expect("no errors"),
        routes: routes.into_iter().map(|(_, r)| r).collect(),
        upstreams,
        settings,
        workers: cfg.workers,
        source: loaded.source.clone(),
        auth,
        state,
    })
}

/// `state:` → what the server binds: memory (default) or a checked Redis setting.
fn compile_state(
    s: &crate::config::traffic::StateConfig,
    d: &mut Diags<'_>,
) -> crate::state::StateSpec {
    use crate::config::traffic::StateBackend;
    use crate::state::{RedisSpec, StateSpec};
    match (s.backend, &s.redis) {
        (StateBackend::Memory, _) => StateSpec::Memory,
        (StateBackend::Redis, None) => {
            d.at(
                "state.redis",
                "`backend: redis` needs `redis: { url: redis://host:6379 }`",
            );
            StateSpec::Memory
        }
        (StateBackend::Redis, Some(r)) => {
            if let Err(e) = redis::Client::open(r.url.as_str()) {
                d.at(
                    "state.redis.url",
                    format!(
                        "{:?} is not a Redis URL ({e}); expected redis://host:6379",
                        r.url
                    ),
                );
            }
            let timeout = r
                .timeout
                .map(|t| t.0)
                .unwrap_or(crate::state::DEFAULT_REDIS_TIMEOUT);
            if timeout.is_zero() {
                d.at("state.redis.timeout", "must be more than 0");
            }
            StateSpec::Redis(RedisSpec {
                url: r.url.clone(),
                prefix: r
                    .prefix
                    .clone()
                    .unwrap_or_else(|| crate::state::DEFAULT_PREFIX.to_owned()),
                on_error: r.on_error,
                timeout,
            })
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn compile_route(
    i: usize,
    name: Arc<str>,
    r: &RouteConfig,
    cfg: &crate::config::Config,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    auth: &crate::auth::Registry,
    default_max_body: u64,
    traffic: (
        &crate::state::StateSlot,
        &Arc<policy::rate_limit::ConsumerLimits>,
    ),
    d: &mut Diags<'_>,
) -> Option<(Route, RouteSpec)> {
    let before = d.list.len();
    let p = format!("routes[{i}]");
    let m = &r.matcher;

    // Match
    let path = m.path.clone().unwrap_or_else(|| "/{*rest}".to_owned());
    let param_names = match crate::router::template_params(&path) {
        Ok(n) => n,
        Err(e) => {
            d.at(&format!("{p}.match.path"), e.to_string());
            Vec::new()
        }
    };
    let mut methods = Vec::new();
    for (j, s) in m.methods.iter().enumerate() {
        let upper = s.to_ascii_uppercase();
        match Method::from_bytes(upper.as_bytes()) {
            Ok(mm) if !methods.contains(&mm) => methods.push(mm),
            Ok(_) => {}
            Err(_) => d.at(
                &format!("{p}.match.methods[{j}]"),
                format!("{s:?} is not an HTTP method"),
            ),
        }
    }
    for (j, h) in m.hosts.iter().enumerate() {
        let body = h.strip_prefix("*.").unwrap_or(h);
        let ok = !body.is_empty()
            && !body.contains('*')
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
        if !ok {
            d.at(
                &format!("{p}.match.hosts[{j}]"),
                format!(
                    "{h:?}: expected a host name like api.example.com or *.example.com (no port)"
                ),
            );
        }
    }
    let mut headers = Vec::new();
    for (h, v) in &m.headers {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => headers.push((name, value_match(&v.0))),
            Err(_) => d.at(
                &format!("{p}.match.headers.{h}"),
                format!("{h:?} is not a valid header name"),
            ),
        }
    }
    let query = m
        .query
        .iter()
        .map(|(k, v)| (k.clone(), value_match(&v.0)))
        .collect::<Vec<_>>();

    // Backend
    let backend = match (&r.upstream, &r.respond) {
        _ if r.split.is_some() => {
            let split = r.split.as_ref().expect("checked");
            if r.upstream.is_some() || r.respond.is_some() {
                d.at(
                    &format!("{p}.split"),
                    "a route has one of `upstream`, `split` or `respond`",
                );
                None
            } else {
                // Every name written, also those that failed to decode (reported there).
                let written = d.source.keys_of(&FieldPath::parse("upstreams"));
                let defined: Vec<&str> = written.iter().map(String::as_str).collect();
                match crate::backend::split::Split::build(
                    split,
                    upstreams,
                    &defined,
                    &format!("{p}.split"),
                ) {
                    Ok(s) => Some(Backend::Split(Arc::new(s))),
                    Err(errs) => {
                        for (at, msg) in errs {
                            d.at(&at, msg);
                        }
                        None
                    }
                }
            }
        }
        (Some(_), Some(_)) => {
            d.at(
                &format!("{p}.respond"),
                "a route has either `upstream` or `respond`, not both",
            );
            None
        }
        (None, None) => {
            d.at(
                &p,
                "a route needs a backend: `upstream: NAME`, `split: [...]` or `respond: {status, json | body}`",
            );
            None
        }
        (Some(u), None) => match upstreams.get(u) {
            Some(up) => Some(Backend::Http(up.clone())),
            None => {
                let known: Vec<&str> = cfg.upstreams.keys().map(String::as_str).collect();
                let known = if known.is_empty() {
                    "none are defined".to_owned()
                } else {
                    format!("known: {}", known.join(", "))
                };
                // An upstream that failed to build is already reported at its own definition.
                if !cfg.upstreams.contains_key(u) {
                    d.at(
                        &format!("{p}.upstream"),
                        format!("unknown upstream {u:?}; {known}"),
                    );
                }
                None
            }
        },
        (None, Some(resp)) => match direct_response(resp) {
            Ok(dr) => Some(Backend::Respond(Arc::new(dr))),
            Err((field, msg)) => {
                d.at(&format!("{p}.respond{field}"), msg);
                None
            }
        },
    };

    // Rewrite
    let mut rewrite = Rewrite::default();
    if let Some(rw) = &r.rewrite {
        if let Some(s) = &rw.strip_prefix {
            if !s.starts_with('/') {
                d.at(&format!("{p}.rewrite.strip_prefix"), "must start with '/'");
            }
            rewrite.strip_prefix = Some(s.trim_end_matches('/').to_owned());
        }
        if let Some(s) = &rw.add_prefix {
            if !s.starts_with('/') {
                d.at(&format!("{p}.rewrite.add_prefix"), "must start with '/'");
            }
            rewrite.add_prefix = Some(s.trim_end_matches('/').to_owned());
        }
        if let Some(t) = &rw.path {
            match crate::backend::PathTemplate::parse(t, &param_names) {
                Ok(tpl) => rewrite.template = Some(tpl),
                Err(e) => d.at(&format!("{p}.rewrite.path"), e),
            }
        }
    }

    // Policies: the route's own list plus the lifecycle key, in phase order.
    let mut configs: Vec<(usize, PolicyConfig)> = r.policies.iter().cloned().enumerate().collect();
    if let Some(dep) = &r.deprecation {
        configs.push((usize::MAX, PolicyConfig::Deprecation(dep.clone())));
    }
    let mut chain: Vec<AnyPolicy> = Vec::new();
    let route_policies: Vec<PolicyConfig> = configs.iter().map(|(_, c)| c.clone()).collect();
    let benv = policy::BuildEnv {
        route: &name,
        params: &param_names,
        state: traffic.0,
        consumer_limits: traffic.1,
    };
    let bcx = policy::BuildCx {
        auth,
        route: &route_policies,
        env: &benv,
    };
    for (j, pc) in policy::in_phase_order(configs) {
        match pc.build(&bcx) {
            Ok(p) => chain.push(p),
            Err(policy::BuildError(errors)) => {
                let at = if j == usize::MAX {
                    format!("{p}.deprecation")
                } else {
                    format!("{p}.policies[{j}].{}", pc.key())
                };
                for (field, msg) in errors {
                    d.at(&format!("{at}{field}"), msg);
                }
            }
        }
    }

    if r.timeouts.connect.is_some() {
        d.at(
            &format!("{p}.timeouts.connect"),
            "connect timeouts belong to the upstream (upstreams.NAME.timeouts.connect) or defaults",
        );
    }
    if r.timeouts.request.is_some_and(|t| t.0.is_zero()) {
        d.at(&format!("{p}.timeouts.request"), "must be more than 0");
    }
    if r.timeouts.per_try.is_some_and(|t| t.0.is_zero()) {
        d.at(&format!("{p}.timeouts.per_try"), "must be more than 0");
    }

    if d.list.len() > before {
        return None;
    }
    let backend = backend?;
    let mut protected: Vec<HeaderName> = headers.iter().map(|(h, _)| h.clone()).collect();
    protected.extend([
        http::header::HOST,
        http::header::CONTENT_LENGTH,
        http::header::AUTHORIZATION,
    ]);
    // Credentials the gateway checks and identity headers it sets.
    protected.extend(auth.protected.iter().cloned());
    let summary = format!(
        "{name:<24} {hosts:<28} {methods:<14} {path:<32} -> {backend}{rewrite}",
        hosts = if m.hosts.is_empty() {
            "*".to_owned()
        } else {
            m.hosts.join(",")
        },
        methods = if methods.is_empty() {
            "*".to_owned()
        } else {
            methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(",")
        },
        backend = backend.describe(),
        rewrite = rewrite.describe(),
    );
    let summary = if headers.is_empty() && query.is_empty() {
        summary
    } else {
        let mut preds: Vec<String> = m
            .headers
            .iter()
            .map(|(k, v)| format!("header {k}={}", v.0.join("|")))
            .collect();
        preds.extend(
            m.query
                .iter()
                .map(|(k, v)| format!("query {k}={}", v.0.join("|"))),
        );
        format!("{summary}  [{}]", preds.join(", "))
    };
    // Conservative: any policy may key on a param.
    let capture = rewrite.template.is_some() || !chain.is_empty();
    Some((
        Route {
            name,
            backend,
            rewrite,
            chain: chain.into(),
            max_body: r.max_body.map(|s| s.0).unwrap_or(default_max_body),
            request_timeout: r.timeouts.request.map(|t| t.0),
            per_try_timeout: r.timeouts.per_try.map(|t| t.0),
            preserve_host: r.preserve_host,
            protected: protected.into(),
            summary,
        },
        RouteSpec {
            route: 0,
            hosts: m.hosts.clone(),
            path,
            predicates: Predicates {
                methods,
                headers,
                query,
            },
            capture,
        },
    ))
}

fn value_match(v: &[String]) -> ValueMatch {
    if v.iter().any(|s| s == "*") {
        ValueMatch::Any
    } else {
        ValueMatch::OneOf(v.to_vec())
    }
}

pub(crate) fn direct_response(
    r: &crate::config::RespondConfig,
) -> Result<DirectResponse, (String, String)> {
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| {
            (
                ".status".to_owned(),
                format!("{} is not a final HTTP status (200-999)", r.status),
            )
        })?;
    let (body, content_type) = match (&r.json, &r.body) {
        (Some(_), Some(_)) => {
            return Err((".body".into(), "give `json` or `body`, not both".into()))
        }
        (Some(j), None) => (
            serde_json::to_vec(j).map_err(|e| (".json".to_owned(), e.to_string()))?,
            Some("application/json"),
        ),
        (None, Some(b)) => (b.clone().into_bytes(), Some("text/plain; charset=utf-8")),
        (None, None) => (Vec::new(), None),
    };
    let mut headers = http::HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    for (k, v) in &r.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            (
                format!(".headers.{k}"),
                format!("{k:?} is not a valid header name"),
            )
        })?;
        let value = HeaderValue::from_str(v).map_err(|_| {
            (
                format!(".headers.{k}"),
                "not a valid header value".to_owned(),
            )
        })?;
        headers.insert(name, value);
    }
    Ok(DirectResponse {
        status,
        headers,
        body: body.into(),
    })
}

impl Gateway {
    /// The compiled route table, one line per route, for `portcullis routes`.
    pub fn route_table(&self) -> String {
        let mut out = format!(
            "{:<24} {:<28} {:<14} {:<32}    {}\n",
            "ROUTE", "HOSTS", "METHODS", "PATH", "BACKEND"
        );
        for r in &self.routes {
            out.push_str(&r.summary);
            out.push('\n');
        }
        out
    }
}

/// Loads and compiles a file in one step. Errors of both stages come together: a typo in
/// one route does not hide an unknown upstream in another.
pub fn load_and_compile(path: &Path, pools: &Pools) -> Result<Gateway, Diagnostics> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: name.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    load_and_compile_str(
        &name,
        &text,
        &|k| std::env::var(k).ok(),
        &CompileEnv::for_file(path, pools),
    )
}

/// [`load_and_compile`] for text in memory.
pub fn load_and_compile_str(
    name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    cenv: &CompileEnv<'_>,
) -> Result<Gateway, Diagnostics> {
    let (loaded, mut diags) = crate::config::load_str_partial(name, text, env);
    let Some(loaded) = loaded else {
        return Err(Diagnostics(diags));
    };
    match compile(&loaded, cenv) {
        Ok(gw) if diags.is_empty() => Ok(gw),
        Ok(_) => Err(Diagnostics(diags)),
        Err(Diagnostics(more)) => {
            diags.extend(more);
            diags.sort_by_key(|d| (d.line, d.column));
            diags.dedup();
            Err(Diagnostics(diags))
        }
    }
}
