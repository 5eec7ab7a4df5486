//! Broker statistics (PROTOCOL.md §10) and their sum over shards.
//!
//! The schema, its lenient decoding and the sum are `procmesh_proto::stats`, shared
//! with the broker and the CLI; this module adds what a client keeps beside them: each
//! shard's own report and the map as the broker sent it.

use std::ops::Deref;

use procmesh_proto::Codec;
use serde::{Deserialize, Deserializer};

pub use procmesh_proto::stats::{ProcStats, StatsReport};

/// A broker's statistics, or for a sharded client the sum over its shards with
/// each shard's own in [`Stats::shards`].
///
/// The typed fields are those of [`StatsReport`] (reached through `Deref`:
/// `stats.cache_size`, `stats.ops["get"]`); counters the broker does not report read
/// as 0. Everything the broker sent, including fields the schema does not name, is
/// in [`Stats::raw`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The typed report (for a sharded client, [`StatsReport::sum`] of the shards').
    pub report: StatsReport,
    /// Per-shard statistics (empty for a plain client).
    pub shards: Vec<Stats>,
    /// The map as the broker sent it (null for a sum).
    pub raw: serde_json::Value,
}

impl Deref for Stats {
    type Target = StatsReport;

    fn deref(&self) -> &StatsReport {
        &self.report
    }
}

impl<'de> Deserialize<'de> for Stats {
    /// Reads a broker's stats map through [`StatsReport::decode`], keeping the map
    /// itself in [`Stats::raw`].
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Stats, D::Error> {
        let raw = serde_json::Value::deserialize(d)?;
        let bytes = serde_json::to_vec(&raw).map_err(serde::de::Error::custom)?;
        let report =
            StatsReport::decode_slice(Codec::Json, &bytes).map_err(serde::de::Error::custom)?;
        Ok(Stats {
            report,
            shards: Vec::new(),
            raw,
        })
    }
}

impl Stats {
    /// Sums per-shard statistics ([`StatsReport::sum`]) and keeps each shard's.
    pub(crate) fn sum(shards: Vec<Stats>) -> Stats {
        let reports: Vec<StatsReport> = shards.iter().map(|s| s.report.clone()).collect();
        Stats {
            report: StatsReport::sum(&reports),
            shards,
            raw: serde_json::Value::Null,
        }
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
        let s: Stats = serde_json::from_value(v.clone()).unwrap();
        assert_eq!((s.uptime_ms, s.connections, s.cache_size), (12, 2, 3));
        assert_eq!(s.ops["get"], 4);
        assert_eq!(s.procs, vec![ProcStats::new("add", 1)]);
        assert_eq!(s.lock_waiters, 0);
        assert_eq!(s.raw, v, "the map as sent, unknown fields included");
    }

    #[test]
    fn sums_shards_and_keeps_detail() {
        let shard = |uptime_ms, cache_size, workers, ops: &[(&str, u64)]| Stats {
            report: StatsReport {
                uptime_ms,
                cache_size,
                procs: vec![ProcStats::new("p", workers)],
                ops: ops.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        let a = shard(5, 2, 1, &[("get", 1)]);
        let b = shard(9, 3, 2, &[("get", 2), ("set", 1)]);
        let t = Stats::sum(vec![a, b]);
        assert_eq!((t.uptime_ms, t.cache_size), (9, 5));
        assert_eq!(t.procs, vec![ProcStats::new("p", 3)]);
        assert_eq!(t.ops["get"], 3);
        assert_eq!(t.shards.len(), 2);
    }
}
