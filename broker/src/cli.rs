//! The client side of `procmesh status|stop|stats`: one blocking JSON connection.
//!
//! Deliberately tiny and synchronous (the CLI sends one or two requests); the real
//! client is the `procmesh` crate.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use procmesh_proto::frame;
use serde_json::{json, Value};

/// A failed CLI request.
#[derive(Debug)]
#[non_exhaustive]
pub enum CliError {
    /// Nothing listens at the address.
    NotRunning(String),
    /// The broker answered with an error.
    Broker {
        /// Its code.
        code: String,
        /// Its message.
        message: String,
    },
    /// Anything else (I/O, a malformed reply).
    Io(io::Error),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::NotRunning(p) => write!(f, "no broker is running at {p}"),
            CliError::Broker { code, message } => {
                write!(f, "the broker refused: {message} ({code})")
            }
            CliError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError::Io(e)
    }
}

/// A synchronous JSON connection to a broker.
pub struct CliConn {
    stream: UnixStream,
    next_id: u64,
}

impl CliConn {
    /// Connects and says hello (with `token` when given).
    pub fn connect(path: &Path, token: Option<&str>) -> Result<CliConn, CliError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                CliError::NotRunning(path.display().to_string())
            }
            _ => CliError::Io(e),
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut c = CliConn { stream, next_id: 0 };
        let mut hello = json!({"t": "hello", "name": "procmesh-cli"});
        if let Some(t) = token {
            hello["token"] = json!(t);
        }
        c.request(hello)?;
        Ok(c)
    }

    /// Sends one request (an `id` is added) and returns the reply frame.
    pub fn request(&mut self, mut req: Value) -> Result<Value, CliError> {
        self.next_id += 1;
        let id = self.next_id;
        req["id"] = json!(id);
        let payload = serde_json::to_vec(&req).map_err(io::Error::other)?;
        let mut buf = Vec::with_capacity(payload.len() + 4);
        frame::encode_into(&payload, &mut buf);
        self.stream.write_all(&buf)?;
        loop {
            let reply = self.read_frame()?;
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // a broker ping or another frame
            }
            if reply.get("t").and_then(Value::as_str) == Some("err") {
                return Err(CliError::Broker {
                    code: reply
                        .get("code")
                        .and_then(Value::as_str)
                        .unwrap_or("EBROKER")
                        .to_string(),
                    message: reply
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
            return Ok(reply);
        }
    }

    fn read_frame(&mut self) -> Result<Value, CliError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let n = u32::from_be_bytes(len) as usize;
        if n > frame::MAX_FRAME_LEN {
            return Err(io::Error::other("reply frame too large").into());
        }
        let mut payload = vec![0; n];
        self.stream.read_exact(&mut payload)?;
        serde_json::from_slice(&payload)
            .map_err(|e| io::Error::other(format!("malformed reply: {e}")).into())
    }

    /// Waits until the broker closes the connection (after `shutdown`).
    pub fn wait_closed(&mut self) {
        let mut b = [0u8; 256];
        while matches!(self.stream.read(&mut b), Ok(n) if n > 0) {}
    }
}

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
}
