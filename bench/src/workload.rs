//! What each request stream sends next: the op generator of a workload.
//!
//! Key-routed workloads (`get`, `set`, `incr`, `mixed`, `fill`) open one stream per
//! shard on every connection and draw keys that the stream's shard owns. Workloads on
//! one name (`publish` to one channel, `call` of one procedure, `lock` of one key per
//! connection) open a single stream to the shard owning that name, as a sharded client
//! routes it.

use std::sync::Arc;

use crate::cli::Workload;
use crate::keys::{format_key, Rng, ShardedKeys, COUNTER_PREFIX, KEY_PREFIX};
use crate::wire::Op;

/// Channel of the `publish` workload.
pub const CHANNEL: &str = "bench";

/// Procedure of the `call` workload.
pub const PROCEDURE: &str = "bench.echo";

/// Percentage of `get` in `mixed`.
pub const MIXED_GET_PERCENT: u64 = 80;

/// The key prefix a workload draws from (`None` for workloads on one name).
pub fn key_prefix(w: Workload) -> Option<&'static str> {
    match w {
        Workload::Get | Workload::Set | Workload::Mixed | Workload::Fill => Some(KEY_PREFIX),
        Workload::Incr => Some(COUNTER_PREFIX),
        Workload::Publish | Workload::Call | Workload::Lock => None,
    }
}

/// The lock key of connection `conn`.
pub fn lock_key(conn: usize) -> String {
    format!("lock:{conn}")
}

/// Where a stream's key numbers come from.
#[derive(Debug)]
enum Keys {
    /// Uniform over `0..keyspace` (one shard).
    All(u64),
    /// Uniform over the key numbers of one shard.
    Shard(Arc<ShardedKeys>, usize),
}

/// The next-op generator of one stream.
#[derive(Debug)]
pub struct OpGen {
    workload: Workload,
    rng: Rng,
    keys: Keys,
    /// `fill`: the next position in the stream's share and its end.
    fill_pos: u64,
    fill_end: u64,
    key: String,
    value: String,
    /// The lock key, channel or procedure.
    name: String,
    lock_held: bool,
}

impl OpGen {
    /// A generator for stream `shard` of connection `conn` out of `conns`.
    ///
    /// `sharded` holds the per-shard key lists when there are several shards.
    pub fn new(
        workload: Workload,
        seed: u64,
        keyspace: u64,
        size: usize,
        sharded: Option<(Arc<ShardedKeys>, usize)>,
        conn: usize,
        conns: usize,
    ) -> OpGen {
        let keys = match sharded {
            Some((k, s)) => Keys::Shard(k, s),
            None => Keys::All(keyspace),
        };
        let share = match &keys {
            Keys::All(n) => *n,
            Keys::Shard(k, s) => k.buckets[*s].len() as u64,
        };
        let conns = conns.max(1) as u64;
        let (fill_pos, fill_end) = (
            share * conn as u64 / conns,
            share * (conn as u64 + 1) / conns,
        );
        let name = match workload {
            Workload::Publish => CHANNEL.to_string(),
            Workload::Call => PROCEDURE.to_string(),
            Workload::Lock => lock_key(conn),
            _ => String::new(),
        };
        OpGen {
            workload,
            rng: Rng::new(seed ^ ((conn as u64) << 32) ^ fill_pos),
            keys,
            fill_pos,
            fill_end,
            key: String::with_capacity(32),
            value: "x".repeat(size),
            name,
            lock_held: false,
        }
    }

    /// Requests this stream can send at most (`fill` sets each of its keys once).
    pub fn budget(&self) -> u64 {
        match self.workload {
            Workload::Fill => self.fill_end - self.fill_pos,
            _ => match &self.keys {
                Keys::Shard(k, s)
                    if k.buckets[*s].is_empty() && key_prefix(self.workload).is_some() =>
                {
                    0
                }
                _ => u64::MAX,
            },
        }
    }

    #[inline]
    fn pick(&mut self) -> u64 {
        match &self.keys {
            Keys::All(n) => self.rng.below(*n),
            Keys::Shard(k, s) => {
                let b = &k.buckets[*s];
                b[self.rng.below(b.len() as u64) as usize] as u64
            }
        }
    }

    #[inline]
    fn nth(&self, i: u64) -> u64 {
        match &self.keys {
            Keys::All(_) => i,
            Keys::Shard(k, s) => k.buckets[*s][i as usize] as u64,
        }
    }

    /// The next request.
    #[inline]
    pub fn next_op(&mut self) -> Op<'_> {
        match self.workload {
            Workload::Get => {
                let n = self.pick();
                format_key(KEY_PREFIX, n, &mut self.key);
                Op::Get(&self.key)
            }
            Workload::Set => {
                let n = self.pick();
                format_key(KEY_PREFIX, n, &mut self.key);
                Op::Set(&self.key, &self.value)
            }
            Workload::Incr => {
                let n = self.pick();
                format_key(COUNTER_PREFIX, n, &mut self.key);
                Op::Incr(&self.key)
            }
            Workload::Mixed => {
                let n = self.pick();
                format_key(KEY_PREFIX, n, &mut self.key);
                if self.rng.below(100) < MIXED_GET_PERCENT {
                    Op::Get(&self.key)
                } else {
                    Op::Set(&self.key, &self.value)
                }
            }
            Workload::Fill => {
                let n = self.nth(self.fill_pos.min(self.fill_end.saturating_sub(1)));
                self.fill_pos += 1;
                format_key(KEY_PREFIX, n, &mut self.key);
                Op::Set(&self.key, &self.value)
            }
            Workload::Publish => Op::Pub(&self.name, &self.value),
            Workload::Call => Op::Call(&self.name, &self.value),
            Workload::Lock => {
                self.lock_held = !self.lock_held;
                if self.lock_held {
                    Op::Lock(&self.name)
                } else {
                    Op::Unlock(&self.name)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_covers_the_keyspace_once() {
        let mut seen = Vec::new();
        for conn in 0..3 {
            let mut g = OpGen::new(Workload::Fill, 1, 10, 2, None, conn, 3);
            for _ in 0..g.budget() {
                if let Op::Set(k, v) = g.next_op() {
                    assert_eq!(v, "xx");
                    seen.push(k.to_string());
                }
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn lock_alternates() {
        let mut g = OpGen::new(Workload::Lock, 1, 10, 2, None, 7, 8);
        assert!(matches!(g.next_op(), Op::Lock("lock:7")));
        assert!(matches!(g.next_op(), Op::Unlock("lock:7")));
        assert!(matches!(g.next_op(), Op::Lock("lock:7")));
    }

    #[test]
    fn mixed_is_mostly_gets() {
        let mut g = OpGen::new(Workload::Mixed, 3, 1000, 3, None, 0, 1);
        let gets = (0..10_000)
            .filter(|_| matches!(g.next_op(), Op::Get(_)))
            .count();
        assert!((7_500..8_500).contains(&gets), "{gets}");
    }
}
