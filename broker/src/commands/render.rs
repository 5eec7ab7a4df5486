//! How the CLI shows stats to people: a two-column table for one broker, a row per
//! shard for a mesh, and the byte and duration formats they use.

use serde_json::{json, Value};

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

/// Renders a stats map as a two-column table.
pub fn stats_table(v: &Value) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    rows.push((
        "broker".into(),
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string(),
    ));
    rows.push(("pid".into(), num("pid").to_string()));
    rows.push(("uptime".into(), human_ms(num("uptimeMs"))));
    rows.push(("connections".into(), num("connections").to_string()));
    rows.push(("cache entries".into(), num("cacheSize").to_string()));
    rows.push(("cache bytes".into(), human_bytes(num("cacheBytes"))));
    rows.push((
        "evicted / expired".into(),
        format!("{} / {}", num("evicted"), num("expired")),
    ));
    rows.push((
        "locks held / waiters".into(),
        format!("{} / {}", num("locks"), num("lockWaiters")),
    ));
    rows.push(("subscriptions".into(), num("subscriptions").to_string()));
    rows.push(("pending calls".into(), num("pendingCalls").to_string()));
    if let Some(procs) = v.get("procs").and_then(Value::as_array) {
        let list: Vec<String> = procs
            .iter()
            .map(|p| {
                format!(
                    "{}×{}",
                    p.get("name").and_then(Value::as_str).unwrap_or("?"),
                    p.get("workers").and_then(Value::as_u64).unwrap_or(0)
                )
            })
            .collect();
        rows.push((
            "procedures".into(),
            if list.is_empty() {
                "-".into()
            } else {
                list.join(", ")
            },
        ));
    }
    rows.push((
        "dropped / reaped".into(),
        format!("{} / {}", num("dropped"), num("reaped")),
    ));
    let rss = v
        .pointer("/memory/rss")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    rows.push(("memory (rss)".into(), human_bytes(rss)));
    let cpu = v
        .get("cpuCoreFraction")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    rows.push(("cpu (core fraction)".into(), format!("{:.1}%", cpu * 100.0)));
    if let Some(ops) = v.get("ops").and_then(Value::as_object) {
        let total: u64 = ops.values().filter_map(Value::as_u64).sum();
        let mut list: Vec<(&String, u64)> = ops
            .iter()
            .map(|(k, n)| (k, n.as_u64().unwrap_or(0)))
            .collect();
        list.sort_by_key(|e| std::cmp::Reverse(e.1));
        let top: Vec<String> = list
            .iter()
            .take(6)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        rows.push(("ops".into(), format!("{total} ({})", top.join(", "))));
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<w$}  {v}\n"));
    }
    out
}

/// Sums the stats maps of a sharded mesh's shards the way a sharded client does
/// (PROTOCOL.md §10): counters, `ops`, `errors` and `memory` add up, `uptimeMs` is the
/// longest, `procs` merge by name, `cpuCoreFraction` adds up (cores' worth in use);
/// `pid` and `core` are per shard and left out. `name` is the mesh name and `shards`
/// holds each shard's own map, `null` for a shard that did not answer.
pub fn sum_stats(mesh: &str, shards: &[Option<Value>]) -> Value {
    let mut sum = serde_json::Map::new();
    let mut procs: Vec<(String, u64)> = Vec::new();
    for v in shards.iter().flatten().filter_map(Value::as_object) {
        for (k, x) in v {
            match (k.as_str(), x) {
                ("name" | "pid" | "core", _) => {}
                ("uptimeMs", _) => {
                    let cur = sum.get(k).and_then(Value::as_u64).unwrap_or(0);
                    sum.insert(k.clone(), json!(cur.max(x.as_u64().unwrap_or(0))));
                }
                ("procs", Value::Array(list)) => {
                    for p in list {
                        let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
                        let w = p.get("workers").and_then(Value::as_u64).unwrap_or(0);
                        match procs.iter_mut().find(|(n, _)| n == name) {
                            Some(e) => e.1 += w,
                            None => procs.push((name.to_string(), w)),
                        }
                    }
                }
                (_, Value::Number(_)) => {
                    let total = add(sum.get(k), x);
                    sum.insert(k.clone(), total);
                }
                (_, Value::Object(m)) => {
                    let entry = sum
                        .entry(k.clone())
                        .or_insert_with(|| Value::Object(Default::default()));
                    if let Value::Object(acc) = entry {
                        for (ik, iv) in m.iter().filter(|(_, iv)| iv.is_number()) {
                            let total = add(acc.get(ik), iv);
                            acc.insert(ik.clone(), total);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    sum.insert("name".into(), json!(mesh));
    sum.insert(
        "procs".into(),
        Value::Array(
            procs
                .into_iter()
                .map(|(name, workers)| json!({"name": name, "workers": workers}))
                .collect(),
        ),
    );
    let per_shard = shards.iter().map(|v| v.clone().unwrap_or(Value::Null));
    sum.insert("shards".into(), Value::Array(per_shard.collect()));
    Value::Object(sum)
}

/// `a + b` for JSON numbers: integers stay integers, anything else adds as f64.
fn add(a: Option<&Value>, b: &Value) -> Value {
    match (a.map_or(Some(0), Value::as_u64), b.as_u64()) {
        (Some(x), Some(y)) => json!(x.saturating_add(y)),
        _ => json!(a.and_then(Value::as_f64).unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
    }
}

/// Renders a sharded mesh's stats (a [`sum_stats`] map): one row per shard with its
/// pid and pinned core, and a total row.
pub fn sharded_stats_table(sum: &Value) -> String {
    let header = [
        "shard", "pid", "core", "uptime", "conns", "keys", "bytes", "ops", "cpu", "rss",
    ];
    let row = |name: String, v: &Value, per_shard: bool| -> Vec<String> {
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let ops: u64 = v
            .get("ops")
            .and_then(Value::as_object)
            .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
        let core = match (per_shard, v.get("core").and_then(Value::as_u64)) {
            (false, _) => String::new(),
            (true, Some(c)) => c.to_string(),
            (true, None) => "-".into(),
        };
        vec![
            name,
            if per_shard {
                num("pid").to_string()
            } else {
                String::new()
            },
            core,
            human_ms(num("uptimeMs")),
            num("connections").to_string(),
            num("cacheSize").to_string(),
            human_bytes(num("cacheBytes")),
            ops.to_string(),
            format!(
                "{:.1}%",
                v.get("cpuCoreFraction")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
                    * 100.0
            ),
            human_bytes(
                v.pointer("/memory/rss")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            ),
        ]
    };
    let mesh = sum.get("name").and_then(Value::as_str).unwrap_or("?");
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let shards = sum.get("shards").and_then(Value::as_array);
    for (i, s) in shards.into_iter().flatten().enumerate() {
        let name = s
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("{mesh}#{i}"), str::to_string);
        if s.is_null() {
            let mut r = vec![String::new(); header.len()];
            r[0] = name;
            r[1] = "not running".into();
            rows.push(r);
        } else {
            rows.push(row(name, s, true));
        }
    }
    rows.push(row("total".into(), sum, false));
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
