//! The router: host → path radix tree (matchit) → method, header and query predicates.
//!
//! Built once per config snapshot; a lookup allocates only for captured params.
//!
//! Precedence, most specific first:
//! 1. host: an exact host, then wildcard hosts (`*.example.com`, longest suffix first), then
//!    routes without `hosts`;
//! 2. path, inside one host table: static segments beat `{param}` beat `{*rest}` (matchit's
//!    rules); a more specific template whose routes all fail their predicates falls back to
//!    the next template that matches the path;
//! 3. among routes with the same template: more header/query predicates first, then routes
//!    that list methods, then file order.
//!
//! When some route matched everything but the method, the answer is 405 with `Allow`.
//! `/files/{*rest}` also matches `/files` and `/files/` with an empty `rest`.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// What a route asks of a request besides host and path.
#[derive(Debug, Clone, Default)]
pub struct Predicates {
    /// Empty = any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

/// Accepted values of a header or query parameter; `Any` = present with any value.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Any,
    OneOf(Vec<String>),
}

impl ValueMatch {
    fn accepts(&self, v: &str) -> bool {
        match self {
            ValueMatch::Any => true,
            ValueMatch::OneOf(list) => list.iter().any(|x| x == v),
        }
    }
}

/// A route as the router sees it.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Index into the gateway's route list.
    pub route: usize,
    /// Empty = any host.
    pub hosts: Vec<String>,
    pub path: String,
    pub predicates: Predicates,
    /// Whether anything reads the captured params (a rewrite template, a policy key);
    /// when nothing does, a match copies none of them.
    pub capture: bool,
}

/// Captured path params of a match, in template order.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub names: Arc<[Box<str>]>,
    pub values: Vec<String>,
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.names
            .iter()
            .position(|n| &**n == name)
            .and_then(|i| self.values.get(i).map(String::as_str))
    }
}

#[derive(Debug)]
pub enum Match {
    Found { route: usize, params: Params },
    MethodNotAllowed { allow: HeaderValue },
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{0}")]
    Template(String),
    #[error("path template conflicts with another route's: {0}")]
    Conflict(String),
}

#[derive(Debug)]
struct Candidate {
    route: usize,
    names: Arc<[Box<str>]>,
    capture: bool,
    /// Matched through the implicit `/prefix` entry of a `/prefix/{*rest}` template.
    implicit: bool,
    predicates: Predicates,
    order: usize,
}

#[derive(Debug, Default)]
struct HostTable {
    /// matchit refuses some overlapping shapes in one tree (`/u/{id}` next to `/u/{*rest}`),
    /// so a pattern goes into the first tree that takes it; lookups ask each tree.
    trees: Vec<matchit::Router<usize>>,
    nodes: Vec<Vec<Candidate>>,
    /// Per node: (static characters, has a catch-all, params); more static first.
    rank: Vec<(usize, bool, usize)>,
    by_pattern: HashMap<String, usize>,
    /// One single-pattern tree per node, most specific first, for falling back when the
    /// best template's routes all fail their predicates.
    fallbacks: Vec<(matchit::Router<usize>, usize)>,
}

/// The compiled routing table.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, HostTable>,
    /// (suffix including the leading dot, table), longest suffix first.
    wildcard: Vec<(String, HostTable)>,
    any: Option<HostTable>,
}

/// A template split into canonical form (`{p0}`, `{*p1}`) and its param names.
struct Template {
    canonical: String,
    names: Vec<Box<str>>,
    /// For `/a/{*rest}`: `/a` and `/a/`.
    implicit: Vec<String>,
    static_len: usize,
    catch_all: bool,
}

fn parse_template(t: &str) -> Result<Template, RouterError> {
    if !t.starts_with('/') {
        return Err(RouterError::Template(format!(
            "path template {t:?} must start with '/'"
        )));
    }
    let mut canonical = String::with_capacity(t.len());
    let mut names: Vec<Box<str>> = Vec::new();
    let mut static_len = 0;
    let mut catch_all_at = None;
    let mut chars = t.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                canonical.push_str("{{");
                static_len += 1;
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                canonical.push_str("}}");
                static_len += 1;
            }
            '{' => {
                let end = t[i..].find('}').ok_or_else(|| {
                    RouterError::Template(format!("unclosed '{{' in path template {t:?}"))
                })?;
                let inner = &t[i + 1..i + end];
                let (star, name) = match inner.strip_prefix('*') {
                    Some(n) => (true, n),
                    None => (false, inner),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(RouterError::Template(format!(
                        "bad param name {inner:?} in {t:?}; expected {{name}} or {{*name}} with letters, digits and _"
                    )));
                }
                if names.iter().any(|n| &**n == name) {
                    return Err(RouterError::Template(format!(
                        "param {name:?} appears twice in {t:?}"
                    )));
                }
                if star {
                    if i + end + 1 != t.len() {
                        return Err(RouterError::Template(format!(
                            "catch-all {{*{name}}} must end the path template {t:?}"
                        )));
                    }
                    catch_all_at = Some(canonical.len());
                    canonical.push_str(&format!("{{*p{}}}", names.len()));
                } else {
                    canonical.push_str(&format!("{{p{}}}", names.len()));
                }
                names.push(name.into());
                for _ in 0..end {
                    chars.next();
                }
            }
            '}' => {
                return Err(RouterError::Template(format!(
                    "unmatched '}}' in path template {t:?}"
                )))
            }
            c => {
                canonical.push(c);
                static_len += 1;
            }
        }
    }
    let mut implicit = Vec::new();
    if let Some(at) = catch_all_at {
        let prefix = &canonical[..at];
        if let Some(without_slash) = prefix.strip_suffix('/') {
            implicit.push(prefix.to_owned());
            if !without_slash.is_empty() {
                implicit.push(without_slash.to_owned());
            }
        }
    }
    Ok(Template {
        canonical,
        names,
        implicit,
        static_len,
        catch_all: catch_all_at.is_some(),
    })
}

impl HostTable {
    fn add(
        &mut self,
        pattern: &str,
        cand: Candidate,
        rank: (usize, bool, usize),
    ) -> Result<(), RouterError> {
        let node = match self.by_pattern.get(pattern) {
            Some(&n) => n,
            None => {
                let n = self.nodes.len();
                let mut single = matchit::Router::new();
                single
                    .insert(pattern, n)
                    .map_err(|e| RouterError::Template(e.to_string()))?;
                if !self.trees.iter_mut().any(|t| t.insert(pattern, n).is_ok()) {
                    let mut t = matchit::Router::new();
                    t.insert(pattern, n)
                        .map_err(|e| RouterError::Conflict(e.to_string()))?;
                    self.trees.push(t);
                }
                self.fallbacks.push((single, n));
                self.rank.push(rank);
                self.nodes.push(Vec::new());
                self.by_pattern.insert(pattern.to_owned(), n);
                n
            }
        };
        self.nodes[node].push(cand);
        Ok(())
    }

    fn rank_key(&self, node: usize) -> (std::cmp::Reverse<usize>, bool, usize) {
        let (s, c, p) = self.rank[node];
        (std::cmp::Reverse(s), c, p)
    }

    fn finish(&mut self) {
        for cands in &mut self.nodes {
            cands.sort_by_key(|c| {
                (
                    c.implicit,
                    std::cmp::Reverse(c.predicates.headers.len() + c.predicates.query.len()),
                    c.predicates.methods.is_empty(),
                    c.order,
                )
            });
        }
        let mut fallbacks = std::mem::take(&mut self.fallbacks);
        fallbacks.sort_by_key(|(_, n)| self.rank_key(*n));
        self.fallbacks = fallbacks;
    }
}

/// The parts of a request the router looks at.
pub struct RequestView<'a> {
    pub host: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
}

impl Router {
    /// Builds the table. Errors name the route index they belong to.
    pub fn build(specs: &[RouteSpec]) -> Result<Router, Vec<(usize, RouterError)>> {
        let mut router = Router::default();
        let mut errors = Vec::new();
        for (order, spec) in specs.iter().enumerate() {
            let tpl = match parse_template(&spec.path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push((spec.route, e));
                    continue;
                }
            };
            let names: Arc<[Box<str>]> = tpl.names.into();
            let host_keys: Vec<Option<String>> = if spec.hosts.is_empty() {
                vec![None]
            } else {
                spec.hosts
                    .iter()
                    .map(|h| Some(h.to_ascii_lowercase()))
                    .collect()
            };
            for host in host_keys {
                let key = host.clone().unwrap_or_default();
                let table = match &host {
                    None => router.any.get_or_insert_with(HostTable::default),
                    Some(h) if h.starts_with("*.") => {
                        let suffix = h[1..].to_owned();
                        match router.wildcard.iter().position(|(s, _)| *s == suffix) {
                            Some(i) => &mut router.wildcard[i].1,
                            None => {
                                router.wildcard.push((suffix, HostTable::default()));
                                &mut router.wildcard.last_mut().expect("pushed").1
                            }
                        }
                    }
                    Some(h) => router.exact.entry(h.clone()).or_default(),
                };
                let _ = key;
                let rank = (tpl.static_len, tpl.catch_all, names.len());
                let mut patterns = vec![(tpl.canonical.clone(), false)];
                patterns.extend(tpl.implicit.iter().map(|p| (p.clone(), true)));
                for (pattern, implicit) in patterns {
                    let cand = Candidate {
                        route: spec.route,
                        names: names.clone(),
                        capture: spec.capture,
                        implicit,
                        predicates: spec.predicates.clone(),
                        order,
                    };
                    if let Err(e) = table.add(&pattern, cand, rank) {
                        if !implicit {
                            errors.push((spec.route, e));
                        }
                    }
                }
            }
        }
        router
            .wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        for table in router.exact.values_mut() {
            table.finish();
        }
        for (_, table) in router.wildcard.iter_mut() {
            table.finish();
        }
        if let Some(t) = router.any.as_mut() {
            t.finish();
        }
        if errors.is_empty() {
            Ok(router)
        } else {
            Err(errors)
        }
    }

    /// Finds the route for a request. `host` must be lower-case without a port.
    pub fn find(&self, req: &RequestView<'_>) -> Match {
        let mut allow: BTreeSet<&str> = BTreeSet::new();
        let wildcard = self
            .wildcard
            .iter()
            .filter(|(suffix, _)| {
                req.host.len() > suffix.len() && req.host.ends_with(suffix.as_str())
            })
            .map(|(_, t)| t);
        let tables = self
            .exact
            .get(req.host)
            .into_iter()
            .chain(wildcard)
            .chain(self.any.as_ref());
        let mut query_pairs: Option<Vec<(String, String)>> = None;
        for table in tables {
            if let Some(found) = table.find(req, &mut allow, &mut query_pairs) {
                return found;
            }
        }
        if allow.is_empty() {
            Match::NotFound
        } else {
            let list = allow.into_iter().collect::<Vec<_>>().join(", ");
            Match::MethodNotAllowed {
                allow: HeaderValue::from_str(&list).unwrap_or(HeaderValue::from_static("")),
            }
        }
    }
}

impl HostTable {
    fn find<'r>(
        &'r self,
        req: &RequestView<'_>,
        allow: &mut BTreeSet<&'r str>,
        query_pairs: &mut Option<Vec<(String, String)>>,
    ) -> Option<Match> {
        // Fast path: the most specific template any tree matches.
        let first = self
            .trees
            .iter()
            .filter_map(|t| t.at(req.path).ok())
            .min_by_key(|m| self.rank_key(*m.value));
        let tried = first.as_ref().map(|m| *m.value);
        if let Some(m) = first {
            if let Some(found) = self.pick(*m.value, &m.params, req, allow, query_pairs) {
                return Some(found);
            }
        }
        // The best template did not take the request: try the broader ones.
        for (single, node) in &self.fallbacks {
            if Some(*node) == tried {
                continue;
            }
            if let Ok(m) = single.at(req.path) {
                if let Some(found) = self.pick(*node, &m.params, req, allow, query_pairs) {
                    return Some(found);
                }
            }
        }
        None
    }

    fn pick<'r>(
        &'r self,
        node: usize,
        params: &matchit::Params<'_, '_>,
        req: &RequestView<'_>,
        allow: &mut BTreeSet<&'r str>,
        query_pairs: &mut Option<Vec<(String, String)>>,
    ) -> Option<Match> {
        for cand in &self.nodes[node] {
            if !predicates_match(&cand.predicates, req, query_pairs) {
                continue;
            }
            let m = &cand.predicates.methods;
            if !m.is_empty() && !m.contains(req.method) {
                allow.extend(m.iter().map(Method::as_str));
                continue;
            }
            let values = if cand.capture {
                let mut values: Vec<String> = params.iter().map(|(_, v)| v.to_owned()).collect();
                values.resize(cand.names.len(), String::new());
                values
            } else {
                Vec::new()
            };
            return Some(Match::Found {
                route: cand.route,
                params: Params {
                    names: cand.names.clone(),
                    values,
                },
            });
        }
        None
    }
}

fn predicates_match(
    p: &Predicates,
    req: &RequestView<'_>,
    query_pairs: &mut Option<Vec<(String, String)>>,
) -> bool {
    for (name, want) in &p.headers {
        let ok = req
            .headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| want.accepts(v)));
        if !ok {
            return false;
        }
    }
    if !p.query.is_empty() {
        let pairs = query_pairs.get_or_insert_with(|| {
            form_urlencoded::parse(req.query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        });
        for (name, want) in &p.query {
            if !pairs.iter().any(|(k, v)| k == name && want.accepts(v)) {
                return false;
            }
        }
    }
    true
}

/// Checks a path template without building a router (for `validate`).
pub fn template_params(t: &str) -> Result<Vec<Box<str>>, RouterError> {
    parse_template(t).map(|t| t.names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(route: usize, hosts: &[&str], path: &str, methods: &[&str]) -> RouteSpec {
        RouteSpec {
            route,
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path: path.into(),
            predicates: Predicates {
                methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
                ..Default::default()
            },
            capture: true,
        }
    }

    fn find(r: &Router, host: &str, method: &str, path: &str) -> Match {
        let headers = HeaderMap::new();
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        r.find(&RequestView {
            host,
            method: &method.parse().unwrap(),
            path,
            headers: &headers,
            query,
        })
    }

    fn route_of(m: Match) -> Option<usize> {
        match m {
            Match::Found { route, .. } => Some(route),
            _ => None,
        }
    }

    #[test]
    fn static_beats_param_beats_catch_all() {
        let r = Router::build(&[
            spec(0, &[], "/users/{*rest}", &[]),
            spec(1, &[], "/users/{id}", &[]),
            spec(2, &[], "/users/me", &[]),
        ])
        .unwrap();
        assert_eq!(route_of(find(&r, "h", "GET", "/users/me")), Some(2));
        assert_eq!(route_of(find(&r, "h", "GET", "/users/7")), Some(1));
        assert_eq!(route_of(find(&r, "h", "GET", "/users/7/orders")), Some(0));
        assert_eq!(route_of(find(&r, "h", "GET", "/users")), Some(0));
        assert_eq!(route_of(find(&r, "h", "GET", "/users/")), Some(0));
        assert!(matches!(find(&r, "h", "GET", "/other"), Match::NotFound));
    }

    #[test]
    fn params_are_captured_by_route_names() {
        let r = Router::build(&[
            spec(0, &[], "/t/{tenant}/files/{*path}", &[]),
            spec(1, &[], "/u/{x}", &[]),
        ])
        .unwrap();
        match find(&r, "h", "GET", "/t/acme/files/a/b.txt") {
            Match::Found { params, .. } => {
                assert_eq!(params.get("tenant"), Some("acme"));
                assert_eq!(params.get("path"), Some("a/b.txt"));
            }
            m => panic!("{m:?}"),
        }
        match find(&r, "h", "GET", "/t/acme/files") {
            Match::Found { params, .. } => assert_eq!(params.get("path"), Some("")),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn same_template_different_param_names() {
        let r = Router::build(&[
            spec(0, &[], "/items/{id}", &["GET"]),
            spec(1, &[], "/items/{item}", &["DELETE"]),
        ])
        .unwrap();
        match find(&r, "h", "DELETE", "/items/9") {
            Match::Found { route, params } => {
                assert_eq!(route, 1);
                assert_eq!(params.get("item"), Some("9"));
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn method_mismatch_is_405_with_allow() {
        let r = Router::build(&[
            spec(0, &[], "/a", &["GET", "POST"]),
            spec(1, &[], "/a", &["PUT"]),
        ])
        .unwrap();
        match find(&r, "h", "DELETE", "/a") {
            Match::MethodNotAllowed { allow } => assert_eq!(allow, "GET, POST, PUT"),
            m => panic!("{m:?}"),
        }
        assert_eq!(route_of(find(&r, "h", "PUT", "/a")), Some(1));
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        let r = Router::build(&[
            spec(0, &[], "/x", &[]),
            spec(1, &["*.example.com"], "/x", &[]),
            spec(2, &["api.example.com"], "/x", &[]),
            spec(3, &["*.eu.example.com"], "/x", &[]),
        ])
        .unwrap();
        assert_eq!(route_of(find(&r, "api.example.com", "GET", "/x")), Some(2));
        assert_eq!(route_of(find(&r, "www.example.com", "GET", "/x")), Some(1));
        assert_eq!(route_of(find(&r, "a.eu.example.com", "GET", "/x")), Some(3));
        assert_eq!(route_of(find(&r, "example.com", "GET", "/x")), Some(0));
        assert_eq!(route_of(find(&r, "other.org", "GET", "/x")), Some(0));
    }

    #[test]
    fn host_route_falls_back_to_any_host_on_method() {
        let r = Router::build(&[
            spec(0, &["a.com"], "/x", &["POST"]),
            spec(1, &[], "/x", &["GET"]),
        ])
        .unwrap();
        assert_eq!(route_of(find(&r, "a.com", "GET", "/x")), Some(1));
        assert_eq!(route_of(find(&r, "a.com", "POST", "/x")), Some(0));
    }

    #[test]
    fn header_and_query_predicates() {
        let mut v2 = spec(0, &[], "/api/{*rest}", &[]);
        v2.predicates.headers = vec![(
            HeaderName::from_static("accept-version"),
            ValueMatch::OneOf(vec!["v2".into()]),
        )];
        let mut beta = spec(1, &[], "/api/{*rest}", &[]);
        beta.predicates.query = vec![("beta".into(), ValueMatch::Any)];
        let plain = spec(2, &[], "/api/{*rest}", &[]);
        let r = Router::build(&[plain, v2, beta]).unwrap();
        let mut h = HeaderMap::new();
        h.insert("accept-version", "v2".parse().unwrap());
        let view = |headers: &HeaderMap, q: Option<&'static str>| {
            let m = Method::GET;
            match r.find(&RequestView {
                host: "h",
                method: &m,
                path: "/api/x",
                headers,
                query: q,
            }) {
                Match::Found { route, .. } => route,
                m => panic!("{m:?}"),
            }
        };
        assert_eq!(view(&h, None), 1 - 1);
        assert_eq!(view(&HeaderMap::new(), Some("beta=1")), 1);
        assert_eq!(view(&HeaderMap::new(), Some("a=b")), 2);
    }

    #[test]
    fn specific_template_failing_predicates_falls_back() {
        let mut special = spec(0, &[], "/users/{id}", &[]);
        special.predicates.headers = vec![(HeaderName::from_static("x-beta"), ValueMatch::Any)];
        let r = Router::build(&[special, spec(1, &[], "/{*rest}", &[])]).unwrap();
        assert_eq!(route_of(find(&r, "h", "GET", "/users/1")), Some(1));
    }

    #[test]
    fn bad_templates_are_errors() {
        for t in [
            "users",
            "/a/{",
            "/a/{*x}/b",
            "/a/{x}/{x}",
            "/a/{bad-name}",
            "/a}",
        ] {
            assert!(Router::build(&[spec(0, &[], t, &[])]).is_err(), "{t}");
        }
    }
}
