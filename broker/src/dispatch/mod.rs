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
pub(crate) mod control;
pub(crate) mod locks;
mod pubsub;
pub(crate) mod rpc;

use std::borrow::Cow;

use procmesh_proto::message::Frame;
use procmesh_proto::request::clip;
use procmesh_proto::response::{self, Reply};
use procmesh_proto::{Codec, DecodeError, ErrorCode, Kind, Raw, Request};

use crate::connection::{Closing, ConnId, Conns, Transport};
use crate::mesh::Mesh;
use locks::Fenced;

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
        Fail::new(e.code(), e.message().to_string())
    }
}

type Res = Result<(), Fail>;

/// Handles one frame payload from connection `from`.
pub(crate) fn handle<T: Transport>(
    m: &mut Mesh,
    out: &mut Conns,
    io: &mut T,
    from: ConnId,
    payload: &[u8],
) {
    let conn = &mut out[from];
    let first = !conn.is_codec_known();
    if first {
        match Codec::detect_payload(payload) {
            Some(d) => conn.set_dialect(d),
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
    let conn = &out[from];
    if conn.dialect().records {
        // msgpackr → plain MessagePack, into the loop's one scratch buffer (bounded by
        // the frame limit), so the families only ever see plain values.
        let mut plain = std::mem::take(&mut m.mpr_plain);
        plain.clear();
        let max = m.cfg.max_frame;
        match m.mpr_in.normalize_into(payload, max, &mut plain) {
            Ok(()) => handle_plain(m, out, io, from, &plain, first),
            Err(e) => {
                m.stats.error(ErrorCode::Broker);
                // The id is unknown before normalising: a leading record of an
                // envelope gives it away only when the frame is readable.
                send_err(
                    out,
                    from,
                    None,
                    ErrorCode::Broker,
                    &format!("malformed msgpackr frame: {}", e.message()),
                );
            }
        }
        if plain.capacity() > 4 * crate::connection::BUF_TARGET {
            plain = Vec::new();
        }
        m.mpr_plain = plain;
        return;
    }
    handle_plain(m, out, io, from, payload, first);
}

/// Handles one frame in the connection's codec (plain MessagePack for msgpackr peers).
/// `first`: it fixed the codec.
fn handle_plain<T: Transport>(
    m: &mut Mesh,
    out: &mut Conns,
    io: &mut T,
    from: ConnId,
    payload: &[u8],
    first: bool,
) {
    let conn = &out[from];
    let codec = conn.codec();
    let authed = conn.authed;
    // Decoded in place: a `Frame` moved out of a return costs a 700-byte memcpy.
    let mut frame = Frame::default();
    let decoded = frame.decode_in_place(codec, payload);
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
    if m.gate.is_active() && is_write(kind) {
        if let Err(msg) = m.gate.admit(from, id, || out[from].out_len()) {
            m.stats.error(ErrorCode::Broker);
            if id.is_some() {
                send_err(out, from, id, ErrorCode::Broker, &msg);
            }
            return;
        }
    } else if m.gate.is_active() {
        // It may read what this turn wrote: retracted with the writes if they fail.
        m.gate.observe(from, || out[from].out_len());
    }
    if let Err(f) = route(m, out, io, from, kind, &frame) {
        m.stats.error(f.code);
        if id.is_some() && kind != Kind::Result {
            send_err(out, from, id, f.code, &f.message);
        }
    }
    // A JSON hello as the first frame was answered with our codec list: the client
    // may write its next frame in another codec (PROTOCOL §3, ours).
    let c = &mut out[from];
    if first && kind == Kind::Hello && codec == Codec::Json && c.closing == Closing::No {
        c.redetect_codec();
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
    match Request::from_frame(kind, f)? {
        Request::Get { key } => cache::get(m, out, from, id, &key),
        Request::Track => cache::track(m, out, from, id),
        Request::Set { key, value, ttl_ms } => cache::set(m, out, from, id, &key, value, ttl_ms),
        Request::Del { key } => cache::del(m, out, from, id, &key),
        Request::Has { key } => cache::has(m, out, from, id, &key),
        Request::Keys => cache::keys(m, out, from, id),
        Request::Scan {
            prefix,
            limit,
            cursor,
        } => cache::scan(
            m,
            out,
            from,
            id,
            prefix.as_deref(),
            limit,
            cursor.as_deref(),
        )?,
        Request::Clear => cache::clear(m, out, from, id),
        Request::Mget { keys } => {
            let track = &mut m.store.effects_mut().track;
            if track.is_tracking(from) {
                for k in keys.iter() {
                    track.note_read(from, &k);
                }
            }
            cache::mget(m, out, from, id, keys.iter())?
        }
        Request::Mset { entries } => cache::mset(m, out, from, id, entries.iter()),
        Request::Incr { key, by } => cache::incr(m, out, from, id, &key, by)?,
        Request::Decr { key, by } => cache::incr(m, out, from, id, &key, -by)?,
        Request::Cas { key, prev, next } => cache::cas(m, out, from, id, &key, prev, next),
        Request::Lock {
            key,
            ttl_ms,
            wait_ms,
        } => locks::lock(m, out, from, id, &key, ttl_ms, wait_ms)?,
        Request::Unlock { key } => locks::unlock(m, out, from, id, &key),
        Request::Fset {
            key,
            token,
            k,
            value,
            ttl_ms,
        } => locks::fenced(
            m,
            out,
            from,
            id,
            &key,
            token,
            &k,
            Fenced::Set(value, ttl_ms),
        )?,
        Request::Fcas {
            key,
            token,
            k,
            prev,
            next,
        } => locks::fenced(m, out, from, id, &key, token, &k, Fenced::Cas(prev, next))?,
        Request::Fdel { key, token, k } => {
            locks::fenced(m, out, from, id, &key, token, &k, Fenced::Del)?
        }
        Request::Sub {
            channel,
            replay,
            since,
        } => pubsub::sub(m, out, from, id, &channel, replay, since)?,
        Request::Unsub { channel } => pubsub::unsub(m, out, from, id, &channel),
        Request::Pub {
            channel,
            payload,
            acks,
            pid,
            seq,
        } => {
            let idem = pid.as_deref().zip(seq);
            pubsub::publish(m, out, io, from, id, &channel, payload, acks, idem)?
        }
        Request::Reg { name } => rpc::reg(m, out, from, id, &name)?,
        Request::Unreg { name } => rpc::unreg(m, out, from, id, &name),
        Request::Call {
            name,
            args,
            timeout_ms,
        } => rpc::call(m, out, from, id, &name, args, timeout_ms)?,
        Request::Result { id, result, error } => rpc::result(m, out, from, id, result, error),
        Request::Hello { token, pid, .. } => {
            control::hello(m, out, from, id, token.as_deref(), pid.as_deref())
        }
        Request::Ping => control::ping(out, from, id),
        Request::Pong => {}
        Request::Stats => control::stats(m, out, from, id),
        Request::Shutdown => control::shutdown(m, out, from, id),
        // `Request` is non-exhaustive: a kind proto learns before we do.
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

// ------------------------------------------------------------ replies
// Every reply goes through `Conns::send` with a proto builder; these only skip the
// reply when the request had no id.

/// A reply of a known shape (nothing when the request had no id).
#[inline]
fn reply(out: &mut Conns, to: ConnId, id: Option<Raw<'_>>, r: Reply<'_>) {
    let Some(id) = id else { return };
    out.send_reply(to, id, |codec, buf| r.encode_into(codec, Some(id), buf));
}

/// An `err` reply (with the request's id when it had one).
pub(crate) fn send_err(
    out: &mut Conns,
    to: ConnId,
    id: Option<Raw<'_>>,
    code: ErrorCode,
    msg: &str,
) {
    out.send(to, |codec, buf| {
        Reply::Err { code, message: msg }.encode_into(codec, id, buf)
    });
}

/// `ok` with a stored value (or no value when absent), never leaving a partial frame.
/// `what` names the value in the error sent when it cannot be converted.
fn write_ok_value(codec: Codec, out: &mut Vec<u8>, id: Raw<'_>, v: Option<Raw<'_>>, what: &str) {
    match v {
        Some(v) => {
            if response::ok_value(codec, Some(id), v, out).is_err() {
                Reply::Err {
                    code: ErrorCode::Broker,
                    message: &format!("{what} could not be converted to this connection's codec"),
                }
                .encode_into(codec, Some(id), out);
            }
        }
        None => Reply::Ok.encode_into(codec, Some(id), out),
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
