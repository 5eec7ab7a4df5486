//! The locks family (PROTOCOL.md §7): `lock unlock fset fcas fdel`, and the delivery
//! of lock events (grants to waiters, wait timeouts) as `lock` replies.
//!
//! Owns no state; the lock table owns holders, waiters and fencing tokens and
//! returns events, which only this file turns into frames.

use procmesh_proto::{ErrorCode, Raw, Reply};

use super::{clip, reply, Fail, Res};
use crate::connection::{ConnId, Conns};
use crate::locks::{FencingToken, LockEvent, LockOutcome};
use crate::mesh::Mesh;

/// Default lock TTL when a request has none.
const LOCK_TTL_MS: u64 = 30_000;

/// `lock`: granted or busy now, or queued (answered later by [`deliver_events`]).
pub(super) fn lock(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    key: &str,
    ttl_ms: Option<u64>,
    wait_ms: Option<u64>,
) -> Res {
    let ttl = ttl_ms.filter(|t| *t > 0).unwrap_or(LOCK_TTL_MS);
    let wait = wait_ms.unwrap_or(0);
    let cap = m.cfg.limits.max_lock_waiters;
    if wait > 0 && m.locks.waiters_of(from) as usize >= cap {
        return Err(Fail::new(
            ErrorCode::Broker,
            format!("too many lock requests waiting (maxLockWaiters {cap} per connection)"),
        ));
    }
    let reply_to = id.map(|id| id.bytes);
    match m
        .locks
        .lock(key, from, ttl, wait, reply_to, m.now, &mut m.timers)
    {
        LockOutcome::Granted(token) => lock_reply(out, from, id, Some(token)),
        LockOutcome::Busy => lock_reply(out, from, id, None),
        LockOutcome::Queued => {}
    }
    Ok(())
}

/// `unlock`: whether `from` held it; a next waiter may be granted.
pub(super) fn unlock(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>, key: &str) {
    let mut events = std::mem::take(&mut m.lock_events);
    let held = m.locks.unlock(key, from, m.now, &mut m.timers, &mut events);
    reply(out, from, id, Reply::Bool(held));
    deliver_events(out, &mut events);
    m.lock_events = events;
}

/// What a fenced write does once its token passed the fence.
pub(super) enum Fenced<'a> {
    /// `fset`.
    Set(Raw<'a>, Option<u64>),
    /// `fcas`.
    Cas(Option<Raw<'a>>, Option<Raw<'a>>),
    /// `fdel`.
    Del,
}

/// `fset`/`fcas`/`fdel`: the write on key `target`, if `token` is not stale for lock
/// `lock_key`. The whole request was validated before the check raises the mark.
#[allow(clippy::too_many_arguments)]
pub(super) fn fenced(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    lock_key: &str,
    token: Option<u64>,
    target: &str,
    op: Fenced<'_>,
) -> Res {
    if !m.locks.fence(lock_key, token.map(FencingToken)) {
        return Err(Fail::new(
            ErrorCode::Fenced,
            format!(
                "stale fencing token for lock `{}`: a newer holder has written or holds it",
                clip(lock_key, 200)
            ),
        ));
    }
    let now = m.now;
    let result = match op {
        Fenced::Set(value, ttl) => {
            m.store.set(target, value, ttl, now);
            true
        }
        Fenced::Cas(prev, next) => m.store.cas(target, prev, next, now),
        Fenced::Del => m.store.del(target, now),
    };
    reply(out, from, id, Reply::Bool(result));
    Ok(())
}

/// `{acquired, token}`.
fn lock_reply(out: &mut Conns, to: ConnId, id: Option<Raw<'_>>, token: Option<FencingToken>) {
    reply(
        out,
        to,
        id,
        Reply::Lock {
            token: token.map(|t| t.0),
        },
    );
}

/// Answers waiters whose lock was granted or whose wait ran out (drains `events`).
pub(crate) fn deliver_events(out: &mut Conns, events: &mut Vec<LockEvent>) {
    for ev in events.drain(..) {
        let (conn, reply_to, token) = match ev {
            LockEvent::Granted {
                conn,
                reply_to,
                token,
            } => (conn, reply_to, Some(token)),
            LockEvent::TimedOut { conn, reply_to } => (conn, reply_to, None),
        };
        let Some(c) = out.get(conn) else {
            continue;
        };
        let id = reply_to.as_deref().map(|b| Raw::new(c.codec(), b));
        lock_reply(out, conn, id, token);
    }
}
