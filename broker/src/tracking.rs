//! Near-cache tracking (ours; docs/protocol.md "Near-cache tracking"): which
//! connections read which keys, and the invalidations owed to them.
//!
//! Modelled on Redis client-side caching in its default mode: a connection that sent
//! `track` has every key it reads (`get`, `mget`, `has`) remembered; when such a key
//! changes by any path (a write from anyone, a fenced write, expiry, LRU eviction,
//! `clear`) each connection that read it is owed one invalidation, and its entry for
//! that key is dropped, so a key is announced once per read, not once per change. The
//! store reports changes through its effect sink ([`MeshEffects`]);
//! the turn's invalidations are pushed by [`Tracking::flush`] after the log commit,
//! batched per connection (`{"t":"inv","keys":[…]}`; `clear` sends `keys: null`).
//!
//! `tracking` owns the table and the pending invalidations; it knows connections
//! only by [`ConnId`] and writes through [`Conns::send`] (never dropped: a
//! connection that stops reading hits the hard output limit and is closed, and its
//! client flushes its near cache on reconnect).
//!
//! Bounds and invariants:
//! - `pairs` (tracked (key, connection) pairs) never exceeds `max_pairs`
//!   (`maxTrackedKeys`, default 1 000 000): past it the oldest tracked keys are
//!   invalidated (as Redis does at `tracking-table-max-keys`);
//! - a key is in `keys` exactly when some connection tracks it, and then exactly one
//!   entry of `order` is the same `Arc` (an `Arc`, not an `Rc`, only because the reactor moves to its thread at start; its counts are touched only on tracking connections) (older entries are stale; `order` is compacted
//!   when stale entries dominate);
//! - a connection's state is dropped when it closes ([`Tracking::remove_conn`]);
//! - with no tracking connection every hook is one branch on an empty map.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ahash::RandomState;
use procmesh_proto::{response, Codec};

use crate::connection::{ConnId, Conns};
use crate::persistence::aof::EffectLog;
use crate::store::EffectSink;

/// Largest number of keys in one `inv` push (bigger batches are split).
const INV_BATCH_KEYS: usize = 1024;

/// Counters for stats and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackingCounters {
    /// Key invalidations queued (one per (key, connection) pair).
    pub invalidated: u64,
    /// Keys invalidated because the table passed its bound.
    pub evicted: u64,
    /// `inv` frames pushed.
    pub pushes: u64,
}

/// The tracking table; see the module doc.
pub struct Tracking {
    max_pairs: usize,
    /// Key → the connections that read it since its last invalidation.
    keys: HashMap<Arc<str>, Vec<ConnId>, RandomState>,
    /// Tracking connection → the keys it is tracked for.
    by_conn: HashMap<ConnId, HashSet<Arc<str>, RandomState>, RandomState>,
    /// Keys in the order they started being tracked (for eviction at the bound).
    order: VecDeque<Arc<str>>,
    pairs: usize,
    /// Invalidations of this turn, pushed by [`Tracking::flush`].
    pending: Vec<(ConnId, Arc<str>)>,
    /// Connections owed an "everything" invalidation this turn.
    pending_all: Vec<ConnId>,
    counters: TrackingCounters,
}

impl Tracking {
    /// An empty table holding at most `max_pairs` (key, connection) pairs.
    pub fn new(max_pairs: usize) -> Tracking {
        Tracking {
            max_pairs: max_pairs.max(1),
            keys: HashMap::default(),
            by_conn: HashMap::default(),
            order: VecDeque::new(),
            pairs: 0,
            pending: Vec::new(),
            pending_all: Vec::new(),
            counters: TrackingCounters::default(),
        }
    }

    /// Turns tracking on for `conn` (idempotent).
    pub fn enable(&mut self, conn: ConnId) {
        self.by_conn.entry(conn).or_default();
    }

    /// Whether `conn` sent `track`.
    #[inline]
    pub fn is_tracking(&self, conn: ConnId) -> bool {
        !self.by_conn.is_empty() && self.by_conn.contains_key(&conn)
    }

    /// Tracked (key, connection) pairs.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Tracked keys.
    pub fn keys_len(&self) -> usize {
        self.keys.len()
    }

    /// Tracking connections.
    pub fn conns(&self) -> usize {
        self.by_conn.len()
    }

    /// The counters.
    pub fn counters(&self) -> TrackingCounters {
        self.counters
    }

    /// `conn` read `key`: remember it (nothing unless `conn` tracks).
    #[inline]
    pub fn note_read(&mut self, conn: ConnId, key: &str) {
        if self.by_conn.is_empty() {
            return;
        }
        self.note_read_slow(conn, key);
    }

    fn note_read_slow(&mut self, conn: ConnId, key: &str) {
        let Some(mine) = self.by_conn.get_mut(&conn) else {
            return;
        };
        if mine.contains(key) {
            return;
        }
        let rc = match self.keys.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => {
                let rc: Arc<str> = Arc::from(key);
                self.keys.insert(rc.clone(), Vec::new());
                self.order.push_back(rc.clone());
                rc
            }
        };
        mine.insert(rc.clone());
        self.keys
            .get_mut(&rc)
            .expect("invariant: the key was just found or inserted")
            .push(conn);
        self.pairs += 1;
        while self.pairs > self.max_pairs {
            self.evict_oldest();
        }
        if self.order.len() > 2 * self.keys.len() + 1024 {
            self.compact_order();
        }
    }

    /// `key` changed (set, delete, eviction, expiry): every connection tracking it
    /// is owed an invalidation and stops tracking it.
    #[inline]
    pub fn changed(&mut self, key: &[u8]) {
        if self.keys.is_empty() {
            return;
        }
        if let Ok(k) = std::str::from_utf8(key) {
            self.invalidate(k);
        }
    }

    fn invalidate(&mut self, key: &str) -> bool {
        let Some((rc, conns)) = self.keys.remove_entry(key) else {
            return false;
        };
        self.pairs -= conns.len();
        self.counters.invalidated += conns.len() as u64;
        for c in conns {
            if let Some(set) = self.by_conn.get_mut(&c) {
                set.remove(key);
            }
            self.pending.push((c, rc.clone()));
        }
        true
    }

    /// Everything was removed: every tracking connection is owed an "everything"
    /// invalidation; the table empties.
    pub fn cleared(&mut self) {
        if self.by_conn.is_empty() {
            return;
        }
        self.counters.invalidated += self.pairs as u64;
        for (c, set) in self.by_conn.iter_mut() {
            set.clear();
            self.pending_all.push(*c);
        }
        self.keys.clear();
        self.order.clear();
        self.pending.clear();
        self.pairs = 0;
    }

    /// Invalidates the key tracked the longest (the table is over its bound).
    fn evict_oldest(&mut self) {
        while let Some(k) = self.order.pop_front() {
            let live = self
                .keys
                .get_key_value(&*k)
                .is_some_and(|(cur, _)| Arc::ptr_eq(cur, &k));
            if live {
                self.invalidate(&k);
                self.counters.evicted += 1;
                return;
            }
        }
    }

    /// Drops the stale entries of `order` (keys invalidated since, or tracked anew).
    fn compact_order(&mut self) {
        let keys = &self.keys;
        self.order.retain(|k| {
            keys.get_key_value(&**k)
                .is_some_and(|(cur, _)| Arc::ptr_eq(cur, k))
        });
    }

    /// `conn` closed: its tracking state goes, and nothing is pushed to it.
    pub fn remove_conn(&mut self, conn: ConnId) {
        let Some(set) = self.by_conn.remove(&conn) else {
            return;
        };
        for k in set {
            if let Some(v) = self.keys.get_mut(&*k) {
                v.retain(|&c| c != conn);
                self.pairs -= 1;
                if v.is_empty() {
                    self.keys.remove(&*k);
                }
            }
        }
        self.pending.retain(|(c, _)| *c != conn);
        self.pending_all.retain(|c| *c != conn);
        if self.by_conn.is_empty() {
            self.order.clear();
        }
    }

    /// Pushes the turn's invalidations: one `inv` per connection (split every
    /// `INV_BATCH_KEYS` keys), `keys: null` for a connection owed everything.
    pub fn flush(&mut self, out: &mut Conns) {
        if self.pending.is_empty() && self.pending_all.is_empty() {
            return;
        }
        self.pending_all.sort_unstable();
        self.pending_all.dedup();
        for &c in &self.pending_all {
            if out.get(c).is_some() {
                out.send(c, response::inv_all);
                self.counters.pushes += 1;
            }
        }
        self.pending.sort_unstable_by_key(|(c, _)| *c);
        let mut rest = &self.pending[..];
        while let Some(&(c, _)) = rest.first() {
            let run = rest.iter().take_while(|(x, _)| *x == c).count();
            let (mine, tail) = rest.split_at(run);
            rest = tail;
            if out.get(c).is_none() || self.pending_all.binary_search(&c).is_ok() {
                continue;
            }
            for batch in mine.chunks(INV_BATCH_KEYS) {
                out.send(c, |codec, buf| {
                    response::inv_keys(codec, batch.iter().map(|(_, k)| &**k), buf)
                });
                self.counters.pushes += 1;
            }
        }
        self.pending.clear();
        self.pending_all.clear();
        if self.pending.capacity() > 4 * INV_BATCH_KEYS {
            self.pending.shrink_to(INV_BATCH_KEYS);
        }
    }
}

/// The broker's effect sink: the store's one hook, composed of persistence (the
/// log, once switched on) and near-cache tracking (every key change, expiry
/// included). Neither knows the other.
pub struct MeshEffects {
    /// The log's sink (`None`: not persisting, or replaying at recovery).
    pub log: Option<EffectLog>,
    /// Which connections read which keys.
    pub track: Tracking,
}

impl MeshEffects {
    /// No log yet; tracking bounded at `max_tracked` (key, connection) pairs.
    pub fn new(max_tracked: usize) -> MeshEffects {
        MeshEffects {
            log: None,
            track: Tracking::new(max_tracked),
        }
    }

    /// The log's sink, when persisting.
    #[inline]
    pub fn log_mut(&mut self) -> Option<&mut EffectLog> {
        self.log.as_mut()
    }
}

impl EffectSink for MeshEffects {
    #[inline]
    fn set(&mut self, key: &[u8], codec: Codec, value: &[u8], expire_at: u64) {
        self.log.set(key, codec, value, expire_at);
        self.track.changed(key);
    }
    #[inline]
    fn del(&mut self, key: &[u8]) {
        self.log.del(key);
        self.track.changed(key);
    }
    #[inline]
    fn clear(&mut self) {
        self.log.clear();
        self.track.cleared();
    }
    #[inline]
    fn expired(&mut self, key: &[u8]) {
        self.track.changed(key);
    }
    #[inline]
    fn wants_undo(&self) -> bool {
        self.log.wants_undo()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);

    fn pending(t: &Tracking) -> Vec<(usize, String)> {
        let mut v: Vec<_> = t
            .pending
            .iter()
            .map(|(c, k)| (c.0, k.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn untracked_connections_cost_nothing_and_are_never_owed() {
        let mut t = Tracking::new(10);
        t.note_read(A, "k");
        t.changed(b"k");
        assert_eq!(t.pairs(), 0);
        assert!(t.pending.is_empty());
        t.cleared();
        assert!(t.pending_all.is_empty());
    }

    #[test]
    fn a_change_invalidates_each_reader_once() {
        let mut t = Tracking::new(10);
        t.enable(A);
        t.enable(B);
        t.note_read(A, "k");
        t.note_read(A, "k");
        t.note_read(B, "k");
        t.note_read(B, "other");
        assert_eq!(t.pairs(), 3);
        t.changed(b"k");
        t.changed(b"k");
        assert_eq!(pending(&t), vec![(1, "k".into()), (2, "k".into())]);
        assert_eq!(t.pairs(), 1, "only B's `other` is left");
        assert_eq!(t.keys_len(), 1);
    }

    #[test]
    fn the_bound_evicts_the_oldest_key_with_an_invalidation() {
        let mut t = Tracking::new(3);
        t.enable(A);
        for k in ["a", "b", "c", "d"] {
            t.note_read(A, k);
        }
        assert_eq!(t.pairs(), 3);
        assert_eq!(pending(&t), vec![(1, "a".into())]);
        assert_eq!(t.counters().evicted, 1);
        // Re-tracking an invalidated key makes it the newest.
        t.note_read(A, "a");
        assert_eq!(pending(&t), vec![(1, "a".into()), (1, "b".into())]);
        for i in 0..10_000 {
            t.note_read(A, &format!("k{i}"));
            assert!(t.pairs() <= 3);
        }
        assert!(
            t.order.len() <= 2 * t.keys_len() + 1024,
            "order stays compact"
        );
    }

    #[test]
    fn closing_frees_a_connections_state() {
        let mut t = Tracking::new(100);
        t.enable(A);
        t.enable(B);
        t.note_read(A, "x");
        t.note_read(B, "x");
        t.note_read(A, "y");
        t.changed(b"y");
        t.remove_conn(A);
        assert_eq!(t.pairs(), 1);
        assert_eq!(t.keys_len(), 1);
        assert!(
            t.pending.is_empty(),
            "nothing is owed to a closed connection"
        );
        assert!(!t.is_tracking(A));
        t.remove_conn(B);
        assert_eq!((t.pairs(), t.keys_len(), t.conns()), (0, 0, 0));
        assert!(t.order.is_empty());
    }

    #[test]
    fn clear_owes_everything_to_every_tracker() {
        let mut t = Tracking::new(100);
        t.enable(A);
        t.enable(B);
        t.note_read(A, "x");
        t.changed(b"x");
        t.cleared();
        assert!(t.pending.is_empty());
        let mut all = t.pending_all.clone();
        all.sort();
        assert_eq!(all, vec![A, B]);
        assert_eq!(t.pairs(), 0);
        assert!(t.is_tracking(A), "tracking stays on after a clear");
    }

    #[test]
    fn the_store_reports_lazy_and_swept_expiry_eviction_and_clear() {
        use crate::store::{Store, StoreConfig};
        let cfg = StoreConfig {
            max_entries: 3,
            ..StoreConfig::default()
        };
        let mut s = Store::with_effects(cfg, MeshEffects::new(100));
        let v = procmesh_proto::value::validate(Codec::Json, b"1").unwrap();
        let track = |s: &mut Store<MeshEffects>, k: &str| s.effects_mut().track.note_read(A, k);
        s.effects_mut().track.enable(A);
        s.set("lazy", v, Some(10), 0);
        s.set("swept", v, Some(10), 0);
        track(&mut s, "lazy");
        track(&mut s, "swept");
        assert!(s.get("lazy", 20).is_none());
        assert_eq!(pending(&s.effects_mut().track), vec![(1, "lazy".into())]);
        s.reclaim(20, 100);
        assert_eq!(
            pending(&s.effects_mut().track),
            vec![(1, "lazy".into()), (1, "swept".into())]
        );
        s.effects_mut().track.pending.clear();
        for k in ["a", "b", "c"] {
            s.set(k, v, None, 30);
        }
        track(&mut s, "a");
        s.set("d", v, None, 30);
        assert_eq!(pending(&s.effects_mut().track), vec![(1, "a".into())]);
        track(&mut s, "b");
        s.clear();
        assert_eq!(s.effects_mut().track.pending_all, vec![A]);
    }
}
