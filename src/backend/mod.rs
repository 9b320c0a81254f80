//! Backends: what answers a route once its request policies have passed.
//!
//! One variant per kind of backend; `http` forwards to an upstream pool, `split` to one of
//! several upstreams (canaries), `respond` answers from the gateway itself. Later kinds
//! (aggregate, brokers, gRPC, WebSocket bridges)
//! are further variants. Path rewriting lives here too because only backends that forward
//! use it.

pub mod http;
pub mod split;

use crate::body::{self, Body};
use crate::router::Params;
use crate::upstream::Upstream;
use ::http::{HeaderMap, Response, StatusCode};
use bytes::Bytes;
use std::sync::Arc;

pub enum Backend {
    Http(Arc<Upstream>),
    Split(Arc<split::Split>),
    Respond(Arc<DirectResponse>),
}

impl Backend {
    pub fn describe(&self) -> String {
        match self {
            Backend::Http(u) => format!("upstream {}", u.name),
            Backend::Split(s) => s.describe(),
            Backend::Respond(r) => format!("respond {}", r.status.as_u16()),
        }
    }
}

/// A response made at compile time; per request it is a few `Bytes` and header clones.
#[derive(Debug)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl DirectResponse {
    pub fn respond(&self) -> Response<Body> {
        let mut res = Response::new(body::full(self.body.clone()));
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers.clone();
        res
    }
}

/// A path template of a rewrite: literal text and captured params.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    /// Index into the route's params.
    Param(usize),
}

impl PathTemplate {
    /// Parses `/v2/users/{id}/{rest}` against the route's param names (`{*rest}` is also
    /// accepted for symmetry with the match template).
    pub fn parse(t: &str, names: &[Box<str>]) -> Result<PathTemplate, String> {
        if !t.starts_with('/') {
            return Err(format!("{t:?} must start with '/'"));
        }
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {t:?}"))?;
            let name = rest[open + 1..open + close].trim_start_matches('*');
            let idx = names.iter().position(|n| &**n == name).ok_or_else(|| {
                let known: Vec<&str> = names.iter().map(|n| &**n).collect();
                format!(
                    "{{{name}}} is not captured by the route's match.path; captured: {}",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            })?;
            parts.push(Part::Param(idx));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_owned()));
        }
        Ok(PathTemplate { parts })
    }

    fn render(&self, params: &Params) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Param(i) => {
                    out.push_str(params.values.get(*i).map(String::as_str).unwrap_or(""))
                }
            }
        }
        // A template like `/files/{rest}` with an empty `rest` must not yield `//`.
        if out.contains("//") {
            let mut collapsed = String::with_capacity(out.len());
            for c in out.chars() {
                if !(c == '/' && collapsed.ends_with('/')) {
                    collapsed.push(c);
                }
            }
            out = collapsed;
        }
        out
    }
}

/// `routes[].rewrite`, compiled. Order: template, then strip_prefix, then add_prefix.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
    pub template: Option<PathTemplate>,
}

impl Rewrite {
    pub fn is_identity(&self) -> bool {
        self.strip_prefix.is_none() && self.add_prefix.is_none() && self.template.is_none()
    }

    pub fn apply<'a>(&self, path: &'a str, params: &Params) -> std::borrow::Cow<'a, str> {
        if self.is_identity() {
            return path.into();
        }
        let mut p: String = match &self.template {
            Some(t) => t.render(params),
            None => path.to_owned(),
        };
        if let Some(prefix) = &self.strip_prefix {
            if p == *prefix || prefix.is_empty() {
                p = "/".to_owned();
            } else if p.starts_with(prefix.as_str())
                && p.as_bytes().get(prefix.len()) == Some(&b'/')
            {
                p = p[prefix.len()..].to_owned();
            }
        }
        if let Some(prefix) = &self.add_prefix {
            p = format!("{prefix}{p}");
        }
        p.into()
    }

    pub fn describe(&self) -> String {
        let mut s = String::new();
        if self.template.is_some() {
            s.push_str(" (path template)");
        }
        if let Some(p) = &self.strip_prefix {
            s.push_str(&format!(" (strip {p})"));
        }
        if let Some(p) = &self.add_prefix {
            s.push_str(&format!(" (add {p})"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(names: &[&str], values: &[&str]) -> Params {
        Params {
            names: names
                .iter()
                .map(|n| Box::<str>::from(*n))
                .collect::<Vec<_>>()
                .into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn strip_and_add() {
        let rw = Rewrite {
            strip_prefix: Some("/api/v1".into()),
            add_prefix: Some("/internal".into()),
            template: None,
        };
        let p = Params::default();
        assert_eq!(rw.apply("/api/v1/users/1", &p), "/internal/users/1");
        assert_eq!(rw.apply("/api/v1", &p), "/internal/");
        assert_eq!(rw.apply("/api/v10/x", &p), "/internal/api/v10/x");
    }

    #[test]
    fn template() {
        let names: Vec<Box<str>> = vec!["id".into(), "rest".into()];
        let t = PathTemplate::parse("/v2/people/{id}/{rest}", &names).unwrap();
        let rw = Rewrite {
            template: Some(t),
            ..Default::default()
        };
        assert_eq!(
            rw.apply("/x", &params(&["id", "rest"], &["7", "a/b"])),
            "/v2/people/7/a/b"
        );
        assert_eq!(
            rw.apply("/x", &params(&["id", "rest"], &["7", ""])),
            "/v2/people/7/"
        );
        assert!(PathTemplate::parse("/v2/{nope}", &names)
            .unwrap_err()
            .contains("captured: id, rest"));
    }
}
