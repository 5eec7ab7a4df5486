//! `procmesh`: run a broker (`serve`) or talk to one (`status`, `stop`, `stats`).
//!
//! `status|stop|stats --shards N` cover a sharded mesh (`NAME#0` … `NAME#N-1`, as
//! `procmesh-launch` starts it): a line or row per shard, and totals.
//!
//! Exit codes: 0 success (also `serve` when another broker already owns the
//! address), 1 an error (or only some shards of a mesh are running), 3 no broker is
//! running at the address (no shard of the mesh is).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use procmesh_broker::cli::{human_ms, sharded_stats_table, stats_table, sum_stats};
use procmesh_broker::cli::{CliConn, CliError};
use procmesh_broker::{BindError, BrokerConfig, Reactor};
use procmesh_proto::addr;

#[derive(Parser)]
#[command(
    name = "procmesh",
    version,
    about = "procmesh broker and control commands"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Target {
    /// Mesh name (socket `<tmpdir>/procmesh-<name>.sock`).
    #[arg(long, default_value = addr::DEFAULT_NAME)]
    name: String,
    /// Socket path (overrides the name's path; `PROCMESH_SOCKET` also does).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Token for a broker that requires one.
    #[arg(long, env = "PROCMESH_TOKEN")]
    token: Option<String>,
}

impl Target {
    fn path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| addr::socket_path(&self.name))
    }
}

// Parsed once at startup; the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run a broker in the foreground.
    Serve {
        #[command(flatten)]
        target: Target,
        /// Maximum cache entries (LRU eviction past it; 0 = unbounded).
        #[arg(long)]
        max_keys: Option<usize>,
        /// Maximum bytes of cached values (replaces --max-keys; 0 = unbounded).
        #[arg(long)]
        max_bytes: Option<usize>,
        /// Default TTL in ms for writes without one (0 = none).
        #[arg(long)]
        default_ttl: Option<u64>,
        /// Heartbeat interval in ms (0 = off).
        #[arg(long)]
        heartbeat: Option<u64>,
        /// Exit after this many ms without connections (0 = never).
        #[arg(long)]
        idle_timeout: Option<u64>,
        /// Default RPC call timeout in ms.
        #[arg(long)]
        call_timeout: Option<u64>,
        /// Grace in ms added to a call's timeout before it is reaped (default 5000).
        #[arg(long)]
        call_grace: Option<u64>,
        /// Queued bytes per connection past which pub/sub messages are dropped.
        #[arg(long)]
        send_hwm: Option<usize>,
        /// Queued bytes per connection past which it is disconnected.
        #[arg(long)]
        send_hard_limit: Option<usize>,
        /// Largest accepted frame in bytes.
        #[arg(long)]
        max_frame: Option<usize>,
        /// Persist to this directory (snapshot + append-only log).
        #[arg(long, env = "PROCMESH_PERSIST_DIR")]
        persist_dir: Option<PathBuf>,
        /// When the log is made durable: no, everysec or always.
        #[arg(long, default_value = "everysec", value_parser = ["no", "everysec", "always"])]
        fsync: String,
        /// Keep everything in memory only, even if PROCMESH_PERSIST_DIR is set.
        #[arg(long)]
        no_persist: bool,
        /// Start even when the log is corrupt mid-file, dropping everything from there.
        #[arg(long)]
        repair: bool,
        /// Snapshot (and compact the log) after it grows by this many bytes.
        #[arg(long)]
        compact_bytes: Option<u64>,
        /// I/O driver: auto (io_uring when the kernel allows it, else epoll), uring or epoll.
        #[arg(long, env = "PROCMESH_IO", value_parser = ["auto", "uring", "epoll"])]
        io: Option<String>,
    },
    /// Say whether a broker (every shard, with --shards) is running.
    Status {
        #[command(flatten)]
        target: Target,
        /// The mesh is sharded over N brokers `NAME#0` … `NAME#N-1`.
        #[arg(long, value_name = "N", conflicts_with = "socket", value_parser = clap::value_parser!(u16).range(1..))]
        shards: Option<u16>,
    },
    /// Ask a broker (every shard, with --shards) to shut down and wait until it has.
    Stop {
        #[command(flatten)]
        target: Target,
        /// The mesh is sharded over N brokers `NAME#0` … `NAME#N-1`.
        #[arg(long, value_name = "N", conflicts_with = "socket", value_parser = clap::value_parser!(u16).range(1..))]
        shards: Option<u16>,
    },
    /// Print a broker's stats (per shard and totals, with --shards).
    Stats {
        #[command(flatten)]
        target: Target,
        /// The mesh is sharded over N brokers `NAME#0` … `NAME#N-1`.
        #[arg(long, value_name = "N", conflicts_with = "socket", value_parser = clap::value_parser!(u16).range(1..))]
        shards: Option<u16>,
        /// Print the raw stats map as JSON (with --shards: the sum plus `shards`).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            target,
            max_keys,
            max_bytes,
            default_ttl,
            heartbeat,
            idle_timeout,
            call_timeout,
            call_grace,
            send_hwm,
            send_hard_limit,
            max_frame,
            persist_dir,
            fsync,
            no_persist,
            repair,
            compact_bytes,
            io,
        } => {
            let mut cfg = BrokerConfig {
                name: target.name.clone(),
                socket: target.path(),
                ..Default::default()
            };
            if let Ok(opts) = std::env::var("PROCMESH_BROKER_OPTS") {
                if let Err(e) = cfg.apply_json(&opts) {
                    eprintln!("procmesh: {e}");
                    return ExitCode::from(1);
                }
            }
            // Flags win over the environment (`--name` only when given: it has a default).
            let name_given = std::env::args().any(|a| a == "--name" || a.starts_with("--name="));
            if name_given {
                cfg.name = target.name.clone();
                cfg.socket = target.path();
            }
            if target.token.is_some() {
                cfg.token = target.token.clone();
            }
            if target.socket.is_some() {
                cfg.socket = target.path();
            }
            if let Some(n) = max_keys {
                cfg.cache.max_entries = n;
            }
            if let Some(n) = max_bytes {
                cfg.cache.max_bytes = n;
            }
            if let Some(n) = default_ttl {
                cfg.cache.default_ttl_ms = n;
            }
            if let Some(n) = heartbeat {
                cfg.heartbeat = (n > 0).then(|| Duration::from_millis(n));
            }
            if let Some(n) = idle_timeout {
                cfg.idle_timeout = (n > 0).then(|| Duration::from_millis(n));
            }
            if let Some(n) = call_timeout {
                cfg.call_timeout = Duration::from_millis(n);
            }
            if let Some(n) = call_grace {
                cfg.call_grace = Duration::from_millis(n);
            }
            if let Some(n) = send_hwm {
                cfg.send_hwm = n;
            }
            if let Some(n) = send_hard_limit {
                cfg.send_hard_limit = n;
            }
            if let Some(n) = max_frame {
                cfg.max_frame = n;
            }
            if let Some(b) = io
                .as_deref()
                .and_then(procmesh_broker::config::IoBackend::parse)
            {
                cfg.io = b;
            }
            if let (Some(dir), false) = (persist_dir, no_persist) {
                let mut pc = procmesh_broker::persistence::PersistConfig::new(dir);
                pc.fsync =
                    procmesh_broker::persistence::FsyncMode::parse(&fsync).unwrap_or(pc.fsync);
                pc.repair = repair;
                if let Some(n) = compact_bytes {
                    pc.compact_bytes = n;
                }
                cfg.persist = Some(pc);
            }
            serve(cfg)
        }
        Cmd::Status {
            target,
            shards: Some(n),
        } => mesh_status(&target, n.into()),
        Cmd::Stop {
            target,
            shards: Some(n),
        } => mesh_stop(&target, n.into()),
        Cmd::Stats {
            target,
            shards: Some(n),
            json,
        } => mesh_stats(&target, n.into(), json),
        Cmd::Status {
            target,
            shards: None,
        } => {
            let path = target.path();
            match CliConn::connect(&path, target.token.as_deref())
                .and_then(|mut c| c.request(serde_json::json!({"t": "stats"})))
            {
                Ok(reply) => {
                    let v = &reply["value"];
                    println!(
                        "procmesh broker `{}` is running at {} (pid {}, up {}, {} connections)",
                        v["name"].as_str().unwrap_or("?"),
                        path.display(),
                        v["pid"],
                        human_ms(v["uptimeMs"].as_u64().unwrap_or(0)),
                        v["connections"]
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Stop {
            target,
            shards: None,
        } => {
            let path = target.path();
            match stop(&path, target.token.as_deref()) {
                Ok(()) => {
                    println!("procmesh broker at {} stopped", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Stats {
            target,
            shards: None,
            json,
        } => {
            let path = target.path();
            match CliConn::connect(&path, target.token.as_deref())
                .and_then(|mut c| c.request(serde_json::json!({"t": "stats"})))
            {
                Ok(reply) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&reply["value"]).unwrap_or_default()
                        );
                    } else {
                        print!("{}", stats_table(&reply["value"]));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

/// Asks the broker at `path` to shut down and waits until it has removed its socket.
fn stop(path: &Path, token: Option<&str>) -> Result<(), CliError> {
    let mut c = CliConn::connect(path, token)?;
    c.request(serde_json::json!({"t": "shutdown"}))?;
    c.wait_closed();
    // The broker removes its socket as its last step: wait for that.
    for _ in 0..200 {
        if !path.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The shards of the mesh `target.name`: `(NAME#i, socket)`.
fn mesh(target: &Target, n: usize) -> Result<Vec<(String, PathBuf)>, ExitCode> {
    match addr::shard_paths(&target.name, n) {
        Ok(paths) => Ok(paths
            .into_iter()
            .enumerate()
            .map(|(i, p)| (addr::shard_name(&target.name, i), p))
            .collect()),
        Err(e) => {
            eprintln!("procmesh: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// 0 when all `n` shards answered, 3 when none did, else 1.
fn mesh_exit(running: usize, n: usize) -> ExitCode {
    match running {
        0 => ExitCode::from(3),
        r if r == n => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

fn shard_stats(path: &Path, token: Option<&str>) -> Result<serde_json::Value, CliError> {
    let mut c = CliConn::connect(path, token)?;
    Ok(c.request(serde_json::json!({"t": "stats"}))?["value"].take())
}

fn mesh_status(target: &Target, n: usize) -> ExitCode {
    let shards = match mesh(target, n) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut running = 0;
    for (name, path) in &shards {
        match shard_stats(path, target.token.as_deref()) {
            Ok(v) => {
                running += 1;
                let core = v["core"]
                    .as_u64()
                    .map_or("not pinned".into(), |c| format!("core {c}"));
                println!(
                    "{name}: running at {} (pid {}, {core}, up {}, {} connections)",
                    path.display(),
                    v["pid"],
                    human_ms(v["uptimeMs"].as_u64().unwrap_or(0)),
                    v["connections"]
                );
            }
            Err(e) => println!("{name}: {e}"),
        }
    }
    println!(
        "procmesh mesh `{}`: {running} of {n} shards running",
        target.name
    );
    mesh_exit(running, n)
}

fn mesh_stop(target: &Target, n: usize) -> ExitCode {
    let shards = match mesh(target, n) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (mut stopped, mut failed) = (0, false);
    for (name, path) in &shards {
        match stop(path, target.token.as_deref()) {
            Ok(()) => {
                stopped += 1;
                println!("{name}: stopped ({})", path.display());
            }
            Err(e @ CliError::NotRunning(_)) => println!("{name}: {e}"),
            Err(e) => {
                failed = true;
                eprintln!("procmesh: {name}: {e}");
            }
        }
    }
    match (stopped, failed) {
        (_, true) => ExitCode::from(1),
        (0, false) => ExitCode::from(3),
        _ => ExitCode::SUCCESS,
    }
}

fn mesh_stats(target: &Target, n: usize, json: bool) -> ExitCode {
    let shards = match mesh(target, n) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut per_shard = Vec::with_capacity(n);
    for (name, path) in &shards {
        match shard_stats(path, target.token.as_deref()) {
            Ok(v) => per_shard.push(Some(v)),
            Err(e) => {
                eprintln!("procmesh: {name}: {e}");
                per_shard.push(None);
            }
        }
    }
    let running = per_shard.iter().flatten().count();
    if running > 0 {
        let sum = sum_stats(&target.name, &per_shard);
        if json {
            println!("{}", serde_json::to_string_pretty(&sum).unwrap_or_default());
        } else {
            print!("{}", sharded_stats_table(&sum));
        }
    }
    mesh_exit(running, n)
}

fn fail(e: CliError) -> ExitCode {
    eprintln!("procmesh: {e}");
    match e {
        CliError::NotRunning(_) => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

fn serve(cfg: BrokerConfig) -> ExitCode {
    let path = cfg.socket.clone();
    let mut reactor = match Reactor::bind(cfg) {
        Ok(r) => r,
        Err(BindError::AlreadyRunning(p)) => {
            println!("procmesh: a broker already serves {}; exiting", p.display());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("procmesh: cannot serve at {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    // SIGINT/SIGTERM write to a pipe the loop watches: a clean stop removes the socket.
    let pipe = std::os::unix::net::UnixStream::pair().and_then(|(rx, tx)| {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
        }
        rx.set_nonblocking(true)?;
        Ok(rx)
    });
    match pipe {
        Ok(rx) => {
            if let Err(e) = reactor.watch_signals(mio::net::UnixStream::from_std(rx)) {
                eprintln!("procmesh: cannot watch signals: {e}");
                return ExitCode::from(1);
            }
        }
        Err(e) => {
            eprintln!("procmesh: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    }
    for w in reactor.warnings() {
        eprintln!("procmesh: warning: {w}");
    }
    eprintln!(
        "procmesh: serving at {} (pid {})",
        path.display(),
        std::process::id()
    );
    match reactor.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("procmesh: broker loop failed: {e}");
            ExitCode::from(1)
        }
    }
}
