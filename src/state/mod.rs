//! Shared state: where rate-limit counters (and in-flight counts) live, outside the config
//! snapshot so that they survive reloads.
//!
//! The interface is one operation, [`Store::check`]: given every limit of one request (a key
//! and a [`LimitSpec`] each), decide and count them all at once, all-or-nothing — a request
//! refused by one limit counts against none. Two implementations sit behind it:
//!
//! - [`memory::MemoryStore`] (the default): one node, no dependencies. Sharded, no global
//!   lock; idle keys expire and a background sweeper frees them.
//! - [`redis::RedisStore`]: any number of gateway nodes share exact limits through one Redis.
//!   One `EVALSHA` of an atomic Lua script per request covers all limits of the route, over
//!   one multiplexed auto-reconnecting connection. When Redis is away the store falls back as
//!   configured (`on_error: local | allow | deny`) and returns to Redis by itself.
//!
//! Concurrency limits (in-flight requests) are node-local by design and always use the memory
//! store (see [`memory::Permit`]).
//!
//! Lifetimes: a [`Stores`] registry lives as long as the server (next to the upstream pools).
//! A compiled config holds a [`Binding`]: the compiled `state:` section and a slot that the
//! server fills with the matching store when it installs the snapshot. Policies reach their
//! store through that slot.

pub mod algorithms;
pub mod memory;
pub mod redis;

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// GCRA: `requests` per `per` refilled continuously, bursts up to `burst`.
    #[default]
    TokenBucket,
    /// A counter per aligned window (`1d` = a UTC day); resets on the boundary.
    FixedWindow,
    /// The two-window counter: the previous window weighted by its overlap.
    SlidingWindow,
}

impl Algorithm {
    /// Short tag used in counter keys (a changed algorithm starts fresh counters instead of
    /// misreading another algorithm's state).
    pub fn tag(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "tb",
            Algorithm::FixedWindow => "fw",
            Algorithm::SlidingWindow => "sw",
        }
    }
}

/// One limit's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    pub algorithm: Algorithm,
    /// Requests per `period`.
    pub requests: u64,
    pub period: Duration,
    /// Token bucket capacity; equal to `requests` for the windows.
    pub burst: u64,
}

/// The largest `requests`/`burst` accepted (counts are 32-bit in the memory store).
pub const MAX_REQUESTS: u64 = 1_000_000_000;

/// One limit to check for one request.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The counter key without the store's prefix.
    pub key: &'a str,
    pub spec: &'a LimitSpec,
}

/// The answer of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The quota shown to clients (`burst` for token buckets, `requests` for windows).
    pub limit: u64,
    /// Requests left after this one.
    pub remaining: u64,
    /// Until the quota is fully restored (token bucket) or the window ends (windows).
    pub reset: Duration,
    /// When refused: until a request would be admitted.
    pub retry_after: Duration,
}

/// What to do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Enforce the same limits in this node's memory until Redis is back.
    #[default]
    Local,
    /// Let requests through unlimited.
    Allow,
    /// Refuse requests (503).
    Deny,
}

/// The store could not decide (Redis away with `on_error: allow | deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable {
    pub on_error: OnError,
}

/// A store handle; cheap to clone.
#[derive(Clone)]
pub enum Store {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

impl Store {
    /// Decides every check of one request at once (all-or-nothing) and writes one decision
    /// per check into `out`, in order.
    pub async fn check(
        &self,
        checks: &[Check<'_>],
        out: &mut Vec<Decision>,
    ) -> Result<(), Unavailable> {
        match self {
            Store::Memory(m) => {
                m.check(checks, out);
                Ok(())
            }
            Store::Redis(r) => r.check(checks, out).await,
        }
    }

    /// The node-local store (concurrency limits; the `local` fallback of Redis).
    pub fn memory(&self) -> &Arc<MemoryStore> {
        match self {
            Store::Memory(m) => m,
            Store::Redis(r) => r.local(),
        }
    }
}

/// The compiled `state:` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateSpec {
    #[default]
    Memory,
    Redis(RedisSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSpec {
    pub url: String,
    pub prefix: String,
    pub on_error: OnError,
    /// Longest wait for one Redis answer before the fallback takes over.
    pub timeout: Duration,
}

pub const DEFAULT_PREFIX: &str = "portcullis:";
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(200);

/// The stores of one server, kept across reloads: one memory store, and one Redis connection
/// per URL (a reload that keeps the URL keeps the connection).
pub struct Stores {
    memory: Arc<MemoryStore>,
    redis: Mutex<HashMap<String, Arc<redis::RedisConn>>>,
}

impl Default for Stores {
    fn default() -> Self {
        Stores::new()
    }
}

impl Stores {
    /// Also starts the memory store's sweeper when called inside a tokio runtime.
    pub fn new() -> Stores {
        let memory = Arc::new(MemoryStore::new());
        memory::spawn_sweeper(&memory);
        Stores {
            memory,
            redis: Mutex::new(HashMap::new()),
        }
    }

    pub fn memory(&self) -> &Arc<MemoryStore> {
        &self.memory
    }

    /// The store for a compiled `state:` section. Never blocks: a Redis connection is made in
    /// the background.
    pub fn store_for(&self, spec: &StateSpec) -> Store {
        // Only at install time, never per request. A connection the new config no longer
        // names is dropped here (snapshots still serving keep theirs alive until they end).
        let mut conns = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        match spec {
            StateSpec::Memory => {
                conns.clear();
                Store::Memory(self.memory.clone())
            }
            StateSpec::Redis(r) => {
                conns.retain(|url, _| *url == r.url);
                let conn = conns
                    .entry(r.url.clone())
                    .or_insert_with(|| redis::RedisConn::new(&r.url, r.timeout))
                    .clone();
                conn.set_timeout(r.timeout);
                Store::Redis(Arc::new(RedisStore::new(
                    conn,
                    &r.prefix,
                    r.on_error,
                    self.memory.clone(),
                )))
            }
        }
    }
}

/// The slot a snapshot's policies read their store from.
#[derive(Clone, Default)]
pub struct StateSlot(Arc<OnceLock<Store>>);

impl StateSlot {
    /// The bound store. A snapshot that no server bound (a config compiled and used on its
    /// own) gets a private memory store.
    pub fn store(&self) -> &Store {
        self.0
            .get_or_init(|| Store::Memory(Arc::new(MemoryStore::new())))
    }
}

/// A compiled config's state: what it asked for, and the slot its policies read.
#[derive(Clone, Default)]
pub struct Binding {
    pub spec: StateSpec,
    pub slot: StateSlot,
}

impl Binding {
    pub fn new(spec: StateSpec) -> Binding {
        Binding {
            spec,
            slot: StateSlot::default(),
        }
    }

    /// Fills the slot from the server's stores (once; later calls change nothing).
    pub fn bind(&self, stores: &Stores) {
        if self.slot.0.get().is_none() {
            let _ = self.slot.0.set(stores.store_for(&self.spec));
        }
    }
}

/// Nanoseconds since the Unix epoch, advanced by tokio's clock so that tests can pause and
/// advance time. The Unix alignment makes fixed windows of a day end at midnight UTC.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: tokio::time::Instant,
    base_unix_ns: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    pub fn new() -> Clock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            base: tokio::time::Instant::now(),
            base_unix_ns: unix.as_nanos() as u64,
        }
    }

    /// A clock that reads `unix_ns` now (tests).
    pub fn at(unix_ns: u64) -> Clock {
        Clock {
            base: tokio::time::Instant::now(),
            base_unix_ns: unix_ns,
        }
    }

    pub fn now(&self) -> u64 {
        self.base_unix_ns + self.base.elapsed().as_nanos() as u64
    }
}
