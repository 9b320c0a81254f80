//! The memory store stays bounded: a million distinct keys, then expiry gives the memory back.
//! Prints the figures (live heap, exactly, through a counting allocator; and RSS):
//!
//! ```sh
//! cargo test --release --test state_memory -- --nocapture
//! ```
//!
//! Its own test binary, so that no other test allocates while it measures.

use portcullis::state::{Algorithm, Check, LimitSpec, MemoryStore};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[test]
fn a_million_keys_expire_and_the_memory_comes_back() {
    const N: usize = 1_000_000;
    const S: u64 = 1_000_000_000;
    let t0 = 1_700_000_000 * S;
    let spec = LimitSpec {
        algorithm: Algorithm::TokenBucket,
        requests: 10,
        period: Duration::from_secs(1),
        burst: 10,
    };
    let store = MemoryStore::new();
    let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss_mib());

    let mut out = Vec::new();
    let mut key = String::new();
    for i in 0..N {
        key.clear();
        // What a real key looks like: route, limit, algorithm, client address.
        use std::fmt::Write;
        write!(
            key,
            "rl:api:10-per-1s:tb:ip=10.{}.{}.{}",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        )
        .unwrap();
        store.check_at(
            t0,
            &[Check {
                key: &key,
                spec: &spec,
            }],
            &mut out,
        );
        assert!(out[0].allowed);
    }
    assert_eq!(store.len(), N);
    let (heap1, rss1) = (LIVE.load(Ordering::Relaxed), rss_mib());

    // Each bucket had one token taken: full again (idle) 100ms later.
    assert_eq!(store.sweep_at(t0 + S / 10 - 1), 0, "nothing expires early");
    let swept = store.sweep_at(t0 + S / 10);
    assert_eq!(swept, N);
    assert!(store.is_empty());
    let (heap2, rss2) = (LIVE.load(Ordering::Relaxed), rss_mib());

    eprintln!(
        "memory store, {N} keys: live heap {:.1} MiB -> {:.1} MiB ({:.0} bytes/key) -> {:.1} MiB after expiry; RSS {:.1} -> {:.1} -> {:.1} MiB",
        mib(heap0),
        mib(heap1),
        (heap1 - heap0) as f64 / N as f64,
        mib(heap2),
        rss0,
        rss1,
        rss2
    );
    assert!(
        heap2 - heap0.min(heap2) < (heap1 - heap0) / 20,
        "expiry gave the memory back: {heap0} -> {heap1} -> {heap2}"
    );
}
