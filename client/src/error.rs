//! The client's error type.
//!
//! Owns [`ClientError`] and its mapping onto the stable wire codes of
//! PROTOCOL.md §11 ([`ErrorCode`]). Errors the broker (or, for RPC, a worker)
//! sends keep their code string exactly as received, so a worker's own code
//! (say `"EINVAL"`) reaches the caller unchanged.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use procmesh_proto::message::opt_str;
use procmesh_proto::{ErrorCode, Frame};

/// A `Result` whose error is [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Everything that can go wrong in a client call.
///
/// Match on the variant, or on [`ClientError::code`] for the stable wire code:
///
/// ```
/// use procmesh::{ClientError, ErrorCode};
///
/// fn is_stale_write(e: &ClientError) -> bool {
///     e.code() == Some(ErrorCode::Fenced)
/// }
/// let e = ClientError::Remote { code: "EFENCED".into(), message: "stale token".into() };
/// assert!(is_stale_write(&e));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The broker, or the worker serving a `call`, answered with an error.
    /// `code` is the code string as received (`"EFENCED"`, `"ENOHANDLER"`, or a
    /// worker's own code).
    Remote {
        /// The code string as sent by the broker or worker.
        code: String,
        /// What happened, as sent.
        message: String,
    },
    /// The connection was lost with the request in flight, or there is no
    /// connection (reconnect is off, it did not come back in time, or the client
    /// was closed). Code `EDISCONNECTED`.
    Disconnected {
        /// Why, and which broker.
        message: String,
    },
    /// No reply within the timeout. Code `ETIMEOUT`.
    Timeout {
        /// The request type (`"get"`, `"call"`, …).
        op: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// `with_lock` did not acquire the lock within its wait. Code `ELOCKTIMEOUT`.
    LockTimeout {
        /// The lock key.
        key: String,
        /// How long we waited.
        waited: Duration,
    },
    /// Could not connect to the broker at `path` (and auto-spawn was off or did
    /// not help).
    Connect {
        /// The socket address.
        path: PathBuf,
        /// The last connect error.
        source: io::Error,
    },
    /// Auto-spawn could not find the broker binary.
    BrokerNotFound {
        /// Every place that was looked at, in order.
        searched: Vec<PathBuf>,
    },
    /// Auto-spawn found the broker binary but could not start it.
    Spawn {
        /// The binary.
        program: PathBuf,
        /// Why it did not start.
        source: io::Error,
    },
    /// A value could not be serialized.
    Encode(String),
    /// A reply or value could not be decoded into the requested type.
    Decode(String),
    /// An invalid option or argument (for example shard count 0, or a shard count
    /// together with `PROCMESH_SOCKET`).
    Config(String),
    /// `ESHARDS` (ours): the broker at `path` says it is shard `announced.0` of an
    /// `announced.1`-shard mesh (`welcome`'s `shard`, `shards`), but this client
    /// routes to it as shard `expected.0` of `expected.1`: keys would reach the wrong
    /// shard, so the connect fails. Build the client with the mesh's shard count.
    ShardMismatch {
        /// The broker's socket.
        path: PathBuf,
        /// (index, count) this client routes with.
        expected: (usize, usize),
        /// (index, count) the broker announced.
        announced: (u64, u64),
    },
}

impl ClientError {
    /// The stable wire code, when the error has one.
    ///
    /// Broker and worker errors map their code string ([`ErrorCode::parse`];
    /// `None` for a worker's own code, see [`ClientError::code_str`]);
    /// [`Disconnected`](ClientError::Disconnected) and
    /// [`Connect`](ClientError::Connect) are `EDISCONNECTED`, timeouts `ETIMEOUT`
    /// and `ELOCKTIMEOUT`. Local errors (encoding, configuration, spawning) have
    /// no code.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote { code, .. } => ErrorCode::parse(code),
            ClientError::Disconnected { .. } | ClientError::Connect { .. } => {
                Some(ErrorCode::Disconnected)
            }
            ClientError::Timeout { .. } => Some(ErrorCode::Timeout),
            ClientError::LockTimeout { .. } => Some(ErrorCode::LockTimeout),
            ClientError::ShardMismatch { .. } => Some(ErrorCode::ShardMismatch),
            _ => None,
        }
    }

    /// The code as a string, including codes this crate does not know (a
    /// worker's own code); `None` for local errors.
    pub fn code_str(&self) -> Option<&str> {
        match self {
            ClientError::Remote { code, .. } => Some(code),
            other => other.code().map(ErrorCode::as_str),
        }
    }

    pub(crate) fn disconnected(message: impl Into<String>) -> Self {
        ClientError::Disconnected {
            message: message.into(),
        }
    }

    /// The error carried by an `err` frame (`EBROKER` when it names no code).
    pub(crate) fn from_err_frame(f: &Frame<'_>) -> Self {
        let code = opt_str(f.code, "code")
            .ok()
            .flatten()
            .map(|c| c.into_owned());
        let message = opt_str(f.message, "message")
            .ok()
            .flatten()
            .map(|m| m.into_owned());
        ClientError::Remote {
            code: code.unwrap_or_else(|| ErrorCode::Broker.as_str().to_owned()),
            message: message.unwrap_or_default(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Remote { code, message } => write!(f, "{code}: {message}"),
            ClientError::Disconnected { message } => write!(f, "EDISCONNECTED: {message}"),
            ClientError::Timeout { op, after } => {
                write!(
                    f,
                    "ETIMEOUT: no reply to `{op}` within {} ms",
                    after.as_millis()
                )
            }
            ClientError::LockTimeout { key, waited } => write!(
                f,
                "ELOCKTIMEOUT: lock `{key}` not acquired within {} ms",
                waited.as_millis()
            ),
            ClientError::Connect { path, source } => {
                write!(
                    f,
                    "cannot connect to the procmesh broker at {}: {source}",
                    path.display()
                )
            }
            ClientError::BrokerNotFound { searched } => {
                write!(
                    f,
                    "no procmesh broker is running and the `procmesh` broker binary was not found \
                     (looked at: "
                )?;
                for (i, p) in searched.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", p.display())?;
                }
                f.write_str(
                    "); install it with `cargo install procmesh-broker` (or build it with \
                     `cargo build -p procmesh-broker`), put it on PATH or set PROCMESH_BROKER_BIN, \
                     or start a broker yourself with `procmesh serve`",
                )
            }
            ClientError::Spawn { program, source } => {
                write!(
                    f,
                    "cannot start the procmesh broker {}: {source}",
                    program.display()
                )
            }
            ClientError::Encode(m) => write!(f, "cannot encode value: {m}"),
            ClientError::Decode(m) => write!(f, "cannot decode reply: {m}"),
            ClientError::Config(m) => write!(f, "invalid configuration: {m}"),
            ClientError::ShardMismatch {
                path,
                expected,
                announced,
            } => write!(
                f,
                "ESHARDS: the broker at {} is shard {} of {}, but this client routes to it \
                 as shard {} of {}; connect with the mesh's shard count ({})",
                path.display(),
                announced.0,
                announced.1,
                expected.0,
                expected.1,
                announced.1
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } | ClientError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The error an RPC handler returns; the caller receives it as
/// [`ClientError::Remote`] with this code (default `ECALL`) and message.
///
/// Any `std::error::Error` converts into it with `?`. A [`ClientError`] raised
/// inside a handler (for example by a nested call) keeps its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    code: Option<String>,
    message: String,
}

impl HandlerError {
    /// An error with a message and the default code `ECALL`.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError {
            code: None,
            message: message.into(),
        }
    }

    /// Sets the code the caller sees (e.g. `"EINVAL"`).
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// The code the caller sees.
    pub fn code(&self) -> &str {
        self.code.as_deref().unwrap_or(ErrorCode::Call.as_str())
    }

    /// The message the caller sees.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message)
    }
}

impl<E: std::error::Error + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        let any: &dyn std::any::Any = &e;
        let code = any
            .downcast_ref::<ClientError>()
            .and_then(|c| c.code_str().map(str::to_owned));
        let message = match any.downcast_ref::<ClientError>() {
            Some(ClientError::Remote { message, .. }) => message.clone(),
            _ => e.to_string(),
        };
        HandlerError { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_wire_strings() {
        let remote = ClientError::Remote {
            code: "EFENCED".into(),
            message: "x".into(),
        };
        assert_eq!(remote.code(), Some(ErrorCode::Fenced));
        let own = ClientError::Remote {
            code: "EINVAL".into(),
            message: "x".into(),
        };
        assert_eq!(own.code(), None);
        assert_eq!(own.code_str(), Some("EINVAL"));
        assert_eq!(
            ClientError::disconnected("gone").code_str(),
            Some("EDISCONNECTED")
        );
        let t = ClientError::Timeout {
            op: "get",
            after: Duration::from_millis(5),
        };
        assert_eq!(t.code(), Some(ErrorCode::Timeout));
        assert_eq!(t.to_string(), "ETIMEOUT: no reply to `get` within 5 ms");
        let l = ClientError::LockTimeout {
            key: "k".into(),
            waited: Duration::ZERO,
        };
        assert_eq!(l.code_str(), Some("ELOCKTIMEOUT"));
        assert_eq!(ClientError::Encode("x".into()).code(), None);
    }

    #[test]
    fn err_frames_become_remote_errors() {
        let f = Frame::decode(
            procmesh_proto::Codec::Json,
            br#"{"t":"err","id":1,"message":"stale","code":"EFENCED"}"#,
        )
        .unwrap();
        let e = ClientError::from_err_frame(&f);
        assert_eq!(e.code(), Some(procmesh_proto::ErrorCode::Fenced));
        assert_eq!(e.to_string(), "EFENCED: stale");
    }

    #[test]
    fn missing_binary_names_what_to_do() {
        let e = ClientError::BrokerNotFound {
            searched: vec![PathBuf::from("/x/procmesh")],
        };
        let s = e.to_string();
        assert!(s.contains("/x/procmesh"), "{s}");
        assert!(s.contains("PROCMESH_BROKER_BIN"), "{s}");
        assert!(s.contains("cargo install"), "{s}");
    }

    #[test]
    fn handler_errors_keep_codes() {
        let h = HandlerError::new("bad input").with_code("EINVAL");
        assert_eq!((h.code(), h.message()), ("EINVAL", "bad input"));
        assert_eq!(HandlerError::new("x").code(), "ECALL");
        let io: HandlerError = io::Error::other("disk").into();
        assert_eq!((io.code(), io.message()), ("ECALL", "disk"));
        let fenced: HandlerError = ClientError::Remote {
            code: "EFENCED".into(),
            message: "stale".into(),
        }
        .into();
        assert_eq!((fenced.code(), fenced.message()), ("EFENCED", "stale"));
    }
}
