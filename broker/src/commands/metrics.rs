//! Stats as Prometheus metrics: [`render`] writes the text exposition format 0.0.4
//! from [`StatsReport`]s (one broker, or each shard of a mesh with a `shard` label),
//! and [`spawn_endpoint`] serves it at `GET /metrics` for `serve --metrics-addr`.
//!
//! The endpoint is a small thread of the binary, not of the broker loop: per scrape it
//! connects to the broker's own socket like any client and asks for `stats`, so the
//! loop needs no change and a slow scraper cannot stall it.
//!
//! Every sample carries `mesh="NAME"`; a mesh's also `shard="I"`. Counters end in
//! `_total`; `procmesh_up` is 0 for a shard that did not answer.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use procmesh_broker::cli::CliConn;
use procmesh_proto::stats::StatsReport;

use super::render::report;

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Longest request head the endpoint reads.
const MAX_REQUEST_HEAD: usize = 8 << 10;

/// How long the endpoint waits for a scraper's request or the broker's reply.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A metric with one sample per broker.
type Scalar = (&'static str, Kind, &'static str, fn(&StatsReport) -> f64);

/// The one-sample-per-broker metrics, in output order.
const SCALARS: &[Scalar] = &[
    (
        "procmesh_uptime_seconds",
        Kind::Gauge,
        "Seconds since the broker started.",
        |r| r.uptime_ms as f64 / 1000.0,
    ),
    (
        "procmesh_connections",
        Kind::Gauge,
        "Open client connections.",
        |r| r.connections as f64,
    ),
    (
        "procmesh_cache_entries",
        Kind::Gauge,
        "Live cache entries.",
        |r| r.cache_size as f64,
    ),
    (
        "procmesh_cache_bytes",
        Kind::Gauge,
        "Bytes of cached values.",
        |r| r.cache_bytes as f64,
    ),
    (
        "procmesh_cache_evicted_total",
        Kind::Counter,
        "Entries evicted by the LRU bounds.",
        |r| r.evicted as f64,
    ),
    (
        "procmesh_cache_expired_total",
        Kind::Counter,
        "Entries removed by TTL.",
        |r| r.expired as f64,
    ),
    (
        "procmesh_cache_hits_total",
        Kind::Counter,
        "Cache reads (get, each mget key, has) that found a live value.",
        |r| r.hits as f64,
    ),
    (
        "procmesh_cache_misses_total",
        Kind::Counter,
        "Cache reads (get, each mget key, has) that found no live value.",
        |r| r.misses as f64,
    ),
    (
        "procmesh_pubsub_dropped_total",
        Kind::Counter,
        "Message frames dropped for slow consumers.",
        |r| r.dropped as f64,
    ),
    (
        "procmesh_pubsub_duplicates_total",
        Kind::Counter,
        "Deduplicated publish retries.",
        |r| r.duplicates as f64,
    ),
    (
        "procmesh_pubsub_dedup_entries",
        Kind::Gauge,
        "Entries in the idempotent-producer table.",
        |r| r.dedup_size as f64,
    ),
    (
        "procmesh_pubsub_subscriptions",
        Kind::Gauge,
        "Subscriptions over all connections.",
        |r| r.subscriptions as f64,
    ),
    (
        "procmesh_conn_reaped_total",
        Kind::Counter,
        "Connections closed for missing heartbeats.",
        |r| r.reaped as f64,
    ),
    (
        "procmesh_conn_slow_closed_total",
        Kind::Counter,
        "Connections closed for passing the send hard limit.",
        |r| r.slow_closed as f64,
    ),
    (
        "procmesh_conn_refused_total",
        Kind::Counter,
        "Connections refused at maxConnections or for lack of descriptors.",
        |r| r.refused as f64,
    ),
    (
        "procmesh_conn_handshake_closed_total",
        Kind::Counter,
        "Connections closed at the handshake deadline.",
        |r| r.handshake_closed as f64,
    ),
    (
        "procmesh_conn_reply_too_big_total",
        Kind::Counter,
        "Replies refused with ETOOBIG for passing the reply budget.",
        |r| r.too_big as f64,
    ),
    ("procmesh_locks_held", Kind::Gauge, "Locks held.", |r| {
        r.locks as f64
    }),
    (
        "procmesh_lock_waiters",
        Kind::Gauge,
        "Connections waiting for a lock.",
        |r| r.lock_waiters as f64,
    ),
    (
        "procmesh_rpc_pending_calls",
        Kind::Gauge,
        "RPC calls in flight.",
        |r| r.pending_calls as f64,
    ),
    (
        "procmesh_cpu_core_fraction",
        Kind::Gauge,
        "Process CPU time over wall time since start.",
        |r| r.cpu_core_fraction,
    ),
];

/// The persistence metrics (only brokers with persistence have samples).
const PERSIST: &[Scalar] = &[
    (
        "procmesh_persist_log_bytes",
        Kind::Gauge,
        "Bytes in the current log segment.",
        |r| persist(r, |p| p.log_bytes as f64),
    ),
    (
        "procmesh_persist_errors_total",
        Kind::Counter,
        "Log failures since start.",
        |r| persist(r, |p| p.errors as f64),
    ),
    (
        "procmesh_persist_snapshots_total",
        Kind::Counter,
        "Snapshots completed since start.",
        |r| persist(r, |p| p.snapshots as f64),
    ),
    (
        "procmesh_persist_snapshot_running",
        Kind::Gauge,
        "1 while a snapshot is being written.",
        |r| persist(r, |p| u8::from(p.snapshot_running).into()),
    ),
    (
        "procmesh_persist_failing",
        Kind::Gauge,
        "1 while the log is failing.",
        |r| persist(r, |p| u8::from(p.error.is_some()).into()),
    ),
];

fn persist(r: &StatsReport, f: impl Fn(&procmesh_proto::stats::PersistStats) -> f64) -> f64 {
    r.persistence.as_ref().map_or(0.0, f)
}

/// A metric with one sample per broker and key of a map: (name, kind, help, label,
/// the map's entries).
type Labeled = (
    &'static str,
    Kind,
    &'static str,
    &'static str,
    fn(&StatsReport) -> Vec<(String, f64)>,
);

const LABELED: &[Labeled] = &[
    (
        "procmesh_ops_total",
        Kind::Counter,
        "Requests handled, by request type.",
        "op",
        |r| r.ops.iter().map(|(k, n)| (k.clone(), *n as f64)).collect(),
    ),
    (
        "procmesh_errors_total",
        Kind::Counter,
        "Error replies sent, by error code.",
        "code",
        |r| {
            r.errors
                .iter()
                .map(|(k, n)| (k.clone(), *n as f64))
                .collect()
        },
    ),
    (
        "procmesh_memory_bytes",
        Kind::Gauge,
        "Process memory, by kind (rss, …).",
        "kind",
        |r| {
            r.memory
                .iter()
                .map(|(k, n)| (k.clone(), *n as f64))
                .collect()
        },
    ),
    (
        "procmesh_rpc_workers",
        Kind::Gauge,
        "Connections serving a procedure.",
        "proc",
        |r| {
            r.procs
                .iter()
                .map(|p| (p.name.clone(), p.workers as f64))
                .collect()
        },
    ),
];

/// Appends `v` escaped as a label value.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends `{mesh="…",shard="…"[,label="…"]}`.
fn labels_into(out: &mut String, mesh: &str, shard: Option<usize>, extra: Option<(&str, &str)>) {
    out.push_str("{mesh=\"");
    escape_into(out, mesh);
    out.push('"');
    if let Some(i) = shard {
        let _ = write!(out, ",shard=\"{i}\"");
    }
    if let Some((k, v)) = extra {
        let _ = write!(out, ",{k}=\"");
        escape_into(out, v);
        out.push('"');
    }
    out.push('}');
}

fn value_into(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = writeln!(out, " {}", v as i64);
    } else if v.is_finite() {
        let _ = writeln!(out, " {v}");
    } else {
        out.push_str(" NaN\n");
    }
}

fn header_into(out: &mut String, name: &str, kind: Kind, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
}

/// The metrics of one broker (`[(None, Some(report))]`) or of each shard of a mesh
/// (`(Some(i), report)`, `None` for a shard that did not answer: `procmesh_up` 0 and
/// no other samples), in the text exposition format.
pub fn render(mesh: &str, brokers: &[(Option<usize>, Option<StatsReport>)]) -> String {
    let mut out = String::with_capacity(4096);
    header_into(
        &mut out,
        "procmesh_up",
        Kind::Gauge,
        "1 when the broker answered the scrape.",
    );
    for (shard, r) in brokers {
        out.push_str("procmesh_up");
        labels_into(&mut out, mesh, *shard, None);
        value_into(&mut out, if r.is_some() { 1.0 } else { 0.0 });
    }
    let live: Vec<(Option<usize>, &StatsReport)> = brokers
        .iter()
        .filter_map(|(s, r)| r.as_ref().map(|r| (*s, r)))
        .collect();
    for (name, kind, help, f) in SCALARS {
        header_into(&mut out, name, *kind, help);
        for (shard, r) in &live {
            out.push_str(name);
            labels_into(&mut out, mesh, *shard, None);
            value_into(&mut out, f(r));
        }
    }
    let persisted: Vec<_> = live
        .iter()
        .filter(|(_, r)| r.persistence.is_some())
        .collect();
    if !persisted.is_empty() {
        for (name, kind, help, f) in PERSIST {
            header_into(&mut out, name, *kind, help);
            for (shard, r) in &persisted {
                out.push_str(name);
                labels_into(&mut out, mesh, *shard, None);
                value_into(&mut out, f(r));
            }
        }
    }
    for (name, kind, help, label, f) in LABELED {
        header_into(&mut out, name, *kind, help);
        for (shard, r) in &live {
            for (k, v) in f(r) {
                out.push_str(name);
                labels_into(&mut out, mesh, *shard, Some((label, &k)));
                value_into(&mut out, v);
            }
        }
    }
    out
}

/// Binds `addr` and serves `GET /metrics` from a thread: per scrape, the stats of
/// the broker at `socket`. Fails only when `addr` cannot be bound.
pub fn spawn_endpoint(
    addr: SocketAddr,
    socket: PathBuf,
    token: Option<String>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("procmesh-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // One scrape at a time: a scraper is one process asking every few seconds.
                let _ = answer(stream, &socket, token.as_deref());
            }
        })?;
    Ok(bound)
}

/// Reads one request head and answers it.
fn answer(stream: TcpStream, socket: &std::path::Path, token: Option<&str>) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(MAX_REQUEST_HEAD as u64);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers up to the blank line.
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match scrape(socket, token) {
            Ok(body) => ("200 OK", body),
            Err(e) => ("503 Service Unavailable", format!("procmesh: {e}\n")),
        },
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "procmesh: only /metrics is served\n".into(),
        ),
        _ => ("405 Method Not Allowed", "procmesh: GET /metrics\n".into()),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

fn scrape(
    socket: &std::path::Path,
    token: Option<&str>,
) -> Result<String, procmesh_broker::cli::CliError> {
    let mut c = CliConn::connect(socket, token)?;
    let reply = c.request(serde_json::json!({"t": "stats"}))?;
    let r = report(&reply["value"]);
    Ok(render(&r.name.clone(), &[(None, Some(r))]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values_and_groups_families() {
        let mut r = StatsReport {
            name: "m\"x\\y\nz".into(),
            ..Default::default()
        };
        r.ops.insert("get".into(), 3);
        let text = render("a\"b", &[(Some(0), Some(r.clone())), (Some(1), None)]);
        assert!(
            text.contains("procmesh_up{mesh=\"a\\\"b\",shard=\"1\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("procmesh_ops_total{mesh=\"a\\\"b\",shard=\"0\",op=\"get\"} 3\n"));
        // Every family's samples follow its own TYPE line.
        let mut family = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line} outside {family}");
            }
        }
        assert!(
            !text.contains("procmesh_persist_"),
            "no persistence, no samples"
        );
    }
}
