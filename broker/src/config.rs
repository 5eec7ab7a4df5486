//! Broker configuration: plain data, from CLI flags, `PROCMESH_BROKER_OPTS` (JSON with
//! the Node.js package's option names) or the builder.
//!
//! `config` owns the `serve` flags ([`ServeArgs`], parsed by the binary) and the one
//! place where flags, their environment variables and `PROCMESH_BROKER_OPTS` are
//! weighed against each other: [`BrokerConfig::resolve`]. It reads no environment
//! itself except through clap's `env` attributes; the caller passes the options text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use procmesh_proto::{addr, frame};
use serde::Deserialize;
use serde_json::Value;

use crate::events::EventSink;
use crate::persistence::{FsyncMode, PersistConfig};
use crate::retain::DurableAcks;
use crate::store::StoreConfig;

/// Which broker a command means: `--name`, `--socket`, `--token` or `--token-file`.
#[derive(Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Mesh name (socket `<tmpdir>/procmesh-<name>.sock`).
    #[arg(long, default_value = addr::DEFAULT_NAME)]
    pub name: String,
    /// Socket path (overrides the name's path; `PROCMESH_SOCKET` also does).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Token for a broker that requires one (prefer --token-file: argv is visible in `ps`).
    #[arg(long, env = "PROCMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the token from the first line of this file (trimmed), keeping it out of
    /// argv; wins over --token and PROCMESH_TOKEN.
    #[arg(
        long,
        value_name = "PATH",
        env = "PROCMESH_TOKEN_FILE",
        hide_env_values = true
    )]
    pub token_file: Option<PathBuf>,
}

impl TargetArgs {
    /// The socket: `--socket`, else the one derived from the name.
    pub fn path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| addr::AddrEnv::from_lookup(std::env::var_os).socket_path(&self.name))
    }

    /// The token: the first line of `--token-file` (trimmed), else `--token` or
    /// `PROCMESH_TOKEN`. Fails when the file cannot be read or its first line is empty.
    pub fn resolve_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(self.token.clone());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        match text.lines().next().map(str::trim) {
            Some(t) if !t.is_empty() => Ok(Some(t.to_string())),
            _ => Err(format!(
                "the token file {} has an empty first line",
                path.display()
            )),
        }
    }
}

/// Parses a duration flag into milliseconds: a plain number is milliseconds (as
/// before units were accepted), anything else a `humantime` duration: `250ms`,
/// `30s`, `5m`, `1h 30m`.
pub fn parse_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("`{s}` is not a duration ({e}); use a number of ms or units like 250ms, 30s, 5m")
    })?;
    u64::try_from(d.as_millis()).map_err(|_| format!("`{s}` is too long"))
}

/// Parses a duration flag (as [`parse_ms`]) into a [`Duration`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_ms(s).map(Duration::from_millis)
}

/// Parses a size flag into bytes: a plain number is bytes, else a number (it may
/// have a fraction) and a unit: `B`, decimal `KB`/`MB`/`GB`/`TB` (also `K`, `M`,
/// `G`, `T`; powers of 1000) or binary `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024).
/// Units are case-insensitive, a space between number and unit is allowed.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let bad = || format!("`{s}` is not a size; use a number of bytes or units like 64KB, 512MiB");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let v = num * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(v.round() as u64)
}

/// [`parse_bytes`] into a `usize`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    parse_bytes(s).and_then(|n| usize::try_from(n).map_err(|_| format!("`{s}` is too large")))
}

/// How much `procmesh serve` logs (the two levels `--log` had before it took a
/// filter; kept for embedders that used it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Startup, warnings, persistence errors.
    Info,
    /// Also every broker event.
    Debug,
}

/// This broker's place in a sharded mesh: shard `index` of `count` (`--shard 2/8`).
/// Announced in `welcome` (`shard`, `shards`; ours) so a client that routes over
/// another shard count refuses to connect instead of sending keys to the wrong shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardOf {
    /// Its index, `0..count`.
    pub index: u32,
    /// How many shards the mesh has (at least 1).
    pub count: u32,
}

/// Parses `I/N` (`0 <= I < N`, `N <= 65535`) into a [`ShardOf`].
pub fn parse_shard(s: &str) -> Result<ShardOf, String> {
    let bad = || format!("`{s}` is not a shard; use INDEX/COUNT, e.g. 2/8 (0-based)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let index: u32 = i.trim().parse().map_err(|_| bad())?;
    let count: u32 = n.trim().parse().map_err(|_| bad())?;
    if count == 0 || count > u32::from(u16::MAX) || index >= count {
        return Err(bad());
    }
    Ok(ShardOf { index, count })
}

/// The flags of `procmesh serve`; [`BrokerConfig::resolve`] turns them into a config.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The mesh to serve.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Maximum cache entries (LRU eviction past it; 0 = unbounded).
    #[arg(long)]
    pub max_keys: Option<usize>,
    /// Maximum bytes of cached values (replaces --max-keys; 0 = unbounded): bytes or 512MiB, 64KB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_bytes: Option<usize>,
    /// Default TTL for writes without one (0 = none): ms or 30s, 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_ms)]
    pub default_ttl: Option<u64>,
    /// Heartbeat interval (0 = off): ms or 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_ms)]
    pub heartbeat: Option<u64>,
    /// Exit after this long without connections (0 = never): ms or 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_ms)]
    pub idle_timeout: Option<u64>,
    /// Default RPC call timeout: ms or 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_ms)]
    pub call_timeout: Option<u64>,
    /// Grace added to a call's timeout before it is reaped (default 5s): ms or 5s.
    #[arg(long, value_name = "DURATION", value_parser = parse_ms)]
    pub call_grace: Option<u64>,
    /// Queued bytes per connection past which pub/sub messages are dropped: bytes or 16MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub send_hwm: Option<usize>,
    /// Queued bytes per connection past which it is disconnected: bytes or 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub send_hard_limit: Option<usize>,
    /// Largest accepted frame: bytes or 16MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_frame: Option<usize>,
    /// Hardening limits (issue 12): connection cap, handshake deadline, per-connection caps.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Emit a `stats` event this often (0 = never; logged with --log debug): ms or 10s.
    #[arg(long, value_name = "DURATION", value_parser = parse_ms)]
    pub stats_interval: Option<u64>,
    /// What `serve` logs to stderr, as a filter: `info` (the startup and shutdown
    /// lines, recovery progress, warnings, errors), `warn` (only problems), `debug`
    /// (also every broker event: connect, disconnect, drop, reap, stats), or per
    /// module (`procmesh_broker::persistence=debug,info`). See `procmesh_broker::log`.
    #[arg(long, value_name = "FILTER", default_value = crate::log::DEFAULT_FILTER, env = "PROCMESH_LOG")]
    pub log: String,
    /// Turn idempotent-producer dedup off (`dedup.enabled: false`).
    #[arg(long)]
    pub no_dedup: bool,
    /// Most (producer, channel) dedup entries kept, LRU (`dedup.max`).
    #[arg(long, value_name = "N")]
    pub dedup_max: Option<usize>,
    /// Forget a producer's dedup state after this long idle (0 = never): ms or 10m.
    #[arg(long, value_name = "DURATION", value_parser = parse_ms)]
    pub dedup_ttl: Option<u64>,
    /// Retained pub/sub: offsets, a per-channel backlog, replay (`pubsub.persist`).
    #[arg(long)]
    pub pubsub_persist: bool,
    /// Messages retained per channel (0 = none; `pubsub.retention`).
    #[arg(long, value_name = "N")]
    pub pubsub_retention: Option<usize>,
    /// Persist to this directory (snapshot + append-only log).
    #[arg(long, env = "PROCMESH_PERSIST_DIR")]
    pub persist_dir: Option<PathBuf>,
    /// When the log is made durable: no, everysec or always (default everysec, or
    /// the options' `persist.mode`).
    #[arg(long, default_value = "everysec", value_parser = ["no", "everysec", "always"])]
    pub fsync: String,
    /// Keep everything in memory only, even if PROCMESH_PERSIST_DIR is set.
    #[arg(long)]
    pub no_persist: bool,
    /// Start even when the log is corrupt mid-file, dropping everything from there.
    #[arg(long)]
    pub repair: bool,
    /// Snapshot (and compact the log) after it grows by this much: bytes or 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub compact_bytes: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (a loopback address such as
    /// 127.0.0.1:9464 unless --metrics-allow-remote).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Allow --metrics-addr on a non-loopback address (metrics are not authenticated).
    #[arg(long, requires = "metrics_addr")]
    pub metrics_allow_remote: bool,
    /// I/O driver: auto (io_uring when the kernel allows it, else epoll), uring or epoll.
    #[arg(long, env = "PROCMESH_IO", value_parser = ["auto", "uring", "epoll"])]
    pub io: Option<String>,
    /// io_uring with a kernel submission thread (SQPOLL) that sleeps after IDLE_MS
    /// without work (default 1000; 0 = the kernel's default, 1 s): for a broker pinned
    /// to its own core. Needs io_uring: a startup error where the kernel refuses it,
    /// and with --io epoll.
    #[arg(
        long,
        env = "PROCMESH_URING_SQPOLL",
        value_name = "IDLE_MS",
        num_args = 0..=1,
        default_missing_value = "1000"
    )]
    pub sqpoll: Option<u32>,
    /// This broker is shard INDEX of a COUNT-shard mesh (`2/8`, 0-based; procmesh-launch
    /// sets it): announced in `welcome`, so a client with another shard count refuses.
    #[arg(long, value_name = "INDEX/COUNT", value_parser = parse_shard)]
    pub shard: Option<ShardOf>,
}

impl ServeArgs {
    /// The address to serve metrics at: `--metrics-addr`, refused when it is not a
    /// loopback address unless `--metrics-allow-remote`.
    pub fn metrics_listen(&self) -> Result<Option<SocketAddr>, String> {
        match self.metrics_addr {
            Some(a) if !a.ip().is_loopback() && !self.metrics_allow_remote => Err(format!(
                "--metrics-addr {a} is not a loopback address; metrics are not authenticated, \
                 pass --metrics-allow-remote to serve them there anyway"
            )),
            a => Ok(a),
        }
    }
}

/// Everything a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Mesh name, announced in `welcome`.
    pub name: String,
    /// Socket path.
    pub socket: PathBuf,
    /// Shared secret clients must present in `hello`.
    pub token: Option<String>,
    /// Cache bounds.
    pub cache: StoreConfig,
    /// Heartbeat interval; `None` disables pings and reaping.
    pub heartbeat: Option<Duration>,
    /// Exit after this long without any connection; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Default RPC call timeout when a call has none.
    pub call_timeout: Duration,
    /// Grace added to a call's timeout before the broker reaps it (default 5 s).
    pub call_grace: Duration,
    /// Queued bytes past which best-effort frames to a connection are dropped.
    pub send_hwm: usize,
    /// Queued bytes past which a connection is closed.
    pub send_hard_limit: usize,
    /// Largest accepted frame payload.
    pub max_frame: usize,
    /// Durability; `None` keeps everything in memory only.
    pub persist: Option<PersistConfig>,
    /// How often a `stats` event is emitted (`statsInterval`); `None` = never.
    pub stats_interval: Option<Duration>,
    /// Where broker events go ([`crate::events`]); `None` = nowhere, at no cost.
    /// Set by [`BrokerBuilder::events`](crate::BrokerBuilder::events), not by options.
    pub events: Option<EventSink>,
    /// Notes for the operator from resolving the options (unknown keys), printed by
    /// `procmesh serve` at startup.
    pub warnings: Vec<String>,
    /// Idempotent-producer dedup (`dedup{…}`).
    pub dedup: crate::dedup::DedupConfig,
    /// Retained pub/sub and durable acks (`pubsub{…}`).
    pub pubsub: crate::retain::RetainConfig,
    /// Which I/O driver runs the loop (after start: the one that runs).
    pub io: IoBackend,
    /// io_uring's kernel submission thread (`--sqpoll`, `ioSqpoll`): its idle time
    /// in ms before it sleeps; `None` = off (the loop submits with its one enter).
    pub sqpoll: Option<u32>,
    /// Bounds on what one peer (or all of them) may hold.
    pub limits: Limits,
    /// Its place in a sharded mesh (`--shard`), announced in `welcome`; `None` for a
    /// broker that was not told (nothing is announced).
    pub shard: Option<ShardOf>,
}

/// The I/O driver choice: `auto` tries io_uring and falls back to epoll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// io_uring when the kernel allows it, else epoll (one log line says why).
    #[default]
    Auto,
    /// io_uring or a startup error.
    Uring,
    /// The mio (epoll) loop.
    Epoll,
}

impl IoBackend {
    /// `auto`, `uring` or `epoll`.
    pub fn parse(s: &str) -> Option<IoBackend> {
        match s {
            "auto" => Some(IoBackend::Auto),
            "uring" | "io_uring" => Some(IoBackend::Uring),
            "epoll" => Some(IoBackend::Epoll),
            _ => None,
        }
    }

    /// The name `stats` reports (`ioBackend`).
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::Uring => "uring",
            IoBackend::Epoll => "epoll",
        }
    }
}

// ------------------------------------------------------------ limits (issue 12)

/// The flags of [`Limits`] (each also a `PROCMESH_BROKER_OPTS` name, see [`Limits::apply`]).
#[derive(Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Most open connections; more are refused with an error frame (0 = unbounded).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Close a connection that has not passed `hello` within this (0 = never): ms or 10s.
    #[arg(long, value_name = "DURATION", value_parser = parse_ms)]
    pub handshake_timeout: Option<u64>,
    /// Most subscriptions per connection (0 = unbounded).
    #[arg(long)]
    pub max_subscriptions: Option<usize>,
    /// Most procedure registrations per connection (0 = unbounded).
    #[arg(long)]
    pub max_registrations: Option<usize>,
    /// Most lock requests waiting per connection (0 = unbounded).
    #[arg(long)]
    pub max_lock_waiters: Option<usize>,
    /// Most RPC calls in flight per caller (0 = unbounded).
    #[arg(long)]
    pub max_pending_calls: Option<usize>,
    /// Total queued output over all connections past which best-effort frames drop
    /// and the biggest queue is disconnected (0 = unbounded): bytes or 256MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_output_bytes: Option<usize>,
    /// Most (key, connection) pairs the near-cache tracking table holds; past it the
    /// oldest tracked keys are invalidated (0 = unbounded).
    #[arg(long)]
    pub max_tracked_keys: Option<usize>,
}

/// Bounds on per-connection and global state. `usize::MAX` (0 on the command line)
/// means unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `maxConnections`, `--max-connections` (default 10 000).
    pub max_connections: usize,
    /// `handshakeTimeout`, `--handshake-timeout` (default 10 s; only with a token).
    pub handshake_timeout: Option<Duration>,
    /// `maxSubscriptions`, `--max-subscriptions` (default 100 000 per connection).
    pub max_subscriptions: usize,
    /// `maxRegistrations`, `--max-registrations` (default 100 000 per connection).
    pub max_registrations: usize,
    /// `maxLockWaiters`, `--max-lock-waiters` (default 100 000 per connection).
    pub max_lock_waiters: usize,
    /// `maxPendingCalls`, `--max-pending-calls` (default 100 000 per caller).
    pub max_pending_calls: usize,
    /// `maxOutputBytes`, `--max-output-bytes` (default 256 MiB over all connections).
    pub max_output_bytes: usize,
    /// `maxTrackedKeys`, `--max-tracked-keys` (default 1 000 000 (key, connection)
    /// pairs in the near-cache tracking table).
    pub max_tracked_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            handshake_timeout: Some(Duration::from_secs(10)),
            max_subscriptions: 100_000,
            max_registrations: 100_000,
            max_lock_waiters: 100_000,
            max_pending_calls: 100_000,
            max_output_bytes: 256 << 20,
            max_tracked_keys: 1_000_000,
        }
    }
}

fn cap(n: usize) -> usize {
    if n == 0 {
        usize::MAX
    } else {
        n
    }
}

impl Limits {
    /// Applies the flags given.
    pub fn apply_args(&mut self, a: &LimitArgs) {
        let set = |dst: &mut usize, v: Option<usize>| {
            if let Some(n) = v {
                *dst = cap(n);
            }
        };
        set(&mut self.max_connections, a.max_connections);
        set(&mut self.max_subscriptions, a.max_subscriptions);
        set(&mut self.max_registrations, a.max_registrations);
        set(&mut self.max_lock_waiters, a.max_lock_waiters);
        set(&mut self.max_pending_calls, a.max_pending_calls);
        set(&mut self.max_output_bytes, a.max_output_bytes);
        set(&mut self.max_tracked_keys, a.max_tracked_keys);
        if let Some(n) = a.handshake_timeout {
            self.handshake_timeout = (n > 0).then(|| Duration::from_millis(n));
        }
    }

    /// Applies the `PROCMESH_BROKER_OPTS` limits (ours; 0 = unbounded).
    pub fn apply_opts(&mut self, o: &NodeOpts) {
        let set = |dst: &mut usize, v: Option<usize>| {
            if let Some(n) = v {
                *dst = cap(n);
            }
        };
        set(&mut self.max_connections, o.max_connections);
        set(&mut self.max_subscriptions, o.max_subscriptions);
        set(&mut self.max_registrations, o.max_registrations);
        set(&mut self.max_lock_waiters, o.max_lock_waiters);
        set(&mut self.max_pending_calls, o.max_pending_calls);
        set(&mut self.max_output_bytes, o.max_output_bytes);
        set(&mut self.max_tracked_keys, o.max_tracked_keys);
        if let Some(n) = o.handshake_timeout {
            self.handshake_timeout = (n > 0).then(|| Duration::from_millis(n));
        }
    }
}

/// Default grace added to an RPC call's timeout before the broker reaps it.
pub const CALL_GRACE: Duration = Duration::from_millis(5000);

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            name: addr::DEFAULT_NAME.to_string(),
            socket: addr::AddrEnv::from_lookup(std::env::var_os).socket_path(addr::DEFAULT_NAME),
            token: None,
            cache: StoreConfig::default(),
            heartbeat: Some(Duration::from_secs(30)),
            idle_timeout: None,
            call_timeout: Duration::from_secs(30),
            call_grace: CALL_GRACE,
            send_hwm: 16 << 20,
            send_hard_limit: 64 << 20,
            max_frame: frame::MAX_FRAME_LEN,
            persist: None,
            limits: Limits::default(),
            stats_interval: None,
            events: None,
            warnings: Vec::new(),
            dedup: Default::default(),
            pubsub: Default::default(),
            io: IoBackend::Auto,
            sqpoll: None,
            shard: None,
        }
    }
}

impl BrokerConfig {
    /// The configuration of `procmesh serve`, from its parsed flags (`matches`, of a
    /// command built from [`ServeArgs`]) and the text of `PROCMESH_BROKER_OPTS`
    /// (`opts`, when set). Lowest to highest precedence:
    ///
    /// | source | what it sets |
    /// |---|---|
    /// | defaults | everything; the socket is derived from the name |
    /// | `PROCMESH_BROKER_OPTS` | its options ([`apply_json`](Self::apply_json)): `name` re-derives the socket, `address`/`socketPath` replaces it |
    /// | `--name` on the command line (not its default) | the name, and the socket derived from it (over the options' address) |
    /// | `--socket` | the socket |
    /// | `--token-file` (or `PROCMESH_TOKEN_FILE`), else `--token` or `PROCMESH_TOKEN` | the token |
    /// | every other flag given | its setting |
    ///
    /// Persistence, highest first: `--no-persist` (off); a typed `--persist-dir`
    /// (with the options' `persist.mode`, unless it is `off`, which a typed dir
    /// overrides); the options' `persist` (`persist.dir`, else `PROCMESH_PERSIST_DIR`,
    /// else `<tmpdir>/procmesh-<name>`; `mode: "off"` turns it off);
    /// `PROCMESH_PERSIST_DIR` alone (on, even with `persist: false`, as in
    /// procmesh-js). A typed `--fsync` wins over `persist.mode`; `--repair` and
    /// `--compact-bytes` apply to whichever directory results.
    ///
    /// Unknown option keys end up in [`BrokerConfig::warnings`]. Fails when the flags
    /// do not match [`ServeArgs`], the token file cannot be read, or `opts` is not a
    /// JSON object or has a known key of the wrong type (the error names both).
    pub fn resolve(matches: &ArgMatches, opts: Option<&str>) -> Result<BrokerConfig, String> {
        let a = ServeArgs::from_arg_matches(matches).map_err(|e| e.to_string())?;
        let t = &a.target;
        let mut cfg = BrokerConfig {
            name: t.name.clone(),
            socket: t.path(),
            ..Default::default()
        };
        let node = match opts {
            Some(text) => NodeOpts::parse(text)?,
            None => NodeOpts::default(),
        };
        cfg.apply_opts(&node);
        cfg.warnings = node.warnings();
        // `--name` has a default, so only a name typed on the command line wins.
        if matches.value_source("name") == Some(ValueSource::CommandLine) {
            cfg.name = t.name.clone();
            cfg.socket = t.path();
        }
        if let Some(path) = &t.socket {
            cfg.socket = path.clone();
        }
        if let Some(token) = t.resolve_token()? {
            cfg.token = Some(token);
        }
        let ms = Duration::from_millis;
        if let Some(n) = a.max_keys {
            cfg.cache.max_entries = n;
        }
        if let Some(n) = a.max_bytes {
            cfg.cache.max_bytes = n;
        }
        if let Some(n) = a.default_ttl {
            cfg.cache.default_ttl_ms = n;
        }
        if let Some(n) = a.heartbeat {
            cfg.heartbeat = (n > 0).then(|| ms(n));
        }
        if let Some(n) = a.idle_timeout {
            cfg.idle_timeout = (n > 0).then(|| ms(n));
        }
        if let Some(n) = a.call_timeout {
            cfg.call_timeout = ms(n);
        }
        if let Some(n) = a.call_grace {
            cfg.call_grace = ms(n);
        }
        if let Some(n) = a.send_hwm {
            cfg.send_hwm = n;
        }
        if let Some(n) = a.send_hard_limit {
            cfg.send_hard_limit = n;
        }
        if let Some(n) = a.max_frame {
            cfg.max_frame = n;
        }
        cfg.limits.apply_args(&a.limits);
        if let Some(b) = a.io.as_deref().and_then(IoBackend::parse) {
            cfg.io = b;
        }
        if a.sqpoll.is_some() {
            cfg.sqpoll = a.sqpoll;
        }
        if cfg.sqpoll.is_some() && cfg.io == IoBackend::Epoll {
            return Err(
                "--sqpoll (ioSqpoll) is an io_uring mode: it cannot run with --io epoll".into(),
            );
        }
        if a.shard.is_some() {
            cfg.shard = a.shard;
        }
        if let Some(n) = a.stats_interval {
            cfg.stats_interval = (n > 0).then(|| ms(n));
        }
        if a.no_dedup {
            cfg.dedup.enabled = false;
        }
        if let Some(n) = a.dedup_max {
            cfg.dedup.max = n;
        }
        if let Some(n) = a.dedup_ttl {
            cfg.dedup.ttl_ms = n;
        }
        if a.pubsub_persist {
            cfg.pubsub.persist = true;
        }
        if let Some(n) = a.pubsub_retention {
            cfg.pubsub.retention = n;
        }
        cfg.persist = if a.no_persist {
            None
        } else if let (Some(dir), Some(ValueSource::CommandLine)) =
            (&a.persist_dir, matches.value_source("persist_dir"))
        {
            // A typed --persist-dir wins over the options, `mode: "off"` included.
            let mut pc = PersistConfig::new(dir);
            if let Some(m) = node.persist_mode().and_then(PersistMode::fsync) {
                pc.fsync = m;
            }
            Some(pc)
        } else {
            // PROCMESH_PERSIST_DIR turns persistence on, below the options' own dir.
            node.persist_config(&cfg.name, a.persist_dir.as_deref())
        };
        if let Some(pc) = cfg.persist.as_mut() {
            if matches.value_source("fsync") == Some(ValueSource::CommandLine) {
                pc.fsync = FsyncMode::parse(&a.fsync).unwrap_or(pc.fsync);
            }
            pc.repair = a.repair;
            if let Some(n) = a.compact_bytes {
                pc.compact_bytes = n;
            }
        }
        Ok(cfg)
    }

    /// Applies a JSON object of procmesh-js 0.1.1 broker options
    /// (`PROCMESH_BROKER_OPTS`, see [`NodeOpts`]) and returns the warnings for the
    /// operator: one line naming every unknown key (with its path, e.g. `cache.foo`),
    /// one naming accepted options this broker does not implement. A known key with a
    /// wrong type fails, naming the key and its value.
    pub fn apply_json(&mut self, text: &str) -> Result<Vec<String>, String> {
        let o = NodeOpts::parse(text)?;
        self.apply_opts(&o);
        Ok(o.warnings())
    }

    /// Applies parsed options with procmesh-js's defaulting rules: a falsy `name`,
    /// `address`, `token`, `callTimeout`, `sendHighWaterMark` or `sendHardLimit`
    /// keeps the default; `null` keeps the default everywhere; `heartbeatInterval: 0`
    /// turns heartbeats off, `idleTimeout: 0` never exits. `persist` is weighed against
    /// the flags in [`resolve`](Self::resolve); here it is applied as if no flag were given.
    fn apply_opts(&mut self, o: &NodeOpts) {
        let ms = Duration::from_millis;
        if let Some(n) = o.name.as_deref().filter(|n| !n.is_empty()) {
            self.name = n.to_string();
            self.socket = addr::AddrEnv::from_lookup(std::env::var_os).socket_path(&self.name);
        }
        // An explicit address wins over the one derived from `name`.
        if let Some(a) = o.address() {
            self.socket = PathBuf::from(a);
        }
        if let Some(t) = o.token.as_deref() {
            self.token = (!t.is_empty()).then(|| t.to_string());
        }
        if let Some(c) = &o.cache {
            if let Some(n) = c.max {
                self.cache.max_entries = n;
            }
            if let Some(n) = c.ttl {
                self.cache.default_ttl_ms = n;
            }
            if let Some(n) = c.max_size {
                self.cache.max_bytes = n;
            }
        }
        if let Some(n) = o.call_timeout.filter(|&n| n > 0) {
            self.call_timeout = ms(n);
        }
        if let Some(n) = o.call_timeout_grace {
            self.call_grace = ms(n);
        }
        if let Some(n) = o.heartbeat_interval {
            self.heartbeat = (n > 0).then(|| ms(n));
        }
        if let Some(n) = o.idle_timeout {
            self.idle_timeout = (n > 0).then(|| ms(n));
        }
        if let Some(n) = o.stats_interval {
            self.stats_interval = (n > 0).then(|| ms(n));
        }
        if let Some(n) = o.send_high_water_mark.filter(|&n| n > 0) {
            self.send_hwm = n;
        }
        if let Some(n) = o.send_hard_limit.filter(|&n| n > 0) {
            self.send_hard_limit = n;
        }
        if let Some(n) = o.max_frame_size.filter(|&n| n > 0) {
            self.max_frame = n;
        }
        if let Some(b) = o.io_backend.as_deref().and_then(IoBackend::parse) {
            self.io = b;
        }
        if o.io_sqpoll.is_some() {
            self.sqpoll = o.io_sqpoll;
        }
        self.limits.apply_opts(o);
        self.persist = o.persist_config(&self.name, None);
        self.apply_delivery_opts(o);
    }

    /// `dedup{…}` and `pubsub{…}`, with procmesh-js 0.1.1's rules: `dedup.enabled`
    /// and `pubsub.persist` switch only on `false`/`true`; a falsy `dedup.max`,
    /// `dedup.window` or `pubsub.maxChannels` keeps the default; `dedup.ttl: 0` and
    /// `pubsub.retention: 0` are kept (no idle expiry; retain nothing).
    fn apply_delivery_opts(&mut self, o: &NodeOpts) {
        if let Some(d) = &o.dedup {
            if let Some(e) = d.enabled {
                self.dedup.enabled = e;
            }
            if let Some(n) = d.max.filter(|&n| n > 0) {
                self.dedup.max = n;
            }
            if let Some(n) = d.ttl {
                self.dedup.ttl_ms = n;
            }
            if let Some(n) = d.window.filter(|&n| n > 0) {
                self.dedup.window = n;
            }
        }
        if let Some(p) = &o.pubsub {
            if let Some(b) = p.persist {
                self.pubsub.persist = b;
            }
            if let Some(n) = p.retention {
                self.pubsub.retention = n;
            }
            if let Some(n) = p.retention_ms {
                self.pubsub.retention_ms = n;
            }
            if let Some(a) = p.durable_acks {
                self.pubsub.durable_acks = match a {
                    DurableAcksOpt::All => DurableAcks::All,
                    DurableAcksOpt::One => DurableAcks::One,
                    DurableAcksOpt::Off => DurableAcks::Off,
                };
            }
            if let Some(n) = p.max_channels.filter(|&n| n > 0) {
                self.pubsub.max_channels = n;
            }
        }
    }
}

/// `PROCMESH_BROKER_OPTS`: every broker option procmesh-js 0.1.1 takes, by its name,
/// plus ours (`maxFrameSize`, `ioBackend`, and `socketPath`/`socket`/`path` as
/// aliases of `address`). `null` means "not given" for every key (the Node.js client
/// sends `token: null`). Keys it does not know are collected, not rejected: Node
/// ignores them, and we warn ([`NodeOpts::warnings`]).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeOpts {
    /// Mesh name; derives the socket `<tmpdir>/procmesh-<name>.sock` (`""` = default).
    pub name: Option<String>,
    /// Socket path (`""` = derived from the name).
    pub address: Option<String>,
    /// Alias of `address` (ours).
    pub socket_path: Option<String>,
    /// Alias of `address` (ours).
    pub socket: Option<String>,
    /// Alias of `address` (ours).
    pub path: Option<String>,
    /// `json`, `msgpack` or `msgpackr`. Accepted and checked only: this broker
    /// detects each connection's codec from its first frame, so it serves all of them.
    pub codec: Option<CodecOpt>,
    /// Shared secret for `hello` (`""` = none).
    pub token: Option<String>,
    /// Cache bounds.
    pub cache: Option<CacheOpts>,
    /// Default RPC timeout, ms (0 = default 30000, as in Node).
    pub call_timeout: Option<u64>,
    /// Grace after a call's timeout before it is reaped, ms (0 allowed).
    pub call_timeout_grace: Option<u64>,
    /// Heartbeat interval, ms (0 = off).
    pub heartbeat_interval: Option<u64>,
    /// Queued bytes past which best-effort frames are dropped (0 = default).
    pub send_high_water_mark: Option<usize>,
    /// Queued bytes past which a connection is closed (0 = default).
    pub send_hard_limit: Option<usize>,
    /// Exit after this long without connections, ms (0 = never).
    pub idle_timeout: Option<u64>,
    /// Emit a `stats` event this often, ms (0 = off).
    pub stats_interval: Option<u64>,
    /// Largest accepted frame, bytes (ours; procmesh-js 0.1.2).
    pub max_frame_size: Option<usize>,
    /// Persistence: `true`, `false`, or `{dir, mode, snapshotInterval, aofRewriteOps}`.
    pub persist: Option<PersistOpt>,
    /// Idempotent-producer dedup.
    pub dedup: Option<DedupOpts>,
    /// Retained pub/sub; also carries the Node client's producer-side keys.
    pub pubsub: Option<PubsubOpts>,
    /// The I/O driver (ours); read by the driver selection.
    pub io_backend: Option<String>,
    /// io_uring SQPOLL idle time, ms (ours; `--sqpoll`; 0 = the kernel's default).
    pub io_sqpoll: Option<u32>,
    /// Most open connections (ours, [`Limits`]; 0 = unbounded).
    pub max_connections: Option<usize>,
    /// Handshake deadline, ms (ours; 0 = never).
    pub handshake_timeout: Option<u64>,
    /// Most subscriptions per connection (ours; 0 = unbounded).
    pub max_subscriptions: Option<usize>,
    /// Most registrations per connection (ours; 0 = unbounded).
    pub max_registrations: Option<usize>,
    /// Most waiting lock requests per connection (ours; 0 = unbounded).
    pub max_lock_waiters: Option<usize>,
    /// Most calls in flight per caller (ours; 0 = unbounded).
    pub max_pending_calls: Option<usize>,
    /// Total queued output cap, bytes (ours; 0 = unbounded).
    pub max_output_bytes: Option<usize>,
    /// Near-cache tracking table bound, (key, connection) pairs (ours; 0 = unbounded).
    pub max_tracked_keys: Option<usize>,
    /// Keys this broker does not know.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

/// `codec`: the names procmesh-js accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecOpt {
    /// JSON.
    Json,
    /// MessagePack as msgpackr writes it.
    Msgpack,
    /// The same as `msgpack`.
    Msgpackr,
}

/// `cache{max, ttl, maxSize}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheOpts {
    /// Most entries (LRU past it; 0 = unbounded).
    pub max: Option<usize>,
    /// Default TTL, ms (0 = none).
    pub ttl: Option<u64>,
    /// Most value bytes (replaces `max`; 0 = unbounded).
    pub max_size: Option<usize>,
    /// Unknown keys.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

/// `persist`: `true`/`false`, or the object form.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PersistOpt {
    /// `true`: persist with defaults; `false`: do not (unless `PROCMESH_PERSIST_DIR`).
    On(bool),
    /// `{dir, mode, …}`.
    With(PersistOpts),
}

/// `persist{dir, mode, snapshotInterval, aofRewriteOps}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistOpts {
    /// Directory (default `PROCMESH_PERSIST_DIR`, else `<tmpdir>/procmesh-<name>`).
    pub dir: Option<String>,
    /// `no`, `everysec` (default), `always`, or `off` (no persistence).
    pub mode: Option<PersistMode>,
    /// Periodic compaction in Node, ms. Not implemented here (we compact by log size).
    pub snapshot_interval: Option<u64>,
    /// Compaction after this many appends in Node. Not implemented here.
    pub aof_rewrite_ops: Option<u64>,
    /// Unknown keys.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

impl PersistMode {
    /// The fsync policy; `None` for `off`.
    pub fn fsync(self) -> Option<FsyncMode> {
        match self {
            PersistMode::No => Some(FsyncMode::No),
            PersistMode::Everysec => Some(FsyncMode::EverySec),
            PersistMode::Always => Some(FsyncMode::Always),
            PersistMode::Off => None,
        }
    }
}

/// `persist.mode`: procmesh-js's fsync modes, plus `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersistMode {
    /// [`FsyncMode::No`].
    No,
    /// [`FsyncMode::EverySec`].
    Everysec,
    /// [`FsyncMode::Always`].
    Always,
    /// Persistence disabled.
    Off,
}

/// `dedup{enabled, max, ttl, window}`.
#[derive(Debug, Default, Deserialize)]
pub struct DedupOpts {
    /// Only `false` disables.
    pub enabled: Option<bool>,
    /// Most (pid, channel) entries (0 = default).
    pub max: Option<usize>,
    /// Idle expiry, ms (0 = never).
    pub ttl: Option<u64>,
    /// Gap window (0 = default).
    pub window: Option<u64>,
    /// Unknown keys.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

/// `pubsub{persist, retention, retentionMs, durableAcks, maxChannels}`, and the keys
/// the Node.js client puts there for its own producer (ignored by any broker).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PubsubOpts {
    /// Only `true` enables retained pub/sub.
    pub persist: Option<bool>,
    /// Messages retained per channel (0 = none).
    pub retention: Option<usize>,
    /// Age bound, ms (0 = none).
    pub retention_ms: Option<u64>,
    /// `"all"`, `1` or `false`.
    pub durable_acks: Option<DurableAcksOpt>,
    /// Retained channels, LRU (0 = default).
    pub max_channels: Option<usize>,
    /// Client-side (procmesh-js producer): acknowledgement level.
    pub acks: Option<Value>,
    /// Client-side: idempotent publishing.
    pub idempotent: Option<Value>,
    /// Client-side: publish retries.
    pub retries: Option<Value>,
    /// Client-side: retry backoff.
    pub retry_backoff: Option<Value>,
    /// Client-side: retry backoff cap.
    pub retry_max_delay: Option<Value>,
    /// Client-side: stable producer id.
    pub producer_id: Option<Value>,
    /// Client-side: seeded sequences.
    pub sequences: Option<Value>,
    /// Unknown keys.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

/// `pubsub.durableAcks`: `"all"`, `1` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurableAcksOpt {
    /// `"all"`.
    All,
    /// `1`.
    One,
    /// `false`.
    Off,
}

impl<'de> Deserialize<'de> for DurableAcksOpt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if s == "all" => Ok(DurableAcksOpt::All),
            Value::Number(n) if n.as_u64() == Some(1) => Ok(DurableAcksOpt::One),
            Value::Bool(false) => Ok(DurableAcksOpt::Off),
            _ => Err(serde::de::Error::custom("expected \"all\", 1 or false")),
        }
    }
}

/// The nested option objects, for naming a wrong-typed key by its path.
const NESTED: [&str; 4] = ["cache", "persist", "dedup", "pubsub"];

impl NodeOpts {
    /// Parses `PROCMESH_BROKER_OPTS`. A wrong type is reported with the key's path
    /// and the value given: ``PROCMESH_BROKER_OPTS: `cache.max` = "lots": invalid type…``.
    pub fn parse(text: &str) -> Result<NodeOpts, String> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| format!("PROCMESH_BROKER_OPTS is not valid JSON: {e}"))?;
        let Value::Object(o) = &v else {
            return Err("PROCMESH_BROKER_OPTS must be a JSON object".into());
        };
        let opts = serde_json::from_value::<NodeOpts>(v.clone()).map_err(|e| Self::locate(o, e))?;
        if let Some(b) = opts.io_backend.as_deref() {
            if IoBackend::parse(b).is_none() {
                return Err(format!(
                    "PROCMESH_BROKER_OPTS: `ioBackend` = {b:?}: expected auto, uring or epoll"
                ));
            }
        }
        Ok(opts)
    }

    /// Finds the key that failed: the first whose value alone fails (inside a nested
    /// object, the first nested key that does).
    fn locate(o: &serde_json::Map<String, Value>, whole: serde_json::Error) -> String {
        let fails = |v: Value| serde_json::from_value::<NodeOpts>(v).err();
        for (k, v) in o {
            let Some(e) = fails(serde_json::json!({ k: v })) else {
                continue;
            };
            if let (true, Value::Object(inner)) = (NESTED.contains(&k.as_str()), v) {
                for (ik, iv) in inner {
                    if let Some(e) = fails(serde_json::json!({ k: { ik: iv } })) {
                        return wrong(&format!("{k}.{ik}"), iv, &e);
                    }
                }
            }
            return wrong(k, v, &e);
        }
        format!("PROCMESH_BROKER_OPTS: {whole}")
    }

    /// The socket path given: `address`, else an alias (`""` = not given).
    fn address(&self) -> Option<&str> {
        [&self.address, &self.socket_path, &self.socket, &self.path]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .find(|a| !a.is_empty())
    }

    /// Whether the options ask for no persistence at all: `persist: false` (or
    /// absent) or `mode: "off"`; `env_dir` (`PROCMESH_PERSIST_DIR`) turns it on
    /// anyway unless `mode` is `off`, as in procmesh-js.
    fn persist_config(&self, name: &str, env_dir: Option<&Path>) -> Option<PersistConfig> {
        let (dir, mode) = match &self.persist {
            None | Some(PersistOpt::On(false)) => (None, None),
            Some(PersistOpt::On(true)) => (Some(None), None),
            Some(PersistOpt::With(p)) => (Some(p.dir.as_deref().filter(|d| !d.is_empty())), p.mode),
        };
        let fsync = match mode {
            Some(m) => m.fsync()?,
            None => FsyncMode::EverySec,
        };
        let dir: PathBuf = match (dir, env_dir) {
            (Some(Some(d)), _) => d.into(),
            (_, Some(e)) => e.to_path_buf(),
            (Some(None), None) => addr::AddrEnv::from_lookup(std::env::var_os)
                .tmpdir()
                .join(format!("procmesh-{name}")),
            (None, None) => return None,
        };
        let mut pc = PersistConfig::new(dir);
        pc.fsync = fsync;
        Some(pc)
    }

    /// Whether `persist.mode` was given.
    fn persist_mode(&self) -> Option<PersistMode> {
        match &self.persist {
            Some(PersistOpt::With(p)) => p.mode,
            _ => None,
        }
    }

    /// The operator's warnings: one line naming every unknown key by its path, one
    /// naming the accepted options this broker does not implement.
    pub fn warnings(&self) -> Vec<String> {
        let mut unknown: Vec<String> = self.unknown.keys().cloned().collect();
        let mut nested = |prefix: &str, keys: &BTreeMap<String, Value>| {
            unknown.extend(keys.keys().map(|k| format!("{prefix}.{k}")));
        };
        if let Some(c) = &self.cache {
            nested("cache", &c.unknown);
        }
        if let Some(PersistOpt::With(p)) = &self.persist {
            nested("persist", &p.unknown);
        }
        if let Some(d) = &self.dedup {
            nested("dedup", &d.unknown);
        }
        if let Some(p) = &self.pubsub {
            nested("pubsub", &p.unknown);
        }
        let mut out = Vec::new();
        if !unknown.is_empty() {
            let list: Vec<String> = unknown.iter().map(|k| format!("`{k}`")).collect();
            out.push(format!(
                "PROCMESH_BROKER_OPTS: unknown option{} {}, ignored",
                if unknown.len() == 1 { "" } else { "s" },
                list.join(", ")
            ));
        }
        let mut unsupported = Vec::new();
        if let Some(PersistOpt::With(p)) = &self.persist {
            if p.snapshot_interval.is_some() {
                unsupported.push("`persist.snapshotInterval`");
            }
            if p.aof_rewrite_ops.is_some() {
                unsupported.push("`persist.aofRewriteOps`");
            }
        }
        if !unsupported.is_empty() {
            out.push(format!(
                "PROCMESH_BROKER_OPTS: {} not supported by this broker, ignored \
                 (the log is compacted by size: --compact-bytes)",
                unsupported.join(", ")
            ));
        }
        out
    }
}

/// The error for a known key of the wrong type.
fn wrong(path: &str, v: &Value, e: &serde_json::Error) -> String {
    // serde_json's message ends with "at line 1 column N", which means nothing here.
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg);
    format!("PROCMESH_BROKER_OPTS: `{path}` = {v}: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_option_names() {
        let mut c = BrokerConfig::default();
        c.apply_json(r#"{"cache":{"max":5,"ttl":100,"maxSize":64},"heartbeatInterval":0,"idleTimeout":2000,"token":"s","sendHighWaterMark":10}"#)
            .unwrap();
        assert_eq!(
            c.cache,
            StoreConfig {
                max_entries: 5,
                max_bytes: 64,
                default_ttl_ms: 100
            }
        );
        assert_eq!(c.heartbeat, None);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.token.as_deref(), Some("s"));
        assert_eq!(c.send_hwm, 10);
        assert!(c.apply_json("[1]").is_err());
        // What the Node.js client passes to a broker it spawns.
        let mut n = BrokerConfig::default();
        n.apply_json(
            r#"{"address":"/run/x.sock","name":"mesh","codec":"json","idleTimeout":60000}"#,
        )
        .unwrap();
        assert_eq!(
            (n.name.as_str(), n.socket.to_str()),
            ("mesh", Some("/run/x.sock"))
        );
        let mut m = BrokerConfig::default();
        m.apply_json(r#"{"name":"mesh"}"#).unwrap();
        assert_eq!(
            m.socket,
            addr::AddrEnv::from_lookup(std::env::var_os).socket_path("mesh")
        );
        assert!(c.apply_json(r#"{"idleTimeout":"x"}"#).is_err());
        c.apply_json(r#"{"ioBackend":"epoll"}"#).unwrap();
        assert_eq!(c.io, IoBackend::Epoll);
        assert!(c.apply_json(r#"{"ioBackend":"kqueue"}"#).is_err());
    }

    #[test]
    fn every_procmesh_js_option_is_typed_and_unknown_keys_are_named() {
        let mut c = BrokerConfig::default();
        let w = c
            .apply_json(
                r#"{"name":"m","address":"/x.sock","codec":"msgpack","token":null,
                "cache":{"max":3,"ttl":4,"maxSize":5,"foo":1},"callTimeout":0,
                "callTimeoutGrace":0,"heartbeatInterval":null,"sendHighWaterMark":0,
                "sendHardLimit":7,"idleTimeout":0,"statsInterval":250,
                "persist":{"dir":"/p","mode":"always"},
                "dedup":{"enabled":false,"max":0,"ttl":0,"window":8},
                "pubsub":{"persist":true,"retention":0,"retentionMs":9,"durableAcks":1,
                  "maxChannels":0,"acks":"all","idempotent":true,"retries":3,
                  "retryBackoff":1,"retryMaxDelay":2,"producerId":"p-1","sequences":{"a":3}},
                "ioBackend":"epoll","bogus":1}"#,
            )
            .unwrap();
        assert_eq!(
            w,
            ["PROCMESH_BROKER_OPTS: unknown options `bogus`, `cache.foo`, ignored"],
            "one line naming every unknown key; the Node client's producer keys in \
             `pubsub` are not unknown"
        );
        let d = BrokerConfig::default();
        assert_eq!((c.name.as_str(), c.socket.to_str()), ("m", Some("/x.sock")));
        assert_eq!(c.token, None);
        assert_eq!(
            (
                c.cache.max_entries,
                c.cache.default_ttl_ms,
                c.cache.max_bytes
            ),
            (3, 4, 5)
        );
        assert_eq!(c.call_timeout, d.call_timeout, "callTimeout 0 = default");
        assert_eq!(c.call_grace, Duration::ZERO, "callTimeoutGrace 0 is kept");
        assert_eq!(c.heartbeat, d.heartbeat, "heartbeatInterval null = default");
        assert_eq!((c.send_hwm, c.send_hard_limit), (d.send_hwm, 7));
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.stats_interval, Some(Duration::from_millis(250)));
        let p = c.persist.as_ref().unwrap();
        assert_eq!((p.dir.to_str(), p.fsync), (Some("/p"), FsyncMode::Always));
        assert!(!c.dedup.enabled);
        assert_eq!(
            (c.dedup.max, c.dedup.ttl_ms, c.dedup.window),
            (d.dedup.max, 0, 8)
        );
        assert!(c.pubsub.persist);
        assert_eq!(
            (
                c.pubsub.retention,
                c.pubsub.retention_ms,
                c.pubsub.max_channels
            ),
            (0, 9, d.pubsub.max_channels)
        );
        assert_eq!(c.pubsub.durable_acks, DurableAcks::One);

        // What a Node.js client passes when it spawns a broker: no warning.
        let w = BrokerConfig::default()
            .apply_json(
                r#"{"address":"/tmp/x.sock","name":"default","codec":"json","token":null,"idleTimeout":60000}"#,
            )
            .unwrap();
        assert!(w.is_empty(), "{w:?}");

        // persist: true / false / mode off.
        let pc = |o: &str| {
            let mut c = BrokerConfig::default();
            c.apply_json(o).unwrap();
            c.persist
        };
        let tmp = addr::AddrEnv::from_lookup(std::env::var_os).tmpdir();
        assert_eq!(
            pc(r#"{"name":"q","persist":true}"#).map(|p| p.dir),
            Some(tmp.join("procmesh-q"))
        );
        assert!(pc(r#"{"persist":false}"#).is_none());
        assert!(pc(r#"{"persist":{"dir":"/p","mode":"off"}}"#).is_none());
        assert_eq!(
            pc(r#"{"persist":{"dir":"/p","mode":"no"}}"#).map(|p| p.fsync),
            Some(FsyncMode::No)
        );

        // Wrong types: the error names the key (by path) and the value.
        for (o, want) in [
            (r#"{"token":5}"#, "`token` = 5"),
            (r#"{"cache":{"max":"lots"}}"#, "`cache.max` = \"lots\""),
            (r#"{"callTimeoutGrace":-1}"#, "`callTimeoutGrace` = -1"),
            (r#"{"codec":"xml"}"#, "`codec` = \"xml\""),
            (
                r#"{"persist":{"mode":"sometimes"}}"#,
                "`persist.mode` = \"sometimes\"",
            ),
            (r#"{"persist":"yes"}"#, "`persist` = \"yes\""),
            (r#"{"dedup":{"enabled":"no"}}"#, "`dedup.enabled` = \"no\""),
            (
                r#"{"pubsub":{"durableAcks":"most"}}"#,
                "`pubsub.durableAcks` = \"most\"",
            ),
            (r#"{"statsInterval":"1s"}"#, "`statsInterval` = \"1s\""),
            (r#"{"cache":7}"#, "`cache` = 7"),
        ] {
            let e = BrokerConfig::default().apply_json(o).unwrap_err();
            assert!(e.contains(want), "{o}: {e}");
            assert!(!e.contains("line 1 column"), "{e}");
        }
    }

    /// `procmesh serve ARGS` with `PROCMESH_BROKER_OPTS` = `opts`.
    fn serve(args: &[&str], opts: Option<&str>) -> Result<BrokerConfig, String> {
        let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
        let argv = std::iter::once("serve").chain(args.iter().copied());
        let m = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
        BrokerConfig::resolve(&m, opts)
    }

    fn ok(args: &[&str], opts: Option<&str>) -> BrokerConfig {
        serve(args, opts).unwrap()
    }

    #[test]
    fn sqpoll_is_a_flag_or_an_option_and_refused_with_epoll() {
        std::env::remove_var("PROCMESH_URING_SQPOLL");
        assert_eq!(ok(&[], None).sqpoll, None);
        assert_eq!(ok(&["--sqpoll"], None).sqpoll, Some(1000));
        assert_eq!(ok(&["--sqpoll=50"], None).sqpoll, Some(50));
        assert_eq!(ok(&[], Some(r#"{"ioSqpoll":0}"#)).sqpoll, Some(0));
        assert_eq!(
            ok(&["--sqpoll=7"], Some(r#"{"ioSqpoll":0}"#)).sqpoll,
            Some(7),
            "the flag wins"
        );
        for (args, opts) in [
            (&["--sqpoll", "--io", "epoll"][..], None),
            (&["--io", "epoll"][..], Some(r#"{"ioSqpoll":10}"#)),
            (&[][..], Some(r#"{"ioSqpoll":10,"ioBackend":"epoll"}"#)),
        ] {
            let e = serve(args, opts).unwrap_err();
            assert!(
                e.contains("--sqpoll") && e.contains("epoll"),
                "{args:?} {opts:?}: {e}"
            );
        }
    }

    /// The precedence table of [`BrokerConfig::resolve`], row by row. One test, because
    /// it sets the environment variables clap reads.
    #[test]
    fn flags_env_and_broker_opts_precedence() {
        std::env::remove_var("PROCMESH_TOKEN");
        std::env::remove_var("PROCMESH_PERSIST_DIR");
        let sock = |n: &str| addr::AddrEnv::from_lookup(std::env::var_os).socket_path(n);
        let at = |c: &BrokerConfig| (c.name.clone(), c.socket.clone());
        let named = |n: &str, p: PathBuf| (n.to_string(), p);

        // Defaults.
        let c = ok(&[], None);
        assert_eq!(at(&c), named(addr::DEFAULT_NAME, sock(addr::DEFAULT_NAME)));
        assert_eq!(c.heartbeat, Some(Duration::from_secs(30)));
        assert!(c.persist.is_none() && c.token.is_none());
        // A flag over the default.
        assert_eq!(at(&ok(&["--name", "f"], None)), named("f", sock("f")));
        assert_eq!(at(&ok(&["--name=f"], None)), named("f", sock("f")));
        // The options' name derives the socket; their address replaces it, in any order.
        assert_eq!(at(&ok(&[], Some(r#"{"name":"n"}"#))), named("n", sock("n")));
        for o in [
            r#"{"name":"n","address":"/a.sock"}"#,
            r#"{"socketPath":"/a.sock","name":"n"}"#,
        ] {
            assert_eq!(at(&ok(&[], Some(o))), named("n", "/a.sock".into()), "{o}");
        }
        // A typed `--name` wins over the options' name and address; the default does not.
        let o = Some(r#"{"name":"n","address":"/a.sock"}"#);
        assert_eq!(at(&ok(&["--name", "f"], o)), named("f", sock("f")));
        assert_eq!(
            at(&ok(
                &["--name", addr::DEFAULT_NAME],
                Some(r#"{"name":"n"}"#)
            )),
            named(addr::DEFAULT_NAME, sock(addr::DEFAULT_NAME)),
            "a typed --name equal to the default still wins"
        );
        // `--socket` wins over everything for the socket, not the name.
        let c = ok(&["--socket", "/s.sock", "--name", "f"], o);
        assert_eq!(at(&c), named("f", "/s.sock".into()));
        assert_eq!(
            at(&ok(&["--socket", "/s.sock"], o)),
            named("n", "/s.sock".into())
        );
        // Token: flag over options; options alone.
        let o = Some(r#"{"token":"o"}"#);
        assert_eq!(ok(&[], o).token.as_deref(), Some("o"));
        assert_eq!(ok(&["--token", "t"], o).token.as_deref(), Some("t"));
        // Every other flag over its option; options alone.
        let o = Some(
            r#"{"cache":{"max":5,"ttl":6,"maxSize":7},"heartbeatInterval":5000,
               "idleTimeout":100,"callTimeout":200,"sendHighWaterMark":8,
               "sendHardLimit":9,"maxFrameSize":10}"#,
        );
        let c = ok(&[], o);
        assert_eq!(
            c.cache,
            StoreConfig {
                max_entries: 5,
                max_bytes: 7,
                default_ttl_ms: 6
            }
        );
        assert_eq!(
            (c.heartbeat, c.idle_timeout, c.call_timeout),
            (
                Some(Duration::from_secs(5)),
                Some(Duration::from_millis(100)),
                Duration::from_millis(200)
            )
        );
        assert_eq!((c.send_hwm, c.send_hard_limit, c.max_frame), (8, 9, 10));
        let c = ok(
            &[
                "--max-keys",
                "1",
                "--max-bytes",
                "2",
                "--default-ttl",
                "3",
                "--heartbeat",
                "0",
                "--idle-timeout",
                "0",
                "--call-timeout",
                "4",
                "--call-grace",
                "5",
                "--send-hwm",
                "6",
                "--send-hard-limit",
                "7",
                "--max-frame",
                "8",
            ],
            o,
        );
        assert_eq!(
            c.cache,
            StoreConfig {
                max_entries: 1,
                max_bytes: 2,
                default_ttl_ms: 3
            }
        );
        assert_eq!((c.heartbeat, c.idle_timeout), (None, None));
        assert_eq!(
            (c.call_timeout, c.call_grace),
            (Duration::from_millis(4), Duration::from_millis(5))
        );
        assert_eq!((c.send_hwm, c.send_hard_limit, c.max_frame), (6, 7, 8));
        assert_eq!(
            ok(&["--heartbeat", "250"], None).heartbeat,
            Some(Duration::from_millis(250))
        );
        // Persistence: flags only.
        let c = ok(&["--persist-dir", "/d"], None);
        let p = c.persist.unwrap();
        assert_eq!(
            (p.dir, p.fsync, p.repair),
            ("/d".into(), FsyncMode::EverySec, false)
        );
        let c = ok(
            &[
                "--persist-dir",
                "/d",
                "--fsync",
                "always",
                "--repair",
                "--compact-bytes",
                "99",
            ],
            None,
        );
        let p = c.persist.unwrap();
        assert_eq!(
            (p.fsync, p.repair, p.compact_bytes),
            (FsyncMode::Always, true, 99)
        );
        assert!(ok(&["--persist-dir", "/d", "--no-persist"], None)
            .persist
            .is_none());
        // Errors: bad options, bad flags.
        assert!(serve(&[], Some("[1]")).is_err());
        assert!(serve(&[], Some("{")).is_err());
        assert!(serve(&["--fsync", "sometimes"], None).is_err());

        // Persistence from the options, and the flags over them.
        let po = Some(r#"{"persist":{"dir":"/o","mode":"always"}}"#);
        let p = ok(&[], po).persist.unwrap();
        assert_eq!((p.dir.to_str(), p.fsync), (Some("/o"), FsyncMode::Always));
        let p = ok(&["--fsync", "no"], po).persist.unwrap();
        assert_eq!(
            p.fsync,
            FsyncMode::No,
            "a typed --fsync wins over persist.mode"
        );
        let p = ok(&["--persist-dir", "/f"], po).persist.unwrap();
        assert_eq!(
            (p.dir.to_str(), p.fsync),
            (Some("/f"), FsyncMode::Always),
            "a typed --persist-dir keeps the options' mode"
        );
        let off = Some(r#"{"persist":{"dir":"/o","mode":"off"}}"#);
        assert!(ok(&[], off).persist.is_none());
        assert!(ok(&["--persist-dir", "/f"], off).persist.is_some());
        assert!(ok(&["--no-persist"], po).persist.is_none());
        // The delivery flags.
        let c = ok(
            &[
                "--stats-interval",
                "1s",
                "--no-dedup",
                "--dedup-max",
                "7",
                "--dedup-ttl",
                "5s",
                "--pubsub-persist",
                "--pubsub-retention",
                "0",
            ],
            Some(r#"{"statsInterval":5,"dedup":{"max":9},"pubsub":{"retention":4}}"#),
        );
        assert_eq!(c.stats_interval, Some(Duration::from_secs(1)));
        assert_eq!(
            (c.dedup.enabled, c.dedup.max, c.dedup.ttl_ms),
            (false, 7, 5000)
        );
        assert_eq!((c.pubsub.persist, c.pubsub.retention), (true, 0));

        // The flags' environment variables count as given flags.
        std::env::set_var("PROCMESH_TOKEN", "env");
        std::env::set_var("PROCMESH_PERSIST_DIR", "/e");
        assert_eq!(
            ok(&[], po).persist.map(|p| p.dir),
            Some("/o".into()),
            "persist.dir wins over PROCMESH_PERSIST_DIR, as in procmesh-js"
        );
        assert_eq!(
            ok(&[], Some(r#"{"persist":false}"#)).persist.map(|p| p.dir),
            Some("/e".into()),
            "PROCMESH_PERSIST_DIR persists even with persist: false"
        );
        let c = ok(&[], Some(r#"{"token":"o"}"#));
        assert_eq!(
            c.token.as_deref(),
            Some("env"),
            "PROCMESH_TOKEN over options"
        );
        assert_eq!(c.persist.map(|p| p.dir), Some("/e".into()));
        assert_eq!(ok(&["--token", "t"], None).token.as_deref(), Some("t"));
        assert!(ok(&["--no-persist"], None).persist.is_none());
        std::env::remove_var("PROCMESH_TOKEN");
        std::env::remove_var("PROCMESH_PERSIST_DIR");
    }

    #[test]
    fn durations_and_sizes_take_units_and_plain_numbers_keep_their_meaning() {
        assert_eq!(parse_ms("250"), Ok(250), "a plain number is ms");
        assert_eq!(parse_ms("250ms"), Ok(250));
        assert_eq!(parse_ms("30s"), Ok(30_000));
        assert_eq!(parse_ms("5m"), Ok(300_000));
        assert_eq!(parse_ms("1h 30m"), Ok(5_400_000));
        assert_eq!(parse_ms("0"), Ok(0));
        assert!(parse_ms("soon").is_err());
        assert!(parse_ms("-5s").is_err());
        assert_eq!(parse_bytes("4096"), Ok(4096), "a plain number is bytes");
        assert_eq!(parse_bytes("64KB"), Ok(64_000));
        assert_eq!(parse_bytes("64kb"), Ok(64_000));
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("10B"), Ok(10));
        for bad in ["", "MiB", "12 parsecs", "1..2KB", "-1KB", "99999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }

        let c = ok(
            &[
                "--max-bytes",
                "512MiB",
                "--default-ttl",
                "30s",
                "--heartbeat",
                "1s",
                "--idle-timeout",
                "5m",
                "--call-timeout",
                "250ms",
                "--call-grace",
                "2s",
                "--send-hwm",
                "64KB",
                "--send-hard-limit",
                "1MiB",
                "--max-frame",
                "16MiB",
                "--persist-dir",
                "/d",
                "--compact-bytes",
                "64MiB",
            ],
            None,
        );
        assert_eq!(c.cache.max_bytes, 512 << 20);
        assert_eq!(c.cache.default_ttl_ms, 30_000);
        assert_eq!(c.heartbeat, Some(Duration::from_secs(1)));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.call_timeout, Duration::from_millis(250));
        assert_eq!(c.call_grace, Duration::from_secs(2));
        assert_eq!(
            (c.send_hwm, c.send_hard_limit, c.max_frame),
            (64_000, 1 << 20, 16 << 20)
        );
        assert_eq!(c.persist.unwrap().compact_bytes, 64 << 20);
        let e = serve(&["--heartbeat", "soon"], None).unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
        let e = serve(&["--max-bytes", "lots"], None).unwrap_err();
        assert!(e.contains("not a size"), "{e}");
    }

    #[test]
    fn token_file_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  s3cret \nsecond line\n").unwrap();
        let file = f.to_str().unwrap();
        let t = |args: &[&str]| serve(args, None).map(|c| c.token);
        assert_eq!(t(&["--token-file", file]), Ok(Some("s3cret".into())));
        assert_eq!(
            t(&["--token-file", file, "--token", "x"]),
            Ok(Some("s3cret".into())),
            "the file wins over --token (and PROCMESH_TOKEN)"
        );
        let e = t(&["--token-file", "/nonexistent/token"]).unwrap_err();
        assert!(e.contains("cannot read the token file"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        let e = t(&["--token-file", file]).unwrap_err();
        assert!(e.contains("empty first line"), "{e}");
    }

    #[test]
    fn metrics_address_must_be_loopback_unless_allowed() {
        let listen = |args: &[&str]| {
            let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
            let m = cmd
                .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
            ServeArgs::from_arg_matches(&m)
                .map_err(|e| e.to_string())?
                .metrics_listen()
        };
        assert_eq!(listen(&[]), Ok(None));
        assert_eq!(
            listen(&["--metrics-addr", "127.0.0.1:9464"]),
            Ok(Some("127.0.0.1:9464".parse().unwrap()))
        );
        assert!(listen(&["--metrics-addr", "[::1]:9464"]).is_ok());
        let e = listen(&["--metrics-addr", "0.0.0.0:9464"]).unwrap_err();
        assert!(e.contains("--metrics-allow-remote"), "{e}");
        assert!(listen(&["--metrics-addr", "0.0.0.0:9464", "--metrics-allow-remote"]).is_ok());
        assert!(
            listen(&["--metrics-allow-remote"]).is_err(),
            "needs an address"
        );
    }

    #[test]
    fn limits_come_from_flags_and_opts_with_zero_meaning_unbounded() {
        let c = ok(&[], None);
        assert_eq!(c.limits, Limits::default());
        let c = ok(
            &[],
            Some(
                r#"{"maxConnections":5,"handshakeTimeout":0,"maxSubscriptions":7,
                "maxRegistrations":8,"maxLockWaiters":9,"maxPendingCalls":10,"maxOutputBytes":0}"#,
            ),
        );
        assert_eq!(c.limits.max_connections, 5);
        assert_eq!(c.limits.handshake_timeout, None);
        assert_eq!(
            (c.limits.max_subscriptions, c.limits.max_registrations),
            (7, 8)
        );
        assert_eq!(
            (c.limits.max_lock_waiters, c.limits.max_pending_calls),
            (9, 10)
        );
        assert_eq!(c.limits.max_output_bytes, usize::MAX);
        let c = ok(
            &[
                "--max-connections",
                "0",
                "--handshake-timeout",
                "2s",
                "--max-output-bytes",
                "1MiB",
            ],
            Some(r#"{"maxConnections":5}"#),
        );
        assert_eq!(
            c.limits.max_connections,
            usize::MAX,
            "the flag wins over the option"
        );
        assert_eq!(c.limits.handshake_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.limits.max_output_bytes, 1 << 20);
        assert!(BrokerConfig::default()
            .apply_json(r#"{"maxConnections":"many"}"#)
            .is_err());
    }
}
