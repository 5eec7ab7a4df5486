//! The result of one run (text and JSON), and the markdown comparison that
//! `scripts/compare.sh` builds from many runs.
//!
//! Input of [`render_markdown`]: JSON lines, one per measurement:
//! `{"row":…,"system":"procmesh"|"redis","tool":…,"round":N,"cmd":…,"target":…?,"result":{…}}`
//! where `result` is a [`RunResult`] or anything with the same field names
//! (`ops_per_sec`, `latency_us.p50`, `latency_us.p99`, `delivered_per_sec`, `rss_bytes`).
//! A row's `target` ([`TargetSpec`]) is e.g. `ops_per_sec>=1.5`: procmesh's median over
//! Redis's median must be at least `F`, checked against the strongest Redis median (the
//! highest throughput, or the lowest latency/memory) among the tools that measured
//! Redis, unless the target names one tool (`p50<=1@procmesh-bench`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a histogram recorded in nanoseconds.
    pub fn from_ns(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `procmesh` or `redis`.
    pub target: String,
    /// Workload name.
    pub workload: String,
    /// `msgpack`, `json` or `resp`.
    pub codec: String,
    /// Request connections.
    pub connections: usize,
    /// Requests in flight per stream.
    pub pipeline: usize,
    /// Generator threads for request connections.
    pub threads: usize,
    /// Shards (sockets per key-routed connection).
    pub shards: usize,
    /// Subscriber connections (`publish`).
    pub subscribers: usize,
    /// Worker connections (`call`).
    pub workers: usize,
    /// Keyspace size.
    pub keyspace: u64,
    /// Value/payload size in bytes.
    pub size: usize,
    /// Requests answered (errors included).
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// The first error message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Wall time from the first request to the last reply, in seconds.
    pub elapsed_s: f64,
    /// `requests / elapsed_s`.
    pub ops_per_sec: f64,
    /// `publish`: messages received by all subscribers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    /// `publish`: deliveries per second (from the first publish to the last delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_per_sec: Option<f64>,
    /// Request latency (send to reply), microseconds.
    pub latency_us: Latency,
}

impl RunResult {
    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} {} ({}): {} conn x {} in flight, {} thread(s), {} shard(s), keyspace {}, size {} B",
            self.target,
            self.workload,
            self.codec,
            self.connections,
            self.pipeline,
            self.threads,
            self.shards,
            self.keyspace,
            self.size
        );
        let _ = writeln!(
            s,
            "  {} requests in {:.3} s, {} errors: {} ops/s",
            self.requests,
            self.elapsed_s,
            self.errors,
            group(self.ops_per_sec)
        );
        if self.workload == "lock" {
            let _ = writeln!(
                s,
                "  {} lock/unlock cycles/s",
                group(self.ops_per_sec / 2.0)
            );
        }
        if let (Some(d), Some(r)) = (self.delivered, self.delivered_per_sec) {
            let _ = writeln!(
                s,
                "  {} messages delivered to {} subscribers: {} msg/s",
                d,
                self.subscribers,
                group(r)
            );
        }
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "  latency us: p50 {} p90 {} p99 {} p99.9 {} max {} mean {}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "  first error: {e}");
        }
        s
    }
}

/// `1234567.8` → `1,234,568`.
pub fn group(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let digits = n.to_string();
    let head = digits.len() % 3;
    let mut out = String::from(&digits[..head]);
    for chunk in digits.as_bytes()[head..].chunks(3) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    out
}

/// One recorded measurement of a comparison run.
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    /// Row label, e.g. `GET 4x64`.
    pub row: String,
    /// `procmesh` or `redis`.
    pub system: String,
    /// The tool that measured (`procmesh-bench`, `redis-benchmark`, `/proc`).
    pub tool: String,
    /// Round number.
    #[serde(default)]
    pub round: u32,
    /// The exact command.
    #[serde(default)]
    pub cmd: String,
    /// The row's target, e.g. `ops_per_sec>=1.5`.
    #[serde(default)]
    pub target: Option<String>,
    /// The measurement.
    pub result: Value,
}

/// Metrics the report knows, with whether higher is better.
const METRICS: &[(&str, bool)] = &[
    ("ops_per_sec", true),
    ("delivered_per_sec", true),
    ("p50", false),
    ("p99", false),
    ("rss_bytes", false),
    ("cpu_us_per_req", false),
];

fn metric(v: &Value, name: &str) -> Option<f64> {
    match name {
        "p50" | "p99" | "p999" => v.get("latency_us")?.get(name)?.as_f64(),
        _ => v.get(name)?.as_f64(),
    }
}

/// The median (mean of the middle two for an even count).
pub fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    Some(if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    })
}

fn fmt_metric(name: &str, v: f64) -> String {
    match name {
        "rss_bytes" => format!("{:.1} MiB", v / (1 << 20) as f64),
        "p50" | "p99" | "p999" => format!("{v:.1} µs"),
        "cpu_us_per_req" => format!("{v:.2} µs"),
        _ => group(v),
    }
}

/// A row's comparison: `METRIC`, optionally `>=F` / `<=F`, optionally `@TOOL`.
///
/// `ops_per_sec>=1.5` asks procmesh's median to be at least 1.5 times Redis's;
/// `p50<=1@procmesh-bench` compares only what that tool measured on both sides (for
/// a latency where the client's own cost is part of the number); a bare `p50`
/// compares without a target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    /// Metric name.
    pub metric: String,
    /// `(at_least, factor)`: procmesh/Redis must be at least (else at most) `factor`.
    pub bound: Option<(bool, f64)>,
    /// Only measurements by this tool count.
    pub tool: Option<String>,
}

impl TargetSpec {
    /// Parses `ops_per_sec>=1.5`, `p50<=1@procmesh-bench` or `rss_bytes`.
    pub fn parse(s: &str) -> Option<TargetSpec> {
        let (spec, tool) = match s.split_once('@') {
            Some((a, t)) => (a, Some(t.trim().to_string())),
            None => (s, None),
        };
        let (metric, bound) = if let Some((m, f)) = spec.split_once(">=") {
            (m, Some((true, f.trim().parse().ok()?)))
        } else if let Some((m, f)) = spec.split_once("<=") {
            (m, Some((false, f.trim().parse().ok()?)))
        } else {
            (spec, None)
        };
        let metric = metric.trim().to_string();
        METRICS
            .iter()
            .any(|(m, _)| *m == metric)
            .then_some(TargetSpec {
                metric,
                bound,
                tool,
            })
    }

    /// `met`, or by how much `ratio` (procmesh/Redis) misses the bound; `–` without one.
    pub fn verdict(&self, ratio: f64) -> String {
        let Some((at_least, factor)) = self.bound else {
            return "–".to_string();
        };
        let ok = if at_least {
            ratio >= factor
        } else {
            ratio <= factor
        };
        if ok {
            "met".to_string()
        } else {
            let by = if at_least {
                (factor - ratio) / factor
            } else {
                (ratio - factor) / factor
            };
            format!("**missed by {:.0}%**", by * 100.0)
        }
    }

    /// The target column: `ops_per_sec ≥ 1.5× Redis`.
    pub fn describe(&self) -> String {
        let mut d = match self.bound {
            Some((true, f)) => format!("{} ≥ {f}× Redis", self.metric),
            Some((false, f)) => format!("{} ≤ {f}× Redis", self.metric),
            None => format!("{} (no target)", self.metric),
        };
        if let Some(t) = &self.tool {
            let _ = write!(d, ", both by {t}");
        }
        d
    }
}

/// Renders the comparison tables (markdown) from JSON-lines `input`.
pub fn render_markdown(input: &str) -> Result<String, String> {
    let mut records = Vec::new();
    for (i, line) in input.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        records.push(r);
    }
    // Rows in first-seen order; per row, (system, tool) in first-seen order.
    let mut rows: Vec<String> = Vec::new();
    for r in &records {
        if !rows.contains(&r.row) {
            rows.push(r.row.clone());
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| row | target | procmesh | Redis | ratio | verdict |\n|---|---|---|---|---|---|"
    );
    let mut detail = String::new();
    let _ = writeln!(
        detail,
        "| row | system | tool | rounds | ops/s median (min–max) | p50 µs | p99 µs | other |\n|---|---|---|---|---|---|---|---|"
    );
    for row in &rows {
        let recs: Vec<&Record> = records.iter().filter(|r| &r.row == row).collect();
        let mut groups: Vec<(String, String)> = Vec::new();
        for r in &recs {
            let g = (r.system.clone(), r.tool.clone());
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        // Medians per group and metric.
        let mut med: BTreeMap<(String, String, &str), f64> = BTreeMap::new();
        for (sys, tool) in &groups {
            let in_group: Vec<&&Record> = recs
                .iter()
                .filter(|r| &r.system == sys && &r.tool == tool)
                .collect();
            for (m, _) in METRICS {
                let mut xs: Vec<f64> = in_group
                    .iter()
                    .filter_map(|r| metric(&r.result, m))
                    .collect();
                if let Some(v) = median(&mut xs) {
                    med.insert((sys.clone(), tool.clone(), m), v);
                }
            }
            let mut ops: Vec<f64> = in_group
                .iter()
                .filter_map(|r| metric(&r.result, "ops_per_sec"))
                .collect();
            let range = if ops.is_empty() {
                "–".to_string()
            } else {
                let m = median(&mut ops).unwrap_or(0.0);
                format!(
                    "{} ({}–{})",
                    group(m),
                    group(ops[0]),
                    group(ops[ops.len() - 1])
                )
            };
            let get = |m: &str| med.get(&(sys.clone(), tool.clone(), m)).copied();
            let other = [
                ("delivered_per_sec", "msg/s"),
                ("rss_bytes", "RSS"),
                ("cpu_us_per_req", "server CPU/req"),
            ]
            .iter()
            .filter_map(|(m, label)| get(m).map(|v| format!("{label} {}", fmt_metric(m, v))))
            .collect::<Vec<_>>()
            .join(", ");
            let lat = |m: &str| get(m).map_or("–".to_string(), |v| format!("{v:.1}"));
            let _ = writeln!(
                detail,
                "| {row} | {sys} | {tool} | {} | {range} | {} | {} | {} |",
                in_group.len(),
                lat("p50"),
                lat("p99"),
                if other.is_empty() {
                    "–".to_string()
                } else {
                    other
                }
            );
        }
        let target = recs
            .iter()
            .find_map(|r| r.target.as_deref().and_then(TargetSpec::parse));
        let Some(t) = target else { continue };
        let higher_better = METRICS
            .iter()
            .find(|(m, _)| *m == t.metric)
            .is_some_and(|(_, h)| *h);
        let pick = |sys: &str| -> Option<(f64, String)> {
            groups
                .iter()
                .filter(|(s, tool)| s == sys && t.tool.as_ref().is_none_or(|only| only == tool))
                .filter_map(|(s, tool)| {
                    med.get(&(s.clone(), tool.clone(), t.metric.as_str()))
                        .map(|v| (*v, tool.clone()))
                })
                .reduce(|a, b| {
                    let better = if higher_better { b.0 > a.0 } else { b.0 < a.0 };
                    if better {
                        b
                    } else {
                        a
                    }
                })
        };
        let (Some((ours, our_tool)), Some((theirs, their_tool))) =
            (pick("procmesh"), pick("redis"))
        else {
            continue;
        };
        let ratio = if theirs == 0.0 {
            f64::INFINITY
        } else {
            ours / theirs
        };
        let _ = writeln!(
            out,
            "| {row} | {} | {} ({our_tool}) | {} ({their_tool}) | {ratio:.2}× | {} |",
            t.describe(),
            fmt_metric(&t.metric, ours),
            fmt_metric(&t.metric, theirs),
            t.verdict(ratio)
        );
    }
    let mut cmds = String::new();
    let mut seen = Vec::new();
    for r in &records {
        let key = (r.row.clone(), r.system.clone(), r.tool.clone());
        if !seen.contains(&key) && !r.cmd.is_empty() {
            let _ = writeln!(cmds, "- {} / {} / {}: `{}`", r.row, r.system, r.tool, r.cmd);
            seen.push(key);
        }
    }
    Ok(format!(
        "### Targets (medians of the rounds)\n\n{out}\n### Every measurement (medians over rounds)\n\n{detail}\n### Exact commands (round 1; later rounds repeat them)\n\n{cmds}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_targets() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        let t = TargetSpec::parse("ops_per_sec>=1.5").unwrap();
        assert_eq!(t.bound, Some((true, 1.5)));
        assert_eq!(t.verdict(1.6), "met");
        assert_eq!(t.verdict(1.2), "**missed by 20%**");
        let t = TargetSpec::parse("p50<=1@procmesh-bench").unwrap();
        assert_eq!(t.verdict(1.1), "**missed by 10%**");
        assert_eq!(t.tool.as_deref(), Some("procmesh-bench"));
        assert_eq!(TargetSpec::parse("rss_bytes").unwrap().verdict(3.0), "–");
        assert_eq!(TargetSpec::parse("bogus>=1"), None);
        assert_eq!(group(1234567.4), "1,234,567");
    }

    #[test]
    fn renders_a_row_against_the_strongest_redis() {
        let lines = [
            r#"{"row":"GET","system":"procmesh","tool":"procmesh-bench","round":1,"cmd":"a","target":"ops_per_sec>=1.5","result":{"ops_per_sec":300,"latency_us":{"p50":5,"p99":9}}}"#,
            r#"{"row":"GET","system":"procmesh","tool":"procmesh-bench","round":2,"cmd":"a","result":{"ops_per_sec":100}}"#,
            r#"{"row":"GET","system":"procmesh","tool":"procmesh-bench","round":3,"cmd":"a","result":{"ops_per_sec":200}}"#,
            r#"{"row":"GET","system":"redis","tool":"redis-benchmark","round":1,"cmd":"b","result":{"ops_per_sec":100}}"#,
            r#"{"row":"GET","system":"redis","tool":"procmesh-bench","round":1,"cmd":"c","result":{"ops_per_sec":160}}"#,
        ];
        let md = render_markdown(&lines.join("\n")).unwrap();
        assert!(md.contains("| GET | ops_per_sec ≥ 1.5× Redis | 200 (procmesh-bench) | 160 (procmesh-bench) | 1.25× | **missed by 17%** |"), "{md}");
        assert!(md.contains("200 (100–300)"), "{md}");
    }
}
