//! Broker configuration: plain data, from CLI flags, `PROCMESH_BROKER_OPTS` (JSON with
//! the Node.js package's option names) or the builder.
//!
//! `config` owns the `serve` flags ([`ServeArgs`], parsed by the binary) and the one
//! place where flags, their environment variables and `PROCMESH_BROKER_OPTS` are
//! weighed against each other: [`BrokerConfig::resolve`]. It reads no environment
//! itself except through clap's `env` attributes; the caller passes the options text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use procmesh_proto::{addr, frame};
use serde_json::Value;

use crate::persistence::{FsyncMode, PersistConfig};
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
    /// Persist to this directory (snapshot + append-only log).
    #[arg(long, env = "PROCMESH_PERSIST_DIR")]
    pub persist_dir: Option<PathBuf>,
    /// When the log is made durable: no, everysec or always.
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
    /// Idempotent-producer dedup (`dedup{…}`).
    pub dedup: crate::dedup::DedupConfig,
    /// Retained pub/sub and durable acks (`pubsub{…}`).
    pub pubsub: crate::retain::RetainConfig,
    /// Which I/O driver runs the loop (after start: the one that runs).
    pub io: IoBackend,
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
            dedup: Default::default(),
            pubsub: Default::default(),
            io: IoBackend::Auto,
        }
    }
}

fn ms(v: &Value) -> Option<u64> {
    v.as_f64()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .map(|f| f as u64)
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
    /// | `--persist-dir` or `PROCMESH_PERSIST_DIR`, unless `--no-persist` | persistence, with `--fsync`, `--repair`, `--compact-bytes` |
    ///
    /// Fails when the flags do not match [`ServeArgs`], the token file cannot be read,
    /// or `opts` is not a JSON object of well-typed options.
    pub fn resolve(matches: &ArgMatches, opts: Option<&str>) -> Result<BrokerConfig, String> {
        let a = ServeArgs::from_arg_matches(matches).map_err(|e| e.to_string())?;
        let t = &a.target;
        let mut cfg = BrokerConfig {
            name: t.name.clone(),
            socket: t.path(),
            ..Default::default()
        };
        if let Some(opts) = opts {
            cfg.apply_json(opts)?;
        }
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
        if let Some(b) = a.io.as_deref().and_then(IoBackend::parse) {
            cfg.io = b;
        }
        if let (Some(dir), false) = (a.persist_dir, a.no_persist) {
            let mut pc = PersistConfig::new(dir);
            pc.fsync = FsyncMode::parse(&a.fsync).unwrap_or(pc.fsync);
            pc.repair = a.repair;
            if let Some(n) = a.compact_bytes {
                pc.compact_bytes = n;
            }
            cfg.persist = Some(pc);
        }
        Ok(cfg)
    }

    /// Applies a JSON object of Node.js-style options (`PROCMESH_BROKER_OPTS`):
    /// `name` (also derives the socket path), `address` (or `socketPath`), `token`, `cache: {max, ttl, maxSize}`,
    /// `heartbeatInterval`, `idleTimeout`, `callTimeout`, `sendHighWaterMark`,
    /// `sendHardLimit`, `maxFrameSize`, `ioBackend` (`auto`|`uring`|`epoll`). Unknown options are ignored, as in Node.
    pub fn apply_json(&mut self, text: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| format!("PROCMESH_BROKER_OPTS is not valid JSON: {e}"))?;
        let Value::Object(o) = v else {
            return Err("PROCMESH_BROKER_OPTS must be a JSON object".into());
        };
        let bad = |k: &str| format!("PROCMESH_BROKER_OPTS: `{k}` has the wrong type");
        for (k, v) in &o {
            match k.as_str() {
                "name" => {
                    self.name = v.as_str().ok_or_else(|| bad(k))?.to_string();
                    self.socket =
                        addr::AddrEnv::from_lookup(std::env::var_os).socket_path(&self.name);
                }
                "address" | "socketPath" | "socket" | "path" => {}
                "token" => self.token = v.as_str().map(str::to_string),
                "heartbeatInterval" => {
                    let m = ms(v).ok_or_else(|| bad(k))?;
                    self.heartbeat = (m > 0).then(|| Duration::from_millis(m));
                }
                "idleTimeout" => {
                    let m = ms(v).ok_or_else(|| bad(k))?;
                    self.idle_timeout = (m > 0).then(|| Duration::from_millis(m));
                }
                "callTimeout" => {
                    self.call_timeout = Duration::from_millis(ms(v).ok_or_else(|| bad(k))?)
                }
                "sendHighWaterMark" => self.send_hwm = ms(v).ok_or_else(|| bad(k))? as usize,
                "sendHardLimit" => self.send_hard_limit = ms(v).ok_or_else(|| bad(k))? as usize,
                "maxFrameSize" => self.max_frame = ms(v).ok_or_else(|| bad(k))? as usize,
                "ioBackend" => {
                    self.io = v
                        .as_str()
                        .and_then(IoBackend::parse)
                        .ok_or_else(|| bad(k))?
                }
                "cache" => {
                    let Value::Object(c) = v else {
                        return Err(bad(k));
                    };
                    for (ck, cv) in c {
                        let n = ms(cv).ok_or_else(|| bad(ck))?;
                        match ck.as_str() {
                            "max" => self.cache.max_entries = n as usize,
                            "ttl" => self.cache.default_ttl_ms = n,
                            "maxSize" => self.cache.max_bytes = n as usize,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        // An explicit address wins over the one derived from `name`, whatever the order.
        for k in ["address", "socketPath", "socket", "path"] {
            if let Some(v) = o.get(k) {
                self.socket = PathBuf::from(v.as_str().ok_or_else(|| bad(k))?);
            }
        }
        Ok(())
    }
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

        // The flags' environment variables count as given flags.
        std::env::set_var("PROCMESH_TOKEN", "env");
        std::env::set_var("PROCMESH_PERSIST_DIR", "/e");
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
}
