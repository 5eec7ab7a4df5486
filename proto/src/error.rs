//! Error codes of PROTOCOL.md §11 and the decode error type.
//!
//! Owns the stable code strings: the Node.js client matches on them, so they never
//! change. Add a code only when none fits, and document it here and in
//! `docs/protocol.md`.

use std::borrow::Cow;
use std::fmt;

/// A stable wire error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not authenticated, or a wrong token.
    Auth,
    /// Unknown message type.
    Unknown,
    /// `incr`/`decr` on a value that is not a number.
    NotNumber,
    /// A fenced write with a stale or absent token.
    Fenced,
    /// No worker registered for the procedure.
    NoHandler,
    /// The worker disconnected with the call in flight.
    HandlerGone,
    /// No result by the call's deadline.
    CallTimeout,
    /// A worker's error without a code of its own.
    Call,
    /// Anything else that failed inside the broker (including malformed frames).
    Broker,
    /// Ours: a frame larger than the limit (the connection is then closed).
    TooBig,
    /// Client side: the connection was lost with the request in flight.
    Disconnected,
    /// Client side: no reply in time.
    Timeout,
    /// Client side: a lock was not acquired in time.
    LockTimeout,
    /// Client side, ours: the broker announced another place in the mesh (`shard`,
    /// `shards` in `welcome`) than the client routes to; it refuses to connect.
    ShardMismatch,
}

impl ErrorCode {
    /// Every code, for tests and tooling.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::Auth,
        ErrorCode::Unknown,
        ErrorCode::NotNumber,
        ErrorCode::Fenced,
        ErrorCode::NoHandler,
        ErrorCode::HandlerGone,
        ErrorCode::CallTimeout,
        ErrorCode::Call,
        ErrorCode::Broker,
        ErrorCode::TooBig,
        ErrorCode::Disconnected,
        ErrorCode::Timeout,
        ErrorCode::LockTimeout,
        ErrorCode::ShardMismatch,
    ];

    /// The code's wire string, e.g. `"EFENCED"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Auth => "EAUTH",
            ErrorCode::Unknown => "EUNKNOWN",
            ErrorCode::NotNumber => "ENOTNUMBER",
            ErrorCode::Fenced => "EFENCED",
            ErrorCode::NoHandler => "ENOHANDLER",
            ErrorCode::HandlerGone => "EHANDLERGONE",
            ErrorCode::CallTimeout => "ECALLTIMEOUT",
            ErrorCode::Call => "ECALL",
            ErrorCode::Broker => "EBROKER",
            ErrorCode::TooBig => "ETOOBIG",
            ErrorCode::Disconnected => "EDISCONNECTED",
            ErrorCode::Timeout => "ETIMEOUT",
            ErrorCode::LockTimeout => "ELOCKTIMEOUT",
            ErrorCode::ShardMismatch => "ESHARDS",
        }
    }

    /// Parses a wire string; `None` for a code this crate does not know.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payload that could not be decoded. Answered with `EBROKER` by the broker,
/// except a frame whose type is not a request ([`ErrorCode::Unknown`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    code: ErrorCode,
    message: Cow<'static, str>,
}

impl DecodeError {
    /// A decode error with a message saying what was wrong (code `EBROKER`).
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        DecodeError::with_code(ErrorCode::Broker, message)
    }

    /// A decode error answered with another code than `EBROKER`.
    pub fn with_code(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        DecodeError {
            code,
            message: message.into(),
        }
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::Fenced.as_str(), "EFENCED");
        assert_eq!(ErrorCode::parse("ENOPE"), None);
    }
}
