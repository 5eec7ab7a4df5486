//! Criterion benches of the store at the size of the memory test: 1M keys of 16 B
//! with 32-byte string values, where every lookup misses the CPU caches and the
//! layout (pointers followed per hit, bytes per key) decides the cost. The 100k-key
//! benches in `broker.rs` mostly fit the last-level cache.
//!
//! Run with `cargo bench -p procmesh-bench --bench store`. Throughput is per
//! operation (`Throughput::Elements`); the keys look like `redis-benchmark`'s.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use procmesh_bench::keys::{format_key, Rng, COUNTER_PREFIX, KEY_PREFIX};
use procmesh_broker::store::{Store, StoreConfig};
use procmesh_proto::value::validate;
use procmesh_proto::{Codec, Num};

/// Keys held (the memory test).
const KEYS: u64 = 1_000_000;

fn store_1m(c: &mut Criterion) {
    let keys: Vec<String> = (0..KEYS)
        .map(|i| {
            let mut k = String::new();
            format_key(KEY_PREFIX, i, &mut k);
            k
        })
        .collect();
    let mut bytes = vec![0xd9, 32];
    bytes.extend_from_slice(&[b'x'; 32]);
    let value = validate(Codec::MsgPack, &bytes).expect("value is valid MessagePack");
    let mut s = Store::new(StoreConfig {
        max_entries: 0,
        max_bytes: 0,
        default_ttl_ms: 0,
    });
    for k in &keys {
        s.set(k, value, None, 0);
    }
    let counters: Vec<String> = (0..KEYS)
        .map(|i| {
            let mut k = String::new();
            format_key(COUNTER_PREFIX, i, &mut k);
            k
        })
        .collect();

    let mut g = c.benchmark_group("store_1m_keys");
    g.throughput(Throughput::Elements(1));
    let mut rng = Rng::new(1);
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            let k = &keys[rng.below(KEYS) as usize];
            black_box(s.get(black_box(k), 1).map(|v| v.bytes.len()))
        })
    });
    g.bench_function("set_overwrite_same_size", |b| {
        b.iter(|| {
            let k = &keys[rng.below(KEYS) as usize];
            s.set(black_box(k), value, None, 1);
        })
    });
    g.bench_function("incr_random_counter", |b| {
        b.iter(|| {
            let k = &counters[rng.below(KEYS) as usize];
            black_box(s.incr(black_box(k), Num::Int(1), 1).is_ok())
        })
    });
    g.finish();
}

criterion_group!(benches, store_1m);
criterion_main!(benches);
