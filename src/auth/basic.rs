//! HTTP Basic authentication (RFC 7617) against argon2id or bcrypt hashes.
//!
//! Password hashing is slow on purpose, so it never runs on an async worker: checks go to
//! tokio's blocking pool, at most one per CPU at a time (a flood of wrong passwords cannot
//! take every core). A successful check is remembered for `auth.basic.cache_for` (default
//! 30s) under a salted SHA-256 of user and password, so a busy client pays for the hash once.
//! Failures are never remembered. An unknown user costs a hash check too, so response times do
//! not tell which user names exist.

use super::{authorization, sha256, Consumer, Identity, Outcome};
use crate::config::auth::BasicConfig;
use base64::Engine;
use http::HeaderMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const DEFAULT_CACHE_FOR: Duration = Duration::from_secs(30);
const CACHE_ENTRIES: usize = 10_000;

/// A stored password hash.
#[derive(Debug)]
pub enum PasswordHash {
    /// A PHC string: `$argon2id$v=19$m=...,t=...,p=...$salt$hash`.
    Argon2(String),
    /// `$2b$`, `$2a$` or `$2y$` with cost, salt and hash (60 characters).
    Bcrypt(String),
}

impl PasswordHash {
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        if s.starts_with("$argon2") {
            argon2::PasswordHash::new(s).map_err(|e| {
                format!("not a valid argon2 hash ({e}); make one with `portcullis hash-password`")
            })?;
            return Ok(PasswordHash::Argon2(s.to_owned()));
        }
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| s.starts_with(p)) {
            if s.len() != 60 {
                return Err("not a valid bcrypt hash (expected 60 characters)".to_owned());
            }
            return Ok(PasswordHash::Bcrypt(s.to_owned()));
        }
        Err("expected an argon2id ($argon2id$...) or bcrypt ($2b$...) hash, not a plain password; make one with `portcullis hash-password`".to_owned())
    }

    /// The slow check; call on a blocking thread.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Argon2(s) => {
                use argon2::PasswordVerifier;
                match argon2::PasswordHash::new(s) {
                    Ok(h) => argon2::Argon2::default()
                        .verify_password(password, &h)
                        .is_ok(),
                    Err(_) => false,
                }
            }
            PasswordHash::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
        }
    }
}

/// An argon2id hash of `password` with a fresh random salt (`portcullis hash-password`).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Salted digest of user and password → (consumer, remembered until).
type GoodChecks = quick_cache::sync::Cache<[u8; 32], (Arc<Consumer>, Instant)>;

struct User {
    consumer: Arc<Consumer>,
    hash: Arc<PasswordHash>,
}

pub struct BasicAuth {
    users: HashMap<String, User>,
    /// Checked for unknown users, so they cost as much as known ones.
    decoy: Option<Arc<PasswordHash>>,
    cache: Option<GoodChecks>,
    cache_for: Duration,
    /// Salts the cache keys, so a memory dump does not hold plain SHA-256 of passwords.
    salt: [u8; 32],
    permits: Arc<Semaphore>,
    method: Arc<str>,
    /// Password hashes computed so far (cache misses), for tests and metrics.
    hash_checks: std::sync::atomic::AtomicU64,
}

impl BasicAuth {
    /// `users` are (field path of the user, user, consumer, hash).
    pub fn build(
        cfg: &BasicConfig,
        users: Vec<(String, String, Arc<Consumer>, PasswordHash)>,
    ) -> (BasicAuth, Vec<(String, String)>) {
        let mut errs = Vec::new();
        let mut map = HashMap::new();
        let mut decoy = None;
        for (at, user, consumer, hash) in users {
            if let Some(other) = map.get(&user).map(|u: &User| u.consumer.name.clone()) {
                errs.push((at, format!("user {user:?} is also consumer {other:?}'s")));
                continue;
            }
            let hash = Arc::new(hash);
            decoy.get_or_insert_with(|| hash.clone());
            map.insert(user, User { consumer, hash });
        }
        let cache_for = cfg.cache_for.map(|d| d.0).unwrap_or(DEFAULT_CACHE_FOR);
        let mut salt = [0u8; 32];
        aws_lc_rs::rand::fill(&mut salt).expect("the system RNG works");
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        (
            BasicAuth {
                users: map,
                decoy,
                cache: (!cache_for.is_zero()).then(|| quick_cache::sync::Cache::new(CACHE_ENTRIES)),
                cache_for,
                salt,
                permits: Arc::new(Semaphore::new(cpus)),
                method: "basic".into(),
                hash_checks: Default::default(),
            },
            errs,
        )
    }

    pub async fn check(&self, headers: &HeaderMap) -> Outcome {
        let Some(b64) = authorization(headers, "basic") else {
            return Outcome::Absent;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return Outcome::Invalid;
        };
        let Some(colon) = raw.iter().position(|b| *b == b':') else {
            return Outcome::Invalid;
        };
        let (user, password) = (&raw[..colon], &raw[colon + 1..]);
        let key = sha256(&[
            &self.salt,
            &(user.len() as u64).to_le_bytes(),
            user,
            password,
        ]);
        if let Some(cache) = &self.cache {
            if let Some((consumer, until)) = cache.get(&key) {
                if Instant::now() < until {
                    return self.valid(consumer);
                }
                cache.remove(&key);
            }
        }
        let found = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.users.get(u));
        let (hash, consumer) = match (found, &self.decoy) {
            (Some(u), _) => (u.hash.clone(), Some(u.consumer.clone())),
            (None, Some(d)) => (d.clone(), None),
            (None, None) => return Outcome::Invalid,
        };
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return Outcome::Invalid;
        };
        let password = password.to_vec();
        self.hash_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(&password)
        })
        .await
        .unwrap_or(false);
        match consumer {
            Some(c) if ok => {
                if let Some(cache) = &self.cache {
                    cache.insert(key, (c.clone(), Instant::now() + self.cache_for));
                }
                self.valid(c)
            }
            _ => Outcome::Invalid,
        }
    }

    pub fn hash_checks(&self) -> u64 {
        self.hash_checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn valid(&self, consumer: Arc<Consumer>) -> Outcome {
        Outcome::Valid(Identity {
            consumer: Some(consumer),
            method: self.method.clone(),
            token: None,
            key_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn consumer(name: &str) -> Arc<Consumer> {
        Arc::new(Consumer {
            name: name.into(),
            roles: Vec::new(),
            metadata: Default::default(),
            limits: Vec::new(),
            name_header: http::HeaderValue::from_str(name).unwrap(),
            roles_header: None,
        })
    }

    fn auth(cache_for: Duration) -> BasicAuth {
        let hash = PasswordHash::parse(&hash_password("pw").unwrap()).unwrap();
        let (b, errs) = BasicAuth::build(
            &BasicConfig {
                cache_for: Some(Dur(cache_for)),
            },
            vec![("u".into(), "user".into(), consumer("c"), hash)],
        );
        assert!(errs.is_empty());
        b
    }

    fn headers(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(
            http::header::AUTHORIZATION,
            format!("Basic {v}").parse().unwrap(),
        );
        h
    }

    fn valid(o: &Outcome) -> bool {
        matches!(o, Outcome::Valid(_))
    }

    #[tokio::test]
    async fn good_checks_are_remembered_and_bad_ones_are_not() {
        let b = auth(Duration::from_secs(30));
        assert!(valid(&b.check(&headers("user", "pw")).await));
        assert_eq!(b.hash_checks(), 1);
        assert!(valid(&b.check(&headers("user", "pw")).await));
        assert!(valid(&b.check(&headers("user", "pw")).await));
        assert_eq!(b.hash_checks(), 1, "a remembered check costs no hash");
        assert!(!valid(&b.check(&headers("user", "pw2")).await));
        assert!(!valid(&b.check(&headers("user", "pw2")).await));
        assert_eq!(b.hash_checks(), 3, "failures are never remembered");
        // An unknown user costs a hash check too (no user enumeration by timing).
        assert!(!valid(&b.check(&headers("nobody", "pw")).await));
        assert_eq!(b.hash_checks(), 4);
    }

    #[tokio::test]
    async fn remembered_checks_expire() {
        let b = auth(Duration::from_millis(50));
        assert!(valid(&b.check(&headers("user", "pw")).await));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(valid(&b.check(&headers("user", "pw")).await));
        assert_eq!(b.hash_checks(), 2);
        let off = auth(Duration::ZERO);
        assert!(valid(&off.check(&headers("user", "pw")).await));
        assert!(valid(&off.check(&headers("user", "pw")).await));
        assert_eq!(off.hash_checks(), 2);
    }

    #[test]
    fn hashes_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        let p = PasswordHash::parse(&h).unwrap();
        assert!(p.verify(b"s3cret"));
        assert!(!p.verify(b"s3cret!"));
        let b = bcrypt::hash("s3cret", 4).unwrap();
        let p = PasswordHash::parse(&b).unwrap();
        assert!(p.verify(b"s3cret"));
        assert!(!p.verify(b"nope"));
        assert!(PasswordHash::parse("s3cret").is_err());
        assert!(PasswordHash::parse("$argon2id$garbage").is_err());
    }
}
