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
