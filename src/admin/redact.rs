//! Secret redaction for what the admin API shows of the config.
//!
//! Two rules, applied to the effective (interpolated) config as JSON:
//! - a key that names a secret (`token`, `secret`, `password`, `key`, `api_keys`,
//!   `client_secret`, `Authorization`, `Cookie`, `X-API-Key`, ...) has its value replaced by
//!   `"[redacted]"` unless that value is a mapping, which is walked instead (so an upstream
//!   called `keycloak` or a section called `auth` is still shown, while `auth.jwt.x.secret`
//!   is not);
//! - credentials inside URLs (`amqp://user:pass@host`) are cut out of every string.
//!
//! Keys are split into words at `_`, `-`, `.` and case changes, and a key matches when one of
//! its words is a secret word: `private_key` and `X-Api-Key` match, `keycloak` and
//! `max_idle_per_target` do not.

use serde_json::Value;

pub const REDACTED: &str = "[redacted]";

const SECRET_WORDS: &[&str] = &[
    "token",
    "tokens",
    "secret",
    "secrets",
    "password",
    "passwords",
    "passwd",
    "pass",
    "passphrase",
    "key",
    "keys",
    "apikey",
    "apikeys",
    "credential",
    "credentials",
    "authorization",
    "auth",
    "cookie",
    "cookies",
    "bearer",
    "signature",
];

/// Whether a config key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words.iter().any(|w| SECRET_WORDS.contains(&w.as_str()))
}

/// A copy of `v` with secrets replaced; see the module docs.
pub fn redact(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Object(_) | Value::Null => redact(v),
                        _ if is_secret_key(k) => Value::String(REDACTED.into()),
                        _ => redact(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        Value::String(s) => Value::String(redact_url_credentials(s)),
        other => other.clone(),
    }
}

/// `scheme://user:pass@host/…` → `scheme://[redacted]@host/…`.
pub fn redact_url_credentials(s: &str) -> String {
    let Some(i) = s.find("://") else {
        return s.to_owned();
    };
    let rest = &s[i + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://{REDACTED}{}", &s[..i], &rest[at..]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys() {
        for k in [
            "token",
            "admin_token",
            "client_secret",
            "password",
            "private_key",
            "key",
            "api_keys",
            "X-API-Key",
            "x-api-key",
            "Authorization",
            "Proxy-Authorization",
            "Cookie",
            "Set-Cookie",
            "apiKey",
            "secret",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "keycloak",
            "max_idle_per_target",
            "name",
            "url",
            "bind",
            "authenticate",
            "monkey",
            "tokenizer",
            "hosts",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn redacts_values_but_walks_mappings() {
        let v = json!({
            "admin": { "bind": "127.0.0.1:9900", "token": "t0ps3cret" },
            "upstreams": { "keycloak": { "targets": [ { "url": "http://u:pw@10.0.0.1:8080/x" } ] } },
            "auth": { "jwt": { "internal": { "secret": "hs256-secret", "algorithms": ["HS256"] } } },
            "consumers": [ { "name": "app", "api_keys": ["sha256:abc"], "basic": { "user": "u", "password": "p" } } ],
            "tracing": { "otlp": { "headers": { "X-Api-Key": "k", "X-Tenant": "t" } } },
            "listeners": [ { "tls": { "cert": "c.pem", "key": "c.key" } } ],
            "n": null
        });
        let r = redact(&v);
        let text = r.to_string();
        for secret in [
            "t0ps3cret",
            "hs256-secret",
            "sha256:abc",
            "\"p\"",
            "pw@",
            "c.key",
            "\"k\"",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(r["admin"]["bind"], "127.0.0.1:9900");
        assert_eq!(r["admin"]["token"], REDACTED);
        assert_eq!(
            r["upstreams"]["keycloak"]["targets"][0]["url"],
            "http://[redacted]@10.0.0.1:8080/x"
        );
        assert_eq!(r["auth"]["jwt"]["internal"]["algorithms"][0], "HS256");
        assert_eq!(r["consumers"][0]["basic"]["user"], "u");
        assert_eq!(r["tracing"]["otlp"]["headers"]["X-Tenant"], "t");
        assert_eq!(r["listeners"][0]["tls"]["cert"], "c.pem");
        assert!(r["n"].is_null());
    }

    #[test]
    fn url_credentials() {
        assert_eq!(
            redact_url_credentials("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://[redacted]@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url_credentials("http://h/p?x=a@b"),
            "http://h/p?x=a@b"
        );
        assert_eq!(redact_url_credentials("plain"), "plain");
    }
}
