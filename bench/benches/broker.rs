//! Criterion benches of the broker's data structures: the cache (`get`, `set`,
//! `incr`, lazy and active expiry) and the pub/sub match index with 10k patterns.
//!
//! Run with `cargo bench -p procmesh-bench --bench broker`. Throughput is per
//! operation (`Throughput::Elements`); the keys look like `redis-benchmark`'s.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use procmesh_bench::keys::{format_key, Rng, KEY_PREFIX};
use procmesh_broker::pubsub::PubSub;
use procmesh_broker::store::{Store, StoreConfig};
use procmesh_proto::value::validate;
use procmesh_proto::{topic, Codec, Num, Raw};

/// Keys held by the store benches.
const KEYS: u64 = 100_000;

fn keys(n: u64) -> Vec<String> {
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut k = String::new();
        format_key(KEY_PREFIX, i, &mut k);
        out.push(k);
    }
    out
}

/// A MessagePack string of 32 bytes (the memory-test value).
fn value32() -> Vec<u8> {
    let mut v = vec![0xd9, 32];
    v.extend_from_slice(&[b'x'; 32]);
    v
}

fn filled(keys: &[String], value: Raw<'_>, max_entries: usize, ttl_ms: Option<u64>) -> Store {
    let mut s = Store::new(StoreConfig {
        max_entries,
        max_bytes: 0,
        default_ttl_ms: 0,
    });
    for k in keys {
        s.set(k, value, ttl_ms, 0);
    }
    s
}

fn store(c: &mut Criterion) {
    let ks = keys(KEYS);
    let bytes = value32();
    let value = validate(Codec::MsgPack, &bytes).expect("value is valid MessagePack");
    let mut g = c.benchmark_group("store_100k_keys");
    g.throughput(Throughput::Elements(1));

    let mut s = filled(&ks, value, 0, None);
    let mut rng = Rng::new(1);
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            let k = &ks[rng.below(KEYS) as usize];
            black_box(s.get(black_box(k), 1).map(|v| v.bytes.len()))
        })
    });
    g.bench_function("get_miss", |b| {
        b.iter(|| black_box(s.get(black_box("key:999999999999"), 1).is_none()))
    });
    g.bench_function("set_overwrite_same_size", |b| {
        b.iter(|| {
            let k = &ks[rng.below(KEYS) as usize];
            s.set(black_box(k), value, None, 1);
        })
    });
    let counter = validate(Codec::MsgPack, &[0x05]).expect("an integer is valid");
    s.set("counter", counter, None, 1);
    g.bench_function("incr", |b| {
        b.iter(|| black_box(s.incr(black_box("counter"), Num::Int(1), 1).is_ok()))
    });
    drop(s);

    // At the bound, every insert of a new key evicts the least recently used one.
    let mut s = filled(&ks, value, KEYS as usize, None);
    let mut next = KEYS;
    let mut key = String::new();
    g.bench_function("set_new_evicting_lru", |b| {
        b.iter(|| {
            format_key(KEY_PREFIX, next, &mut key);
            next += 1;
            s.set(black_box(&key), value, None, 1);
        })
    });
    drop(s);
    g.finish();

    // Expiry: 10k entries with a 1 ms TTL, read (lazy) or reclaimed (active) at t=10.
    let n = 10_000u64;
    let some = &ks[..n as usize];
    let mut g = c.benchmark_group("store_expire");
    g.throughput(Throughput::Elements(n));
    g.bench_function("lazy_on_get_10k", |b| {
        b.iter_batched(
            || filled(some, value, 0, Some(1)),
            |mut s| {
                for k in some {
                    black_box(s.get(k, 10).is_none());
                }
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("active_reclaim_10k", |b| {
        b.iter_batched(
            || filled(some, value, 0, Some(1)),
            |mut s| {
                while s.reclaim(10, 1_000) {}
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// The same 10k subscriptions as the `proto` bench's linear scan.
fn patterns() -> Vec<String> {
    (0..10_000)
        .map(|i| {
            if i % 2 == 0 {
                format!("svc{i}.events.*")
            } else {
                format!("svc{i}.metrics")
            }
        })
        .collect()
}

fn pubsub(c: &mut Criterion) {
    let pats = patterns();
    let mut ps = PubSub::new();
    for (conn, p) in pats.iter().enumerate() {
        ps.subscribe(procmesh_broker::connection::ConnId(conn), p);
    }
    let mut g = c.benchmark_group("topic_match_10k_patterns");
    g.throughput(Throughput::Elements(1));
    for (name, channel) in [
        ("hit_one_pattern", "svc5000.events.created"),
        ("hit_exact", "svc5001.metrics"),
        ("hit_none", "nobody.listens"),
    ] {
        g.bench_function(BenchmarkId::new("pubsub_index", name), |b| {
            b.iter(|| {
                let mut n = 0usize;
                ps.for_each_match(black_box(channel), |_| n += 1);
                n
            })
        });
        g.bench_function(BenchmarkId::new("linear_scan", name), |b| {
            b.iter(|| {
                let ch = black_box(channel);
                pats.iter().filter(|p| topic::matches(p, ch)).count()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, store, pubsub);
criterion_main!(benches);
