//! How the CLI shows stats to people: a two-column table for one broker, a row per
//! shard for a mesh, and the byte and duration formats they use.
//!
//! Stats arrive as the JSON `value` of a `stats` reply and are read through the one
//! schema, `procmesh_proto::stats::StatsReport`; a mesh's totals are its `sum`.

use procmesh_proto::stats::StatsReport;
use procmesh_proto::Codec;
use serde_json::Value;

/// The typed report in a stats map (empty where the map lacks fields).
pub fn report(v: &Value) -> StatsReport {
    serde_json::to_vec(v)
        .ok()
        .and_then(|b| StatsReport::decode_slice(Codec::Json, &b).ok())
        .unwrap_or_default()
}

/// Formats a byte count for people.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Formats a duration in ms for people.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{:01}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn rss(r: &StatsReport) -> u64 {
    r.memory.get("rss").copied().unwrap_or(0)
}

fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// Renders a stats map as a two-column table.
pub fn stats_table(v: &Value) -> String {
    let r = report(v);
    let name = if r.name.is_empty() { "?" } else { &r.name };
    let procs: Vec<String> = r
        .procs
        .iter()
        .map(|p| format!("{}×{}", p.name, p.workers))
        .collect();
    let total: u64 = r.ops.values().sum();
    let mut ops: Vec<(&String, u64)> = r.ops.iter().map(|(k, n)| (k, *n)).collect();
    ops.sort_by_key(|e| std::cmp::Reverse(e.1));
    let top: Vec<String> = ops
        .iter()
        .take(6)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let rows: [(&str, String); 15] = [
        ("broker", name.to_string()),
        ("pid", r.pid.unwrap_or(0).to_string()),
        ("uptime", human_ms(r.uptime_ms)),
        ("connections", r.connections.to_string()),
        ("cache entries", r.cache_size.to_string()),
        ("cache bytes", human_bytes(r.cache_bytes)),
        (
            "evicted / expired",
            format!("{} / {}", r.evicted, r.expired),
        ),
        (
            "locks held / waiters",
            format!("{} / {}", r.locks, r.lock_waiters),
        ),
        ("subscriptions", r.subscriptions.to_string()),
        ("pending calls", r.pending_calls.to_string()),
        (
            "procedures",
            if procs.is_empty() {
                "-".into()
            } else {
                procs.join(", ")
            },
        ),
        ("dropped / reaped", format!("{} / {}", r.dropped, r.reaped)),
        ("memory (rss)", human_bytes(rss(&r))),
        ("cpu (core fraction)", percent(r.cpu_core_fraction)),
        ("ops", format!("{total} ({})", top.join(", "))),
    ];
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<w$}  {v}\n"));
    }
    out
}

/// A sharded mesh's stats for `stats --json --shards`: the shards' [`StatsReport::sum`]
/// named `mesh` (no `pid` or `core`, which are per shard), plus `shards` holding each
/// shard's own map as it sent it, `null` for a shard that did not answer.
pub fn sum_stats(mesh: &str, shards: &[Option<Value>]) -> Value {
    let reports: Vec<StatsReport> = shards.iter().flatten().map(report).collect();
    let mut sum = StatsReport::sum(&reports);
    sum.name = mesh.to_string();
    let mut bytes = Vec::new();
    sum.encode_into(&mut procmesh_proto::Writer::new(Codec::Json, &mut bytes));
    let mut v: Value = serde_json::from_slice(&bytes).expect("invariant: the writer writes JSON");
    let per_shard = shards.iter().map(|v| v.clone().unwrap_or(Value::Null));
    v["shards"] = Value::Array(per_shard.collect());
    v
}

/// Renders a sharded mesh's stats (a [`sum_stats`] map): one row per shard with its
/// pid and pinned core, and a total row.
pub fn sharded_stats_table(sum: &Value) -> String {
    let header = [
        "shard", "pid", "core", "uptime", "conns", "keys", "bytes", "ops", "cpu", "rss",
    ];
    let row = |name: String, r: &StatsReport, per_shard: bool| -> Vec<String> {
        let core = match (per_shard, r.core) {
            (false, _) => String::new(),
            (true, Some(c)) => c.to_string(),
            (true, None) => "-".into(),
        };
        vec![
            name,
            if per_shard {
                r.pid.unwrap_or(0).to_string()
            } else {
                String::new()
            },
            core,
            human_ms(r.uptime_ms),
            r.connections.to_string(),
            r.cache_size.to_string(),
            human_bytes(r.cache_bytes),
            r.ops.values().sum::<u64>().to_string(),
            percent(r.cpu_core_fraction),
            human_bytes(rss(r)),
        ]
    };
    let total = report(sum);
    let mesh = if total.name.is_empty() {
        "?"
    } else {
        &total.name
    };
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let shards = sum.get("shards").and_then(Value::as_array);
    for (i, s) in shards.into_iter().flatten().enumerate() {
        if s.is_null() {
            let mut r = vec![String::new(); header.len()];
            r[0] = format!("{mesh}#{i}");
            r[1] = "not running".into();
            rows.push(r);
        } else {
            let r = report(s);
            let name = if r.name.is_empty() {
                format!("{mesh}#{i}")
            } else {
                r.name.clone()
            };
            rows.push(row(name, &r, true));
        }
    }
    rows.push(row("total".into(), &total, false));
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn human_formats() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_ms(61_000), "1m01s");
        let t =
            stats_table(&json!({"name":"x","cacheSize":3,"memory":{"rss":2048},"ops":{"get":5}}));
        assert!(t.contains("cache entries") && t.contains("2.0 KiB") && t.contains("get 5"));
    }

    #[test]
    fn sums_shards_and_tabulates_them() {
        let a = json!({"name":"m#0","pid":10,"core":0,"uptimeMs":500,"connections":2,
            "cacheSize":3,"cacheBytes":30,"ops":{"get":5,"set":1},"memory":{"rss":1024},
            "cpuCoreFraction":0.25,"procs":[{"name":"f","workers":1}]});
        let b = json!({"name":"m#1","pid":11,"core":1,"uptimeMs":900,"connections":1,
            "cacheSize":4,"cacheBytes":40,"ops":{"get":2},"memory":{"rss":2048},
            "cpuCoreFraction":0.5,"procs":[{"name":"f","workers":2},{"name":"g","workers":1}]});
        let s = sum_stats("m", &[Some(a), Some(b), None]);
        assert_eq!(s["name"], "m");
        assert_eq!(s["uptimeMs"], 900);
        assert_eq!(s["connections"], 3);
        assert_eq!(s["cacheSize"], 7);
        assert_eq!(s["ops"], json!({"get":7,"set":1}));
        assert_eq!(s["memory"]["rss"], 3072);
        assert_eq!(s["cpuCoreFraction"], 0.75);
        assert_eq!(
            s["procs"],
            json!([{"name":"f","workers":3},{"name":"g","workers":1}])
        );
        assert!(s.get("pid").is_none() && s.get("core").is_none());
        assert_eq!(s["shards"].as_array().unwrap().len(), 3);
        let t = sharded_stats_table(&s);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].starts_with("shard") && lines[0].contains("core"));
        let cols: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(&cols[..3], ["m#1", "11", "1"]);
        assert!(lines[3].starts_with("m#2") && lines[3].contains("not running"));
        let total: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(total[0], "total");
        assert!(
            lines[4].contains("75.0%") && lines[4].contains("3.0 KiB"),
            "{t}"
        );
    }
}
