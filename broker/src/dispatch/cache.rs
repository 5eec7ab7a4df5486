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

/// Keys in a `scan` page when the request names no `limit`.
pub(crate) const SCAN_DEFAULT_LIMIT: usize = 1000;
/// Most keys in one `scan` page: a larger `limit` is capped to it.
pub(crate) const SCAN_MAX_LIMIT: usize = 10_000;
/// Slots a page may visit per key asked for (Redis visits 10 × COUNT buckets): a
/// narrow prefix gets short or empty pages with a cursor, never a long turn.
const SCAN_VISIT_FACTOR: usize = 10;
/// Key bytes after which a page ends early (also never past the reply budget).
const SCAN_PAGE_BYTES: usize = 1 << 20;
/// Slots visited per store call; the page checks its bounds between calls.
const SCAN_CHUNK: usize = 256;
/// Longest cursor quoted back in an error.
const CURSOR_QUOTE_MAX: usize = 40;

/// `scan` (ours): one page of the live keys starting with `prefix`, from `cursor`.
///
/// The cursor is the store slot to resume at (opaque to clients). A key keeps its
/// slot for as long as it lives (the store never moves entries; only `clear`
/// frees them all), so every key present for the whole scan is returned (exactly
/// once); a key written or deleted meanwhile may or may not be, and one deleted and
/// written again may come twice. (A turn rolled back after a failed log write puts
/// the keys it deleted back, possibly in other slots: a scan running then may miss
/// them.) A page holds at most `limit` keys
/// ([`SCAN_MAX_LIMIT`] at most) and ends early after visiting `10 × limit` slots or
/// [`SCAN_PAGE_BYTES`] of keys, so it may be short, even empty, with a cursor:
/// only `cursor: null` means done.
pub(super) fn scan(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    prefix: Option<&str>,
    limit: Option<u64>,
    cursor: Option<&str>,
) -> Res {
    let Some(id) = id else { return Ok(()) };
    let limit = match limit {
        None => SCAN_DEFAULT_LIMIT,
        Some(0) => {
            return Err(Fail::new(
                ErrorCode::Broker,
                "scan `limit` must be at least 1",
            ))
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(SCAN_MAX_LIMIT),
    };
    let start = match cursor {
        None => 0,
        Some(c) => c.parse::<usize>().map_err(|_| {
            Fail::new(
                ErrorCode::Broker,
                format!(
                    "scan cursor `{}` is not one this broker returned (pass the last \
                     reply's `cursor`, or none to start)",
                    clip(c, CURSOR_QUOTE_MAX)
                ),
            )
        })?,
    };
    let prefix = prefix.unwrap_or("");
    let budget = out.reply_budget();
    let page_bytes = budget.min(SCAN_PAGE_BYTES);
    let max_visit = limit.saturating_mul(SCAN_VISIT_FACTOR);
    // The page's keys, back to back, and where each ends (two allocations a page).
    let mut names = String::new();
    let mut ends: Vec<usize> = Vec::new();
    let mut visited = 0;
    let mut chunk_max = SCAN_CHUNK;
    let mut next = Some(start);
    while let Some(at) = next {
        if ends.len() >= limit || visited >= max_visit {
            break;
        }
        let chunk = (limit - ends.len()).min(chunk_max).min(max_visit - visited);
        let before = (names.len(), ends.len());
        let after = m.store.visit_slots(at, chunk, m.now, |k, _, _| {
            if k.starts_with(prefix) {
                names.push_str(k);
                ends.push(names.len());
            }
        });
        visited += chunk;
        if names.len() <= page_bytes {
            next = after;
            continue;
        }
        // Past the page's bytes: the cursor can only resume at a chunk's start, so
        // take the chunk back and retry it in smaller chunks, down to one slot; a
        // single key past the bound ends the page before it (or, alone, is the page).
        let added = ends.len() - before.1;
        if added > 1 || (added == 1 && before.1 > 0) {
            names.truncate(before.0);
            ends.truncate(before.1);
            if added == 1 {
                break;
            }
            chunk_max = (chunk / 2).max(1);
            continue;
        }
        next = after;
        break;
    }
    // At least its bytes plus two quotes each (escapes only add).
    let least = names.len() + 2 * ends.len();
    if least > budget {
        too_big(out, from, id, "scan", least, budget);
        return Ok(());
    }
    let cursor = next.map(|n| n.to_string());
    out.send_reply(from, id, |codec, buf| {
        response::ok_with(codec, Some(id), buf, |w| {
            w.begin_map(2);
            w.key("keys");
            w.begin_array(ends.len());
            let mut s = 0;
            for &e in &ends {
                w.str(&names[s..e]);
                s = e;
            }
            w.end_array();
            w.key("cursor");
            match &cursor {
                Some(c) => w.str(c),
                None => w.nil(),
            }
            w.end_map();
        })
    });
    Ok(())
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
