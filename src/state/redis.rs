//! The Redis store: limits shared exactly by every gateway node on one Redis.
//!
//! - **One round trip per request.** [`SCRIPT`] decides and counts every limit of a request
//!   in one atomic `EVALSHA` (the script is loaded once; after a Redis restart the first
//!   call loads it again). It reads Redis' own clock (`TIME`), so nodes with skewed clocks
//!   still agree on windows and buckets, and it writes nothing unless every limit admits the
//!   request.
//! - **One multiplexed connection per Redis URL**, shared by all requests and kept across
//!   reloads ([`RedisConn`], a `redis` crate `ConnectionManager`: pipelined, reconnecting).
//! - **Redis trouble never blocks requests for long.** Every call has a short timeout
//!   (`state.redis.timeout`, 200ms by default). The first failure marks the connection
//!   *down*: from then on requests do not wait for Redis at all but go straight to the
//!   fallback (`on_error`: `local` counts in this node's memory, `allow` lets them through,
//!   `deny` refuses them), while a background probe pings Redis every
//!   [`PROBE_EVERY`]. The first good answer marks it *up* again and requests return to Redis
//!   by themselves.
//!
//! Keys: `{prefix}rl:{route}:{limit}:{algorithm}:{key parts}`. Token buckets are a string
//! (the theoretical arrival time in µs); windows are a hash `{w, c, p}` (window index, count,
//! previous window's count). Every key carries a TTL of when it stops mattering, so Redis
//! memory is bounded like the memory store's. The keys of one request may hash to different
//! Redis Cluster slots: this targets a single Redis primary (with replicas/Sentinel), not
//! Redis Cluster.

use super::memory::MemoryStore;
use super::{Algorithm, Check, Decision, OnError, Unavailable};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// How often a down connection is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Decides and counts every limit of one request, atomically and all-or-nothing. The
/// arithmetic is that of [`super::algorithms`], in microseconds.
pub const SCRIPT: &str = r#"
-- KEYS[i]: the counter of limit i.
-- ARGV: 4 numbers per limit: algorithm (1 token bucket, 2 fixed window, 3 sliding window),
--       requests, period (microseconds), burst.
-- Returns 4 integers per limit: admitted (1/0), remaining, reset (ms), retry after (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, writes, refused = {}, {}, false
for i, key in ipairs(KEYS) do
  local b = (i - 1) * 4
  local algo = tonumber(ARGV[b + 1])
  local limit = tonumber(ARGV[b + 2])
  local period = tonumber(ARGV[b + 3])
  local burst = tonumber(ARGV[b + 4])
  local ok, remaining, reset, retry = 0, 0, 0, 0
  if algo == 1 then
    local T = period / limit
    local tau = T * burst
    local tat = tonumber(redis.call('GET', key)) or 0
    if tat < now then tat = now end
    local new_tat = tat + T
    if new_tat > now + tau then
      reset = tat - now
      retry = new_tat - tau - now
    else
      ok = 1
      remaining = math.floor((now + tau - new_tat) / T)
      reset = new_tat - now
      writes[#writes + 1] = {1, key, new_tat, new_tat - now}
    end
  else
    local w = math.floor(now / period)
    local elapsed = now - w * period
    local left = period - elapsed
    local h = redis.call('HMGET', key, 'w', 'c', 'p')
    local hw = tonumber(h[1])
    local curr, prev = 0, 0
    if hw == w then
      curr, prev = tonumber(h[2]) or 0, tonumber(h[3]) or 0
    elseif hw == w - 1 then
      prev = tonumber(h[2]) or 0
    end
    reset = left
    if algo == 2 then
      if curr >= limit then
        retry = left
      else
        ok = 1
        remaining = limit - curr - 1
        writes[#writes + 1] = {2, key, w, curr + 1, 0, left}
      end
    else
      local est = prev * (left / period) + curr
      if est + 1 > limit then
        if curr < limit and prev > 0 then
          retry = math.ceil(period * (1 - (limit - 1 - curr) / prev) - elapsed)
        else
          local tn = 0
          if curr > 0 then tn = period * (1 - (limit - 1) / curr) end
          if tn < 0 then tn = 0 end
          retry = left + math.ceil(tn)
        end
        if retry < 1 then retry = 1 end
      else
        ok = 1
        remaining = math.floor(limit - est - 1)
        if remaining < 0 then remaining = 0 end
        writes[#writes + 1] = {2, key, w, curr + 1, prev, left + period}
      end
    end
  end
  if ok == 0 then refused = true end
  out[#out + 1] = ok
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(reset / 1000)
  out[#out + 1] = math.ceil(retry / 1000)
end
if not refused then
  for _, x in ipairs(writes) do
    local ttl = math.ceil(x[#x] / 1000)
    if ttl < 1 then ttl = 1 end
    if x[1] == 1 then
      redis.call('SET', x[2], string.format('%.0f', x[3]), 'PX', ttl)
    else
      redis.call('HSET', x[2], 'w', string.format('%.0f', x[3]), 'c', x[4], 'p', x[5])
      redis.call('PEXPIRE', x[2], ttl)
    end
  end
end
return out
"#;

/// One Redis server: a lazily made multiplexed connection, its health, and the script.
/// Shared by every store (prefix, `on_error`) that names the same URL.
pub struct RedisConn {
    url: String,
    client: Option<redis::Client>,
    manager: OnceLock<Result<ConnectionManager, String>>,
    timeout_ns: AtomicU64,
    down: AtomicBool,
    probing: AtomicBool,
    script: redis::Script,
}

impl RedisConn {
    /// Never blocks; when called inside a tokio runtime it starts connecting in the
    /// background so that the first request does not pay for the connection.
    pub fn new(url: &str, timeout: Duration) -> Arc<RedisConn> {
        let conn = Arc::new(RedisConn {
            url: url.to_owned(),
            client: redis::Client::open(url).ok(),
            manager: OnceLock::new(),
            timeout_ns: AtomicU64::new(timeout.as_nanos() as u64),
            down: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            script: redis::Script::new(SCRIPT),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&conn);
            rt.spawn(async move {
                let Some(conn) = weak.upgrade() else { return };
                if let Err(e) = conn.warm().await {
                    conn.mark_down(&e);
                }
            });
        }
        conn
    }

    pub fn set_timeout(&self, t: Duration) {
        self.timeout_ns
            .store(t.as_nanos() as u64, Ordering::Relaxed);
    }

    fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_ns.load(Ordering::Relaxed))
    }

    /// Whether requests currently skip Redis.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// The connection manager, made on first use (it needs the runtime).
    fn manager(&self) -> Result<ConnectionManager, String> {
        self.manager
            .get_or_init(|| {
                let client = self
                    .client
                    .clone()
                    .ok_or_else(|| format!("{:?} is not a Redis URL", self.url))?;
                let t = self.timeout();
                // Few, quick reconnect attempts: the probe drives recovery, and a request
                // must never queue behind a long backoff.
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(t))
                    .set_response_timeout(Some(t))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(200));
                ConnectionManager::new_lazy_with_config(client, cfg).map_err(|e| e.to_string())
            })
            .clone()
    }

    async fn ping(&self) -> Result<(), String> {
        let mut m = self.manager()?;
        match tokio::time::timeout(
            self.timeout(),
            redis::cmd("PING").query_async::<String>(&mut m),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout())),
        }
    }

    /// Connects and loads the script, so that even the first request is one `EVALSHA`.
    async fn warm(&self) -> Result<(), String> {
        self.ping().await?;
        let mut m = self.manager()?;
        match tokio::time::timeout(self.timeout(), self.script.load_async(&mut m)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout())),
        }
    }

    /// Marks the connection down (once per outage: logs and starts the probe).
    fn mark_down(self: &Arc<Self>, why: &str) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(url = %redacted(&self.url), error = why, "Redis unreachable; rate limits use their on_error fallback until it is back");
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<RedisConn> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(conn) = weak.upgrade() else { return };
                // A restarted Redis has forgotten the script: load it before requests return.
                if conn.warm().await.is_ok() {
                    conn.probing.store(false, Ordering::Release);
                    conn.down.store(false, Ordering::Release);
                    tracing::info!(url = %redacted(&conn.url), "Redis is back; rate limits are shared again");
                    return;
                }
            }
        });
    }

    /// Runs the script for `checks` (keys prefixed with `prefix`).
    async fn eval(&self, prefix: &str, checks: &[Check<'_>]) -> Result<Vec<i64>, String> {
        let mut m = self.manager()?;
        let mut inv = self.script.prepare_invoke();
        for c in checks {
            let mut k = String::with_capacity(prefix.len() + c.key.len());
            k.push_str(prefix);
            k.push_str(c.key);
            inv.key(k);
        }
        for c in checks {
            let algo = match c.spec.algorithm {
                Algorithm::TokenBucket => 1,
                Algorithm::FixedWindow => 2,
                Algorithm::SlidingWindow => 3,
            };
            let period_us = (c.spec.period.as_micros() as u64).max(1);
            inv.arg(algo)
                .arg(c.spec.requests)
                .arg(period_us)
                .arg(c.spec.burst);
        }
        match tokio::time::timeout(self.timeout(), inv.invoke_async::<Vec<i64>>(&mut m)).await {
            Ok(Ok(v)) if v.len() == checks.len() * 4 => Ok(v),
            Ok(Ok(v)) => Err(format!("unexpected script answer of {} values", v.len())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout())),
        }
    }
}

/// A URL for logs, without a password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// The store of one `state: { backend: redis }` section.
pub struct RedisStore {
    conn: Arc<RedisConn>,
    prefix: String,
    on_error: OnError,
    local: Arc<MemoryStore>,
}

impl RedisStore {
    pub fn new(
        conn: Arc<RedisConn>,
        prefix: &str,
        on_error: OnError,
        local: Arc<MemoryStore>,
    ) -> RedisStore {
        RedisStore {
            conn,
            prefix: prefix.to_owned(),
            on_error,
            local,
        }
    }

    pub fn local(&self) -> &Arc<MemoryStore> {
        &self.local
    }

    pub fn connection(&self) -> &Arc<RedisConn> {
        &self.conn
    }

    pub async fn check(
        &self,
        checks: &[Check<'_>],
        out: &mut Vec<Decision>,
    ) -> Result<(), Unavailable> {
        if !self.conn.is_down() {
            match self.conn.eval(&self.prefix, checks).await {
                Ok(v) => {
                    decode(checks, &v, out);
                    return Ok(());
                }
                Err(e) => self.conn.mark_down(&e),
            }
        }
        match self.on_error {
            OnError::Local => {
                self.local.check(checks, out);
                Ok(())
            }
            on_error => Err(Unavailable { on_error }),
        }
    }
}

fn decode(checks: &[Check<'_>], v: &[i64], out: &mut Vec<Decision>) {
    out.clear();
    let ms = |x: i64| Duration::from_millis(x.max(0) as u64);
    for (c, x) in checks.iter().zip(v.chunks_exact(4)) {
        let limit = match c.spec.algorithm {
            Algorithm::TokenBucket => c.spec.burst,
            _ => c.spec.requests,
        };
        out.push(Decision {
            allowed: x[0] == 1,
            limit,
            remaining: x[1].max(0) as u64,
            reset: ms(x[2]),
            retry_after: ms(x[3]),
        });
    }
    // As in the memory store: when one limit refused, nothing was counted anywhere.
    if out.iter().any(|d| !d.allowed) {
        for d in out.iter_mut().filter(|d| d.allowed) {
            d.allowed = false;
            d.remaining = (d.remaining + 1).min(d.limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
