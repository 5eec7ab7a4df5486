//! Broker configuration: plain data, from CLI flags, `PROCMESH_BROKER_OPTS` (JSON with
//! the Node.js package's option names) or the builder.

use std::path::PathBuf;
use std::time::Duration;

use procmesh_proto::{addr, frame};
use serde_json::Value;

use crate::persistence::PersistConfig;
use crate::store::StoreConfig;

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
        assert_eq!(m.socket, addr::socket_path("mesh"));
        assert!(c.apply_json(r#"{"idleTimeout":"x"}"#).is_err());
        c.apply_json(r#"{"ioBackend":"epoll"}"#).unwrap();
        assert_eq!(c.io, IoBackend::Epoll);
        assert!(c.apply_json(r#"{"ioBackend":"kqueue"}"#).is_err());
    }
}
