//! Broker statistics (PROTOCOL.md §10) and their sum over shards.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// A broker's statistics, or for a sharded client the sum over its shards with
/// each shard's own in [`Stats::shards`].
///
/// Counters the broker does not report read as 0. Everything the broker sent,
/// including fields this type does not name, is in [`Stats::raw`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct Stats {
    /// Milliseconds since the broker started (the longest, when summed).
    #[serde(deserialize_with = "num")]
    pub uptime_ms: u64,
    /// Open connections.
    #[serde(deserialize_with = "num")]
    pub connections: u64,
    /// Live cache entries.
    #[serde(deserialize_with = "num")]
    pub cache_size: u64,
    /// Requests handled, by type tag.
    #[serde(deserialize_with = "num_map")]
    pub ops: BTreeMap<String, u64>,
    /// Message frames dropped for slow consumers.
    #[serde(deserialize_with = "num")]
    pub dropped: u64,
    /// Deduplicated publish retries.
    #[serde(deserialize_with = "num")]
    pub duplicates: u64,
    /// Entries in the idempotent-producer table.
    #[serde(deserialize_with = "num")]
    pub dedup_size: u64,
    /// Connections closed for missing heartbeats.
    #[serde(deserialize_with = "num")]
    pub reaped: u64,
    /// Locks held.
    #[serde(deserialize_with = "num")]
    pub locks: u64,
    /// Connections waiting for a lock.
    #[serde(deserialize_with = "num")]
    pub lock_waiters: u64,
    /// RPC calls in flight.
    #[serde(deserialize_with = "num")]
    pub pending_calls: u64,
    /// Subscriptions, over all connections.
    #[serde(deserialize_with = "num")]
    pub subscriptions: u64,
    /// Registered procedures and their worker counts.
    pub procs: Vec<ProcStats>,
    /// Memory figures in bytes (at least `rss`).
    pub memory: BTreeMap<String, f64>,
    /// Process CPU time over wall time since start.
    pub cpu_core_fraction: f64,
    /// Per-shard statistics (empty for a plain client).
    #[serde(skip)]
    pub shards: Vec<Stats>,
    /// The map as the broker sent it (null for a sum).
    #[serde(skip)]
    pub raw: serde_json::Value,
}

/// One registered procedure in [`Stats::procs`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ProcStats {
    /// The procedure name.
    pub name: String,
    /// Connections serving it.
    #[serde(deserialize_with = "num")]
    pub workers: u64,
}

/// Accepts any JSON number (brokers in JavaScript send integers as doubles).
fn num<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        U(u64),
        I(i64),
        F(f64),
        Other(serde::de::IgnoredAny),
    }
    Ok(match N::deserialize(d)? {
        N::U(u) => u,
        N::I(i) => i.max(0) as u64,
        N::F(f) if f.is_finite() && f > 0.0 => f as u64,
        _ => 0,
    })
}

fn num_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u64>, D::Error> {
    #[derive(Deserialize)]
    struct Count(#[serde(deserialize_with = "num")] u64);
    let m = BTreeMap::<String, Count>::deserialize(d)?;
    Ok(m.into_iter().map(|(k, Count(v))| (k, v)).collect())
}

impl Stats {
    /// Sums per-shard statistics: counters add up, uptime is the longest, and
    /// procedures merge by name.
    pub(crate) fn sum(shards: Vec<Stats>) -> Stats {
        let mut t = Stats::default();
        let mut procs: BTreeMap<String, u64> = BTreeMap::new();
        for s in &shards {
            t.uptime_ms = t.uptime_ms.max(s.uptime_ms);
            t.connections += s.connections;
            t.cache_size += s.cache_size;
            for (k, v) in &s.ops {
                *t.ops.entry(k.clone()).or_default() += v;
            }
            t.dropped += s.dropped;
            t.duplicates += s.duplicates;
            t.dedup_size += s.dedup_size;
            t.reaped += s.reaped;
            t.locks += s.locks;
            t.lock_waiters += s.lock_waiters;
            t.pending_calls += s.pending_calls;
            t.subscriptions += s.subscriptions;
            for p in &s.procs {
                *procs.entry(p.name.clone()).or_default() += p.workers;
            }
            for (k, v) in &s.memory {
                *t.memory.entry(k.clone()).or_default() += v;
            }
            t.cpu_core_fraction += s.cpu_core_fraction;
        }
        t.procs = procs
            .into_iter()
            .map(|(name, workers)| ProcStats { name, workers })
            .collect();
        t.shards = shards;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_camel_case_and_tolerates_doubles() {
        let v = serde_json::json!({
            "uptimeMs": 12.0, "connections": 2, "cacheSize": 3, "ops": {"get": 4},
            "procs": [{"name": "add", "workers": 1}], "memory": {"rss": 1000},
            "cpuCoreFraction": 0.25, "somethingNew": true
        });
        let s: Stats = serde_json::from_value(v).unwrap();
        assert_eq!((s.uptime_ms, s.connections, s.cache_size), (12, 2, 3));
        assert_eq!(s.ops["get"], 4);
        assert_eq!(
            s.procs,
            vec![ProcStats {
                name: "add".into(),
                workers: 1
            }]
        );
        assert_eq!(s.lock_waiters, 0);
    }

    #[test]
    fn sums_shards_and_keeps_detail() {
        let a = Stats {
            uptime_ms: 5,
            cache_size: 2,
            procs: vec![ProcStats {
                name: "p".into(),
                workers: 1,
            }],
            ops: [("get".to_owned(), 1)].into(),
            ..Default::default()
        };
        let b = Stats {
            uptime_ms: 9,
            cache_size: 3,
            procs: vec![ProcStats {
                name: "p".into(),
                workers: 2,
            }],
            ops: [("get".to_owned(), 2), ("set".to_owned(), 1)].into(),
            ..Default::default()
        };
        let t = Stats::sum(vec![a, b]);
        assert_eq!((t.uptime_ms, t.cache_size), (9, 5));
        assert_eq!(
            t.procs,
            vec![ProcStats {
                name: "p".into(),
                workers: 3
            }]
        );
        assert_eq!(t.ops["get"], 3);
        assert_eq!(t.shards.len(), 2);
    }
}
