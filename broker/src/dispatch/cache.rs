//! The cache family (PROTOCOL.md §6): `get set del has keys clear mget mset incr decr
//! cas`, applied to the store and answered on the requester's connection.
//!
//! Owns no state; the store owns entries, TTLs and LRU order.

use std::borrow::Cow;

use procmesh_proto::response::{self, MgetReply};
use procmesh_proto::{ErrorCode, Num, Raw, Reply};

use super::{clip, reply, write_ok_value, Fail, Res};
use crate::connection::{least_reply_len, ConnId, Conns};
use crate::mesh::Mesh;
use crate::store::AtomicError;

/// `get`: the value, or an `ok` without one when the key is missing.
#[inline]
pub(super) fn get(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>, key: &str) {
    let Some(id) = id else { return };
    m.store.effects_mut().track.note_read(from, key);
    let v = m.store.get(key, m.now);
    // The room is checked before the copy (a large value for a connection near its
    // hard limit is refused without building its reply), and again after.
    let least = v.map_or(0, |v| least_reply_len(v, out[from].codec()));
    out.send_value_reply(from, id, least, |codec, buf| {
        write_ok_value(codec, buf, id, v, "the stored value")
    });
}

/// `set`.
#[inline]
pub(super) fn set(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    key: &str,
    value: Raw<'_>,
    ttl_ms: Option<u64>,
) {
    m.store.set(key, value, ttl_ms, m.now);
    reply(out, from, id, Reply::Bool(true));
}

/// `del`: whether a live value was removed.
pub(super) fn del(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>, key: &str) {
    let existed = m.store.del(key, m.now);
    reply(out, from, id, Reply::Bool(existed));
}

/// `has`.
pub(super) fn has(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>, key: &str) {
    m.store.effects_mut().track.note_read(from, key);
    let has = m.store.has(key, m.now);
    reply(out, from, id, Reply::Bool(has));
}

/// `track` (ours): the keys this connection reads from now on are tracked, and an
/// `inv` push follows when one changes (`tracking`).
pub(super) fn track(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>) {
    m.store.effects_mut().track.enable(from);
    reply(out, from, id, Reply::Bool(true));
}

/// `keys`: every live key.
pub(super) fn keys(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>) {
    let Some(id) = id else { return };
    let keys = m.store.keys(m.now);
    // The reply budget, checked before building: a key list is at least its bytes
    // plus two quotes each (JSON escapes only add; the final check catches them).
    let least: usize = keys.iter().map(|k| k.len() + 2).sum();
    let budget = out.reply_room(from);
    if least > budget {
        return too_big(out, from, id, "keys", least, budget);
    }
    out.send_reply(from, id, |codec, buf| {
        response::keys(codec, Some(id), keys.into_iter(), buf)
    });
}

/// `clear`.
pub(super) fn clear(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>) {
    m.store.clear();
    reply(out, from, id, Reply::Bool(true));
}

/// `mget`: `{values, found}` in request order; never leaves a partial frame.
pub(super) fn mget<'k, I>(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    names: I,
) -> Res
where
    I: ExactSizeIterator<Item = Cow<'k, str>>,
{
    let Some(id) = id else { return Ok(()) };
    let now = m.now;
    let store = &mut m.store;
    let budget = out.reply_room(from);
    let over = out.send_reply(from, id, |codec, buf| {
        let mut r = MgetReply::begin(codec, Some(id), names.len(), buf);
        for name in names {
            // A value that cannot be converted removes the whole reply.
            r.push(store.get(&name, now))?;
            // The reply budget, checked while building: the transient never grows
            // past the budget by more than one value.
            if r.written() > budget {
                let n = r.written();
                r.abort();
                return Ok::<_, procmesh_proto::DecodeError>(Some(n));
            }
        }
        r.finish();
        Ok(None)
    })?;
    if let Some(n) = over {
        too_big(out, from, id, "mget", n, budget);
    }
    Ok(())
}

/// Answers `ETOOBIG` to a request whose reply would pass the reply budget (it
/// reached `n` bytes, or would have), before or instead of building it.
#[cold]
fn too_big(out: &mut Conns, from: ConnId, id: Raw<'_>, what: &str, n: usize, budget: usize) {
    out.too_big += 1;
    super::send_err(
        out,
        from,
        Some(id),
        ErrorCode::TooBig,
        &format!(
            "the {what} reply (over {n} bytes) exceeds the reply limit ({budget} bytes, \
             sendHardLimit): ask for less at a time"
        ),
    );
}

/// `mset`: every pair, then one `ok`.
pub(super) fn mset<'e, I>(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    pairs: I,
) where
    I: Iterator<Item = (Cow<'e, str>, Raw<'e>)>,
{
    for (key, value) in pairs {
        m.store.set(&key, value, None, m.now);
    }
    reply(out, from, id, Reply::Bool(true));
}

/// `incr` (and `decr`, with `by` negated by the caller): the new number.
pub(super) fn incr(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    key: &str,
    by: Num,
) -> Res {
    match m.store.incr(key, by, m.now) {
        Ok(n) => {
            reply(out, from, id, Reply::Num(n));
            Ok(())
        }
        Err(AtomicError::NotNumber) => Err(Fail::new(
            ErrorCode::NotNumber,
            format!("value at key `{}` is not a number", clip(key, 200)),
        )),
        Err(AtomicError::NotFinite) => Err(Fail::new(
            ErrorCode::Broker,
            format!(
                "incr of key `{}` would overflow to infinity: nothing was stored",
                clip(key, 200)
            ),
        )),
    }
}

/// `cas`: whether the swap happened.
pub(super) fn cas(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    key: &str,
    prev: Option<Raw<'_>>,
    next: Option<Raw<'_>>,
) {
    let swapped = m.store.cas(key, prev, next, m.now);
    reply(out, from, id, Reply::Bool(swapped));
}
