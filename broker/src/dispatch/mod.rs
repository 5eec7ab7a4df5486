//! Request handling, one way: a frame's payload in, state changed, replies and other
//! frames appended to connections' output.
//!
//! `dispatch` owns the meaning of each message kind (PROTOCOL.md §5–§9), split by
//! command family, one file each (mini-redis `cmd/`, Dragonfly `*_family`):
//! [`cache`], [`locks`], [`pubsub`], [`rpc`], [`control`]. This file decides what
//! happens to every frame before its family sees it — codec detection (the one
//! place: a first frame in no known codec is answered in JSON and the connection
//! closed), decoding, authentication, op counting, admission of writes by the
//! durability gate — and turns a family's [`Fail`] into an error reply.
//!
//! It never touches sockets or the loop: the only thing it may ask of the driver is
//! an early flush of a slow subscriber, through [`Transport`]. Nothing here calls
//! back up into `core` or `io`.

mod cache;
mod control;
pub(crate) mod locks;
mod pubsub;
pub(crate) mod rpc;

use std::borrow::Cow;

use procmesh_proto::message::{
    self, need_str, need_value, opt_ms, opt_num, opt_str, opt_u64, Frame,
};
use procmesh_proto::{Codec, DecodeError, ErrorCode, Kind, Num, Raw, Writer};

use crate::connection::{Closing, ConnId, Conns, Transport};
use crate::mesh::Mesh;

/// Why a request failed: the code and message sent back.
pub(crate) struct Fail {
    code: ErrorCode,
    message: Cow<'static, str>,
}

impl Fail {
    fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
}

impl From<DecodeError> for Fail {
    fn from(e: DecodeError) -> Fail {
        Fail::new(ErrorCode::Broker, e.message().to_string())
    }
}

type Res = Result<(), Fail>;

/// Longest type tag quoted back in an EUNKNOWN message.
const TAG_QUOTE_MAX: usize = 64;

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Handles one frame payload from connection `from`.
pub(crate) fn handle<T: Transport>(
    m: &mut Mesh,
    out: &mut Conns,
    io: &mut T,
    from: ConnId,
    payload: &[u8],
) {
    let conn = &mut out[from];
    if !conn.is_codec_known() {
        match payload.first().copied().and_then(Codec::detect) {
            Some(c) => conn.set_codec(c),
            None => {
                // Without a codec there is no way to answer in kind: say why in JSON
                // and close this one connection.
                conn.set_codec(Codec::Json);
                send_err(
                    out,
                    from,
                    None,
                    ErrorCode::Broker,
                    "cannot detect the codec: the first frame must be a JSON or MessagePack map",
                );
                out[from].closing = Closing::AfterFlush;
                return;
            }
        }
    }
    let codec = conn.codec();
    let authed = conn.authed;
    let (frame, decoded) = Frame::decode_partial(codec, payload);
    let id = frame.id;
    if let Err(e) = decoded {
        m.stats.error(ErrorCode::Broker);
        if id.is_some() {
            send_err(
                out,
                from,
                id,
                ErrorCode::Broker,
                &format!("malformed frame: {}", e.message()),
            );
        }
        return;
    }
    let kind = frame.kind();
    if !authed && !matches!(kind, Kind::Hello | Kind::Ping | Kind::Pong) {
        m.stats.error(ErrorCode::Auth);
        if id.is_some() {
            send_err(
                out,
                from,
                id,
                ErrorCode::Auth,
                "not authenticated: send hello with the broker's token first",
            );
        }
        return;
    }
    m.stats.op(kind);
    if is_write(kind) {
        if let Err(msg) = m.gate.admit(from, id, || out[from].out_len()) {
            m.stats.error(ErrorCode::Broker);
            if id.is_some() {
                send_err(out, from, id, ErrorCode::Broker, &msg);
            }
            return;
        }
    }
    if let Err(f) = route(m, out, io, from, kind, &frame) {
        m.stats.error(f.code);
        if id.is_some() && kind != Kind::Result {
            send_err(out, from, id, f.code, &f.message);
        }
    }
}

/// Decodes the request of `kind` from its frame and hands it to its family.
fn route<T: Transport>(
    m: &mut Mesh,
    out: &mut Conns,
    io: &mut T,
    from: ConnId,
    kind: Kind,
    f: &Frame<'_>,
) -> Res {
    let id = f.id;
    match kind {
        Kind::Get => cache::get(m, out, from, id, &need_str(f.key, "key")?),
        Kind::Set => {
            let key = need_str(f.key, "key")?;
            let value = need_value(f.value, "value")?;
            let ttl = opt_ms(f.ttl, "ttl")?;
            cache::set(m, out, from, id, &key, value, ttl);
        }
        Kind::Del => cache::del(m, out, from, id, &need_str(f.key, "key")?),
        Kind::Has => cache::has(m, out, from, id, &need_str(f.key, "key")?),
        Kind::Keys => cache::keys(m, out, from, id),
        Kind::Clear => cache::clear(m, out, from, id),
        Kind::Mget => {
            let keys = need_value(f.keys, "keys")?;
            let items = keys
                .array()
                .ok_or_else(|| Fail::new(ErrorCode::Broker, "field `keys` must be an array"))?;
            let mut names = Vec::new();
            for (i, item) in items.enumerate() {
                names.push(item.as_str().ok_or_else(|| {
                    Fail::new(ErrorCode::Broker, format!("keys[{i}] must be a string"))
                })?);
            }
            cache::mget(m, out, from, id, names.into_iter())?;
        }
        Kind::Mset => {
            let entries = need_value(f.entries, "entries")?;
            let items = entries.array().ok_or_else(|| {
                Fail::new(
                    ErrorCode::Broker,
                    "field `entries` must be an array of [key, value] pairs",
                )
            })?;
            let mut pairs: Vec<(Cow<'_, str>, Raw<'_>)> = Vec::new();
            for (i, item) in items.enumerate() {
                let bad = || {
                    Fail::new(
                        ErrorCode::Broker,
                        format!("entries[{i}] must be a [key, value] pair with a string key"),
                    )
                };
                let mut it = item.array().ok_or_else(bad)?;
                let key = it.next().and_then(|k| k.as_str()).ok_or_else(bad)?;
                let value = it.next().ok_or_else(bad)?;
                if it.next().is_some() {
                    return Err(bad());
                }
                pairs.push((key, value));
            }
            cache::mset(m, out, from, id, pairs.into_iter());
        }
        Kind::Incr | Kind::Decr => {
            let key = need_str(f.key, "key")?;
            let by = opt_num(f.by, "by")?.unwrap_or(Num::Int(1));
            cache::incr(m, out, from, id, &key, by, kind == Kind::Decr)?;
        }
        Kind::Cas => cache::cas(m, out, from, id, &need_str(f.key, "key")?, f.prev, f.next),
        Kind::Lock => {
            let key = need_str(f.key, "key")?;
            let ttl = opt_ms(f.ttl, "ttl")?;
            let wait = opt_ms(f.wait, "wait")?;
            locks::lock(m, out, from, id, &key, ttl, wait);
        }
        Kind::Unlock => locks::unlock(m, out, from, id, &need_str(f.key, "key")?),
        Kind::Fset | Kind::Fcas | Kind::Fdel => {
            let lock_key = need_str(f.key, "key")?;
            let target = need_str(f.k, "k")?;
            let token = opt_u64(f.token, "token")?;
            let op = match kind {
                Kind::Fset => {
                    locks::Fenced::Set(need_value(f.value, "value")?, opt_ms(f.ttl, "ttl")?)
                }
                Kind::Fcas => locks::Fenced::Cas(f.prev, f.next),
                _ => locks::Fenced::Del,
            };
            locks::fenced(m, out, from, id, &lock_key, token, &target, op)?;
        }
        Kind::Sub => pubsub::sub(m, out, from, id, &need_str(f.channel, "channel")?),
        Kind::Unsub => pubsub::unsub(m, out, from, id, &need_str(f.channel, "channel")?),
        Kind::Pub => {
            let channel = need_str(f.channel, "channel")?;
            let acks = match f.acks {
                None => pubsub::Acks::One,
                Some(a) if a.is_nil() => pubsub::Acks::One,
                Some(a) => match (a.as_i64(), a.as_str()) {
                    (Some(0), _) => pubsub::Acks::None,
                    (Some(1), _) => pubsub::Acks::One,
                    (_, Some(s)) if s == "all" => pubsub::Acks::All,
                    _ => {
                        return Err(Fail::new(
                            ErrorCode::Broker,
                            "field `acks` must be 0, 1 or \"all\"",
                        ))
                    }
                },
            };
            pubsub::publish(m, out, io, from, id, &channel, f.payload, acks)?;
        }
        Kind::Reg => rpc::reg(m, out, from, id, &need_str(f.name, "name")?),
        Kind::Unreg => rpc::unreg(m, out, from, id, &need_str(f.name, "name")?),
        Kind::Call => {
            let name = need_str(f.name, "name")?;
            let args = f.args.filter(|a| !a.is_nil());
            let timeout = opt_ms(f.timeout, "timeout")?;
            rpc::call(m, out, from, id, &name, args, timeout)?;
        }
        Kind::Result => {
            let Some(call_id) = opt_u64(f.id, "id")? else {
                return Err(Fail::new(
                    ErrorCode::Broker,
                    "result without the invoke's `id`",
                ));
            };
            rpc::result(
                m,
                out,
                from,
                call_id,
                f.result,
                f.error.filter(|e| !e.is_nil()),
            );
        }
        Kind::Hello => {
            let token = opt_str(f.token, "token").ok().flatten();
            let pid = opt_str(f.pid, "pid").ok().flatten();
            control::hello(m, out, from, id, token.as_deref(), pid.as_deref());
        }
        Kind::Ping => control::ping(out, from, id),
        Kind::Pong => {}
        Kind::Stats => control::stats(m, out, from, id),
        Kind::Shutdown => control::shutdown(m, out, from, id),
        Kind::Welcome | Kind::Ok | Kind::Err | Kind::Msg | Kind::Invoke | Kind::Unknown => {
            let tag = f.t.and_then(|t| t.as_str()).unwrap_or(Cow::Borrowed("?"));
            return Err(Fail::new(
                ErrorCode::Unknown,
                format!("unknown message type `{}`", clip(&tag, TAG_QUOTE_MAX)),
            ));
        }
        _ => return Err(Fail::new(ErrorCode::Unknown, "unknown message type")),
    }
    Ok(())
}

/// Kinds whose effects are logged (or, for `lock`, may reserve fencing tokens): the
/// durability gate admits them.
fn is_write(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Set
            | Kind::Del
            | Kind::Clear
            | Kind::Mset
            | Kind::Incr
            | Kind::Decr
            | Kind::Cas
            | Kind::Fset
            | Kind::Fcas
            | Kind::Fdel
            | Kind::Lock
    )
}

// ------------------------------------------------------------ reply shapes
// Every reply goes through `Conns::send`; these only name the common shapes.

/// `ok` with a boolean value (nothing when the request had no id).
#[inline]
fn ok_bool(out: &mut Conns, to: ConnId, id: Option<Raw<'_>>, v: bool) {
    let Some(id) = id else { return };
    out.send(to, |codec, buf| message::ok_bool(codec, buf, id, v));
}

/// `ok` with a value written by `f` (nothing when the request had no id).
#[inline]
fn ok_with(out: &mut Conns, to: ConnId, id: Option<Raw<'_>>, f: impl FnOnce(&mut Writer<'_>)) {
    let Some(id) = id else { return };
    out.send(to, |codec, buf| {
        let mut fw = message::begin_ok(codec, buf, id, true);
        f(fw.w());
        fw.finish();
    });
}

/// An `err` reply.
pub(crate) fn send_err(
    out: &mut Conns,
    to: ConnId,
    id: Option<Raw<'_>>,
    code: ErrorCode,
    msg: &str,
) {
    out.send(to, |codec, buf| message::err(codec, buf, id, code, msg));
}

/// `ok` with a stored value (or no value when absent), never leaving a partial frame.
/// `what` names the value in the error sent when it cannot be converted.
fn write_ok_value(codec: Codec, out: &mut Vec<u8>, id: Raw<'_>, v: Option<Raw<'_>>, what: &str) {
    match v {
        Some(v) => {
            let start = out.len();
            let mut fw = message::begin_ok(codec, out, id, true);
            let r = fw.w().raw(v);
            fw.finish();
            if r.is_err() {
                out.truncate(start);
                message::err(
                    codec,
                    out,
                    Some(id),
                    ErrorCode::Broker,
                    &format!("{what} could not be converted to this connection's codec"),
                );
            }
        }
        None => message::ok_empty(codec, out, id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("ééé", 3), "é");
        assert_eq!(clip("abc", 10), "abc");
    }
}
