//! One pick among 100 targets, for each balancer: the work a request does to choose where
//! to go (health check of the candidate, in-flight counts, ring or table lookups).
//!
//! `cargo bench --bench balancers`. Targets are the real `TargetRt`s with their long-lived
//! state, all healthy, with a few requests in flight so least-connections and p2c compare.

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::config::upstream::HashAlgorithm;
use portcullis::upstream::balancer::{hash, HashOn, Strategy};
use portcullis::upstream::state::TargetState;
use portcullis::upstream::{parse_target, TargetRt, TargetSet};
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn set(strategy: Strategy) -> TargetSet {
    let targets = (0..100)
        .map(|i| {
            let target =
                parse_target(&format!("http://10.0.{}.{}:8080", i / 250, i % 250)).unwrap();
            let state = Arc::new(TargetState::new(target.key().into()));
            state.in_flight.store(i % 7, Ordering::Relaxed);
            TargetRt {
                target,
                weight: 1 + (i as u32 % 3),
                state,
            }
        })
        .collect();
    TargetSet::new(strategy, targets, Vec::new())
}

fn picks(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick_of_100");
    let strategies = [
        ("round_robin", Strategy::RoundRobin),
        ("weighted", Strategy::Weighted),
        ("least_connections", Strategy::LeastConnections),
        ("p2c", Strategy::P2c),
        (
            "hash_ketama",
            Strategy::Hash {
                on: HashOn::ClientIp,
                algorithm: HashAlgorithm::Ketama,
            },
        ),
        (
            "hash_maglev",
            Strategy::Hash {
                on: HashOn::ClientIp,
                algorithm: HashAlgorithm::Maglev,
            },
        ),
    ];
    for (name, strategy) in strategies {
        let hashed = matches!(strategy, Strategy::Hash { .. });
        let s = set(strategy);
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                // Hash balancers: a different key per pick, hashed as a request's key is.
                let key = hashed.then(|| {
                    n = n.wrapping_add(1);
                    hash(&n.to_le_bytes())
                });
                black_box(s.balancer.pick(&s.targets, key, 1, &[], false))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
