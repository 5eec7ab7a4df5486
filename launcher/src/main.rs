//! `procmesh-launch`: one pinned procmesh broker per core, supervised.
//!
//! A procmesh broker is a single-threaded event loop, so one broker uses one core.
//! To use N cores, `procmesh-launch --shards N` starts N brokers named `NAME#0` …
//! `NAME#N-1` on the sockets of PROTOCOL.md §1 (with `--shards 1`, the one broker is
//! plain `NAME`, where every one-shard client connects), pins shard `i` to the `i`-th
//! CPU this process may run on, tells each its place (`serve --shard i/N`, announced in
//! `welcome` so a client with another N refuses to connect), and keeps them running. Clients shard the keyspace over them
//! by FNV-1a (`Client::sharded(N)` in Rust, `createClient({ shards: N })` in Node.js).
//! The shards share nothing: no memory, no locks, no maps; each is its own process.
//!
//! ```text
//!                       procmesh-launch (supervisor, main thread, unpinned)
//!                        │ fork + pin + exec, waitpid on SIGCHLD, restart w/ backoff
//!          ┌─────────────┼──────────────────────┐
//!   procmesh serve    procmesh serve   …   procmesh serve
//!   NAME#0 on CPU c0  NAME#1 on CPU c1     NAME#N-1 on CPU c(N-1 mod cores)
//!   procmesh-NAME#0.sock …                 (each: one mio loop, its own store)
//! ```
//!
//! # Why child processes, not threads
//!
//! The shards could be N reactor threads of one process. They are N child processes
//! running the ordinary `procmesh serve` binary, because:
//!
//! - **Crash isolation.** An abort, a stack overflow, a segfault in a dependency or an
//!   OOM kill takes one shard down, not the mesh. With threads, any of these kills
//!   every shard; even a caught panic leaves the process with a reactor whose
//!   invariants are unknown.
//! - **Restart is the tested path.** Restarting a shard is running the broker again:
//!   it already probes and replaces a stale socket, recovers its persistence, and stops
//!   cleanly (socket removed, persistence flushed) on SIGTERM. No second
//!   "in-process restart" path to get right.
//! - **Shared-nothing by construction.** Separate address spaces cannot share a map by
//!   accident, and separate allocators do not contend. Per-process numbers in `stats`
//!   (`memory.rss`, `cpuCoreFraction`, `pid`, `core`) stay true per shard; in one
//!   process they would all report the whole process.
//! - **Operable.** Each shard is a pid to `kill`, `perf -p` or `taskset -p`, and the
//!   crash test is a plain SIGKILL.
//!
//! The cost is one `fork`+`exec` per (re)start (milliseconds) and a few MiB of RSS per
//! shard, against a 2 s restart budget and a core's worth of work per shard.
//!
//! # Pinning
//!
//! The CPUs come from `core_affinity::get_core_ids()` (the launcher's own affinity
//! mask, so `taskset` and cpusets are respected); shard `i` gets `cpus[i % len]`. The
//! mask is set in the child between fork and exec (`sched_setaffinity` in `pre_exec`),
//! so the broker never runs anywhere else, not even while binding; it reports the CPU
//! as `core` in its `stats`. `--no-pin` leaves scheduling to the kernel. The launcher
//! itself stays unpinned: it sleeps in a blocking read nearly all the time.
//!
//! # Supervision
//!
//! See `supervisor` for the policy: restart with exponential backoff (50 ms doubling
//! to 2 s) whatever the shard's exit, even a clean one after a client's `shutdown`;
//! only its idle timeout stops a shard for good. SIGINT/SIGTERM stops every shard
//! cleanly and exits 0 (`procmesh stop` sends it to the launcher of a launched broker).
//! Shards report readiness and their stop reason on the launcher's notification
//! socket (`NOTIFY_SOCKET`, sd_notify form); under systemd the launcher itself sends
//! `READY=1` once every shard serves. Shards get SIGTERM as their parent-death
//! signal, so even a SIGKILLed launcher leaves no orphan brokers behind.
//!
//! # Output
//!
//! stdout carries exactly one line per shard each time it starts serving (`--json`
//! for one JSON object per line: `shard`, `name`, `socket`, `pid`, `core`, `start`).
//! Everything else, including each broker's own output prefixed with `[NAME#i]`, goes
//! to stderr: `tracing` lines (`<time> procmesh-launch: [<level>: ]<message>`),
//! filtered by `PROCMESH_LOG` (default `info`), which the shards inherit.
//!
//! # Layout
//! - `config`: command line → [`config::LaunchConfig`] (shards, sockets, cores).
//! - `shard`: starting one broker process (flags, pinning, output forwarding).
//! - `supervisor`: the loop that starts, restarts and stops shards.
//!
//! # Example
//! ```text
//! $ procmesh-launch --shards 2 --name jobs --max-keys 1000000
//! procmesh-launch: jobs#0 serving at /tmp/procmesh-jobs#0.sock (pid 4101, core 0)
//! procmesh-launch: jobs#1 serving at /tmp/procmesh-jobs#1.sock (pid 4102, core 1)
//! $ procmesh stats --shards 2 --name jobs
//! $ procmesh stop --shards 2 --name jobs     # signals the launcher; it stops both, exits 0
//! ```

mod config;
mod log;
mod shard;
mod supervisor;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use procmesh_proto::addr;

use crate::config::LaunchConfig;
use crate::supervisor::Outcome;

/// The longest the shards may take, together, to report serving at start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "procmesh-launch",
    version,
    about = "Start one pinned procmesh broker per core and keep them running",
    after_help = "Flags after `--` are passed to every shard's `procmesh serve` unchanged."
)]
struct Cli {
    /// Number of shards [default: the number of CPUs this process may use].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    shards: Option<u32>,
    /// Mesh name; shard i is the broker `NAME#i` at `<tmpdir>/procmesh-NAME#i.sock`
    /// (one shard: `NAME` at `<tmpdir>/procmesh-NAME.sock`).
    #[arg(long, default_value = addr::DEFAULT_NAME)]
    name: String,
    /// Token every shard requires (passed to them in the environment, not argv).
    #[arg(long, env = "PROCMESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File whose first line is the token (keeps it out of argv and the environment);
    /// every shard reads it at each start; wins over --token.
    #[arg(
        long,
        value_name = "PATH",
        env = "PROCMESH_TOKEN_FILE",
        hide_env_values = true
    )]
    token_file: Option<PathBuf>,
    /// Persist each shard under DIR/shard-i (`procmesh serve --persist-dir`).
    #[arg(long, env = "PROCMESH_PERSIST_DIR", value_name = "DIR")]
    persist_dir: Option<PathBuf>,
    /// Do not pin shards to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// The `procmesh` broker binary [default: next to this executable, else on PATH].
    #[arg(long, env = "PROCMESH_BROKER_BIN", value_name = "PATH")]
    broker_bin: Option<PathBuf>,
    /// Print the per-shard "serving" lines as JSON objects.
    #[arg(long)]
    json: bool,
    /// Milliseconds shards get to stop after SIGTERM before they are killed.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    stop_timeout: u64,
    /// Maximum cache entries per shard (LRU eviction past it; 0 = unbounded).
    #[arg(long, help_heading = "Broker options (per shard)")]
    max_keys: Option<usize>,
    /// Maximum bytes of cached values per shard (0 = unbounded).
    #[arg(long, help_heading = "Broker options (per shard)")]
    max_bytes: Option<usize>,
    /// Default TTL in ms for writes without one (0 = none).
    #[arg(long, help_heading = "Broker options (per shard)")]
    default_ttl: Option<u64>,
    /// Heartbeat interval in ms (0 = off).
    #[arg(long, help_heading = "Broker options (per shard)")]
    heartbeat: Option<u64>,
    /// A shard exits after this many ms without connections and is not restarted (the
    /// one clean stop that is not); the launcher exits once all have (0 = never).
    #[arg(long, help_heading = "Broker options (per shard)")]
    idle_timeout: Option<u64>,
    /// Default RPC call timeout in ms.
    #[arg(long, help_heading = "Broker options (per shard)")]
    call_timeout: Option<u64>,
    /// Grace in ms added to a call's timeout before it is reaped.
    #[arg(long, help_heading = "Broker options (per shard)")]
    call_grace: Option<u64>,
    /// Queued bytes per connection past which pub/sub messages are dropped.
    #[arg(long, help_heading = "Broker options (per shard)")]
    send_hwm: Option<usize>,
    /// Queued bytes per connection past which it is disconnected.
    #[arg(long, help_heading = "Broker options (per shard)")]
    send_hard_limit: Option<usize>,
    /// Largest accepted frame in bytes.
    #[arg(long, help_heading = "Broker options (per shard)")]
    max_frame: Option<usize>,
    /// When each shard's log is made durable (with --persist-dir).
    #[arg(long, help_heading = "Broker options (per shard)", value_parser = ["no", "everysec", "always"])]
    fsync: Option<String>,
    /// More `procmesh serve` flags for every shard.
    #[arg(last = true, value_name = "SERVE_FLAGS")]
    extra: Vec<OsString>,
}

impl Cli {
    /// The broker flags to forward, as `--flag value` pairs.
    fn broker_args(&self) -> Vec<OsString> {
        let mut out = Vec::new();
        let mut flag = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push(OsString::from(format!("--{name}")));
                out.push(OsString::from(v));
            }
        };
        flag("max-keys", self.max_keys.map(|n| n.to_string()));
        flag("max-bytes", self.max_bytes.map(|n| n.to_string()));
        flag("default-ttl", self.default_ttl.map(|n| n.to_string()));
        flag("heartbeat", self.heartbeat.map(|n| n.to_string()));
        flag("idle-timeout", self.idle_timeout.map(|n| n.to_string()));
        flag("call-timeout", self.call_timeout.map(|n| n.to_string()));
        flag("call-grace", self.call_grace.map(|n| n.to_string()));
        flag("send-hwm", self.send_hwm.map(|n| n.to_string()));
        flag(
            "send-hard-limit",
            self.send_hard_limit.map(|n| n.to_string()),
        );
        flag("max-frame", self.max_frame.map(|n| n.to_string()));
        flag("fsync", self.fsync.clone());
        out.extend(self.extra.iter().cloned());
        out
    }

    fn into_config(self) -> Result<LaunchConfig, String> {
        if self.name.is_empty() || self.name.contains('/') {
            return Err(format!("invalid mesh name {:?}", self.name));
        }
        let cores = config::allowed_cores();
        let n = self.shards.map_or(cores.len(), |n| n as usize);
        if !self.no_pin && n > cores.len() {
            tracing::warn!(
                "{n} shards on {} CPUs: some shards share a CPU",
                cores.len()
            );
        }
        let pin_to: &[usize] = if self.no_pin { &[] } else { &cores };
        // Checked here so a bad path fails the launch, not every shard's start; made
        // absolute so it means the same file to the shards.
        let token_file = match &self.token_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read the token file {}: {e}", p.display()))?;
                if text.lines().next().is_none_or(|l| l.trim().is_empty()) {
                    return Err(format!(
                        "the token file {} has an empty first line",
                        p.display()
                    ));
                }
                Some(std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?)
            }
            None => None,
        };
        let shards = config::shard_specs(&self.name, n, pin_to, self.persist_dir.as_deref())?;
        Ok(LaunchConfig {
            broker_args: self.broker_args(),
            broker_bin: config::broker_bin(self.broker_bin),
            name: self.name,
            shards,
            token: self.token,
            token_file,
            json: self.json,
            startup_timeout: STARTUP_TIMEOUT,
            stop_timeout: Duration::from_millis(self.stop_timeout),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The shards inherit PROCMESH_LOG: one filter for the whole mesh.
    let filter = std::env::var("PROCMESH_LOG").unwrap_or_else(|_| "info".into());
    if let Err(e) = log::init(&filter) {
        eprintln!("procmesh-launch: {e}");
        return ExitCode::from(2);
    }
    let cfg = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let name = cfg.name.clone();
    let n = cfg.shards.len();
    match supervisor::run(cfg) {
        Ok(Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(Outcome::AlreadyRunning) => {
            println!("procmesh-launch: mesh `{name}` already runs {n} shards; exiting");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Killed(names)) => {
            tracing::error!("stopped, but had to kill {}", names.join(", "));
            ExitCode::from(1)
        }
        Ok(Outcome::StartFailed(why)) => {
            tracing::error!("the mesh did not start: {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}
