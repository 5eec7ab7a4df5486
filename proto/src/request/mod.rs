//! Typed client→broker messages (PROTOCOL.md §5–§9): [`Request`] decoded from a
//! [`Frame`] and encoded into a whole frame.
//!
//! Owns the request shapes: which fields each request has, their types, their
//! defaults where the protocol fixes one, and the error message for each malformed
//! field. It does not own what a request means (the broker's dispatch does) nor the
//! envelope (`message`: `t`, `id`, auth, op counting happen before
//! [`Request::from_frame`]). Invariants: decoding borrows every string and value from
//! the payload (a string is copied only when a JSON escape forces it) and allocates
//! nothing for a well-formed request; encoding then decoding gives back an equal
//! request.

use std::borrow::Cow;

use crate::compose::MapEnc;
use crate::message::{need_str, need_value, opt_ms, opt_num, opt_str, opt_u64, Frame, Kind};
use crate::{Codec, DecodeError, ErrorCode, Num, Raw};

/// Longest type tag quoted back in an `EUNKNOWN` message.
const TAG_QUOTE_MAX: usize = 64;

mod lists;
pub use lists::{EntryIter, EntryList, KeyIter, KeyList};

/// How a `pub` is acknowledged (`acks`: 0, 1 (the default) or `"all"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Acks {
    /// `0`: no reply; the fan-out may drop frames to slow consumers.
    None = 0,
    /// `1` (default): the delivered count is replied; slow consumers may miss it.
    #[default]
    One = 1,
    /// `"all"`: replied, and the fan-out is never dropped.
    All = 2,
}

impl Acks {
    /// Whether the publisher gets a reply.
    #[inline]
    pub fn wants_reply(self) -> bool {
        self != Acks::None
    }

    /// Whether frames to a slow consumer may be dropped.
    #[inline]
    pub fn is_droppable(self) -> bool {
        self != Acks::All
    }
}

/// One client→broker message, its fields borrowed from the payload.
///
/// The envelope's `id` is not part of it (it travels beside, see
/// [`Request::encode_into`]), except for [`Request::Result`], whose `id` names the
/// `invoke` it answers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Request<'a> {
    /// `hello`: `name?`, `token?`, `pid?`. Tolerant: a field of the wrong type is
    /// treated as absent.
    Hello {
        /// The mesh name the client wants (informational).
        name: Option<Cow<'a, str>>,
        /// The broker's token, when it has one.
        token: Option<Cow<'a, str>>,
        /// The producer id to keep, else the broker mints one.
        pid: Option<Cow<'a, str>>,
    },
    /// `ping` (answered `pong`).
    Ping,
    /// `pong` (answers a broker `ping`).
    Pong,
    /// `stats`.
    Stats,
    /// `shutdown`.
    Shutdown,
    /// `track` (ours, docs/protocol.md "Near-cache tracking"): from now on the broker
    /// remembers which keys this connection reads and pushes `inv` when one changes.
    Track,
    /// `get key`.
    Get {
        /// The key.
        key: Cow<'a, str>,
    },
    /// `set key value ttl?`.
    Set {
        /// The key.
        key: Cow<'a, str>,
        /// The value, stored as is.
        value: Raw<'a>,
        /// Per-item expiry (absent or 0: none).
        ttl_ms: Option<u64>,
    },
    /// `del key`.
    Del {
        /// The key.
        key: Cow<'a, str>,
    },
    /// `has key`.
    Has {
        /// The key.
        key: Cow<'a, str>,
    },
    /// `keys`.
    Keys,
    /// `scan prefix? limit? cursor?` (ours): one page of the live keys starting with
    /// `prefix`, resumed at `cursor` (absent: from the start); answered
    /// `{keys, cursor}` with the next cursor, `null` when the scan is complete.
    Scan {
        /// Only keys starting with this (absent: every key).
        prefix: Option<Cow<'a, str>>,
        /// Most keys in the page (absent: the broker's default; capped by it).
        limit: Option<u64>,
        /// Where to resume: the `cursor` of the previous page, opaque.
        cursor: Option<Cow<'a, str>>,
    },
    /// `clear`.
    Clear,
    /// `mget keys`.
    Mget {
        /// The keys, all strings.
        keys: KeyList<'a>,
    },
    /// `mset entries`.
    Mset {
        /// The `[key, value]` pairs.
        entries: EntryList<'a>,
    },
    /// `incr key by?`.
    Incr {
        /// The key.
        key: Cow<'a, str>,
        /// The amount (1 when absent).
        by: Num,
    },
    /// `decr key by?` (the broker subtracts `by`).
    Decr {
        /// The key.
        key: Cow<'a, str>,
        /// The amount (1 when absent).
        by: Num,
    },
    /// `cas key prev? next?`.
    Cas {
        /// The key.
        key: Cow<'a, str>,
        /// The expected value (absent: the key is missing).
        prev: Option<Raw<'a>>,
        /// The new value (absent: delete).
        next: Option<Raw<'a>>,
    },
    /// `lock key ttl? wait?` (the defaults are the broker's).
    Lock {
        /// The lock's name.
        key: Cow<'a, str>,
        /// How long a grant lasts.
        ttl_ms: Option<u64>,
        /// How long to wait in line.
        wait_ms: Option<u64>,
    },
    /// `unlock key`.
    Unlock {
        /// The lock's name.
        key: Cow<'a, str>,
    },
    /// `fset key token k value ttl?`.
    Fset {
        /// The lock's name.
        key: Cow<'a, str>,
        /// The fencing token (absent: the write is fenced off).
        token: Option<u64>,
        /// The key written.
        k: Cow<'a, str>,
        /// The value.
        value: Raw<'a>,
        /// Per-item expiry.
        ttl_ms: Option<u64>,
    },
    /// `fcas key token k prev? next?`.
    Fcas {
        /// The lock's name.
        key: Cow<'a, str>,
        /// The fencing token.
        token: Option<u64>,
        /// The key swapped.
        k: Cow<'a, str>,
        /// The expected value.
        prev: Option<Raw<'a>>,
        /// The new value.
        next: Option<Raw<'a>>,
    },
    /// `fdel key token k`.
    Fdel {
        /// The lock's name.
        key: Cow<'a, str>,
        /// The fencing token.
        token: Option<u64>,
        /// The key deleted.
        k: Cow<'a, str>,
    },
    /// `sub channel` (`replay`/`since` are not decoded yet).
    Sub {
        /// Channel or `prefix*` pattern.
        channel: Cow<'a, str>,
        /// `replay`: how many of the most recent retained messages to replay first
        /// (`true` = all, [`REPLAY_ALL`]; `0`, `false` or absent: none). Tolerant.
        replay: Option<u64>,
        /// `since`: replay the retained messages with an offset above this (wins
        /// over `replay`). Tolerant.
        since: Option<u64>,
    },
    /// `unsub channel`.
    Unsub {
        /// Channel or pattern.
        channel: Cow<'a, str>,
    },
    /// `pub channel payload acks? pid? seq?`.
    Pub {
        /// The channel.
        channel: Cow<'a, str>,
        /// The payload (absent: the broker sends null).
        payload: Option<Raw<'a>>,
        /// Acknowledgement mode.
        acks: Acks,
        /// Producer id for idempotent publishing (tolerant: wrong type is absent).
        pid: Option<Cow<'a, str>>,
        /// Sequence number for idempotent publishing (tolerant).
        seq: Option<u64>,
    },
    /// `reg name`.
    Reg {
        /// Procedure name.
        name: Cow<'a, str>,
    },
    /// `unreg name`.
    Unreg {
        /// Procedure name.
        name: Cow<'a, str>,
    },
    /// `call name args timeout?`.
    Call {
        /// Procedure name.
        name: Cow<'a, str>,
        /// Arguments (absent or null: the broker sends an empty array).
        args: Option<Raw<'a>>,
        /// The caller's deadline.
        timeout_ms: Option<u64>,
    },
    /// `result id result|error` (a worker answering an `invoke`).
    Result {
        /// The invoke's id.
        id: u64,
        /// The result value (absent: none).
        result: Option<Raw<'a>>,
        /// The worker's error (`{message, code}` or a string); null is absent.
        error: Option<Raw<'a>>,
    },
}

impl<'a> Request<'a> {
    /// Decodes the request of kind `kind` from its frame, with the same checks and
    /// error messages the broker has always answered with.
    ///
    /// `kind` is `f.kind()`, passed in because the caller has read it already (auth
    /// and op counting come first). A kind that is not a request fails with code
    /// `EUNKNOWN` ([`DecodeError::code`]); anything else with `EBROKER`.
    pub fn from_frame(kind: Kind, f: &Frame<'a>) -> Result<Request<'a>, DecodeError> {
        Ok(match kind {
            Kind::Hello => Request::Hello {
                name: opt_str(f.name, "name").ok().flatten(),
                token: opt_str(f.token, "token").ok().flatten(),
                pid: opt_str(f.pid, "pid").ok().flatten(),
            },
            Kind::Ping => Request::Ping,
            Kind::Pong => Request::Pong,
            Kind::Stats => Request::Stats,
            Kind::Shutdown => Request::Shutdown,
            Kind::Track => Request::Track,
            Kind::Get => Request::Get {
                key: need_str(f.key, "key")?,
            },
            Kind::Set => Request::Set {
                key: need_str(f.key, "key")?,
                value: need_value(f.value, "value")?,
                ttl_ms: opt_ms(f.ttl, "ttl")?,
            },
            Kind::Del => Request::Del {
                key: need_str(f.key, "key")?,
            },
            Kind::Has => Request::Has {
                key: need_str(f.key, "key")?,
            },
            Kind::Keys => Request::Keys,
            Kind::Scan => Request::Scan {
                prefix: opt_str(f.prefix, "prefix")?,
                limit: opt_u64(f.limit, "limit")?,
                cursor: opt_str(f.cursor.filter(|c| !c.is_nil()), "cursor")?,
            },
            Kind::Clear => Request::Clear,
            Kind::Mget => Request::Mget {
                keys: KeyList::decode(need_value(f.keys, "keys")?)?,
            },
            Kind::Mset => Request::Mset {
                entries: EntryList::decode(need_value(f.entries, "entries")?)?,
            },
            Kind::Incr | Kind::Decr => {
                let key = need_str(f.key, "key")?;
                let by = opt_num(f.by, "by")?.unwrap_or(Num::Int(1));
                if !by.is_finite() {
                    return Err(DecodeError::new("field `by` must be a finite number"));
                }
                if kind == Kind::Incr {
                    Request::Incr { key, by }
                } else {
                    Request::Decr { key, by }
                }
            }
            Kind::Cas => Request::Cas {
                key: need_str(f.key, "key")?,
                prev: f.prev,
                next: f.next,
            },
            Kind::Lock => Request::Lock {
                key: need_str(f.key, "key")?,
                ttl_ms: opt_ms(f.ttl, "ttl")?,
                wait_ms: opt_ms(f.wait, "wait")?,
            },
            Kind::Unlock => Request::Unlock {
                key: need_str(f.key, "key")?,
            },
            Kind::Fset | Kind::Fcas | Kind::Fdel => {
                let key = need_str(f.key, "key")?;
                let k = need_str(f.k, "k")?;
                let token = opt_u64(f.token, "token")?;
                match kind {
                    Kind::Fset => Request::Fset {
                        key,
                        token,
                        k,
                        value: need_value(f.value, "value")?,
                        ttl_ms: opt_ms(f.ttl, "ttl")?,
                    },
                    Kind::Fcas => Request::Fcas {
                        key,
                        token,
                        k,
                        prev: f.prev,
                        next: f.next,
                    },
                    _ => Request::Fdel { key, token, k },
                }
            }
            Kind::Sub => Request::Sub {
                channel: need_str(f.channel, "channel")?,
                replay: replay(f.replay),
                since: opt_u64(f.since, "since").ok().flatten(),
            },
            Kind::Unsub => Request::Unsub {
                channel: need_str(f.channel, "channel")?,
            },
            Kind::Pub => Request::Pub {
                channel: need_str(f.channel, "channel")?,
                payload: f.payload,
                acks: acks(f.acks)?,
                pid: opt_str(f.pid, "pid").ok().flatten(),
                seq: opt_u64(f.seq, "seq").ok().flatten(),
            },
            Kind::Reg => Request::Reg {
                name: need_str(f.name, "name")?,
            },
            Kind::Unreg => Request::Unreg {
                name: need_str(f.name, "name")?,
            },
            Kind::Call => Request::Call {
                name: need_str(f.name, "name")?,
                args: f.args.filter(|a| !a.is_nil()),
                timeout_ms: opt_ms(f.timeout, "timeout")?,
            },
            Kind::Result => {
                let Some(id) = opt_u64(f.id, "id")? else {
                    return Err(DecodeError::new("result without the invoke's `id`"));
                };
                Request::Result {
                    id,
                    result: f.result,
                    error: f.error.filter(|e| !e.is_nil()),
                }
            }
            Kind::Welcome | Kind::Ok | Kind::Err | Kind::Msg | Kind::Invoke | Kind::Unknown => {
                let tag = f.t.and_then(|t| t.as_str()).unwrap_or(Cow::Borrowed("?"));
                return Err(DecodeError::with_code(
                    ErrorCode::Unknown,
                    format!("unknown message type `{}`", clip(&tag, TAG_QUOTE_MAX)),
                ));
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(DecodeError::with_code(
                    ErrorCode::Unknown,
                    "unknown message type",
                ))
            }
        })
    }

    /// Decodes a whole payload: the envelope, then the request.
    pub fn decode(codec: Codec, payload: &'a [u8]) -> Result<Request<'a>, DecodeError> {
        let f = Frame::decode(codec, payload)?;
        Request::from_frame(f.kind(), &f)
    }

    /// The frame kind of this request.
    pub fn kind(&self) -> Kind {
        match self {
            Request::Hello { .. } => Kind::Hello,
            Request::Ping => Kind::Ping,
            Request::Pong => Kind::Pong,
            Request::Stats => Kind::Stats,
            Request::Shutdown => Kind::Shutdown,
            Request::Track => Kind::Track,
            Request::Get { .. } => Kind::Get,
            Request::Set { .. } => Kind::Set,
            Request::Del { .. } => Kind::Del,
            Request::Has { .. } => Kind::Has,
            Request::Keys => Kind::Keys,
            Request::Scan { .. } => Kind::Scan,
            Request::Clear => Kind::Clear,
            Request::Mget { .. } => Kind::Mget,
            Request::Mset { .. } => Kind::Mset,
            Request::Incr { .. } => Kind::Incr,
            Request::Decr { .. } => Kind::Decr,
            Request::Cas { .. } => Kind::Cas,
            Request::Lock { .. } => Kind::Lock,
            Request::Unlock { .. } => Kind::Unlock,
            Request::Fset { .. } => Kind::Fset,
            Request::Fcas { .. } => Kind::Fcas,
            Request::Fdel { .. } => Kind::Fdel,
            Request::Sub { .. } => Kind::Sub,
            Request::Unsub { .. } => Kind::Unsub,
            Request::Pub { .. } => Kind::Pub,
            Request::Reg { .. } => Kind::Reg,
            Request::Unreg { .. } => Kind::Unreg,
            Request::Call { .. } => Kind::Call,
            Request::Result { .. } => Kind::Result,
        }
    }

    /// Appends one complete frame (length prefix included): `t`, then `id` when
    /// given, then the fields present, in the order of PROTOCOL.md's tables.
    ///
    /// For [`Request::Result`] the `id` written is the invoke's and `id` is ignored.
    /// Values are written as they are when in `codec`, else transcoded; a value that
    /// cannot be transcoded fails the call and leaves `out` unchanged. Optional
    /// fields that are `None` are omitted; `acks` is written only when not 1.
    ///
    /// ```text
    /// {"t":"set","id":7,"key":"k","value":V,"ttl":100}
    /// 0x85 a1 "t" a3 "set" a2 "id" 07 a3 "key" a1 "k" a5 "value" V a3 "ttl" 64
    /// ```
    pub fn encode_into(
        &self,
        codec: Codec,
        id: Option<u64>,
        out: &mut Vec<u8>,
    ) -> Result<(), DecodeError> {
        let mut m = MapEnc::begin(codec, out, self.kind().tag());
        let id = match self {
            Request::Result { id, .. } => Some(*id),
            _ => id,
        };
        if let Some(id) = id {
            m.key("id").uint(id);
        }
        match self.write_fields(&mut m) {
            Ok(()) => {
                m.finish();
                Ok(())
            }
            Err(e) => {
                m.abort();
                Err(e)
            }
        }
    }

    fn write_fields(&self, m: &mut MapEnc<'_>) -> Result<(), DecodeError> {
        fn s(m: &mut MapEnc<'_>, k: &str, v: &str) {
            m.key(k).str(v);
        }
        fn opt_s(m: &mut MapEnc<'_>, k: &str, v: &Option<Cow<'_, str>>) {
            if let Some(v) = v {
                m.key(k).str(v);
            }
        }
        fn opt_u(m: &mut MapEnc<'_>, k: &str, v: Option<u64>) {
            if let Some(v) = v {
                m.key(k).uint(v);
            }
        }
        fn opt_r(m: &mut MapEnc<'_>, k: &str, v: Option<Raw<'_>>) -> Result<(), DecodeError> {
            match v {
                Some(v) => m.raw(k, v),
                None => Ok(()),
            }
        }
        match self {
            Request::Hello { name, token, pid } => {
                opt_s(m, "name", name);
                opt_s(m, "token", token);
                opt_s(m, "pid", pid);
            }
            Request::Ping
            | Request::Pong
            | Request::Stats
            | Request::Shutdown
            | Request::Track
            | Request::Keys
            | Request::Clear => {}
            Request::Get { key }
            | Request::Del { key }
            | Request::Has { key }
            | Request::Unlock { key } => s(m, "key", key),
            Request::Set { key, value, ttl_ms } => {
                s(m, "key", key);
                m.raw("value", *value)?;
                opt_u(m, "ttl", *ttl_ms);
            }
            Request::Scan {
                prefix,
                limit,
                cursor,
            } => {
                opt_s(m, "prefix", prefix);
                opt_u(m, "limit", *limit);
                opt_s(m, "cursor", cursor);
            }
            Request::Mget { keys } => {
                let w = m.key("keys");
                w.begin_array(keys.len());
                for k in keys {
                    w.str(&k);
                }
                w.end_array();
            }
            Request::Mset { entries } => {
                let w = m.key("entries");
                w.begin_array(entries.len());
                for (k, v) in entries {
                    w.begin_array(2);
                    w.str(&k);
                    w.raw(v)?;
                    w.end_array();
                }
                w.end_array();
            }
            Request::Incr { key, by } | Request::Decr { key, by } => {
                s(m, "key", key);
                by.write(m.key("by"));
            }
            Request::Cas { key, prev, next } => {
                s(m, "key", key);
                opt_r(m, "prev", *prev)?;
                opt_r(m, "next", *next)?;
            }
            Request::Lock {
                key,
                ttl_ms,
                wait_ms,
            } => {
                s(m, "key", key);
                opt_u(m, "ttl", *ttl_ms);
                opt_u(m, "wait", *wait_ms);
            }
            Request::Fset {
                key,
                token,
                k,
                value,
                ttl_ms,
            } => {
                fence(m, key, *token, k);
                m.raw("value", *value)?;
                opt_u(m, "ttl", *ttl_ms);
            }
            Request::Fcas {
                key,
                token,
                k,
                prev,
                next,
            } => {
                fence(m, key, *token, k);
                opt_r(m, "prev", *prev)?;
                opt_r(m, "next", *next)?;
            }
            Request::Fdel { key, token, k } => fence(m, key, *token, k),
            Request::Sub {
                channel,
                replay,
                since,
            } => {
                s(m, "channel", channel);
                match *replay {
                    Some(REPLAY_ALL) => m.key("replay").bool(true),
                    Some(n) => m.key("replay").uint(n),
                    None => {}
                }
                opt_u(m, "since", *since);
            }
            Request::Unsub { channel } => s(m, "channel", channel),
            Request::Pub {
                channel,
                payload,
                acks,
                pid,
                seq,
            } => {
                s(m, "channel", channel);
                opt_r(m, "payload", *payload)?;
                match acks {
                    Acks::One => {}
                    Acks::None => m.key("acks").int(0),
                    Acks::All => m.key("acks").str("all"),
                }
                opt_s(m, "pid", pid);
                opt_u(m, "seq", *seq);
            }
            Request::Reg { name } | Request::Unreg { name } => s(m, "name", name),
            Request::Call {
                name,
                args,
                timeout_ms,
            } => {
                s(m, "name", name);
                opt_r(m, "args", *args)?;
                opt_u(m, "timeout", *timeout_ms);
            }
            Request::Result { result, error, .. } => {
                opt_r(m, "result", *result)?;
                opt_r(m, "error", *error)?;
            }
        }
        Ok(())
    }
}

fn fence(m: &mut MapEnc<'_>, key: &str, token: Option<u64>, k: &str) {
    m.key("key").str(key);
    if let Some(t) = token {
        m.key("token").uint(t);
    }
    m.key("k").str(k);
}

/// The `acks` field of a `pub`: absent/null/1 → One, 0 → None, `"all"` → All.
/// [`Request::Sub`]'s `replay` for `replay: true`: the whole retained backlog.
pub const REPLAY_ALL: u64 = u64::MAX;

/// `replay`: `true` → all, a positive number → that many, anything else → none
/// (procmesh-js: `0`/`false` replay nothing).
fn replay(v: Option<Raw<'_>>) -> Option<u64> {
    let v = v?;
    if let Some(b) = v.as_bool() {
        return b.then_some(REPLAY_ALL);
    }
    match opt_u64(Some(v), "replay") {
        Ok(Some(0)) | Ok(None) | Err(_) => None,
        Ok(Some(n)) => Some(n),
    }
}

fn acks(v: Option<Raw<'_>>) -> Result<Acks, DecodeError> {
    match v {
        None => Ok(Acks::One),
        Some(a) if a.is_nil() => Ok(Acks::One),
        Some(a) => match (a.as_i64(), a.as_str()) {
            (Some(0), _) => Ok(Acks::None),
            (Some(1), _) => Ok(Acks::One),
            (_, Some(s)) if s == "all" => Ok(Acks::All),
            _ => Err(DecodeError::new("field `acks` must be 0, 1 or \"all\"")),
        },
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{transcode, validate};

    /// A value given as JSON text, in `codec` (leaked: tests only).
    fn val(codec: Codec, json: &str) -> Raw<'static> {
        let j = validate(Codec::Json, json.as_bytes()).unwrap();
        let mut out = Vec::new();
        transcode(j, codec, &mut out).unwrap();
        Raw::new(codec, Box::leak(out.into_boxed_slice()))
    }

    fn b(s: &'static str) -> Cow<'static, str> {
        Cow::Borrowed(s)
    }

    /// Every request variant with its id and its exact JSON payload.
    fn cases(c: Codec) -> Vec<(Request<'static>, Option<u64>, &'static str)> {
        let keys: &'static [&'static str] = &["a", "b\"c"];
        let pairs: &'static [(&'static str, Raw<'static>)] =
            Box::leak(vec![("a", val(c, "1")), ("b", val(c, r#"{"x":[true,null]}"#))].into());
        vec![
            (
                Request::Hello {
                    name: Some(b("default")),
                    token: Some(b("s3cret")),
                    pid: Some(b("p-1")),
                },
                Some(1),
                r#"{"t":"hello","id":1,"name":"default","token":"s3cret","pid":"p-1"}"#,
            ),
            (
                Request::Hello {
                    name: Some(b("m")),
                    token: None,
                    pid: None,
                },
                Some(2),
                r#"{"t":"hello","id":2,"name":"m"}"#,
            ),
            (Request::Ping, Some(3), r#"{"t":"ping","id":3}"#),
            (Request::Pong, None, r#"{"t":"pong"}"#),
            (Request::Stats, Some(4), r#"{"t":"stats","id":4}"#),
            (Request::Shutdown, Some(5), r#"{"t":"shutdown","id":5}"#),
            (
                Request::Get { key: b("user:1") },
                Some(6),
                r#"{"t":"get","id":6,"key":"user:1"}"#,
            ),
            (
                Request::Set {
                    key: b("k"),
                    value: val(c, r#"{"a":[1,2.5,"x"]}"#),
                    ttl_ms: Some(100),
                },
                Some(7),
                r#"{"t":"set","id":7,"key":"k","value":{"a":[1,2.5,"x"]},"ttl":100}"#,
            ),
            (
                Request::Set {
                    key: b("k"),
                    value: val(c, "null"),
                    ttl_ms: None,
                },
                Some(8),
                r#"{"t":"set","id":8,"key":"k","value":null}"#,
            ),
            (
                Request::Del { key: b("k") },
                Some(9),
                r#"{"t":"del","id":9,"key":"k"}"#,
            ),
            (
                Request::Has { key: b("k") },
                Some(10),
                r#"{"t":"has","id":10,"key":"k"}"#,
            ),
            (Request::Keys, Some(11), r#"{"t":"keys","id":11}"#),
            (Request::Clear, Some(12), r#"{"t":"clear","id":12}"#),
            (
                Request::Mget {
                    keys: KeyList::from_strs(keys),
                },
                Some(13),
                r#"{"t":"mget","id":13,"keys":["a","b\"c"]}"#,
            ),
            (
                Request::Mset {
                    entries: EntryList::from_pairs(pairs),
                },
                Some(14),
                r#"{"t":"mset","id":14,"entries":[["a",1],["b",{"x":[true,null]}]]}"#,
            ),
            (
                Request::Incr {
                    key: b("n"),
                    by: Num::Int(1),
                },
                Some(15),
                r#"{"t":"incr","id":15,"key":"n","by":1}"#,
            ),
            (
                Request::Decr {
                    key: b("n"),
                    by: Num::Float(2.5),
                },
                Some(16),
                r#"{"t":"decr","id":16,"key":"n","by":2.5}"#,
            ),
            (
                Request::Cas {
                    key: b("k"),
                    prev: Some(val(c, "1")),
                    next: Some(val(c, "\"two\"")),
                },
                Some(17),
                r#"{"t":"cas","id":17,"key":"k","prev":1,"next":"two"}"#,
            ),
            (
                Request::Cas {
                    key: b("k"),
                    prev: None,
                    next: None,
                },
                Some(18),
                r#"{"t":"cas","id":18,"key":"k"}"#,
            ),
            (
                Request::Lock {
                    key: b("L"),
                    ttl_ms: Some(30000),
                    wait_ms: Some(0),
                },
                Some(19),
                r#"{"t":"lock","id":19,"key":"L","ttl":30000,"wait":0}"#,
            ),
            (
                Request::Unlock { key: b("L") },
                Some(20),
                r#"{"t":"unlock","id":20,"key":"L"}"#,
            ),
            (
                Request::Fset {
                    key: b("L"),
                    token: Some(7),
                    k: b("k"),
                    value: val(c, "[1]"),
                    ttl_ms: Some(5),
                },
                Some(21),
                r#"{"t":"fset","id":21,"key":"L","token":7,"k":"k","value":[1],"ttl":5}"#,
            ),
            (
                Request::Fcas {
                    key: b("L"),
                    token: Some(u64::MAX),
                    k: b("k"),
                    prev: None,
                    next: Some(val(c, "false")),
                },
                Some(22),
                r#"{"t":"fcas","id":22,"key":"L","token":18446744073709551615,"k":"k","next":false}"#,
            ),
            (
                Request::Fdel {
                    key: b("L"),
                    token: None,
                    k: b("k"),
                },
                Some(23),
                r#"{"t":"fdel","id":23,"key":"L","k":"k"}"#,
            ),
            (
                Request::Sub {
                    channel: b("news.*"),
                    replay: None,
                    since: None,
                },
                Some(24),
                r#"{"t":"sub","id":24,"channel":"news.*"}"#,
            ),
            (
                Request::Sub {
                    channel: b("news"),
                    replay: Some(REPLAY_ALL),
                    since: None,
                },
                Some(28),
                r#"{"t":"sub","id":28,"channel":"news","replay":true}"#,
            ),
            (
                Request::Sub {
                    channel: b("news"),
                    replay: Some(5),
                    since: Some(41),
                },
                Some(29),
                r#"{"t":"sub","id":29,"channel":"news","replay":5,"since":41}"#,
            ),
            (
                Request::Unsub {
                    channel: b("news.*"),
                },
                Some(25),
                r#"{"t":"unsub","id":25,"channel":"news.*"}"#,
            ),
            (
                Request::Pub {
                    channel: b("c"),
                    payload: Some(val(c, r#"{"n":1}"#)),
                    acks: Acks::One,
                    pid: None,
                    seq: None,
                },
                Some(26),
                r#"{"t":"pub","id":26,"channel":"c","payload":{"n":1}}"#,
            ),
            (
                Request::Pub {
                    channel: b("c"),
                    payload: Some(val(c, "\"x\"")),
                    acks: Acks::None,
                    pid: None,
                    seq: None,
                },
                None,
                r#"{"t":"pub","channel":"c","payload":"x","acks":0}"#,
            ),
            (
                Request::Pub {
                    channel: b("c"),
                    payload: None,
                    acks: Acks::All,
                    pid: Some(b("p")),
                    seq: Some(9),
                },
                Some(27),
                r#"{"t":"pub","id":27,"channel":"c","acks":"all","pid":"p","seq":9}"#,
            ),
            (
                Request::Reg { name: b("add") },
                Some(28),
                r#"{"t":"reg","id":28,"name":"add"}"#,
            ),
            (
                Request::Unreg { name: b("add") },
                Some(29),
                r#"{"t":"unreg","id":29,"name":"add"}"#,
            ),
            (
                Request::Call {
                    name: b("add"),
                    args: Some(val(c, "[1,2]")),
                    timeout_ms: Some(1000),
                },
                Some(30),
                r#"{"t":"call","id":30,"name":"add","args":[1,2],"timeout":1000}"#,
            ),
            (
                Request::Result {
                    id: 31,
                    result: Some(val(c, "3")),
                    error: None,
                },
                Some(999),
                r#"{"t":"result","id":31,"result":3}"#,
            ),
            (
                Request::Result {
                    id: 32,
                    result: None,
                    error: Some(val(c, r#"{"message":"no","code":"EX"}"#)),
                },
                None,
                r#"{"t":"result","id":32,"error":{"message":"no","code":"EX"}}"#,
            ),
        ]
    }

    /// The MessagePack bytes of each case, in the order of `cases`, as hex.
    #[rustfmt::skip]
    const MSGPACK: &[&str] = &[
        "85a174a568656c6c6fa2696401a46e616d65a764656661756c74a5746f6b656ea6733363726574a3706964a3702d31",
        "83a174a568656c6c6fa2696402a46e616d65a16d",
        "82a174a470696e67a2696403",
        "81a174a4706f6e67",
        "82a174a57374617473a2696404",
        "82a174a873687574646f776ea2696405",
        "83a174a3676574a2696406a36b6579a6757365723a31",
        "85a174a3736574a2696407a36b6579a16ba576616c756581a1619301cb4004000000000000a178a374746c64",
        "84a174a3736574a2696408a36b6579a16ba576616c7565c0",
        "83a174a364656ca2696409a36b6579a16b",
        "83a174a3686173a269640aa36b6579a16b",
        "82a174a46b657973a269640b",
        "82a174a5636c656172a269640c",
        "83a174a46d676574a269640da46b65797392a161a3622263",
        "83a174a46d736574a269640ea7656e74726965739292a1610192a16281a17892c3c0",
        "84a174a4696e6372a269640fa36b6579a16ea2627901",
        "84a174a464656372a2696410a36b6579a16ea26279cb4004000000000000",
        "85a174a3636173a2696411a36b6579a16ba47072657601a46e657874a374776f",
        "83a174a3636173a2696412a36b6579a16b",
        "85a174a46c6f636ba2696413a36b6579a14ca374746ccd7530a47761697400",
        "83a174a6756e6c6f636ba2696414a36b6579a14c",
        "87a174a466736574a2696415a36b6579a14ca5746f6b656e07a16ba16ba576616c75659101a374746c05",
        "86a174a466636173a2696416a36b6579a14ca5746f6b656ecfffffffffffffffffa16ba16ba46e657874c2",
        "84a174a46664656ca2696417a36b6579a14ca16ba16b",
        "83a174a3737562a2696418a76368616e6e656ca66e6577732e2a",
        "84a174a3737562a269641ca76368616e6e656ca46e657773a67265706c6179c3",
        "85a174a3737562a269641da76368616e6e656ca46e657773a67265706c617905a573696e636529",
        "83a174a5756e737562a2696419a76368616e6e656ca66e6577732e2a",
        "84a174a3707562a269641aa76368616e6e656ca163a77061796c6f616481a16e01",
        "84a174a3707562a76368616e6e656ca163a77061796c6f6164a178a461636b7300",
        "86a174a3707562a269641ba76368616e6e656ca163a461636b73a3616c6ca3706964a170a373657109",
        "83a174a3726567a269641ca46e616d65a3616464",
        "83a174a5756e726567a269641da46e616d65a3616464",
        "85a174a463616c6ca269641ea46e616d65a3616464a461726773920102a774696d656f7574cd03e8",
        "83a174a6726573756c74a269641fa6726573756c7403",
        "83a174a6726573756c74a2696420a56572726f7282a76d657373616765a26e6fa4636f6465a24558",
    ];

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn payload(out: &[u8]) -> &[u8] {
        let (s, e) = crate::frame::try_decode(out, crate::frame::MAX_FRAME_LEN)
            .unwrap()
            .unwrap();
        assert_eq!(e, out.len(), "exactly one frame");
        &out[s..e]
    }

    #[test]
    fn golden_requests_json() {
        for (req, id, want) in cases(Codec::Json) {
            let mut out = vec![0xee];
            req.encode_into(Codec::Json, id, &mut out).unwrap();
            assert_eq!(out[0], 0xee, "appends");
            let p = payload(&out[1..]);
            assert_eq!(std::str::from_utf8(p).unwrap(), want);
            let back = Request::decode(Codec::Json, p).unwrap();
            assert_eq!(back, req, "{want}");
            let f = Frame::decode(Codec::Json, p).unwrap();
            assert_eq!(
                f.id.and_then(|i| i.as_i64()),
                match req {
                    Request::Result { id, .. } => Some(id as i64),
                    _ => id.map(|i| i as i64),
                }
            );
        }
    }

    #[test]
    fn golden_requests_msgpack() {
        let cases = cases(Codec::MsgPack);
        let mut got = Vec::new();
        for (req, id, want_json) in &cases {
            let mut out = Vec::new();
            req.encode_into(Codec::MsgPack, *id, &mut out).unwrap();
            let p = payload(&out);
            // The same message as the JSON golden, according to rmp-serde.
            let via: serde_json::Value = rmp_serde::from_slice(p).unwrap();
            let want: serde_json::Value = serde_json::from_str(want_json).unwrap();
            assert_eq!(via, want);
            assert_eq!(
                Request::decode(Codec::MsgPack, p).unwrap(),
                *req,
                "{want_json}"
            );
            got.push(hex(p));
        }
        assert_eq!(got.len(), MSGPACK.len());
        for (g, w) in got.iter().zip(MSGPACK) {
            assert_eq!(g, w);
        }
    }

    #[test]
    fn scan_round_trips_in_both_codecs() {
        let full = Request::Scan {
            prefix: Some("user:".into()),
            limit: Some(500),
            cursor: Some("42".into()),
        };
        let bare = Request::Scan {
            prefix: None,
            limit: None,
            cursor: None,
        };
        for codec in [Codec::Json, Codec::MsgPack] {
            for (req, want) in [
                (
                    &full,
                    r#"{"t":"scan","id":11,"prefix":"user:","limit":500,"cursor":"42"}"#,
                ),
                (&bare, r#"{"t":"scan","id":11}"#),
            ] {
                let mut out = Vec::new();
                req.encode_into(codec, Some(11), &mut out).unwrap();
                let p = payload(&out);
                let via: serde_json::Value = match codec {
                    Codec::Json => serde_json::from_slice(p).unwrap(),
                    _ => rmp_serde::from_slice(p).unwrap(),
                };
                assert_eq!(
                    via,
                    serde_json::from_str::<serde_json::Value>(want).unwrap()
                );
                assert_eq!(Request::decode(codec, p).unwrap(), *req);
            }
        }
        // A null cursor is a fresh scan; a cursor of another type is refused.
        let r = Request::decode(Codec::Json, br#"{"t":"scan","cursor":null}"#).unwrap();
        assert_eq!(r, bare);
        assert!(Request::decode(Codec::Json, br#"{"t":"scan","cursor":5}"#).is_err());
        assert!(Request::decode(Codec::Json, br#"{"t":"scan","limit":-1}"#).is_err());
    }

    #[test]
    fn decode_errors_are_the_brokers() {
        let cases: &[(&str, &str)] = &[
            (r#"{"t":"get","id":1}"#, "missing field `key`"),
            (
                r#"{"t":"get","id":1,"key":5}"#,
                "field `key` must be a string",
            ),
            (r#"{"t":"set","id":1,"key":"k"}"#, "missing field `value`"),
            (
                r#"{"t":"set","id":1,"key":"k","value":1,"ttl":-1}"#,
                "field `ttl` must be a non-negative number of milliseconds",
            ),
            (
                r#"{"t":"set","id":1,"key":"k","value":1,"ttl":"x"}"#,
                "field `ttl` must be a number",
            ),
            (r#"{"t":"mget","id":1}"#, "missing field `keys`"),
            (
                r#"{"t":"mget","id":1,"keys":"a"}"#,
                "field `keys` must be an array",
            ),
            (
                r#"{"t":"mget","id":1,"keys":["a",2]}"#,
                "keys[1] must be a string",
            ),
            (
                r#"{"t":"mset","id":1,"entries":{}}"#,
                "field `entries` must be an array of [key, value] pairs",
            ),
            (
                r#"{"t":"mset","id":1,"entries":[["a",1],["b"]]}"#,
                "entries[1] must be a [key, value] pair with a string key",
            ),
            (
                r#"{"t":"mset","id":1,"entries":[[1,1]]}"#,
                "entries[0] must be a [key, value] pair with a string key",
            ),
            (
                r#"{"t":"mset","id":1,"entries":[["a",1,2]]}"#,
                "entries[0] must be a [key, value] pair with a string key",
            ),
            (
                r#"{"t":"incr","id":1,"key":"n","by":"1"}"#,
                "field `by` must be a number",
            ),
            (
                r#"{"t":"lock","id":1,"key":"L","wait":-5}"#,
                "field `wait` must be a non-negative number of milliseconds",
            ),
            (
                r#"{"t":"fset","id":1,"key":"L","token":1,"value":1}"#,
                "missing field `k`",
            ),
            (
                r#"{"t":"fset","id":1,"key":"L","k":"k","token":1.5,"value":1}"#,
                "field `token` must be a non-negative integer",
            ),
            (
                r#"{"t":"fset","id":1,"key":"L","k":"k","token":1}"#,
                "missing field `value`",
            ),
            (r#"{"t":"sub","id":1}"#, "missing field `channel`"),
            (
                r#"{"t":"pub","id":1,"channel":"c","acks":2}"#,
                "field `acks` must be 0, 1 or \"all\"",
            ),
            (
                r#"{"t":"pub","id":1,"channel":"c","acks":"some"}"#,
                "field `acks` must be 0, 1 or \"all\"",
            ),
            (
                r#"{"t":"reg","id":1,"name":null}"#,
                "field `name` must be a string",
            ),
            (
                r#"{"t":"call","id":1,"name":"f","timeout":-1}"#,
                "field `timeout` must be a non-negative number of milliseconds",
            ),
            (
                r#"{"t":"result","result":1}"#,
                "result without the invoke's `id`",
            ),
            (r#"{"t":"result","id":"x"}"#, "field `id` must be a number"),
        ];
        for (p, want) in cases {
            let e = Request::decode(Codec::Json, p.as_bytes()).unwrap_err();
            assert_eq!(e.message(), *want, "{p}");
            assert_eq!(e.code(), ErrorCode::Broker);
        }
        for (p, want) in [
            (
                r#"{"t":"frobnicate","id":1}"#,
                "unknown message type `frobnicate`",
            ),
            (r#"{"t":"ok","id":1}"#, "unknown message type `ok`"),
            (r#"{"t":5,"id":1}"#, "unknown message type `?`"),
        ] {
            let e = Request::decode(Codec::Json, p.as_bytes()).unwrap_err();
            assert_eq!(e.message(), want);
            assert_eq!(e.code(), ErrorCode::Unknown);
        }
        let long = format!(r#"{{"t":"{}","id":1}}"#, "x".repeat(100));
        let e = Request::decode(Codec::Json, long.as_bytes()).unwrap_err();
        assert_eq!(
            e.message(),
            format!("unknown message type `{}`", "x".repeat(64))
        );
    }

    #[test]
    fn sub_replay_and_since_are_tolerant() {
        let sub = |p: &str| match Request::decode(Codec::Json, p.as_bytes()).unwrap() {
            Request::Sub { replay, since, .. } => (replay, since),
            other => panic!("{other:?}"),
        };
        assert_eq!(sub(r#"{"t":"sub","channel":"c"}"#), (None, None));
        assert_eq!(
            sub(r#"{"t":"sub","channel":"c","replay":true}"#),
            (Some(REPLAY_ALL), None)
        );
        assert_eq!(
            sub(r#"{"t":"sub","channel":"c","replay":false}"#),
            (None, None)
        );
        assert_eq!(sub(r#"{"t":"sub","channel":"c","replay":0}"#), (None, None));
        assert_eq!(
            sub(r#"{"t":"sub","channel":"c","replay":3}"#),
            (Some(3), None)
        );
        assert_eq!(
            sub(r#"{"t":"sub","channel":"c","replay":"x","since":-1}"#),
            (None, None)
        );
        assert_eq!(
            sub(r#"{"t":"sub","channel":"c","replay":null,"since":0}"#),
            (None, Some(0))
        );
    }

    #[test]
    fn tolerant_and_defaulted_fields() {
        let r = Request::decode(
            Codec::Json,
            br#"{"t":"hello","id":1,"token":5,"pid":[1],"name":null}"#,
        );
        assert_eq!(
            r.unwrap(),
            Request::Hello {
                name: None,
                token: None,
                pid: None
            }
        );
        let r = Request::decode(Codec::Json, br#"{"t":"incr","id":1,"key":"n"}"#).unwrap();
        assert_eq!(
            r,
            Request::Incr {
                key: b("n"),
                by: Num::Int(1)
            }
        );
        let r = Request::decode(
            Codec::Json,
            br#"{"t":"pub","channel":"c","acks":null,"pid":1,"seq":-1}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Pub {
                channel: b("c"),
                payload: None,
                acks: Acks::One,
                pid: None,
                seq: None
            }
        );
        let r = Request::decode(Codec::Json, br#"{"t":"pub","channel":"c","acks":1.0}"#).unwrap();
        assert!(matches!(
            r,
            Request::Pub {
                acks: Acks::One,
                ..
            }
        ));
        let r = Request::decode(
            Codec::Json,
            br#"{"t":"call","id":1,"name":"f","args":null}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Call {
                name: b("f"),
                args: None,
                timeout_ms: None
            }
        );
        let r = Request::decode(
            Codec::Json,
            br#"{"t":"result","id":3.0,"error":null,"result":1}"#,
        )
        .unwrap();
        assert!(matches!(
            r,
            Request::Result {
                id: 3,
                error: None,
                result: Some(_)
            }
        ));
        // cas keeps an explicit null (it compares against a stored null).
        let r =
            Request::decode(Codec::Json, br#"{"t":"cas","id":1,"key":"k","prev":null}"#).unwrap();
        assert!(matches!(r, Request::Cas { prev: Some(p), next: None, .. } if p.is_nil()));
    }

    #[test]
    fn decoding_borrows_from_the_payload() {
        let p = br#"{"t":"set","id":1,"key":"plain","value":[1]}"#;
        let Request::Set { key, value, .. } = Request::decode(Codec::Json, p).unwrap() else {
            panic!()
        };
        assert!(matches!(key, Cow::Borrowed("plain")));
        assert_eq!(value.bytes, b"[1]");
        // An escape needs an owned string.
        let p = br#"{"t":"get","id":1,"key":"a\nb"}"#;
        let Request::Get { key } = Request::decode(Codec::Json, p).unwrap() else {
            panic!()
        };
        assert!(matches!(key, Cow::Owned(_)));
        assert_eq!(key, "a\nb");
        let p = br#"{"t":"mget","id":1,"keys":["x","y\u0041"]}"#;
        let Request::Mget { keys } = Request::decode(Codec::Json, p).unwrap() else {
            panic!()
        };
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.iter().collect::<Vec<_>>(), ["x", "yA"]);
        let p = br#"{"t":"mset","id":1,"entries":[["x",{"a":1}]]}"#;
        let Request::Mset { entries } = Request::decode(Codec::Json, p).unwrap() else {
            panic!()
        };
        let (k, v) = entries.iter().next().unwrap();
        assert_eq!((k.as_ref(), v.bytes), ("x", &br#"{"a":1}"#[..]));
    }

    #[test]
    fn encoding_transcodes_values_and_rejects_bad_ones() {
        let v = val(Codec::MsgPack, r#"{"a":1}"#);
        let mut out = Vec::new();
        Request::Set {
            key: b("k"),
            value: v,
            ttl_ms: None,
        }
        .encode_into(Codec::Json, Some(1), &mut out)
        .unwrap();
        assert_eq!(
            &out[4..],
            br#"{"t":"set","id":1,"key":"k","value":{"a":1}}"#
        );
        // Bytes that are not a value: nothing is appended.
        let bad = Raw::new(Codec::MsgPack, &[0xc1]);
        let mut out = vec![7];
        let r = Request::Set {
            key: b("k"),
            value: bad,
            ttl_ms: None,
        }
        .encode_into(Codec::Json, Some(1), &mut out);
        assert!(r.is_err());
        assert_eq!(out, [7]);
    }

    #[test]
    fn track_is_golden_and_round_trips() {
        let mut o = Vec::new();
        Request::Track
            .encode_into(Codec::Json, Some(5), &mut o)
            .unwrap();
        assert_eq!(&o[4..], br#"{"t":"track","id":5}"#);
        assert_eq!(
            Request::decode(Codec::Json, &o[4..]).unwrap(),
            Request::Track
        );
        o.clear();
        Request::Track
            .encode_into(Codec::MsgPack, Some(5), &mut o)
            .unwrap();
        assert_eq!(
            &o[4..],
            &[0x82, 0xa1, b't', 0xa5, b't', b'r', b'a', b'c', b'k', 0xa2, b'i', b'd', 0x05][..]
        );
        assert_eq!(
            Request::decode(Codec::MsgPack, &o[4..]).unwrap(),
            Request::Track
        );
    }
}
