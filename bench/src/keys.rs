//! Random numbers, `redis-benchmark`-style keys and shard routing of the keyspace.
//!
//! Keys are a prefix and the key number in 12 zero-padded digits, exactly what
//! `redis-benchmark -r` puts in place of `__rand_int__` (`key:000000004217`: 16 bytes),
//! so both systems see the same keys. With several shards, the keyspace is split once
//! into per-shard lists by FNV-1a, so every socket only gets keys its shard owns.

use procmesh_proto::hash::shard_index;

/// Digits of the key number, as in `redis-benchmark`.
pub const KEY_DIGITS: usize = 12;

/// Prefix of cache keys (`get`, `set`, `mixed`, `fill`).
pub const KEY_PREFIX: &str = "key:";

/// Prefix of counter keys (`incr`), as `redis-benchmark -t incr` uses.
pub const COUNTER_PREFIX: &str = "counter:";

/// xorshift64* — fast, and good enough to pick keys.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` below 2^32; 0 when `n` is 0).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }
}

/// Writes `prefix` and `n` in [`KEY_DIGITS`] zero-padded digits into `out`.
#[inline]
pub fn format_key(prefix: &str, n: u64, out: &mut String) {
    out.clear();
    out.push_str(prefix);
    let mut digits = [b'0'; KEY_DIGITS];
    let mut v = n;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend(digits.iter().map(|&b| b as char));
}

/// The key numbers `0..keyspace` of one prefix, split by owning shard.
#[derive(Debug)]
pub struct ShardedKeys {
    /// Per shard, the key numbers it owns.
    pub buckets: Vec<Vec<u32>>,
}

impl ShardedKeys {
    /// Splits `0..keyspace` of keys `prefix…` over `shards` by FNV-1a.
    pub fn new(prefix: &str, keyspace: u64, shards: usize) -> ShardedKeys {
        let mut buckets = vec![Vec::new(); shards.max(1)];
        let mut key = String::new();
        for n in 0..keyspace.min(u32::MAX as u64) {
            format_key(prefix, n, &mut key);
            buckets[shard_index(&key, shards)].push(n as u32);
        }
        ShardedKeys { buckets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_redis_benchmark() {
        let mut k = String::new();
        format_key(KEY_PREFIX, 4217, &mut k);
        assert_eq!(k, "key:000000004217");
        assert_eq!(k.len(), 16);
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = Rng::new(0);
        assert!((0..10_000).all(|_| r.below(7) < 7));
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn sharded_keys_route_to_their_shard() {
        let s = ShardedKeys::new(KEY_PREFIX, 1000, 3);
        assert_eq!(s.buckets.iter().map(Vec::len).sum::<usize>(), 1000);
        let mut k = String::new();
        for (i, b) in s.buckets.iter().enumerate() {
            for &n in b.iter().take(20) {
                format_key(KEY_PREFIX, n as u64, &mut k);
                assert_eq!(shard_index(&k, 3), i);
            }
        }
    }
}
