//! The in-memory store: one node's counters, no dependencies.
//!
//! Layout: keys are hashed once with a per-process random SipHash key (so clients cannot
//! aim collisions) into a `u64`; the hash picks one of [`SHARDS`] shards, each a small
//! `HashMap<u64, Cell>` behind its own mutex. A check holds one shard's lock for a map
//! lookup and a few integer operations — there is no global lock, and with 256 shards on a
//! handful of cores two requests rarely meet on one. Storing the 64-bit hash instead of the
//! key keeps an entry at 32 bytes (plus the map's own overhead).
//!
//! Expiry: every cell knows when it stops mattering (a token bucket once full again, a window
//! once over). A background sweeper walks the shards one at a time, drops expired cells and
//! gives memory back, so memory follows the number of *active* keys, not of keys ever seen.
//!
//! In-flight counts for `concurrency_limit` live in a second sharded map of shared atomic
//! counters: acquiring takes a shard lock only to find the counter, releasing is one atomic
//! decrement (see [`Permit`]).

use super::algorithms::{self, Cell, Undo};
use super::{Check, Clock, Decision};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Number of shards (a power of two).
pub const SHARDS: usize = 256;

/// How often the background sweeper runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The map hash is already a SipHash output; hashing it again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// A mutex on its own cache line, so that neighbouring shards do not false-share.
#[repr(align(64))]
struct Shard<V>(Mutex<Map<V>>);

struct Sharded<V> {
    shards: Box<[Shard<V>]>,
}

impl<V> Sharded<V> {
    fn new() -> Self {
        Sharded {
            shards: (0..SHARDS)
                .map(|_| Shard(Mutex::new(Map::default())))
                .collect(),
        }
    }

    /// The shard of a hash. The map inside uses the low bits (bucket) and the top 7 bits
    /// (tag), so the shard is taken from bits in between.
    fn lock(&self, h: u64) -> std::sync::MutexGuard<'_, Map<V>> {
        let i = (h >> 40) as usize & (SHARDS - 1);
        // A poisoned shard only means a panic elsewhere while it was held; the counters in it
        // are still plain numbers.
        self.shards[i].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// One node's counters.
pub struct MemoryStore {
    cells: Sharded<Cell>,
    inflight: Sharded<Arc<AtomicU32>>,
    hasher: std::collections::hash_map::RandomState,
    clock: Clock,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::with_clock(Clock::new())
    }

    pub fn with_clock(clock: Clock) -> MemoryStore {
        MemoryStore {
            cells: Sharded::new(),
            inflight: Sharded::new(),
            hasher: Default::default(),
            clock,
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// All-or-nothing over `checks`: each is decided and counted in turn; if one refuses,
    /// what the earlier ones counted is taken back.
    pub fn check(&self, checks: &[Check<'_>], out: &mut Vec<Decision>) {
        self.check_at(self.clock.now(), checks, out)
    }

    pub fn check_at(&self, now: u64, checks: &[Check<'_>], out: &mut Vec<Decision>) {
        out.clear();
        let mut undo: Vec<(u64, Undo)> = Vec::new();
        let mut refused = false;
        for c in checks {
            let h = self.hash(c.key);
            let (d, u) = {
                let mut shard = self.cells.lock(h);
                let cell = shard.entry(h).or_default();
                if cell.expires <= now {
                    // Expired but not swept yet: the same as absent.
                    *cell = Cell::default();
                }
                algorithms::apply(c.spec, cell, now)
            };
            if !d.allowed {
                refused = true;
            } else if let (Some(u), true) = (u, checks.len() > 1) {
                // A lone limit has nobody to be taken back for (and no allocation for it).
                undo.push((h, u));
            }
            out.push(d);
        }
        if refused {
            for (h, u) in undo {
                if let Some(cell) = self.cells.lock(h).get_mut(&h) {
                    algorithms::undo(cell, u);
                }
            }
            // Report the admitted limits as they are now that nothing was counted.
            for d in out.iter_mut().filter(|d| d.allowed) {
                d.allowed = false;
                d.remaining = (d.remaining + 1).min(d.limit);
            }
        }
    }

    /// Cells in the store (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops cells that expired by `now` and idle in-flight counters; gives memory back when
    /// a shard shrank a lot. Returns how many cells went.
    pub fn sweep_at(&self, now: u64) -> usize {
        let mut removed = 0;
        for shard in self.cells.shards.iter() {
            let mut m = shard.0.lock().unwrap_or_else(|e| e.into_inner());
            let before = m.len();
            m.retain(|_, c| c.expires > now);
            removed += before - m.len();
            shrink(&mut m);
        }
        for shard in self.inflight.shards.iter() {
            let mut m = shard.0.lock().unwrap_or_else(|e| e.into_inner());
            // Nobody holds a clone (clones are only made under this lock) and nothing is in
            // flight: the counter can go.
            m.retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Acquire) > 0);
            shrink(&mut m);
        }
        removed
    }

    pub fn sweep(&self) -> usize {
        self.sweep_at(self.clock.now())
    }

    /// Takes one of `max` in-flight slots of `key`, or `None` when all are taken.
    pub fn acquire(&self, key: &str, max: u32) -> Option<Permit> {
        let h = self.hash(key);
        let counter = self.inflight.lock(h).entry(h).or_default().clone();
        let mut n = counter.load(Ordering::Acquire);
        loop {
            if n >= max {
                return None;
            }
            match counter.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(Permit { counter }),
                Err(now) => n = now,
            }
        }
    }

    /// Requests in flight for `key` (tests, admin).
    pub fn in_flight(&self, key: &str) -> u32 {
        let h = self.hash(key);
        self.inflight
            .lock(h)
            .get(&h)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }
}

fn shrink<V>(m: &mut Map<V>) {
    if m.capacity() > 64 && m.capacity() > m.len() * 4 {
        m.shrink_to(m.len() * 2);
    }
}

/// One in-flight slot; released when dropped.
#[derive(Debug)]
pub struct Permit {
    counter: Arc<AtomicU32>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sweeps `store` every [`SWEEP_EVERY`] for as long as it lives, when called inside a tokio
/// runtime (a store made outside one, e.g. by `portcullis validate`, is never served from).
pub fn spawn_sweeper(store: &Arc<MemoryStore>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<MemoryStore> = Arc::downgrade(store);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else { return };
            let now = store.clock.now();
            // One shard at a time with a yield in between: a sweep of a million keys never
            // holds a worker thread for long.
            for i in 0..SHARDS {
                {
                    let mut m = store.cells.shards[i]
                        .0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    m.retain(|_, c| c.expires > now);
                    shrink(&mut m);
                }
                {
                    let mut m = store.inflight.shards[i]
                        .0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    m.retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Acquire) > 0);
                    shrink(&mut m);
                }
                if i % 16 == 15 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::{Algorithm, LimitSpec};
    use super::*;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn spec(algorithm: Algorithm, requests: u64, secs: u64) -> LimitSpec {
        LimitSpec {
            algorithm,
            requests,
            period: Duration::from_secs(secs),
            burst: requests,
        }
    }

    #[test]
    fn keys_are_independent() {
        let m = MemoryStore::new();
        let s = spec(Algorithm::FixedWindow, 1, 10);
        let mut out = Vec::new();
        for key in ["a", "b", "c"] {
            m.check_at(T0, &[Check { key, spec: &s }], &mut out);
            assert!(out[0].allowed, "{key}");
        }
        m.check_at(T0, &[Check { key: "a", spec: &s }], &mut out);
        assert!(!out[0].allowed);
    }

    #[test]
    fn a_refused_request_counts_against_no_limit() {
        let m = MemoryStore::new();
        let per_sec = spec(Algorithm::FixedWindow, 2, 1);
        let per_day = spec(Algorithm::FixedWindow, 5, 86_400);
        let mut out = Vec::new();
        let both = |t: u64, out: &mut Vec<Decision>| {
            m.check_at(
                t,
                &[
                    Check {
                        key: "sec",
                        spec: &per_sec,
                    },
                    Check {
                        key: "day",
                        spec: &per_day,
                    },
                ],
                out,
            );
            out.iter().all(|d| d.allowed)
        };
        assert!(both(T0, &mut out));
        assert!(both(T0, &mut out));
        // The per-second limit refuses; the day quota must not be spent on it.
        for _ in 0..10 {
            assert!(!both(T0, &mut out));
            assert!(!out[0].allowed && !out[1].allowed);
            assert_eq!(out[1].remaining, 3);
        }
        assert!(both(T0 + S, &mut out));
        assert!(both(T0 + S, &mut out));
        assert!(both(T0 + 2 * S, &mut out));
        assert_eq!(out[1].remaining, 0);
        // Now the day quota refuses.
        assert!(!both(T0 + 3 * S, &mut out));
        assert!(!out[1].allowed);
    }

    #[test]
    fn expired_cells_are_swept_and_memory_is_bounded() {
        let m = MemoryStore::new();
        let s = spec(Algorithm::TokenBucket, 10, 1);
        let mut out = Vec::new();
        for i in 0..10_000 {
            let key = format!("client-{i}");
            m.check_at(
                T0,
                &[Check {
                    key: &key,
                    spec: &s,
                }],
                &mut out,
            );
        }
        assert_eq!(m.len(), 10_000);
        // A bucket of 10 at 10/s with one token used is full again after 100ms.
        assert_eq!(m.sweep_at(T0 + S / 10 - 1), 0);
        assert_eq!(m.sweep_at(T0 + S / 10), 10_000);
        assert!(m.is_empty());
        let cap: usize = m
            .cells
            .shards
            .iter()
            .map(|s| s.0.lock().unwrap().capacity())
            .sum();
        assert!(cap <= SHARDS * 64, "capacity given back: {cap}");
    }

    #[test]
    fn an_expired_unswept_cell_counts_as_absent() {
        let m = MemoryStore::new();
        let s = spec(Algorithm::FixedWindow, 1, 1);
        let mut out = Vec::new();
        m.check_at(T0, &[Check { key: "k", spec: &s }], &mut out);
        m.check_at(T0 + S, &[Check { key: "k", spec: &s }], &mut out);
        assert!(out[0].allowed);
    }

    #[test]
    fn permits_count_in_flight_and_release_on_drop() {
        let m = MemoryStore::new();
        let a = m.acquire("k", 2).unwrap();
        let b = m.acquire("k", 2).unwrap();
        assert!(m.acquire("k", 2).is_none());
        assert!(m.acquire("other", 2).is_some());
        assert_eq!(m.in_flight("k"), 2);
        drop(a);
        let c = m.acquire("k", 2).unwrap();
        drop((b, c));
        assert_eq!(m.in_flight("k"), 0);
        m.sweep_at(0);
        assert_eq!(m.inflight.len(), 0, "idle counters are swept");
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_paused_time() {
        let m = MemoryStore::with_clock(Clock::at(T0));
        let s = spec(Algorithm::FixedWindow, 1, 1);
        let mut out = Vec::new();
        m.check(&[Check { key: "k", spec: &s }], &mut out);
        assert!(out[0].allowed);
        m.check(&[Check { key: "k", spec: &s }], &mut out);
        assert!(!out[0].allowed);
        tokio::time::advance(Duration::from_millis(999)).await;
        m.check(&[Check { key: "k", spec: &s }], &mut out);
        assert!(!out[0].allowed);
        tokio::time::advance(Duration::from_millis(1)).await;
        m.check(&[Check { key: "k", spec: &s }], &mut out);
        assert!(out[0].allowed, "a new window at exactly one second");
    }
}
