//! Broker configuration: plain data, from CLI flags, `PROCMESH_BROKER_OPTS` (JSON with
//! the Node.js package's option names) or the builder.
//!
//! `config` owns the `serve` flags ([`ServeArgs`], parsed by the binary) and the one
//! place where flags, their environment variables and `PROCMESH_BROKER_OPTS` are
//! weighed against each other: [`BrokerConfig::resolve`]. It reads no environment
//! itself except through clap's `env` attributes; the caller passes the options text.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use procmesh_proto::{addr, frame};
use serde_json::Value;

use crate::persistence::{FsyncMode, PersistConfig};
use crate::store::StoreConfig;

/// Which broker a command means: `--name`, `--socket`, `--token`.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Mesh name (socket `<tmpdir>/procmesh-<name>.sock`).
    #[arg(long, default_value = addr::DEFAULT_NAME)]
    pub name: String,
    /// Socket path (overrides the name's path; `PROCMESH_SOCKET` also does).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Token for a broker that requires one.
    #[arg(long, env = "PROCMESH_TOKEN")]
    pub token: Option<String>,
}

impl TargetArgs {
    /// The socket: `--socket`, else the one derived from the name.
    pub fn path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| addr::socket_path(&self.name))
    }
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
    /// Maximum bytes of cached values (replaces --max-keys; 0 = unbounded).
    #[arg(long)]
    pub max_bytes: Option<usize>,
    /// Default TTL in ms for writes without one (0 = none).
    #[arg(long)]
    pub default_ttl: Option<u64>,
    /// Heartbeat interval in ms (0 = off).
    #[arg(long)]
    pub heartbeat: Option<u64>,
    /// Exit after this many ms without connections (0 = never).
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Default RPC call timeout in ms.
    #[arg(long)]
    pub call_timeout: Option<u64>,
    /// Grace in ms added to a call's timeout before it is reaped (default 5000).
    #[arg(long)]
    pub call_grace: Option<u64>,
    /// Queued bytes per connection past which pub/sub messages are dropped.
    #[arg(long)]
    pub send_hwm: Option<usize>,
    /// Queued bytes per connection past which it is disconnected.
    #[arg(long)]
    pub send_hard_limit: Option<usize>,
    /// Largest accepted frame in bytes.
    #[arg(long)]
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
    /// Snapshot (and compact the log) after it grows by this many bytes.
    #[arg(long)]
    pub compact_bytes: Option<u64>,
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
}

/// Default grace added to an RPC call's timeout before the broker reaps it.
pub const CALL_GRACE: Duration = Duration::from_millis(5000);

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            name: addr::DEFAULT_NAME.to_string(),
            socket: addr::socket_path(addr::DEFAULT_NAME),
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
    /// | `--token` or `PROCMESH_TOKEN` | the token |
    /// | every other flag given | its setting |
    /// | `--persist-dir` or `PROCMESH_PERSIST_DIR`, unless `--no-persist` | persistence, with `--fsync`, `--repair`, `--compact-bytes` |
    ///
    /// Fails when the flags do not match [`ServeArgs`] or `opts` is not a JSON object
    /// of well-typed options.
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
        if t.token.is_some() {
            cfg.token = t.token.clone();
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
    /// `sendHardLimit`, `maxFrameSize`. Unknown options are ignored, as in Node.
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
                    self.socket = addr::socket_path(&self.name);
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
        assert_eq!(m.socket, addr::socket_path("mesh"));
        assert!(c.apply_json(r#"{"idleTimeout":"x"}"#).is_err());
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
        let sock = |n: &str| addr::socket_path(n);
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
}
