//! Locks and fencing tokens (PROTOCOL.md §7).
//!
//! `locks` owns lock ownership, FIFO waiters and fencing tokens; it writes no frames:
//! it returns [`LockEvent`]s that the dispatcher turns into replies. Tokens come from
//! one broker-wide counter and are strictly increasing; per lock key the highest
//! token ever issued or accepted is kept (never lowered, kept after the lock is
//! freed) and fenced writes below it are refused.
//!
//! Invariants: a lock has at most one holder; `grants` maps each live grant's token to
//! its key; `waiting` maps each queued waiter's id to its key; a lock entry with no
//! holder and no waiters is removed.

use std::collections::VecDeque;

use ahash::RandomState;
use hashbrown::{HashMap, HashSet};

use crate::connection::ConnId;
use crate::timers::{TimerKind, Timers};

/// A fencing token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

/// The request id of a pending `lock` (raw encoded bytes in the requester's codec),
/// or `None` when the request carried no id.
pub type ReplyTo = Option<Box<[u8]>>;

struct Waiter {
    id: u64,
    conn: ConnId,
    reply_to: ReplyTo,
    ttl_ms: u64,
}

struct Holder {
    conn: ConnId,
    token: FencingToken,
}

#[derive(Default)]
struct Lock {
    holder: Option<Holder>,
    waiters: VecDeque<Waiter>,
}

/// Something the dispatcher must tell a client.
#[derive(Debug, PartialEq, Eq)]
pub enum LockEvent {
    /// A waiter got the lock: reply `{acquired:true, token}`.
    Granted {
        /// The waiting connection.
        conn: ConnId,
        /// Its request id.
        reply_to: ReplyTo,
        /// The grant's token.
        token: FencingToken,
    },
    /// A waiter's `wait` ran out: reply `{acquired:false, token:null}`.
    TimedOut {
        /// The waiting connection.
        conn: ConnId,
        /// Its request id.
        reply_to: ReplyTo,
    },
}

/// Result of a `lock` request.
#[derive(Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// Granted at once.
    Granted(FencingToken),
    /// Queued; the answer comes later as a [`LockEvent`].
    Queued,
    /// Held by someone else and `wait` was 0.
    Busy,
}

/// All locks of a broker.
pub struct LockTable {
    locks: HashMap<Box<str>, Lock, RandomState>,
    high: HashMap<Box<str>, FencingToken, RandomState>,
    grants: HashMap<u64, Box<str>, RandomState>,
    waiting: HashMap<u64, Box<str>, RandomState>,
    /// Keys each connection holds or awaits (a set: a connection with many locks
    /// does not make each lock or unlock linear).
    by_conn: HashMap<ConnId, HashSet<Box<str>, RandomState>, RandomState>,
    last_token: u64,
    next_waiter: u64,
    waiter_count: usize,
    /// Tokens below this were issued before a restart: always fenced.
    floor: u64,
    /// With persistence: tokens up to this are durably reserved.
    reserved_to: Option<u64>,
    reserve_pending: bool,
}

/// Tokens reserved per durable FENCE record.
pub const RESERVE_BLOCK: u64 = 1000;

impl Default for LockTable {
    fn default() -> Self {
        LockTable::new(0)
    }
}

impl LockTable {
    /// An empty table whose next token is `last_token + 1`.
    pub fn new(last_token: u64) -> LockTable {
        LockTable {
            locks: HashMap::default(),
            high: HashMap::default(),
            grants: HashMap::default(),
            waiting: HashMap::default(),
            by_conn: HashMap::default(),
            last_token,
            next_waiter: 0,
            waiter_count: 0,
            floor: 0,
            reserved_to: None,
            reserve_pending: false,
        }
    }

    /// Continues after a restart whose log reserved tokens up to `reserved`: every
    /// earlier token is fenced, new ones are reserved in durable blocks.
    pub fn with_reservations(reserved: u64) -> LockTable {
        let mut t = LockTable::new(reserved);
        t.floor = reserved + 1;
        t.reserved_to = Some(reserved);
        t
    }

    /// A reservation the log must make durable before the tokens it covers are sent.
    pub fn take_reservation(&mut self) -> Option<u64> {
        if std::mem::take(&mut self.reserve_pending) {
            self.reserved_to
        } else {
            None
        }
    }

    /// Number of locks held.
    pub fn held(&self) -> usize {
        self.grants.len()
    }

    /// Number of queued waiters.
    pub fn waiters(&self) -> usize {
        self.waiter_count
    }

    /// The last token issued.
    pub fn last_token(&self) -> u64 {
        self.last_token
    }

    /// Timers this table still needs (for timer-heap compaction).
    pub fn timer_alive(&self, t: TimerKind) -> bool {
        match t {
            TimerKind::LockExpiry(tok) => self.grants.contains_key(&tok),
            TimerKind::LockWait(id) => self.waiting.contains_key(&id),
            TimerKind::CallDeadline(_) => false,
        }
    }

    fn issue(
        &mut self,
        key: &str,
        conn: ConnId,
        ttl_ms: u64,
        now: u64,
        timers: &mut Timers,
    ) -> FencingToken {
        self.last_token += 1;
        if let Some(r) = self.reserved_to {
            if self.last_token > r {
                self.reserved_to = Some(self.last_token + RESERVE_BLOCK);
                self.reserve_pending = true;
            }
        }
        let token = FencingToken(self.last_token);
        let lock = self.locks.entry_ref(key).or_default();
        lock.holder = Some(Holder { conn, token });
        // Raise, never lower: a fenced write may have presented a higher token.
        let mark = self.high.entry_ref(key).or_insert(token);
        *mark = (*mark).max(token);
        self.grants.insert(token.0, key.into());
        timers.add(now.saturating_add(ttl_ms), TimerKind::LockExpiry(token.0));
        token
    }

    fn note_conn(&mut self, conn: ConnId, key: &str) {
        let v = self.by_conn.entry(conn).or_default();
        if !v.contains(key) {
            v.insert(key.into());
        }
    }

    /// A `lock` request from `conn`.
    #[allow(clippy::too_many_arguments)]
    pub fn lock(
        &mut self,
        key: &str,
        conn: ConnId,
        ttl_ms: u64,
        wait_ms: u64,
        reply_to: Option<&[u8]>,
        now: u64,
        timers: &mut Timers,
    ) -> LockOutcome {
        let free = self.locks.get(key).is_none_or(|l| l.holder.is_none());
        if free {
            let token = self.issue(key, conn, ttl_ms, now, timers);
            self.note_conn(conn, key);
            return LockOutcome::Granted(token);
        }
        if wait_ms == 0 {
            return LockOutcome::Busy;
        }
        self.next_waiter += 1;
        let id = self.next_waiter;
        let lock = self.locks.entry_ref(key).or_default();
        // Only a queued request keeps its id (an immediate answer needs no copy).
        lock.waiters.push_back(Waiter {
            id,
            conn,
            reply_to: reply_to.map(Box::from),
            ttl_ms,
        });
        self.waiter_count += 1;
        self.waiting.insert(id, key.into());
        timers.add(now.saturating_add(wait_ms), TimerKind::LockWait(id));
        self.note_conn(conn, key);
        LockOutcome::Queued
    }

    /// An `unlock` from `conn`: true if it held the lock. A next waiter may be granted.
    pub fn unlock(
        &mut self,
        key: &str,
        conn: ConnId,
        now: u64,
        timers: &mut Timers,
        events: &mut Vec<LockEvent>,
    ) -> bool {
        let held = self
            .locks
            .get(key)
            .and_then(|l| l.holder.as_ref())
            .is_some_and(|h| h.conn == conn);
        if held {
            self.release(key, now, timers, events);
            self.forget_conn_key(conn, key);
        }
        held
    }

    fn forget_conn_key(&mut self, conn: ConnId, key: &str) {
        // Keep the key listed while the connection still waits on it.
        let still_waiting = self.locks.get(key).is_some_and(|l| {
            l.waiters.iter().any(|w| w.conn == conn)
                || l.holder.as_ref().is_some_and(|h| h.conn == conn)
        });
        if still_waiting {
            return;
        }
        if let Some(v) = self.by_conn.get_mut(&conn) {
            v.remove(key);
            if v.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
    }

    /// Frees `key`'s holder and grants the next waiter, if any.
    fn release(&mut self, key: &str, now: u64, timers: &mut Timers, events: &mut Vec<LockEvent>) {
        let Some(lock) = self.locks.get_mut(key) else {
            return;
        };
        if let Some(h) = lock.holder.take() {
            self.grants.remove(&h.token.0);
        }
        let next = lock.waiters.pop_front();
        match next {
            Some(w) => {
                self.waiter_count -= 1;
                self.waiting.remove(&w.id);
                let token = self.issue(key, w.conn, w.ttl_ms, now, timers);
                events.push(LockEvent::Granted {
                    conn: w.conn,
                    reply_to: w.reply_to,
                    token,
                });
            }
            None => {
                self.locks.remove(key);
            }
        }
    }

    /// A timer of this table fired.
    pub fn on_timer(
        &mut self,
        t: TimerKind,
        now: u64,
        timers: &mut Timers,
        events: &mut Vec<LockEvent>,
    ) {
        match t {
            TimerKind::LockExpiry(tok) => {
                let Some(key) = self.grants.get(&tok).cloned() else {
                    return;
                };
                let holder = self
                    .locks
                    .get(&*key)
                    .and_then(|l| l.holder.as_ref())
                    .map(|h| h.conn);
                self.release(&key, now, timers, events);
                if let Some(c) = holder {
                    self.forget_conn_key(c, &key);
                }
            }
            TimerKind::LockWait(id) => {
                let Some(key) = self.waiting.remove(&id) else {
                    return;
                };
                let Some(lock) = self.locks.get_mut(&*key) else {
                    return;
                };
                if let Some(pos) = lock.waiters.iter().position(|w| w.id == id) {
                    let w = lock
                        .waiters
                        .remove(pos)
                        .expect("invariant: position is in range");
                    self.waiter_count -= 1;
                    events.push(LockEvent::TimedOut {
                        conn: w.conn,
                        reply_to: w.reply_to,
                    });
                    self.forget_conn_key(w.conn, &key);
                }
            }
            TimerKind::CallDeadline(_) => {}
        }
    }

    /// Releases every lock held or awaited by a closing connection.
    pub fn remove_conn(
        &mut self,
        conn: ConnId,
        now: u64,
        timers: &mut Timers,
        events: &mut Vec<LockEvent>,
    ) {
        let Some(keys) = self.by_conn.remove(&conn) else {
            return;
        };
        for key in keys.iter() {
            if let Some(lock) = self.locks.get_mut(&**key) {
                let mut gone = Vec::new();
                lock.waiters.retain(|w| {
                    let mine = w.conn == conn;
                    if mine {
                        gone.push(w.id);
                    }
                    !mine
                });
                self.waiter_count -= gone.len();
                for id in gone {
                    // Its timer then finds nothing in `waiting` and does nothing.
                    self.waiting.remove(&id);
                }
                let holds = lock.holder.as_ref().is_some_and(|h| h.conn == conn);
                if holds {
                    self.release(key, now, timers, events);
                } else if lock.holder.is_none() && lock.waiters.is_empty() {
                    self.locks.remove(&**key);
                }
            }
        }
    }

    /// Checks a fenced write's token against `key`'s high mark and, when it passes,
    /// raises the mark. Absent or lower tokens fail.
    pub fn fence(&mut self, key: &str, token: Option<FencingToken>) -> bool {
        let Some(token) = token else { return false };
        if token.0 < self.floor {
            return false;
        }
        match self.high.get_mut(key) {
            Some(mark) if token < *mark => false,
            Some(mark) => {
                *mark = token;
                true
            }
            None => {
                self.high.insert(key.into(), token);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(o: LockOutcome) -> FencingToken {
        match o {
            LockOutcome::Granted(t) => t,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn fifo_handoff_on_unlock_and_disconnect() {
        let mut t = Timers::default();
        let mut l = LockTable::default();
        let mut ev = Vec::new();
        let t1 = granted(l.lock("k", ConnId(1), 1000, 0, None, 0, &mut t));
        assert_eq!(
            l.lock("k", ConnId(2), 1000, 0, None, 0, &mut t),
            LockOutcome::Busy
        );
        assert_eq!(
            l.lock("k", ConnId(2), 1000, 500, Some(&b"7"[..]), 0, &mut t),
            LockOutcome::Queued
        );
        assert_eq!(
            l.lock("k", ConnId(3), 1000, 500, None, 0, &mut t),
            LockOutcome::Queued
        );
        assert_eq!(l.waiters(), 2);
        assert!(!l.unlock("k", ConnId(2), 10, &mut t, &mut ev));
        assert!(l.unlock("k", ConnId(1), 10, &mut t, &mut ev));
        let t2 = match ev.pop().unwrap() {
            LockEvent::Granted {
                conn: ConnId(2),
                reply_to,
                token,
            } => {
                assert_eq!(reply_to.as_deref(), Some(&b"7"[..]));
                token
            }
            e => panic!("{e:?}"),
        };
        assert!(t2 > t1);
        l.remove_conn(ConnId(2), 20, &mut t, &mut ev);
        assert!(matches!(
            ev.pop(),
            Some(LockEvent::Granted {
                conn: ConnId(3),
                ..
            })
        ));
        assert_eq!(l.waiters(), 0);
        assert_eq!(l.held(), 1);
    }

    #[test]
    fn expiry_grants_next_and_fences_the_old_holder() {
        let mut t = Timers::default();
        let mut l = LockTable::default();
        let mut ev = Vec::new();
        let t1 = granted(l.lock("k", ConnId(1), 100, 0, None, 0, &mut t));
        l.lock("k", ConnId(2), 100, 1000, None, 0, &mut t);
        while let Some(k) = t.pop_due(100) {
            l.on_timer(k, 100, &mut t, &mut ev);
        }
        let LockEvent::Granted {
            conn: ConnId(2),
            token: t2,
            ..
        } = ev.pop().unwrap()
        else {
            panic!()
        };
        assert!(!l.fence("k", Some(t1)));
        assert!(l.fence("k", Some(t2)));
        assert!(!l.fence("k", None));
        assert!(!l.unlock("k", ConnId(1), 100, &mut t, &mut ev));
    }

    #[test]
    fn reservations_after_restart() {
        let mut t = Timers::default();
        let mut l = LockTable::with_reservations(1500);
        assert!(
            !l.fence("k", Some(FencingToken(1500))),
            "a pre-restart token is fenced"
        );
        let tok = granted(l.lock("k", ConnId(1), 100, 0, None, 0, &mut t));
        assert_eq!(tok, FencingToken(1501));
        assert_eq!(l.take_reservation(), Some(1501 + RESERVE_BLOCK));
        assert_eq!(l.take_reservation(), None);
        assert!(l.fence("other", Some(tok)));
    }

    #[test]
    fn wait_times_out() {
        let mut t = Timers::default();
        let mut l = LockTable::default();
        let mut ev = Vec::new();
        granted(l.lock("k", ConnId(1), 10_000, 0, None, 0, &mut t));
        l.lock("k", ConnId(2), 100, 50, None, 0, &mut t);
        while let Some(k) = t.pop_due(60) {
            l.on_timer(k, 60, &mut t, &mut ev);
        }
        assert_eq!(
            ev,
            vec![LockEvent::TimedOut {
                conn: ConnId(2),
                reply_to: None
            }]
        );
        assert_eq!(l.waiters(), 0);
    }

    /// The model: per key, the holder (connection, expiry) and FIFO waiters
    /// (connection, wait deadline, ttl, request tag). Timers fire in deadline order;
    /// at one deadline a TTL expiry comes before a wait timeout (the heap's order).
    #[derive(Debug, Clone)]
    enum Op {
        Lock {
            key: u8,
            conn: usize,
            ttl: u64,
            wait: u64,
        },
        Unlock {
            key: u8,
            conn: usize,
        },
        Close {
            conn: usize,
        },
        Advance(u64),
    }

    #[derive(Default)]
    struct Model {
        holder: std::collections::BTreeMap<u8, (usize, u64)>,
        waiters: std::collections::BTreeMap<u8, VecDeque<(usize, u64, u64, u64)>>,
    }

    /// (granted?, conn, request tag) — tokens are checked separately.
    type Ev = (bool, usize, u64);

    impl Model {
        fn release(&mut self, key: u8, now: u64, out: &mut Vec<Ev>) {
            self.holder.remove(&key);
            if let Some(q) = self.waiters.get_mut(&key) {
                if let Some((c, _, ttl, tag)) = q.pop_front() {
                    self.holder.insert(key, (c, now.saturating_add(ttl)));
                    out.push((true, c, tag));
                }
            }
        }

        fn advance(&mut self, now: u64, out: &mut Vec<Ev>) {
            loop {
                let next_exp = self.holder.values().map(|h| h.1).min();
                let next_wait = self.waiters.values().flatten().map(|w| w.1).min();
                let d = match (next_exp, next_wait) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => match a.or(b) {
                        Some(d) => d,
                        None => return,
                    },
                };
                if d > now {
                    return;
                }
                let expired: Vec<u8> = self
                    .holder
                    .iter()
                    .filter(|(_, h)| h.1 == d)
                    .map(|(k, _)| *k)
                    .collect();
                if !expired.is_empty() {
                    for k in expired {
                        self.release(k, now, out);
                    }
                    continue;
                }
                for q in self.waiters.values_mut() {
                    q.retain(|&(c, dl, _, tag)| {
                        if dl == d {
                            out.push((false, c, tag));
                        }
                        dl != d
                    });
                }
            }
        }

        fn held(&self) -> usize {
            self.holder.len()
        }

        fn waiting(&self) -> usize {
            self.waiters.values().map(VecDeque::len).sum()
        }
    }

    fn ops() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 0usize..4, 1u64..60, prop_oneof![Just(0u64), 1u64..60])
                .prop_map(|(key, conn, ttl, wait)| Op::Lock { key, conn, ttl, wait }),
            2 => (0u8..3, 0usize..4).prop_map(|(key, conn)| Op::Unlock { key, conn }),
            1 => (0usize..4).prop_map(|conn| Op::Close { conn }),
            2 => (0u64..40).prop_map(Op::Advance),
        ]
    }

    fn events(ev: &mut Vec<LockEvent>, last: &mut u64) -> Vec<Ev> {
        let mut out = Vec::new();
        for e in ev.drain(..) {
            let (granted, conn, reply_to) = match e {
                LockEvent::Granted {
                    conn,
                    reply_to,
                    token,
                } => {
                    assert!(token.0 > *last, "tokens strictly increase");
                    *last = token.0;
                    (true, conn, reply_to)
                }
                LockEvent::TimedOut { conn, reply_to } => (false, conn, reply_to),
            };
            let tag = u64::from_be_bytes(
                reply_to
                    .as_deref()
                    .and_then(|b| b.try_into().ok())
                    .expect("every request in the model has a tag"),
            );
            out.push((granted, conn.0, tag));
        }
        out.sort();
        out
    }

    use proptest::prelude::*;

    proptest! {
        // Model test: grants, busy answers, FIFO hand-offs, TTL expiry, wait timeouts
        // and disconnects agree with a straightforward per-key model.
        #[test]
        fn matches_model(script in prop::collection::vec(ops(), 1..120)) {
            let mut t = Timers::default();
            let mut l = LockTable::default();
            let mut ev = Vec::new();
            let mut m = Model::default();
            let mut now = 0u64;
            let mut last = 0u64;
            for (tag, op) in script.into_iter().enumerate() {
                let tag = tag as u64;
                let mut want = Vec::new();
                match op {
                    Op::Lock { key, conn, ttl, wait } => {
                        let name = format!("k{key}");
                        let got = l.lock(&name, ConnId(conn), ttl, wait, Some(&tag.to_be_bytes()[..]), now, &mut t);
                        if let std::collections::btree_map::Entry::Vacant(e) = m.holder.entry(key) {
                            e.insert((conn, now.saturating_add(ttl)));
                            match got {
                                LockOutcome::Granted(tok) => {
                                    prop_assert!(tok.0 > last, "tokens strictly increase");
                                    last = tok.0;
                                }
                                other => prop_assert!(false, "expected a grant, got {:?}", other),
                            }
                        } else if wait == 0 {
                            prop_assert_eq!(got, LockOutcome::Busy);
                        } else {
                            m.waiters.entry(key).or_default().push_back((conn, now + wait, ttl, tag));
                            prop_assert_eq!(got, LockOutcome::Queued);
                        }
                    }
                    Op::Unlock { key, conn } => {
                        let got = l.unlock(&format!("k{key}"), ConnId(conn), now, &mut t, &mut ev);
                        let holds = m.holder.get(&key).is_some_and(|h| h.0 == conn);
                        prop_assert_eq!(got, holds);
                        if holds {
                            m.release(key, now, &mut want);
                        }
                    }
                    Op::Close { conn } => {
                        l.remove_conn(ConnId(conn), now, &mut t, &mut ev);
                        for q in m.waiters.values_mut() {
                            q.retain(|w| w.0 != conn);
                        }
                        let held: Vec<u8> = m.holder.iter().filter(|(_, h)| h.0 == conn).map(|(k, _)| *k).collect();
                        for k in held {
                            m.release(k, now, &mut want);
                        }
                    }
                    Op::Advance(ms) => {
                        now += ms;
                        while let Some(k) = t.pop_due(now) {
                            l.on_timer(k, now, &mut t, &mut ev);
                        }
                        m.advance(now, &mut want);
                    }
                }
                want.sort();
                prop_assert_eq!(events(&mut ev, &mut last), want);
                prop_assert_eq!(l.held(), m.held());
                prop_assert_eq!(l.waiters(), m.waiting());
            }
        }
    }
}
