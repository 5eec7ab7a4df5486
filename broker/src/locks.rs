//! Locks and fencing tokens (PROTOCOL.md §7).
//!
//! `locks` owns lock ownership, FIFO waiters and fencing tokens; it writes no frames:
//! it returns [`LockEvent`]s that the dispatcher turns into replies. Tokens come from
//! one broker-wide counter and are strictly increasing; per lock key the highest
//! token ever issued or accepted is kept (never lowered, kept after the lock is
//! freed) and fenced writes below it are refused.
//!
//! Bound: the marks of keys without a live lock are forgotten when there are more
//! than [`MAX_FENCE_MARKS`] marks (all of them at once, amortized O(1) per mark), and
//! the highest forgotten mark becomes a floor for every key without a mark: a token at
//! or below a forgotten mark can then never pass where the mark would have refused it
//! (an old holder stays fenced); the price is that a holder whose lock ran out may be
//! refused even when nobody took the lock after it. Keys with a live lock keep theirs.
//!
//! Invariants: a lock has at most one holder; `grants` maps each live grant's token to
//! its key; `waiting` maps each queued waiter's id to its slot in `nodes`; a lock's
//! waiters are a doubly linked list through `nodes` (head = next to be served), so a
//! wait that runs out is unlinked in O(1); `by_conn` counts, per connection and key,
//! the holds and waits it has there; a lock entry with no holder and no waiters is
//! removed.

use ahash::RandomState;
use hashbrown::HashMap;

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

/// No slot.
const NIL: usize = usize::MAX;

/// A queued waiter in the slab, linked into its lock's FIFO.
struct Node {
    waiter: Option<Waiter>,
    key: Box<str>,
    prev: usize,
    next: usize,
}

struct Lock {
    holder: Option<Holder>,
    head: usize,
    tail: usize,
}

impl Default for Lock {
    fn default() -> Self {
        Lock {
            holder: None,
            head: NIL,
            tail: NIL,
        }
    }
}

impl Lock {
    fn has_waiters(&self) -> bool {
        self.head != NIL
    }
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
    waiting: HashMap<u64, usize, RandomState>,
    /// Waiter slab (bounded by the most waiters queued at once; slots are reused).
    nodes: Vec<Node>,
    free: Vec<usize>,
    /// Keys each connection holds or awaits, with how many holds + waits it has on
    /// each (a map: a connection with many locks does not make each lock or unlock
    /// linear, and forgetting one wait needs no scan of the queue).
    by_conn: HashMap<ConnId, HashMap<Box<str>, u32, RandomState>, RandomState>,
    last_token: u64,
    next_waiter: u64,
    waiter_count: usize,
    /// Queued waiters per connection (bounded by `maxLockWaiters` in dispatch).
    waiters_by_conn: HashMap<ConnId, u32, RandomState>,
    /// Tokens below this were issued before a restart: always fenced.
    floor: u64,
    /// With persistence: tokens up to this are durably reserved.
    reserved_to: Option<u64>,
    reserve_pending: bool,
    /// The highest mark forgotten: a key without a mark refuses tokens below it.
    forgotten: u64,
    /// Marks kept without a sweep (see [`MAX_FENCE_MARKS`]).
    mark_cap: usize,
    /// The mark count that triggers the next sweep (at least `mark_cap`).
    sweep_at: usize,
}

/// Fence marks kept before the marks of keys without a live lock are forgotten (see
/// the module docs: forgetting is safe, so this needs no knob).
pub const MAX_FENCE_MARKS: usize = 65_536;

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
            nodes: Vec::new(),
            free: Vec::new(),
            by_conn: HashMap::default(),
            last_token,
            next_waiter: 0,
            waiter_count: 0,
            waiters_by_conn: HashMap::default(),
            floor: 0,
            reserved_to: None,
            reserve_pending: false,
            forgotten: 0,
            mark_cap: MAX_FENCE_MARKS,
            sweep_at: MAX_FENCE_MARKS,
        }
    }

    /// Sets how many fence marks are kept before idle ones are forgotten (tests).
    pub fn set_fence_mark_cap(&mut self, cap: usize) {
        self.mark_cap = cap;
        self.sweep_at = cap;
    }

    /// Fence marks kept (bounded: see [`MAX_FENCE_MARKS`]).
    pub fn fence_marks(&self) -> usize {
        self.high.len()
    }

    /// After a mark was added: past the sweep point, forgets every mark of a key
    /// without a live lock, raising the floor of unmarked keys to the highest.
    #[inline]
    fn marks_grew(&mut self) {
        if self.high.len() > self.sweep_at {
            self.forget_idle_marks();
        }
    }

    #[cold]
    #[inline(never)]
    fn forget_idle_marks(&mut self) {
        let (locks, mut forgotten) = (&self.locks, self.forgotten);
        self.high.retain(|k, m| {
            let keep = locks.contains_key(k);
            if !keep {
                forgotten = forgotten.max(m.0);
            }
            keep
        });
        self.forgotten = forgotten;
        // The next sweep only after as many marks again: amortized O(1) per mark.
        self.sweep_at = self.mark_cap.max(2 * self.high.len());
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

    /// The log could not make the last taken reservation durable: ask again next
    /// turn (tokens under it must not be trusted across a crash until it is).
    pub fn reservation_failed(&mut self) {
        self.reserve_pending = true;
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
        let before = self.high.len();
        let mark = self.high.entry_ref(key).or_insert(token);
        *mark = (*mark).max(token);
        if self.high.len() > before {
            self.marks_grew();
        }
        self.grants.insert(token.0, key.into());
        timers.add(now.saturating_add(ttl_ms), TimerKind::LockExpiry(token.0));
        token
    }

    fn note_conn(&mut self, conn: ConnId, key: &str) {
        let v = self.by_conn.entry(conn).or_default();
        *v.entry_ref(key).or_insert(0) += 1;
    }

    /// Links a waiter at the tail of `key`'s queue; returns its slot.
    fn push_waiter(&mut self, key: &str, w: Waiter) -> usize {
        let lock = self.locks.entry_ref(key).or_default();
        let tail = lock.tail;
        let node = Node {
            waiter: Some(w),
            key: key.into(),
            prev: tail,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        if tail == NIL {
            lock.head = slot;
        } else {
            self.nodes[tail].next = slot;
        }
        lock.tail = slot;
        slot
    }

    /// Unlinks the waiter in `slot` from `lock` in O(1) and frees the slot.
    fn unlink(nodes: &mut [Node], free: &mut Vec<usize>, lock: &mut Lock, slot: usize) -> Waiter {
        let n = &mut nodes[slot];
        let (prev, next) = (n.prev, n.next);
        let w = n
            .waiter
            .take()
            .expect("invariant: a linked slot holds a waiter");
        n.key = Box::from("");
        if prev == NIL {
            lock.head = next;
        } else {
            nodes[prev].next = next;
        }
        if next == NIL {
            lock.tail = prev;
        } else {
            nodes[next].prev = prev;
        }
        free.push(slot);
        w
    }

    /// Lock requests `conn` has queued.
    pub fn waiters_of(&self, conn: ConnId) -> u32 {
        self.waiters_by_conn.get(&conn).copied().unwrap_or(0)
    }

    fn unwait(&mut self, conn: ConnId) {
        if let Some(n) = self.waiters_by_conn.get_mut(&conn) {
            *n -= 1;
            if *n == 0 {
                self.waiters_by_conn.remove(&conn);
            }
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
        // Only a queued request keeps its id (an immediate answer needs no copy).
        let slot = self.push_waiter(
            key,
            Waiter {
                id,
                conn,
                reply_to: reply_to.map(Box::from),
                ttl_ms,
            },
        );
        self.waiter_count += 1;
        *self.waiters_by_conn.entry(conn).or_default() += 1;
        self.waiting.insert(id, slot);
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

    /// One hold or wait of `conn` on `key` ended; O(1). The key stays listed while
    /// the connection still holds or waits on it.
    fn forget_conn_key(&mut self, conn: ConnId, key: &str) {
        if let Some(v) = self.by_conn.get_mut(&conn) {
            if let Some(n) = v.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    v.remove(key);
                }
            }
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
        let next = if lock.has_waiters() {
            let head = lock.head;
            Some(Self::unlink(&mut self.nodes, &mut self.free, lock, head))
        } else {
            None
        };
        match next {
            Some(w) => {
                self.waiter_count -= 1;
                self.unwait(w.conn);
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
                let Some(slot) = self.waiting.remove(&id) else {
                    return;
                };
                let key = std::mem::take(&mut self.nodes[slot].key);
                let Some(lock) = self.locks.get_mut(&*key) else {
                    return;
                };
                let w = Self::unlink(&mut self.nodes, &mut self.free, lock, slot);
                if lock.holder.is_none() && !lock.has_waiters() {
                    self.locks.remove(&*key);
                }
                self.waiter_count -= 1;
                self.unwait(w.conn);
                events.push(LockEvent::TimedOut {
                    conn: w.conn,
                    reply_to: w.reply_to,
                });
                self.forget_conn_key(w.conn, &key);
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
        self.waiters_by_conn.remove(&conn);
        let Some(keys) = self.by_conn.remove(&conn) else {
            return;
        };
        for key in keys.keys() {
            if let Some(lock) = self.locks.get_mut(&**key) {
                // Unlink this connection's waiters (one walk of this key's queue).
                let mut slot = lock.head;
                while slot != NIL {
                    let next = self.nodes[slot].next;
                    if self.nodes[slot]
                        .waiter
                        .as_ref()
                        .is_some_and(|w| w.conn == conn)
                    {
                        let w = Self::unlink(&mut self.nodes, &mut self.free, lock, slot);
                        self.waiter_count -= 1;
                        // Its timer then finds nothing in `waiting` and does nothing.
                        self.waiting.remove(&w.id);
                    }
                    slot = next;
                }
                let holds = lock.holder.as_ref().is_some_and(|h| h.conn == conn);
                if holds {
                    self.release(key, now, timers, events);
                } else if lock.holder.is_none() && !lock.has_waiters() {
                    self.locks.remove(&**key);
                }
            }
        }
    }

    /// Checks a fenced write's token against `key`'s high mark and, when it passes,
    /// raises the mark. Absent or lower tokens fail, and so do tokens this broker
    /// never issued (above the counter): a forged token must not fence real holders out.
    pub fn fence(&mut self, key: &str, token: Option<FencingToken>) -> bool {
        let Some(token) = token else { return false };
        if token.0 < self.floor || token.0 > self.last_token {
            return false;
        }
        match self.high.get_mut(key) {
            Some(mark) if token < *mark => false,
            Some(mark) => {
                *mark = token;
                true
            }
            // A key without a mark: its mark may have been forgotten.
            None if token.0 < self.forgotten => false,
            None => {
                self.high.insert(key.into(), token);
                self.marks_grew();
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
    fn a_token_never_issued_is_fenced_and_leaves_the_mark() {
        let mut t = Timers::default();
        let mut l = LockTable::default();
        assert!(!l.fence("never", Some(FencingToken(u64::MAX))));
        assert!(
            !l.fence("never", Some(FencingToken(1))),
            "nothing issued yet"
        );
        let tok = granted(l.lock("k", ConnId(1), 100, 0, None, 0, &mut t));
        assert!(!l.fence("k", Some(FencingToken(u64::MAX))));
        assert!(!l.fence("k", Some(FencingToken(tok.0 + 1))));
        assert!(
            l.fence("k", Some(tok)),
            "the forged token did not raise the mark"
        );
        assert!(l.fence("never", Some(tok)));
    }

    #[test]
    fn fence_marks_are_bounded_and_an_old_holder_stays_fenced() {
        let mut t = LockTable::new(0);
        t.set_fence_mark_cap(4);
        let mut timers = Timers::default();
        let mut ev = Vec::new();
        let (a, b, c) = (ConnId(1), ConnId(2), ConnId(3));
        // A held K, then B did: A's token is below K's mark.
        let ta = granted(t.lock("K", a, 1000, 0, None, 0, &mut timers));
        assert!(t.unlock("K", a, 0, &mut timers, &mut ev));
        let tb = granted(t.lock("K", b, 1000, 0, None, 0, &mut timers));
        assert!(t.unlock("K", b, 0, &mut timers, &mut ev));
        // C holds J throughout.
        let tc = granted(t.lock("J", c, 1_000_000, 0, None, 0, &mut timers));
        // Many keys locked and freed: the marks stay bounded.
        for i in 0..100 {
            let k = format!("x{i}");
            granted(t.lock(&k, a, 1000, 0, None, 0, &mut timers));
            assert!(t.unlock(&k, a, 0, &mut timers, &mut ev));
            assert!(t.fence_marks() <= 8, "{} marks", t.fence_marks());
        }
        // K's mark was forgotten, and A is still fenced there; B (the last holder,
        // at the mark) too, as the module docs say; C's live lock kept its mark.
        assert!(!t.high.contains_key("K"));
        assert!(!t.fence("K", Some(ta)));
        assert!(!t.fence("K", Some(tb)));
        assert!(t.fence("J", Some(tc)));
        assert!(!t.fence("J", Some(ta)), "below J's kept mark");
        // Valid tokens on never-marked keys, from anyone, cannot grow the table either.
        let last = FencingToken(t.last_token());
        for i in 0..100 {
            assert!(t.fence(&format!("y{i}"), Some(last)));
            assert!(t.fence_marks() <= 8);
        }
        assert!(t.fence("J", Some(tc)));
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

    /// Model test: random lock / unlock / fence / clock-advance / disconnect sequences
    /// over a few keys and connections, against a plain reference (one holder per
    /// key, FIFO waiters, tokens from one counter, a high mark raised by grants and
    /// accepted fences, waiters timed out `wait` ms after queueing).
    mod model {
        use std::collections::{BTreeMap, VecDeque};

        use proptest::prelude::*;

        use super::*;

        const KEYS: [&str; 3] = ["a", "b", "c"];

        /// The table's connection key for model connection `i`.
        fn conn(i: u8) -> ConnId {
            ConnId(i.into())
        }

        #[derive(Debug, Clone)]
        enum Op {
            Lock {
                key: usize,
                conn: u8,
                ttl: u64,
                wait: u64,
            },
            Unlock {
                key: usize,
                conn: u8,
            },
            Fence {
                key: usize,
                delta: i8,
            },
            Advance(u64),
            Disconnect(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..3usize, 0..4u8, 0..40u64, 0..40u64)
                    .prop_map(|(key, conn, ttl, wait)| Op::Lock { key, conn, ttl, wait }),
                3 => (0..3usize, 0..4u8).prop_map(|(key, conn)| Op::Unlock { key, conn }),
                1 => (0..3usize, -2i8..3).prop_map(|(key, delta)| Op::Fence { key, delta }),
                3 => (0..30u64).prop_map(Op::Advance),
                1 => (0..4u8).prop_map(Op::Disconnect),
            ]
        }

        #[derive(Debug, Clone)]
        struct MWaiter {
            id: u64,
            conn: u8,
            req: u64,
            ttl: u64,
            deadline: u64,
        }

        #[derive(Debug, Default)]
        struct MLock {
            /// `(conn, token, expires at)`.
            holder: Option<(u8, u64, u64)>,
            waiters: VecDeque<MWaiter>,
        }

        /// What the table must report: a grant (with the token the model expects,
        /// `None` where the table may number grants in any order) or a timeout.
        #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
        enum Want {
            Granted {
                conn: u8,
                req: u64,
                token: Option<u64>,
            },
            TimedOut {
                conn: u8,
                req: u64,
            },
        }

        #[derive(Default)]
        struct Model {
            locks: BTreeMap<usize, MLock>,
            high: BTreeMap<usize, u64>,
            last: u64,
            next_waiter: u64,
        }

        impl Model {
            fn install(&mut self, key: usize, conn: u8, ttl: u64, token: u64, now: u64) {
                let l = self.locks.entry(key).or_default();
                l.holder = Some((conn, token, now.saturating_add(ttl)));
                let h = self.high.entry(key).or_insert(token);
                *h = (*h).max(token);
            }

            fn grant(&mut self, key: usize, conn: u8, ttl: u64, now: u64) -> u64 {
                self.last += 1;
                let token = self.last;
                self.install(key, conn, ttl, token, now);
                token
            }

            /// Frees `key` and hands it to its first waiter (returned, not yet granted).
            fn free(&mut self, key: usize) -> Option<MWaiter> {
                let l = self.locks.get_mut(&key)?;
                l.holder = None;
                let next = l.waiters.pop_front();
                if next.is_none() {
                    self.locks.remove(&key);
                }
                next
            }

            fn release(&mut self, key: usize, now: u64, out: &mut Vec<Want>) {
                if let Some(w) = self.free(key) {
                    let token = self.grant(key, w.conn, w.ttl, now);
                    out.push(Want::Granted {
                        conn: w.conn,
                        req: w.req,
                        token: Some(token),
                    });
                }
            }

            fn advance(&mut self, now: u64, out: &mut Vec<Want>) {
                // Due work in the timer heap's order: deadline, then expiries before
                // waits, then token or waiter id.
                loop {
                    let mut due: Option<(u64, u8, u64, usize)> = None;
                    for (&key, l) in &self.locks {
                        if let Some((_, token, at)) = l.holder {
                            if at <= now {
                                let d = (at, 0, token, key);
                                due = Some(due.map_or(d, |x| x.min(d)));
                            }
                        }
                        for w in &l.waiters {
                            if w.deadline <= now {
                                let d = (w.deadline, 1, w.id, key);
                                due = Some(due.map_or(d, |x| x.min(d)));
                            }
                        }
                    }
                    match due {
                        None => break,
                        Some((_, 0, _, key)) => self.release(key, now, out),
                        Some((_, _, id, key)) => {
                            let l = self.locks.get_mut(&key).unwrap();
                            let pos = l.waiters.iter().position(|w| w.id == id).unwrap();
                            let w = l.waiters.remove(pos).unwrap();
                            out.push(Want::TimedOut {
                                conn: w.conn,
                                req: w.req,
                            });
                            if l.holder.is_none() && l.waiters.is_empty() {
                                self.locks.remove(&key);
                            }
                        }
                    }
                }
            }

            /// Drops `c`'s waiters and frees what it holds; returns the grants due,
            /// which the table may number in any order.
            fn disconnect(&mut self, c: u8) -> Vec<(usize, MWaiter)> {
                let mut handoffs = Vec::new();
                let keys: Vec<usize> = self.locks.keys().copied().collect();
                for key in keys {
                    let l = self.locks.get_mut(&key).unwrap();
                    l.waiters.retain(|w| w.conn != c);
                    if l.holder.is_some_and(|h| h.0 == c) {
                        if let Some(w) = self.free(key) {
                            handoffs.push((key, w));
                        }
                    } else if l.holder.is_none() && l.waiters.is_empty() {
                        self.locks.remove(&key);
                    }
                }
                handoffs
            }

            fn held(&self) -> usize {
                self.locks.values().filter(|l| l.holder.is_some()).count()
            }

            fn waiting(&self) -> usize {
                self.locks.values().map(|l| l.waiters.len()).sum()
            }
        }

        /// The table's events in the model's terms; `req` is the request id we sent.
        fn seen(events: &mut Vec<LockEvent>, keep_tokens: bool) -> Vec<Want> {
            let who = |c: ConnId| {
                (0..4u8)
                    .find(|i| conn(*i) == c)
                    .expect("a model connection")
            };
            let req = |r: &ReplyTo| -> u64 {
                std::str::from_utf8(r.as_deref().expect("every request has an id"))
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            events
                .drain(..)
                .map(|e| match e {
                    LockEvent::Granted {
                        conn,
                        reply_to,
                        token,
                    } => Want::Granted {
                        conn: who(conn),
                        req: req(&reply_to),
                        token: Some(token.0).filter(|_| keep_tokens),
                    },
                    LockEvent::TimedOut { conn, reply_to } => Want::TimedOut {
                        conn: who(conn),
                        req: req(&reply_to),
                    },
                })
                .collect()
        }

        fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
            let mut t = Timers::default();
            let mut l = LockTable::default();
            // The same operations on a table that keeps one mark: forgetting marks
            // may refuse more, never accept what the model (every mark kept) refuses.
            let mut capped = LockTable::default();
            capped.set_fence_mark_cap(1);
            let (mut ct, mut cev) = (Timers::default(), Vec::new());
            // The capped table's own marks: it hands keys off on a disconnect in its
            // own (hash) order, so its tokens may go to other keys than the model's.
            // Its fences are checked against what it issued itself.
            let mut capped_high: std::collections::HashMap<usize, u64> = Default::default();
            let mut capped_req_key: std::collections::HashMap<u64, usize> = Default::default();
            let capped_grants =
                |cev: &mut Vec<LockEvent>,
                 req_key: &std::collections::HashMap<u64, usize>,
                 high: &mut std::collections::HashMap<usize, u64>| {
                    for e in cev.drain(..) {
                        if let LockEvent::Granted {
                            reply_to, token, ..
                        } = e
                        {
                            let id: u64 = std::str::from_utf8(reply_to.as_deref().unwrap())
                                .unwrap()
                                .parse()
                                .unwrap();
                            let h = high.entry(req_key[&id]).or_insert(0);
                            *h = (*h).max(token.0);
                        }
                    }
                };
            let mut m = Model::default();
            let mut ev = Vec::new();
            let (mut now, mut req, mut max_token) = (0u64, 0u64, 0u64);
            let mut increasing = |tok: u64| -> Result<(), TestCaseError> {
                prop_assert!(tok > max_token, "token {} after {}", tok, max_token);
                max_token = tok;
                Ok(())
            };
            for op in ops {
                let mut want = Vec::new();
                match op {
                    Op::Lock {
                        key,
                        conn: c,
                        ttl,
                        wait,
                    } => {
                        req += 1;
                        let id = req.to_string();
                        let got = l.lock(
                            KEYS[key],
                            conn(c),
                            ttl,
                            wait,
                            Some(id.as_bytes()),
                            now,
                            &mut t,
                        );
                        capped_req_key.insert(req, key);
                        let cgot = capped.lock(
                            KEYS[key],
                            conn(c),
                            ttl,
                            wait,
                            Some(id.as_bytes()),
                            now,
                            &mut ct,
                        );
                        if let LockOutcome::Granted(tok) = cgot {
                            let h = capped_high.entry(key).or_insert(0);
                            *h = (*h).max(tok.0);
                        }
                        let free = m.locks.get(&key).is_none_or(|x| x.holder.is_none());
                        let expect = if free {
                            LockOutcome::Granted(FencingToken(m.grant(key, c, ttl, now)))
                        } else if wait == 0 {
                            LockOutcome::Busy
                        } else {
                            m.next_waiter += 1;
                            let w = MWaiter {
                                id: m.next_waiter,
                                conn: c,
                                req,
                                ttl,
                                deadline: now + wait,
                            };
                            m.locks.get_mut(&key).unwrap().waiters.push_back(w);
                            LockOutcome::Queued
                        };
                        if let LockOutcome::Granted(tok) = got {
                            increasing(tok.0)?;
                        }
                        prop_assert_eq!(got, expect);
                    }
                    Op::Unlock { key, conn: c } => {
                        let holds = m
                            .locks
                            .get(&key)
                            .and_then(|x| x.holder)
                            .is_some_and(|h| h.0 == c);
                        prop_assert_eq!(l.unlock(KEYS[key], conn(c), now, &mut t, &mut ev), holds);
                        capped.unlock(KEYS[key], conn(c), now, &mut ct, &mut cev);
                        capped_grants(&mut cev, &capped_req_key, &mut capped_high);
                        if holds {
                            m.release(key, now, &mut want);
                        }
                    }
                    Op::Fence { key, delta } => {
                        let base = m.high.get(&key).copied().unwrap_or(m.last) as i64;
                        let tok = (base + i64::from(delta)).max(0) as u64;
                        // Only issued tokens (≤ the counter) at or above the mark pass.
                        let pass = tok <= m.last && m.high.get(&key).is_none_or(|h| tok >= *h);
                        prop_assert_eq!(l.fence(KEYS[key], Some(FencingToken(tok))), pass);
                        if capped.fence(KEYS[key], Some(FencingToken(tok))) {
                            let floor = capped_high.get(&key).copied().unwrap_or(0);
                            prop_assert!(
                                tok <= capped.last_token && tok >= floor,
                                "the capped table accepted {} on {} (its mark {})",
                                tok,
                                key,
                                floor
                            );
                            capped_high.insert(key, tok);
                        }
                        prop_assert!(capped.fence_marks() <= KEYS.len());
                        prop_assert!(!l.fence(KEYS[key], None));
                        if pass {
                            m.high.insert(key, tok);
                        }
                    }
                    Op::Advance(dt) => {
                        now += dt;
                        while let Some(k) = t.pop_due(now) {
                            l.on_timer(k, now, &mut t, &mut ev);
                        }
                        while let Some(k) = ct.pop_due(now) {
                            capped.on_timer(k, now, &mut ct, &mut cev);
                        }
                        capped_grants(&mut cev, &capped_req_key, &mut capped_high);
                        m.advance(now, &mut want);
                    }
                    Op::Disconnect(c) => {
                        l.remove_conn(conn(c), now, &mut t, &mut ev);
                        capped.remove_conn(conn(c), now, &mut ct, &mut cev);
                        capped_grants(&mut cev, &capped_req_key, &mut capped_high);
                        let handoffs = m.disconnect(c);
                        // The table may free the keys in any order: compare without
                        // tokens, then check they are the next ones and adopt them.
                        let got = seen(&mut ev, true);
                        let mut untokened: Vec<Want> = got
                            .iter()
                            .map(|w| match w {
                                Want::Granted { conn, req, .. } => Want::Granted {
                                    conn: *conn,
                                    req: *req,
                                    token: None,
                                },
                                other => other.clone(),
                            })
                            .collect();
                        let mut expect: Vec<Want> = handoffs
                            .iter()
                            .map(|(_, w)| Want::Granted {
                                conn: w.conn,
                                req: w.req,
                                token: None,
                            })
                            .collect();
                        untokened.sort();
                        expect.sort();
                        prop_assert_eq!(untokened, expect);
                        let mut tokens = Vec::new();
                        for w in got {
                            let Want::Granted {
                                req: r,
                                token: Some(tok),
                                ..
                            } = w
                            else {
                                unreachable!("a disconnect only grants")
                            };
                            let (key, w) = handoffs.iter().find(|(_, w)| w.req == r).unwrap();
                            m.install(*key, w.conn, w.ttl, tok, now);
                            tokens.push(tok);
                        }
                        tokens.sort();
                        let next: Vec<u64> = (m.last + 1..=m.last + tokens.len() as u64).collect();
                        prop_assert_eq!(&tokens, &next);
                        m.last += tokens.len() as u64;
                        for tok in tokens {
                            increasing(tok)?;
                        }
                    }
                }
                let got = seen(&mut ev, true);
                for w in &got {
                    if let Want::Granted {
                        token: Some(tok), ..
                    } = w
                    {
                        increasing(*tok)?;
                    }
                }
                prop_assert_eq!(got, want);
                prop_assert_eq!(l.held(), m.held());
                prop_assert_eq!(l.waiters(), m.waiting());
                prop_assert_eq!(l.last_token(), m.last);
                for x in m.locks.values() {
                    prop_assert!(!x.waiters.is_empty() || x.holder.is_some());
                    if let Some((_, tok, _)) = x.holder {
                        prop_assert!(l.timer_alive(TimerKind::LockExpiry(tok)));
                    }
                    for w in &x.waiters {
                        prop_assert!(l.timer_alive(TimerKind::LockWait(w.id)));
                    }
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn lock_table_matches_the_model(ops in prop::collection::vec(op(), 0..80)) {
                run(ops)?;
            }
        }
    }
}
