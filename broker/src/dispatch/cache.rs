//! The cache family (PROTOCOL.md §6): `get set del has keys clear mget mset incr decr
//! cas`, applied to the store and answered on the requester's connection.
//!
//! Owns no state; the store owns entries, TTLs and LRU order.

use std::borrow::Cow;

use procmesh_proto::message;
use procmesh_proto::{ErrorCode, Num, Raw};

use super::{clip, ok_bool, write_ok_value, Fail, Res};
use crate::connection::{ConnId, Conns};
use crate::mesh::Mesh;
use crate::store::{neg, write_num, AtomicError};

/// `get`: the value, or an `ok` without one when the key is missing.
#[inline]
pub(super) fn get(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>, key: &str) {
    let Some(id) = id else { return };
    let v = m.store.get(key, m.now);
    out.send(from, |codec, buf| {
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
    ok_bool(out, from, id, true);
}

/// `del`: whether a live value was removed.
pub(super) fn del(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>, key: &str) {
    let existed = m.store.del(key, m.now);
    ok_bool(out, from, id, existed);
}

/// `has`.
pub(super) fn has(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>, key: &str) {
    let has = m.store.has(key, m.now);
    ok_bool(out, from, id, has);
}

/// `keys`: every live key.
pub(super) fn keys(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>) {
    let Some(id) = id else { return };
    let keys = m.store.keys(m.now);
    out.send(from, |codec, buf| {
        let mut fw = message::begin_ok(codec, buf, id, true);
        fw.w().begin_array(keys.len());
        for key in keys {
            fw.w().str(key);
        }
        fw.w().end_array();
        fw.finish();
    });
}

/// `clear`.
pub(super) fn clear(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>) {
    m.store.clear();
    ok_bool(out, from, id, true);
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
    let failed = out.send(from, |codec, buf| {
        let mut found = Vec::with_capacity(names.len());
        let start = buf.len();
        let mut fw = message::begin_ok(codec, buf, id, true);
        let w = fw.w();
        w.begin_map(2);
        w.key("values");
        w.begin_array(names.len());
        let mut failed = None;
        for name in names {
            match store.get(&name, now) {
                Some(v) => {
                    found.push(true);
                    if let Err(e) = w.raw(v) {
                        failed = Some(e);
                        break;
                    }
                }
                None => {
                    found.push(false);
                    w.nil();
                }
            }
        }
        w.end_array();
        w.key("found");
        w.begin_array(found.len());
        for b in &found {
            w.bool(*b);
        }
        w.end_array();
        w.end_map();
        fw.finish();
        if failed.is_some() {
            buf.truncate(start);
        }
        failed
    });
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
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
    ok_bool(out, from, id, true);
}

/// `incr` (and `decr`, with `by` negated by the caller): the new number.
pub(super) fn incr(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    key: &str,
    by: Num,
    decr: bool,
) -> Res {
    let by = if decr { neg(by) } else { by };
    match m.store.incr(key, by, m.now) {
        Ok(n) => {
            super::ok_with(out, from, id, |w| write_num(w, n));
            Ok(())
        }
        Err(AtomicError::NotNumber) => Err(Fail::new(
            ErrorCode::NotNumber,
            format!("value at key `{}` is not a number", clip(key, 200)),
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
    ok_bool(out, from, id, swapped);
}
