//! Command-line options of `procmesh-bench`.
//!
//! Flags follow `redis-benchmark` where they mean the same (`-c`, `-P`, `-n`, `-r`,
//! `-t`); `-d` is the duration here (the value size is `--size`), and `-s`/`-w` are
//! the subscriber and worker connections of the `publish` and `call` workloads.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// The whole command line: a benchmark run, or `report`.
#[derive(Debug, Parser)]
#[command(
    name = "procmesh-bench",
    version,
    about = "Load generator for procmesh (and Redis, for comparison)",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// `report`: render a markdown comparison from recorded runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of a benchmark run (the default command).
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands besides the default benchmark run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Renders the markdown tables of `scripts/compare.sh` from a JSON-lines file of runs.
    Report(ReportArgs),
}

/// Options of `procmesh-bench report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// JSON-lines file: one `{"row","system","tool","round","cmd","target"?,"result"}` per run.
    pub runs: PathBuf,
}

/// What each request connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// `get` of random keys from the keyspace.
    Get,
    /// `set` of random keys to a `--size`-byte string.
    Set,
    /// `incr` of random `counter:` keys.
    Incr,
    /// 80% `get`, 20% `set`.
    Mixed,
    /// `pub` to one channel, with `-s` subscriber connections counting deliveries.
    Publish,
    /// `call` of an echo procedure served by `-w` worker connections.
    Call,
    /// `lock`/`unlock` cycles on a key of each connection's own (uncontended).
    Lock,
    /// `set` of every key of the keyspace exactly once (to measure memory).
    Fill,
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Get => "get",
            Workload::Set => "set",
            Workload::Incr => "incr",
            Workload::Mixed => "mixed",
            Workload::Publish => "publish",
            Workload::Call => "call",
            Workload::Lock => "lock",
            Workload::Fill => "fill",
        }
    }
}

/// Which server the generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A procmesh broker (or several shards), in the procmesh protocol.
    Procmesh,
    /// A Redis server on a Unix socket, in RESP (for side-by-side numbers).
    Redis,
}

/// Codec of the procmesh connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CodecArg {
    /// MessagePack (the Rust client's default).
    Msgpack,
    /// JSON (the Node.js package's default).
    Json,
}

/// Options of one benchmark run.
#[derive(Debug, Clone, Parser)]
#[command(name = "procmesh-bench")]
pub struct RunArgs {
    /// Workload.
    #[arg(short = 't', long = "workload", value_enum, default_value_t = Workload::Get)]
    pub workload: Workload,

    /// Server protocol: procmesh, or Redis (RESP) for comparison.
    #[arg(long, value_enum, default_value_t = Target::Procmesh)]
    pub target: Target,

    /// Request connections (publishers for `publish`, callers for `call`).
    #[arg(short = 'c', long = "connections", default_value_t = 4)]
    pub connections: usize,

    /// Requests in flight per connection (per shard socket with `--shards`).
    #[arg(short = 'P', long = "pipeline", default_value_t = 1)]
    pub pipeline: usize,

    /// Run for this long (`5s`, `500ms`, `1m`); the default when `-n` is absent is 5s.
    #[arg(short = 'd', long = "duration", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Total requests, split evenly over the connections (whichever of -n/-d ends first).
    #[arg(short = 'n', long = "requests")]
    pub requests: Option<u64>,

    /// Codec of procmesh connections.
    #[arg(long, value_enum, default_value_t = CodecArg::Msgpack)]
    pub codec: CodecArg,

    /// Number of shards (`NAME#0` … sockets per PROTOCOL.md §1); keys route by FNV-1a.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,

    /// Mesh name whose socket(s) to use when `--socket` is absent.
    #[arg(long, default_value = "default")]
    pub name: String,

    /// Socket path of a single broker (or of Redis with `--target redis`).
    #[arg(long)]
    pub socket: Option<PathBuf>,

    /// Keys are `key:` + 12 digits drawn from 0..keyspace (`redis-benchmark -r`).
    #[arg(short = 'r', long, default_value_t = 100_000)]
    pub keyspace: u64,

    /// Value size in bytes for `set`/`mixed`/`fill`, payload size for `publish`/`call`.
    #[arg(long, default_value_t = 3)]
    pub size: usize,

    /// Subscriber connections of `publish`.
    #[arg(short = 's', long = "subscribers", default_value_t = 4)]
    pub subscribers: usize,

    /// `acks` of each `publish`: `0` (no reply: each request is 16 publishes and a
    /// `ping`, counted as 16 operations; `-n` counts such requests), `1`, or `all`
    /// (durable on a retained channel of a persisting broker).
    #[arg(long = "acks", value_enum, default_value_t = AcksArg::One)]
    pub acks: AcksArg,

    /// Idempotent publishes (`publish`): each connection is a producer
    /// (`pid` `bench-<os pid>-<conn>`) numbering its publishes (`seq`), so the broker
    /// runs its dedup check on every one.
    #[arg(long)]
    pub idempotent: bool,

    /// Worker connections of `call`.
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    pub workers: usize,

    /// Generator threads for request connections (default: one fewer than the cores,
    /// at least 1, at most -c). Subscribers and workers get a thread each.
    #[arg(long)]
    pub threads: Option<usize>,

    /// Seed of the key generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    /// The time limit in force: `-d`, else 5 s unless `-n` was given.
    pub fn time_limit(&self) -> Option<Duration> {
        match (self.duration, self.requests) {
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(5)),
        }
    }

    /// Generator threads for request connections.
    pub fn request_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads
            .unwrap_or(cores.saturating_sub(1))
            .clamp(1, self.connections.max(1))
    }
}

/// Parses `5s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 5s, 500ms, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}` (ms, s or m)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration `{s}` must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn flags_like_redis_benchmark() {
        let a = RunArgs::parse_from(["x", "-t", "mixed", "-c", "2", "-P", "16", "-n", "1000"]);
        assert_eq!(a.workload, Workload::Mixed);
        assert_eq!((a.connections, a.pipeline, a.requests), (2, 16, Some(1000)));
        assert_eq!(a.time_limit(), None);
        let b = Cli::parse_from(["x", "report", "runs.jsonl"]);
        assert!(matches!(b.command, Some(Command::Report(_))));
    }
}

/// `--acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcksArg {
    /// `acks: 0` (no reply).
    #[value(name = "0")]
    Zero,
    /// `acks: 1` (the default; not sent).
    #[value(name = "1")]
    One,
    /// `acks: "all"`.
    All,
}

impl From<AcksArg> for procmesh_proto::Acks {
    fn from(a: AcksArg) -> procmesh_proto::Acks {
        match a {
            AcksArg::Zero => procmesh_proto::Acks::None,
            AcksArg::One => procmesh_proto::Acks::One,
            AcksArg::All => procmesh_proto::Acks::All,
        }
    }
}
