//! Request ids: generated per request (UUID v4 layout) or kept from the client when
//! `server.request_id.trust_incoming` is on and the client's id is well-formed.
//!
//! Generation is a counter mixed with a random per-process seed (splitmix64): unique within
//! the process, unpredictable across processes, and no syscall or atomic operation per
//! request (each thread counts in its own range).

use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn seed() -> (u64, u64) {
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    *SEED.get_or_init(|| {
        let u = uuid::Uuid::new_v4().as_u64_pair();
        (u.0, u.1)
    })
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The counter's next value. Each thread counts in a range of its own (2^48 values, taken
/// from a shared counter at its first id), so the hot path is a thread-local add, not an
/// atomic one; ranges would meet only after 2^48 ids on one thread (89 years at 100k/s).
fn next() -> u64 {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    NEXT.with(|c| {
        let mut n = c.get();
        if n == 0 {
            n = (THREADS.fetch_add(1, Ordering::Relaxed) + 1) << 48;
        }
        c.set(n + 1);
        n
    })
}

/// A fresh id such as `3f2c1a9e-5b7d-4c21-9a0e-1f2d3c4b5a69`.
pub fn generate() -> HeaderValue {
    let n = next();
    let (a, b) = seed();
    let hi = splitmix(n ^ a);
    let lo = splitmix(hi ^ b);
    let bytes = ((hi as u128) << 64 | lo as u128).to_be_bytes();
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("hex and hyphens")
}

/// Whether a client-sent id may be kept: 1 to 200 visible ASCII characters.
pub fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 200 && b.iter().all(|c| c.is_ascii_graphic())
}

/// The id of a request.
pub fn for_request(headers: &HeaderMap, name: &HeaderName, trust_incoming: bool) -> HeaderValue {
    if trust_incoming {
        let mut all = headers.get_all(name).iter();
        // Exactly one well-formed id; duplicates are ambiguous.
        if let (Some(v), None) = (all.next(), all.next()) {
            if acceptable(v) {
                return v.clone();
            }
        }
    }
    generate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_uuids() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        let u = uuid::Uuid::parse_str(s).unwrap();
        assert_eq!(u.get_version_num(), 4);
    }

    /// Threads count in ranges of their own: ids from several threads never repeat.
    #[test]
    fn ids_from_many_threads_are_distinct() {
        let all: Vec<String> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..2000)
                        .map(|_| generate().to_str().unwrap().to_owned())
                        .collect::<Vec<_>>()
                })
            })
            .flat_map(|t| t.join().unwrap())
            .collect();
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
        let (a, b) = (next(), next());
        assert_eq!(b, a + 1, "one thread counts up by one");
    }

    #[test]
    fn incoming_ids() {
        let name = HeaderName::from_static("x-request-id");
        let mut h = HeaderMap::new();
        h.insert(&name, "abc-123".parse().unwrap());
        assert_eq!(for_request(&h, &name, true), "abc-123");
        assert_ne!(for_request(&h, &name, false), "abc-123");
        h.append(&name, "second".parse().unwrap());
        assert_ne!(for_request(&h, &name, true), "abc-123");
        let mut h = HeaderMap::new();
        h.insert(&name, "has space".parse().unwrap());
        assert_ne!(for_request(&h, &name, true), "has space");
    }
}
