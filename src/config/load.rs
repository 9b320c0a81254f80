//! Loading a config file: YAML → located node tree → `${VAR}` interpolation → typed [`Config`].
//!
//! serde stops at the first error of a value, but users want every mistake of a file at once.
//! So the file is first read into a [`Node`] tree that remembers the line and column of every
//! value and key, and then each list item and map entry of each section is decoded on its own:
//! a typo in `routes[0]` and a bad duration in `routes[3]` are both reported. Every error,
//! here or later in [`crate::compile`], becomes a [`Diagnostic`] with file, line, column, the
//! field path (`routes[2].upstream`) and what was expected.

use super::{
    AccessLogConfig, AdminConfig, AuthConfig, Config, ConsumerConfig, Defaults, ListenerConfig,
    RouteConfig, ServerConfig, TracingConfig, UpstreamConfig, Workers,
};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// Field path such as `routes[2].upstream`; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one file, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} error{} in config:", if n == 1 { "" } else { "s" })?;
        for d in &self.0 {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

/// A position in the file, 1-based.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loc {
    pub line: u64,
    pub column: u64,
}

impl From<serde_saphyr::Location> for Loc {
    fn from(l: serde_saphyr::Location) -> Self {
        Loc {
            line: l.line(),
            column: l.column(),
        }
    }
}

/// A YAML value with its location.
#[derive(Debug, Clone)]
pub struct Node {
    pub loc: Loc,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order: key, key location, value.
    Map(Vec<(String, Loc, Node)>),
}

/// A field path inside the file: keys and list indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl FieldPath {
    pub fn key(&self, k: impl Into<String>) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.into()));
        p
    }
    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    pub fn parse(s: &str) -> FieldPath {
        // Only used for paths we write ourselves (`routes[2].match.path`).
        let mut out = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(b) = rest.find('[') {
                if b > 0 {
                    out.push(Seg::Key(rest[..b].to_owned()));
                }
                rest = &rest[b..];
                while let Some(stripped) = rest.strip_prefix('[') {
                    let end = stripped.find(']').unwrap_or(stripped.len());
                    if let Ok(i) = stripped[..end].parse() {
                        out.push(Seg::Index(i));
                    }
                    rest = stripped.get(end + 1..).unwrap_or("");
                }
            } else {
                out.push(Seg::Key(rest.to_owned()));
            }
        }
        FieldPath(out)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The located tree of a loaded file, kept so that later stages can point at the spot.
#[derive(Debug, Clone)]
pub struct SourceMap {
    pub file: String,
    pub root: Option<Node>,
    /// The whole document as JSON after `${VAR}` interpolation: what actually runs. The admin
    /// API shows it with secrets redacted (`admin::redact`); nothing else reads it.
    pub effective: Option<Value>,
}

impl SourceMap {
    /// A diagnostic at `path`: the deepest node of the path that exists gives the location.
    pub fn diag(&self, path: &FieldPath, message: impl Into<String>) -> Diagnostic {
        let loc = self.locate(path, false);
        Diagnostic {
            file: self.file.clone(),
            line: loc.line,
            column: loc.column,
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// The keys of the mapping at `path` (e.g. every upstream name written, including ones
    /// that failed to decode).
    pub fn keys_of(&self, path: &FieldPath) -> Vec<String> {
        let mut node = match self.root.as_ref() {
            Some(n) => n,
            None => return Vec::new(),
        };
        for seg in &path.0 {
            let next = match (seg, &node.kind) {
                (Seg::Index(i), Kind::Seq(items)) => items.get(*i),
                (Seg::Key(k), Kind::Map(entries)) => {
                    entries.iter().find(|(n, _, _)| n == k).map(|(_, _, v)| v)
                }
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return Vec::new(),
            }
        }
        match &node.kind {
            Kind::Map(entries) => entries.iter().map(|(k, _, _)| k.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// Location of `path`; with `key` the location of the last map key instead of its value.
    pub fn locate(&self, path: &FieldPath, key: bool) -> Loc {
        let Some(mut node) = self.root.as_ref() else {
            return Loc { line: 1, column: 1 };
        };
        let mut loc = node.loc;
        let last = path.0.len().saturating_sub(1);
        for (i, seg) in path.0.iter().enumerate() {
            let next = match (seg, &node.kind) {
                (Seg::Index(n), Kind::Seq(items)) => items.get(*n).map(|n| (n, n.loc)),
                (Seg::Key(k), Kind::Map(entries)) => entries
                    .iter()
                    .find(|(name, _, _)| name == k)
                    .map(|(_, kl, v)| (v, if key && i == last { *kl } else { v.loc })),
                _ => None,
            };
            match next {
                Some((n, l)) => {
                    node = n;
                    loc = l;
                }
                None => break,
            }
        }
        loc
    }
}

/// A parsed, typed config together with its source map.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: Arc<SourceMap>,
}

/// Reads and decodes a file. Every problem of the file is in the error.
pub fn load_file(path: &std::path::Path) -> Result<Loaded, Diagnostics> {
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
    load_str(&name, &text, &|k| std::env::var(k).ok())
}

/// Decodes config text; `env` answers `${VAR}` look-ups (the process environment in production).
pub fn load_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Diagnostics> {
    match load_str_partial(file, text, env) {
        (Some(l), d) if d.is_empty() => Ok(l),
        (_, d) => Err(Diagnostics(d)),
    }
}

/// Like [`load_str`], but also returns what did decode, so that later stages can report their
/// own errors about the rest of the file in the same run. Items that failed to decode are
/// left out of the config; their errors are in the list.
pub fn load_str_partial(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<Loaded>, Vec<Diagnostic>) {
    let mut source = SourceMap {
        file: file.to_owned(),
        root: None,
        effective: None,
    };
    // YAML 1.2 booleans only: with YAML 1.1's, the key `on:` (retries) and values such as
    // `format: off` or a country code `NO` would silently become booleans.
    let options = serde_saphyr::options! { strict_booleans: true };
    let root = match serde_saphyr::from_str_with_options::<SNode>(text, options) {
        Ok(SNode(n)) => n,
        Err(e) => {
            let loc = e
                .location()
                .map(Loc::from)
                .unwrap_or(Loc { line: 1, column: 1 });
            return (
                None,
                vec![Diagnostic {
                    file: file.to_owned(),
                    line: loc.line,
                    column: loc.column,
                    path: String::new(),
                    message: format!("not valid YAML: {}", first_line(&e.to_string())),
                }],
            );
        }
    };
    // Interpolation errors are reported by the section decoders below; here they only leave
    // a null in the copy.
    source.effective = Some(
        Decoder {
            source: &source,
            diags: &mut Vec::new(),
            env,
        }
        .json_of(&root, &FieldPath::default()),
    );
    source.root = Some(root);
    let source = Arc::new(source);
    let mut diags = Vec::new();
    let root = source.root.as_ref().expect("set above");
    let mut cfg = Config::default();
    let top = FieldPath::default();

    let Kind::Map(entries) = &root.kind else {
        if matches!(root.kind, Kind::Null) {
            diags.push(source.diag(&top, "the file is empty; expected a mapping with `routes`"));
        } else {
            diags.push(source.diag(
                &top,
                "expected a mapping of sections (`listeners`, `upstreams`, `routes`, ...)",
            ));
        }
        return (None, diags);
    };

    let mut dec = Decoder {
        source: &source,
        diags: &mut diags,
        env,
    };
    let mut saw_routes = false;
    for (key, _, node) in entries {
        let path = top.key(key.as_str());
        match key.as_str() {
            "listeners" => {
                cfg.listeners = dec
                    .list_indexed::<ListenerConfig>(node, &path)
                    .into_iter()
                    .map(|(i, mut l)| {
                        l.index = i;
                        l
                    })
                    .collect()
            }
            "admin" => cfg.admin = dec.one::<Option<AdminConfig>>(node, &path).flatten(),
            "defaults" => cfg.defaults = dec.one::<Defaults>(node, &path).unwrap_or_default(),
            "server" => cfg.server = dec.one::<ServerConfig>(node, &path).unwrap_or_default(),
            "access_log" => {
                cfg.access_log = dec.one::<AccessLogConfig>(node, &path).unwrap_or_default()
            }
            "tracing" => cfg.tracing = dec.one::<TracingConfig>(node, &path).unwrap_or_default(),
            "upstreams" => cfg.upstreams = dec.map::<UpstreamConfig>(node, &path),
            "routes" => {
                saw_routes = true;
                cfg.routes = dec
                    .list_indexed::<RouteConfig>(node, &path)
                    .into_iter()
                    .map(|(i, mut r)| {
                        r.index = i;
                        r
                    })
                    .collect();
            }
            "consumers" => {
                cfg.consumers = dec
                    .list_indexed::<ConsumerConfig>(node, &path)
                    .into_iter()
                    .map(|(i, mut c)| {
                        c.index = i;
                        c
                    })
                    .collect()
            }
            "auth" => cfg.auth = dec.auth(node, &path),
            "state" => {
                cfg.state = dec
                    .one::<super::traffic::StateConfig>(node, &path)
                    .unwrap_or_default()
            }
            "workers" => {
                cfg.workers = dec
                    .one::<Option<Workers>>(node, &path)
                    .flatten()
                    .map(|w| w.0)
            }
            other => {
                let loc = source.locate(&path, true);
                dec.diags.push(Diagnostic {
                    file: file.to_owned(),
                    line: loc.line,
                    column: loc.column,
                    path: other.to_owned(),
                    message: format!(
                        "unknown section `{other}`; expected one of: listeners, admin, defaults, server, access_log, tracing, upstreams, consumers, auth, state, routes, workers"
                    ),
                });
            }
        }
    }
    if !saw_routes {
        diags.push(source.diag(
            &top,
            "missing section `routes`: a gateway needs at least one route",
        ));
    }
    (
        Some(Loaded {
            config: cfg,
            source: source.clone(),
        }),
        diags,
    )
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

struct Decoder<'a> {
    source: &'a SourceMap,
    diags: &'a mut Vec<Diagnostic>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Decoder<'_> {
    /// Decodes a list item by item, so that one bad item does not hide the others; each good
    /// item comes with its index in the file.
    fn list_indexed<T: DeserializeOwned>(
        &mut self,
        node: &Node,
        path: &FieldPath,
    ) -> Vec<(usize, T)> {
        match &node.kind {
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, n)| Some((i, self.one::<T>(n, &path.index(i))?)))
                .collect(),
            Kind::Null => Vec::new(),
            _ => {
                self.diags.push(self.source.diag(path, "expected a list"));
                Vec::new()
            }
        }
    }

    /// Decodes a map of named entries, entry by entry.
    fn map<T: DeserializeOwned>(
        &mut self,
        node: &Node,
        path: &FieldPath,
    ) -> std::collections::BTreeMap<String, T> {
        match &node.kind {
            Kind::Map(entries) => entries
                .iter()
                .filter_map(|(k, _, n)| Some((k.clone(), self.one::<T>(n, &path.key(k.as_str()))?)))
                .collect(),
            Kind::Null => Default::default(),
            _ => {
                self.diags.push(
                    self.source
                        .diag(path, "expected a mapping of names to definitions"),
                );
                Default::default()
            }
        }
    }

    /// `auth`: the provider maps entry by entry (every bad provider is reported), the rest
    /// as one value.
    fn auth(&mut self, node: &Node, path: &FieldPath) -> AuthConfig {
        let Kind::Map(entries) = &node.kind else {
            return self.one(node, path).unwrap_or_default();
        };
        let (maps, rest): (Vec<_>, Vec<_>) = entries
            .iter()
            .cloned()
            .partition(|(k, _, _)| k == "jwt" || k == "introspection");
        let rest = Node {
            loc: node.loc,
            kind: Kind::Map(rest),
        };
        let mut out: AuthConfig = self.one(&rest, path).unwrap_or_default();
        for (k, _, n) in &maps {
            let p = path.key(k.as_str());
            match k.as_str() {
                "jwt" => out.jwt = self.map(n, &p),
                _ => out.introspection = self.map(n, &p),
            }
        }
        out
    }

    fn one<T: DeserializeOwned>(&mut self, node: &Node, path: &FieldPath) -> Option<T> {
        let before = self.diags.len();
        let value = self.json_of(node, path);
        if self.diags.len() > before {
            return None;
        }
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut full = path.clone();
                for seg in e.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Seq { index } => {
                            full.0.push(Seg::Index(*index))
                        }
                        serde_path_to_error::Segment::Map { key } => {
                            full.0.push(Seg::Key(key.clone()))
                        }
                        serde_path_to_error::Segment::Enum { variant } => {
                            full.0.push(Seg::Key(variant.clone()))
                        }
                        serde_path_to_error::Segment::Unknown => {}
                    }
                }
                let message = humanize(&e.inner().to_string());
                let unknown_field = message.starts_with("unknown field");
                let loc = self.source.locate(&full, unknown_field);
                self.diags.push(Diagnostic {
                    file: self.source.file.clone(),
                    line: loc.line,
                    column: loc.column,
                    path: full.to_string(),
                    message,
                });
                None
            }
        }
    }

    /// Converts a node to JSON for serde, replacing `${VAR}` and `${VAR:-default}` in strings.
    fn json_of(&mut self, node: &Node, path: &FieldPath) -> Value {
        match &node.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Int(i) => Value::from(*i),
            Kind::UInt(u) => Value::from(*u),
            Kind::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Kind::Str(s) => match interpolate(s, self.env) {
                Ok(s) => Value::String(s),
                Err(msg) => {
                    self.diags.push(self.source.diag(path, msg));
                    Value::Null
                }
            },
            Kind::Seq(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| self.json_of(n, &path.index(i)))
                    .collect(),
            ),
            Kind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, _, n)| (k.clone(), self.json_of(n, &path.key(k.as_str()))))
                    .collect(),
            ),
        }
    }
}

/// serde's messages name Rust types; users wrote YAML.
fn humanize(msg: &str) -> String {
    msg.replace("invalid type: map", "invalid type: a mapping")
        .replace("invalid type: sequence", "invalid type: a list")
        .replace("invalid type: null", "invalid type: nothing")
        .replace(", expected struct ", ", expected a mapping for ")
        .replace("expected a sequence", "expected a list")
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r.find('}').ok_or_else(|| {
                format!("unclosed `${{` in {s:?}; expected ${{VAR}} or ${{VAR:-default}}")
            })?;
            let expr = &r[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "bad variable name {name:?} in {s:?}; expected letters, digits and _"
                ));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a default)"
                    ))
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

// === YAML → Node ===

/// A node read together with its location through serde-saphyr's `Spanned`.
struct SNode(Node);

impl<'de> Deserialize<'de> for SNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<Kind>::deserialize(d)?;
        Ok(SNode(Node {
            loc: s.referenced.into(),
            kind: s.value,
        }))
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(Kind::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(SNode(n)) = seq.next_element()? {
            items.push(n);
        }
        Ok(Kind::Seq(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(SNode(k)) = map.next_key()? {
            let SNode(v) = map.next_value()?;
            let key = match k.kind {
                Kind::Str(s) => s,
                Kind::Int(i) => i.to_string(),
                Kind::UInt(u) => u.to_string(),
                Kind::Bool(b) => b.to_string(),
                Kind::Float(f) => f.to_string(),
                Kind::Null => "null".to_owned(),
                Kind::Seq(_) | Kind::Map(_) => {
                    return Err(de::Error::custom("a mapping key must be a plain value"))
                }
            };
            entries.push((key, k.loc, v));
        }
        Ok(Kind::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "PORT" => Some("9000".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation() {
        assert_eq!(
            interpolate("0.0.0.0:${PORT}", &env).unwrap(),
            "0.0.0.0:9000"
        );
        assert_eq!(interpolate("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(interpolate("${EMPTY:-x}", &env).unwrap(), "");
        assert_eq!(interpolate("$${PORT}", &env).unwrap(), "${PORT}");
        assert_eq!(interpolate("cost $5", &env).unwrap(), "cost $5");
        assert!(interpolate("${NOPE}", &env)
            .unwrap_err()
            .contains("NOPE is not set"));
        assert!(interpolate("${PORT", &env).is_err());
        assert!(interpolate("${A-B}", &env).is_err());
    }

    #[test]
    fn collects_every_error_with_locations() {
        let text = "\
routes:
  - match: { path: /a }
    upstrem: x
  - match: { path: /b }
    timeouts: { request: 10 }
bogus: 1
";
        let err = load_str("t.yaml", text, &env).unwrap_err();
        let all: Vec<String> = err.0.iter().map(|d| d.to_string()).collect();
        assert_eq!(err.0.len(), 3, "{all:#?}");
        assert!(
            all[0].starts_with("t.yaml:3:5: routes[0].upstrem: unknown field `upstrem`"),
            "{all:#?}"
        );
        assert!(
            all[1].starts_with("t.yaml:5:26: routes[1].timeouts.request: invalid value"),
            "{all:#?}"
        );
        assert!(all[1].contains("a duration with a unit"), "{all:#?}");
        assert!(
            all[2].starts_with("t.yaml:6:1: bogus: unknown section"),
            "{all:#?}"
        );
    }

    #[test]
    fn env_errors_are_located() {
        let text = "routes:\n  - match: { path: /a }\n    upstream: ${UPSTREAM_NAME}\n";
        let err = load_str("t.yaml", text, &env).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].path, "routes[0].upstream");
        assert_eq!((err.0[0].line, err.0[0].column), (3, 15));
        assert!(err.0[0].message.contains("UPSTREAM_NAME is not set"));
    }

    #[test]
    fn yaml_syntax_error_is_located() {
        let err = load_str("t.yaml", "routes:\n  - match: {path: /a\n", &env).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].line >= 2, "{:?}", err.0[0]);
        assert!(err.0[0].message.starts_with("not valid YAML"));
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let l = load_str(
            "t.yaml",
            "access_log: { format: off }\nroutes:\n  - match: { path: /a }\n    respond: { status: 200, headers: { on: yes } }\n",
            &env,
        )
        .unwrap();
        assert_eq!(
            l.config.access_log.format,
            super::super::AccessLogFormat::Off
        );
        let r = l.config.routes[0].respond.as_ref().unwrap();
        assert_eq!(r.headers.get("on").map(String::as_str), Some("yes"));
    }

    #[test]
    fn field_path_round_trip() {
        let p = FieldPath::parse("routes[2].match.path");
        assert_eq!(p.to_string(), "routes[2].match.path");
        assert_eq!(p.0.len(), 4);
    }
}
