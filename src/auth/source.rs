//! Where credentials are read from: the `Authorization` header, cookies and query
//! parameters, and how `hide_credentials` removes them. A credential given twice (or in two
//! places) is refused: the gateway could check one and the upstream use the other.

use crate::body::Body;
use crate::error::GatewayError;
use http::{header, HeaderMap, HeaderValue, Request, Uri};
use std::borrow::Cow;

/// Where a bearer token is read from.
#[derive(Debug, Clone)]
pub struct TokenSource {
    pub bearer: bool,
    pub cookie: Option<String>,
    pub query: Option<String>,
}

impl TokenSource {
    /// The token, if the request carries one where this source looks. A token in two places
    /// (or a repeated cookie or parameter with different values) is refused: the gateway could
    /// check one and the upstream use the other.
    pub fn find<'r>(
        &self,
        headers: &'r HeaderMap,
        uri: &'r Uri,
    ) -> Result<Option<Cow<'r, str>>, GatewayError> {
        let mut found: Option<Cow<'r, str>> = None;
        let mut places = 0;
        if self.bearer {
            if let Some(t) = authorization(headers, "bearer") {
                found = Some(Cow::Borrowed(t));
                places += 1;
            }
        }
        if let Some(name) = &self.cookie {
            if let Some(t) = cookie_value(headers, name)? {
                places += 1;
                found.get_or_insert(Cow::Borrowed(t));
            }
        }
        if let Some(name) = &self.query {
            if let Some(t) = query_value(uri.query(), name)? {
                places += 1;
                found.get_or_insert(t);
            }
        }
        if places > 1 {
            return Err(GatewayError::BadRequest(
                "the request carries a token in more than one place",
            ));
        }
        Ok(found)
    }

    pub fn hide(&self, req: &mut Request<Body>) {
        if self.bearer && authorization(req.headers(), "bearer").is_some() {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        if let Some(c) = &self.cookie {
            remove_cookie(req.headers_mut(), c);
        }
        if let Some(q) = &self.query {
            remove_query_param(req, q);
        }
    }
}

/// The credentials of an `Authorization` header with the given scheme (case-insensitive).
pub fn authorization<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    // A bare scheme (`Bearer`) is that scheme with empty credentials: refused, not ignored.
    let (s, rest) = v.split_once(' ').unwrap_or((v, ""));
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// A cookie's value; the same name twice with different values is refused.
pub fn cookie_value<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, GatewayError> {
    let mut found: Option<&str> = None;
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            let Some((k, val)) = pair.trim().split_once('=') else {
                continue;
            };
            if k.trim() != name {
                continue;
            }
            let val = val.trim();
            let val = val
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(val);
            match found {
                Some(prev) if prev != val => {
                    return Err(GatewayError::BadRequest(
                        "the request repeats a credential cookie",
                    ))
                }
                _ => found = Some(val),
            }
        }
    }
    Ok(found)
}

/// A query parameter's decoded value; a repeated parameter is refused.
pub fn query_value<'q>(
    query: Option<&'q str>,
    name: &str,
) -> Result<Option<Cow<'q, str>>, GatewayError> {
    let Some(q) = query else { return Ok(None) };
    let mut found = None;
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(GatewayError::BadRequest(
                    "the request repeats a credential parameter",
                ));
            }
            found = Some(v);
        }
    }
    Ok(found)
}

/// Removes every occurrence of a query parameter, leaving the others byte for byte.
pub fn remove_query_param(req: &mut Request<Body>, name: &str) {
    let Some(q) = req.uri().query() else { return };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|seg| {
            form_urlencoded::parse(seg.as_bytes())
                .next()
                .is_none_or(|(k, _)| k != name)
        })
        .collect();
    if kept.len() == q.split('&').count() {
        return;
    }
    let path = req.uri().path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

/// Removes one cookie from the `Cookie` header(s).
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let mut kept = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            let pair = pair.trim();
            let k = pair.split_once('=').map_or(pair, |(k, _)| k).trim();
            if !pair.is_empty() && k != name {
                kept.push(pair.to_owned());
            }
        }
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_cookie_sources() {
        let mut req = Request::builder()
            .uri("/x?a=1&access_token=t%2Bk&b=%20")
            .header(header::COOKIE, "x=1; session=abc; y=2")
            .body(crate::body::empty())
            .unwrap();
        assert_eq!(
            query_value(req.uri().query(), "access_token")
                .unwrap()
                .unwrap(),
            "t+k"
        );
        assert_eq!(cookie_value(req.headers(), "session").unwrap(), Some("abc"));
        remove_query_param(&mut req, "access_token");
        assert_eq!(req.uri().to_string(), "/x?a=1&b=%20");
        remove_cookie(req.headers_mut(), "session");
        assert_eq!(req.headers()[header::COOKIE], "x=1; y=2");
        assert!(query_value(Some("k=1&k=2"), "k").is_err());
        let h = {
            let mut h = HeaderMap::new();
            h.append(header::COOKIE, "s=1".parse().unwrap());
            h.append(header::COOKIE, "s=2".parse().unwrap());
            h
        };
        assert!(cookie_value(&h, "s").is_err());
    }

    #[test]
    fn authorization_schemes() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer abc.def".parse().unwrap());
        assert_eq!(authorization(&h, "Bearer"), Some("abc.def"));
        assert_eq!(authorization(&h, "basic"), None);
        h.insert(header::AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(authorization(&h, "bearer"), Some(""));
        h.insert(header::AUTHORIZATION, "Bearerx".parse().unwrap());
        assert_eq!(authorization(&h, "bearer"), None);
    }
}
