//! Balancers: which target of an upstream gets the next try.
//!
//! | strategy | pick | state |
//! |---|---|---|
//! | `round_robin` | next index, equal shares | one atomic counter |
//! | `weighted` | smooth weighted round robin (nginx), precomputed into one cycle | one atomic counter |
//! | `least_connections` | fewest in-flight requests per unit of weight; ties rotate | counter + per-target in-flight |
//! | `p2c` | two random targets, the less loaded one (power of two choices) | per-target in-flight |
//! | `ip_hash`, `hash` | consistent hash of a header, cookie or the client address on a ketama ring or a Maglev table | immutable ring/table |
//!
//! Every pick skips targets that are unhealthy (unless told to ignore health) and targets a
//! retry already tried. Hash balancers walk the ring (or table) to the next usable target,
//! so only the keys of an unusable target move, and they move back when it returns.
//!
//! A balancer is built for one target list; discovery or a reload builds a new one. The
//! hash points come from each target's identity (its URL), not its position, so adding one
//! target to ten moves about one key in eleven. Hashes are FNV-1a with a 64-bit finaliser:
//! stable across processes and Rust versions, so several gateway nodes agree on placement.

use crate::config::upstream::HashAlgorithm;
use http::{HeaderMap, HeaderName};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What the balancer needs to know about a target.
pub trait Candidate {
    fn weight(&self) -> u32;
    fn in_flight(&self) -> usize;
    /// Healthy and not ejected at `now` (ms).
    fn available(&self, now: u64) -> bool;
}

/// The compiled `balance` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Weighted,
    LeastConnections,
    P2c,
    Hash {
        on: HashOn,
        algorithm: HashAlgorithm,
    },
}

/// What a hash balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
}

impl HashOn {
    /// Parses `header:NAME`, `cookie:NAME`, `client_ip`.
    pub fn parse(s: &str) -> Result<HashOn, String> {
        if let Some(h) = s.strip_prefix("header:") {
            return HeaderName::from_bytes(h.trim().as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("{h:?} is not a valid header name"));
        }
        if let Some(c) = s.strip_prefix("cookie:") {
            let c = c.trim();
            if c.is_empty() || c.contains([';', '=', ' ']) {
                return Err(format!("{c:?} is not a cookie name"));
            }
            return Ok(HashOn::Cookie(c.to_owned()));
        }
        match s {
            "client_ip" | "ip" => Ok(HashOn::ClientIp),
            _ => Err(format!(
                "{s:?}: expected header:NAME, cookie:NAME or client_ip"
            )),
        }
    }

    /// The hash of this request's key, if it has one.
    pub fn key(&self, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
        match self {
            HashOn::Header(h) => headers.get(h).map(|v| hash(v.as_bytes())),
            HashOn::Cookie(c) => cookie(headers, c).map(|v| hash(v.as_bytes())),
            HashOn::ClientIp => Some(hash_ip(client)),
        }
    }
}

pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash(&v4.octets()),
            None => hash(&v6.octets()),
        },
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// FNV-1a, then the splitmix64 finaliser so that nearby inputs land far apart.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Points on the ketama ring per target on average.
const KETAMA_POINTS: u64 = 160;
/// Maglev table size: a prime well above 100 × the targets of any upstream we expect.
pub const MAGLEV_SIZE: usize = 65_537;

/// A balancer built for one list of targets.
pub struct Balancer {
    strategy: Strategy,
    next: AtomicUsize,
    /// `weighted`: one smooth-WRR cycle of target indexes.
    rotation: Vec<u32>,
    /// `hash` with ketama: (point, target index), sorted by point.
    ring: Vec<(u64, u32)>,
    /// `hash` with Maglev: the lookup table.
    table: Vec<u32>,
}

impl Balancer {
    /// `ids` are the targets' stable identities (URLs), `weights` their weights, in the
    /// order of the target list.
    pub fn new(strategy: Strategy, ids: &[&str], weights: &[u32]) -> Balancer {
        let mut b = Balancer {
            strategy,
            next: AtomicUsize::new(0),
            rotation: Vec::new(),
            ring: Vec::new(),
            table: Vec::new(),
        };
        match &b.strategy {
            Strategy::Weighted => {
                b.rotation = smooth_rotation(&bounded(weights))
                    .into_iter()
                    .map(|i| i as u32)
                    .collect()
            }
            Strategy::Hash {
                algorithm: HashAlgorithm::Ketama,
                ..
            } => b.ring = ketama(ids, weights),
            Strategy::Hash {
                algorithm: HashAlgorithm::Maglev,
                ..
            } => b.table = maglev(ids, weights, MAGLEV_SIZE),
            _ => {}
        }
        b
    }

    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// Picks a target index. `key` is the request's hash key (hash strategies), `skip` the
    /// targets already tried. With `ignore_health`, unhealthy targets count as usable.
    pub fn pick<C: Candidate>(
        &self,
        targets: &[C],
        key: Option<u64>,
        now: u64,
        skip: &[usize],
        ignore_health: bool,
    ) -> Option<usize> {
        let n = targets.len();
        if n == 0 {
            return None;
        }
        let usable = |i: usize| !skip.contains(&i) && (ignore_health || targets[i].available(now));
        match &self.strategy {
            Strategy::RoundRobin => self.round_robin(n, usable),
            Strategy::Weighted => {
                let len = self.rotation.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| self.rotation[(start + k) % len] as usize)
                    .find(|&i| usable(i))
            }
            Strategy::LeastConnections => {
                // One pass from a rotating start (ties spread), keeping the best's load so
                // each target's counter is read once.
                let mut best: Option<(usize, u64, u64)> = None;
                for i in ring_from(self.next.fetch_add(1, Ordering::Relaxed) % n, n) {
                    if !usable(i) {
                        continue;
                    }
                    let t = &targets[i];
                    let (load, w) = (t.in_flight() as u64 + 1, u64::from(t.weight().max(1)));
                    match best {
                        Some((_, bl, bw)) if load.saturating_mul(bw) >= bl.saturating_mul(w) => {}
                        _ => best = Some((i, load, w)),
                    }
                }
                best.map(|(i, _, _)| i)
            }
            Strategy::P2c => {
                let a = probe(fastrand::usize(0..n), n, &usable)?;
                if n == 1 {
                    return Some(a);
                }
                // A second, different candidate; if `a` is the only usable one, it wins.
                let mut b = fastrand::usize(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let b = match probe(b, n, &|i| i != a && usable(i)) {
                    Some(b) => b,
                    None => return Some(a),
                };
                Some(if less_loaded(&targets[b], &targets[a]) {
                    b
                } else {
                    a
                })
            }
            Strategy::Hash { algorithm, .. } => {
                let Some(key) = key else {
                    // No key on this request (header or cookie absent): spread evenly.
                    return self.round_robin(n, usable);
                };
                match algorithm {
                    HashAlgorithm::Ketama => {
                        let len = self.ring.len();
                        let start = self.ring.partition_point(|&(p, _)| p < key);
                        (0..len)
                            .map(|k| self.ring[(start + k) % len].1 as usize)
                            .find(|&i| usable(i))
                    }
                    HashAlgorithm::Maglev => {
                        let len = self.table.len();
                        let start = (key % len as u64) as usize;
                        (0..len)
                            .map(|k| self.table[(start + k) % len] as usize)
                            .find(|&i| usable(i))
                    }
                }
            }
        }
    }

    fn round_robin(&self, n: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
        probe(self.next.fetch_add(1, Ordering::Relaxed) % n, n, &usable)
    }
}

/// `a` carries less load than `b`: fewer requests in flight per unit of weight (counting
/// the one about to be sent, so weights matter even when both are idle).
fn less_loaded<C: Candidate>(a: &C, b: &C) -> bool {
    let la = (a.in_flight() as u64 + 1).saturating_mul(u64::from(b.weight().max(1)));
    let lb = (b.in_flight() as u64 + 1).saturating_mul(u64::from(a.weight().max(1)));
    la < lb
}

/// Indexes `start, start+1, …, n-1, 0, …, start-1` without a division per step.
fn ring_from(start: usize, n: usize) -> impl Iterator<Item = usize> {
    (start..n).chain(0..start)
}

/// The first usable index at or after `start` (< n), wrapping.
fn probe(start: usize, n: usize, usable: &impl Fn(usize) -> bool) -> Option<usize> {
    ring_from(start, n).find(|&i| usable(i))
}

/// Longest smooth-WRR cycle built; discovered weights (SRV allows 65535 each) are scaled
/// down to it, keeping their proportions within rounding.
pub const MAX_CYCLE: u64 = 100_000;

fn bounded(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
    if total <= MAX_CYCLE {
        return weights.iter().map(|&w| w.max(1)).collect();
    }
    weights
        .iter()
        .map(|&w| ((u64::from(w.max(1)) * MAX_CYCLE / total) as u32).max(1))
        .collect()
}

/// Builds the smooth weighted round-robin sequence (nginx's algorithm) for one full cycle.
pub fn smooth_rotation(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

/// A ketama ring: about 160 points per target on average, in proportion to weight.
fn ketama(ids: &[&str], weights: &[u32]) -> Vec<(u64, u32)> {
    let total: u64 = weights
        .iter()
        .map(|&w| u64::from(w.max(1)))
        .sum::<u64>()
        .max(1);
    let n = ids.len() as u64;
    let mut ring = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let w = u64::from(weights.get(i).copied().unwrap_or(1).max(1));
        let points = ((KETAMA_POINTS * n * w + total / 2) / total).max(1);
        for j in 0..points {
            ring.push((hash(format!("{id}#{j}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016) with weights: each target fills
/// slots from its own permutation, taking turns in proportion to its weight.
fn maglev(ids: &[&str], weights: &[u32], m: usize) -> Vec<u32> {
    const EMPTY: u32 = u32::MAX;
    let n = ids.len();
    let mut table = vec![EMPTY; m];
    if n == 0 {
        return table;
    }
    let perm: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let offset = hash(format!("{id}#offset").as_bytes()) % m as u64;
            let skip = hash(format!("{id}#skip").as_bytes()) % (m as u64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_w = f64::from(weights.iter().copied().max().unwrap_or(1).max(1));
    let mut next = vec![0u64; n];
    let mut credit = vec![0f64; n];
    let mut filled = 0;
    while filled < m {
        for i in 0..n {
            credit[i] += f64::from(weights.get(i).copied().unwrap_or(1).max(1)) / max_w;
            if credit[i] < 1.0 {
                continue;
            }
            credit[i] -= 1.0;
            let (offset, skip) = perm[i];
            loop {
                let c = ((offset + next[i] * skip) % m as u64) as usize;
                next[i] += 1;
                if table[c] == EMPTY {
                    table[c] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct T {
        w: u32,
        load: Cell<usize>,
        up: Cell<bool>,
    }

    impl Candidate for T {
        fn weight(&self) -> u32 {
            self.w
        }
        fn in_flight(&self) -> usize {
            self.load.get()
        }
        fn available(&self, _now: u64) -> bool {
            self.up.get()
        }
    }

    fn targets(weights: &[u32]) -> Vec<T> {
        weights
            .iter()
            .map(|&w| T {
                w,
                load: Cell::new(0),
                up: Cell::new(true),
            })
            .collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:8080")).collect()
    }

    fn build(strategy: Strategy, ids: &[String], weights: &[u32]) -> Balancer {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        Balancer::new(strategy, &refs, weights)
    }

    fn ketama_hash() -> Strategy {
        Strategy::Hash {
            on: HashOn::ClientIp,
            algorithm: HashAlgorithm::Ketama,
        }
    }

    fn maglev_hash() -> Strategy {
        Strategy::Hash {
            on: HashOn::ClientIp,
            algorithm: HashAlgorithm::Maglev,
        }
    }

    #[test]
    fn smooth_weights() {
        assert_eq!(smooth_rotation(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_rotation(&[1, 1]), vec![0, 1]);
        let r = smooth_rotation(&[3, 2]);
        assert_eq!(r.iter().filter(|&&i| i == 0).count(), 3);
    }

    /// Acceptance: weights 5:1 hold within 2% over 60,000 picks, for every balancer that
    /// honours weights (weighted; least_connections, p2c and ketama/maglev with keys).
    #[test]
    fn weights_five_to_one_within_two_percent() {
        let weights = [5, 1];
        let ts = targets(&weights);
        let names = ids(2);
        let expected = 5.0 / 6.0;
        for strategy in [
            Strategy::Weighted,
            Strategy::LeastConnections,
            Strategy::P2c,
            ketama_hash(),
            maglev_hash(),
        ] {
            let b = build(strategy.clone(), &names, &weights);
            let mut first = 0u32;
            for k in 0..60_000u64 {
                let i = b
                    .pick(&ts, Some(hash(&k.to_le_bytes())), 0, &[], false)
                    .unwrap();
                if matches!(strategy, Strategy::LeastConnections | Strategy::P2c) {
                    // Simulate load that drains: requests complete in the order they came,
                    // three per target at a time per unit of weight.
                    ts[i].load.set(ts[i].load.get() + 1);
                    for t in &ts {
                        if t.load.get() >= 3 * t.w as usize {
                            t.load.set(0);
                        }
                    }
                }
                if i == 0 {
                    first += 1;
                }
            }
            let share = f64::from(first) / 60_000.0;
            assert!(
                (share - expected).abs() < 0.02 * expected,
                "{strategy:?}: share {share:.4}, expected {expected:.4}"
            );
        }
    }

    #[test]
    fn huge_weights_are_scaled_to_a_bounded_cycle() {
        let weights = vec![65_535u32; 50];
        let b = build(Strategy::Weighted, &ids(50), &weights);
        assert!(b.rotation.len() as u64 <= MAX_CYCLE);
        assert_eq!(bounded(&[3, 1]), vec![3, 1]);
        let scaled = bounded(&[200_000, 100_000, 0]);
        assert_eq!(scaled, vec![66_666, 33_333, 1]);
    }

    #[test]
    fn round_robin_gives_equal_shares_and_skips() {
        let ts = targets(&[1, 1, 1]);
        let b = build(Strategy::RoundRobin, &ids(3), &[1, 1, 1]);
        let picks: Vec<usize> = (0..6)
            .map(|_| b.pick(&ts, None, 0, &[], false).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        ts[1].up.set(false);
        for _ in 0..10 {
            assert_ne!(b.pick(&ts, None, 0, &[], false), Some(1));
            assert_ne!(b.pick(&ts, None, 0, &[0], false), Some(0));
        }
        assert_eq!(b.pick(&ts, None, 0, &[0, 2], false), None);
        assert_eq!(b.pick(&ts, None, 0, &[0, 2], true), Some(1));
    }

    #[test]
    fn least_connections_prefers_idle() {
        let ts = targets(&[1, 1, 1]);
        ts[0].load.set(5);
        ts[1].load.set(1);
        ts[2].load.set(3);
        let b = build(Strategy::LeastConnections, &ids(3), &[1, 1, 1]);
        for _ in 0..5 {
            assert_eq!(b.pick(&ts, None, 0, &[], false), Some(1));
        }
        assert_eq!(b.pick(&ts, None, 0, &[1], false), Some(2));
    }

    #[test]
    fn p2c_avoids_the_busiest() {
        let ts = targets(&[1, 1, 1]);
        ts[2].load.set(100);
        let b = build(Strategy::P2c, &ids(3), &[1, 1, 1]);
        // Whichever pair is drawn, the loaded target loses unless both draws are it — which
        // cannot happen with two distinct draws.
        for _ in 0..1000 {
            assert_ne!(b.pick(&ts, None, 0, &[], false), Some(2));
        }
        ts[0].up.set(false);
        ts[1].up.set(false);
        assert_eq!(b.pick(&ts, None, 0, &[], false), Some(2));
    }

    /// Acceptance: adding one target to ten remaps at most ~1/11 of the keys (plus a small
    /// epsilon), and every key that moves goes to the new target.
    #[test]
    fn adding_a_target_moves_about_one_key_in_eleven() {
        for strategy in [ketama_hash(), maglev_hash()] {
            let ten = ids(10);
            let eleven = ids(11);
            let before = build(strategy.clone(), &ten, &[1; 10]);
            let after = build(strategy.clone(), &eleven, &[1; 11]);
            let (t10, t11) = (targets(&[1; 10]), targets(&[1; 11]));
            let keys = 100_000u64;
            let mut moved = 0;
            for k in 0..keys {
                let h = hash(format!("user-{k}").as_bytes());
                let a = before.pick(&t10, Some(h), 0, &[], false).unwrap();
                let b = after.pick(&t11, Some(h), 0, &[], false).unwrap();
                if a != b {
                    moved += 1;
                    if matches!(
                        strategy,
                        Strategy::Hash {
                            algorithm: HashAlgorithm::Ketama,
                            ..
                        }
                    ) {
                        assert_eq!(b, 10, "ketama moved a key between old targets");
                    }
                }
            }
            let share = moved as f64 / keys as f64;
            assert!(
                share <= 1.0 / 11.0 + 0.02,
                "{strategy:?}: {share:.4} of keys moved"
            );
            assert!(
                share > 0.05,
                "{strategy:?}: the new target got almost nothing"
            );
        }
    }

    #[test]
    fn hash_is_sticky_and_walks_past_unhealthy() {
        for strategy in [ketama_hash(), maglev_hash()] {
            let ts = targets(&[1; 5]);
            let b = build(strategy.clone(), &ids(5), &[1; 5]);
            let key = hash(b"alice");
            let home = b.pick(&ts, Some(key), 0, &[], false).unwrap();
            for _ in 0..10 {
                assert_eq!(b.pick(&ts, Some(key), 0, &[], false), Some(home));
            }
            ts[home].up.set(false);
            let away = b.pick(&ts, Some(key), 0, &[], false).unwrap();
            assert_ne!(away, home);
            // The fallback is stable too, and the key goes home when the target returns.
            assert_eq!(b.pick(&ts, Some(key), 0, &[], false), Some(away));
            ts[home].up.set(true);
            assert_eq!(b.pick(&ts, Some(key), 0, &[], false), Some(home));
            // A retry skips the home target.
            assert_ne!(b.pick(&ts, Some(key), 0, &[home], false), Some(home));
        }
    }

    #[test]
    fn hash_keys() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; session=abc".parse().unwrap());
        h.append("x-user", "42".parse().unwrap());
        assert_eq!(cookie(&h, "session"), Some("abc"));
        assert_eq!(cookie(&h, "nope"), None);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            HashOn::parse("cookie:session").unwrap().key(&h, ip),
            Some(hash(b"abc"))
        );
        assert_eq!(
            HashOn::parse("header:X-User").unwrap().key(&h, ip),
            Some(hash(b"42"))
        );
        assert_eq!(HashOn::parse("header:X-Other").unwrap().key(&h, ip), None);
        // An IPv4-mapped IPv6 client hashes like the IPv4 address.
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(hash_ip(mapped), hash_ip(ip));
        assert!(HashOn::parse("query:x").is_err());
    }
}
