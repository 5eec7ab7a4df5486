//! The near cache: copies of values this client read, served locally until the
//! broker says they changed (docs/protocol.md "Near-cache tracking", ours; after
//! Redis client-side caching in its default mode).
//!
//! Owns the entries, their LRU order, the fill protocol and the counters. It knows
//! nothing of sockets or serde: callers (the blocking client, and any other client
//! on the same connection layer) ask [`NearCache::lookup`] first; on a miss they
//! send the read themselves and hand the reply to [`NearCache::fill`]. Each
//! connection's reader applies the broker's `inv` pushes ([`NearCache::on_inv`]),
//! and `link` flushes everything when a connection drops ([`NearCache::flush_all`]).
//!
//! # The fill race
//! A reply and an invalidation for the same key can cross: the broker answers our
//! `get` (value v1), another client writes v2, the `inv` arrives and is applied by the
//! reader thread before the waiting caller stores v1. Storing v1 then would keep it
//! forever (the broker sent its one `inv` already). So a miss first marks the key
//! *pending* with a fresh token, before the request is written; any invalidation
//! (or flush) removes the mark; [`NearCache::fill`] stores the value only if its own
//! mark is still there. Redis documents the same race and the same cure.
//!
//! Invariants: `entries` holds at most `max_entries` keys (filled or pending) and at
//! most `max_bytes` value bytes (0 = no byte bound); every entry is in `lru` exactly
//! once, under its `stamp`. No user code (serde) runs under the lock: values are
//! handed out as shared bytes and decoded by the caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use procmesh_proto::{Codec, Raw};

use crate::pending::lock;

/// A cached read: the value's bytes and codec, or `None` for a key known missing.
pub(crate) type Cached = Option<(Codec, Arc<[u8]>)>;

/// What [`NearCache::lookup`] found.
pub(crate) enum Lookup {
    /// Served locally.
    Hit(Cached),
    /// Not cached: read from the broker, then [`NearCache::fill`] with this token.
    Miss(u64),
    /// The near cache is off (a broker refused `track`): read from the broker.
    Off,
}

/// Near-cache counters ([`crate::Client::near_cache_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Reads served locally.
    pub hits: u64,
    /// Reads that went to the broker.
    pub misses: u64,
    /// Keys the broker said changed (an "everything" invalidation counts once).
    pub invalidations: u64,
    /// Times the whole cache was dropped because a connection was lost.
    pub flushes: u64,
    /// Keys held now (pending fills included).
    pub entries: usize,
    /// Value bytes held now.
    pub bytes: usize,
    /// False when a broker refused tracking (a Node.js broker): every read goes to
    /// the broker.
    pub enabled: bool,
}

enum Slot {
    /// A read is in flight; only the fill carrying this token may store.
    Pending(u64),
    /// A value (or a known miss).
    Filled(Cached),
}

struct Entry {
    slot: Slot,
    stamp: u64,
}

struct State {
    entries: HashMap<Box<str>, Entry>,
    /// LRU order: stamp → key (oldest first).
    lru: BTreeMap<u64, Box<str>>,
    next_stamp: u64,
    bytes: usize,
}

/// The near cache; see the module doc. Shared by every connection of a client.
pub(crate) struct NearCache {
    max_entries: usize,
    max_bytes: usize,
    state: Mutex<State>,
    enabled: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
}

fn cached_len(c: &Cached) -> usize {
    c.as_ref().map_or(0, |(_, b)| b.len())
}

impl NearCache {
    /// An empty cache of at most `max_entries` keys and `max_bytes` value bytes
    /// (0 = no byte bound).
    pub fn new(max_entries: usize, max_bytes: usize) -> NearCache {
        NearCache {
            max_entries: max_entries.max(1),
            max_bytes,
            state: Mutex::new(State {
                entries: HashMap::new(),
                lru: BTreeMap::new(),
                next_stamp: 0,
                bytes: 0,
            }),
            enabled: AtomicBool::new(true),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    /// Switches local serving off for good (a broker refused `track`).
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
        self.flush_all();
    }

    /// Whether reads may be served locally.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Looks `key` up; on a miss marks it pending (call before writing the read).
    pub fn lookup(&self, key: &str) -> Lookup {
        if !self.is_enabled() {
            return Lookup::Off;
        }
        let mut st = lock(&self.state);
        let stamp = st.next_stamp;
        st.next_stamp += 1;
        let st = &mut *st;
        if let Some(e) = st.entries.get_mut(key) {
            let old = std::mem::replace(&mut e.stamp, stamp);
            let k = st
                .lru
                .remove(&old)
                .expect("invariant: every entry is in lru");
            st.lru.insert(stamp, k);
            match &e.slot {
                Slot::Filled(c) => {
                    let c = c.clone();
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Lookup::Hit(c);
                }
                Slot::Pending(_) => e.slot = Slot::Pending(stamp),
            }
        } else {
            st.entries.insert(
                key.into(),
                Entry {
                    slot: Slot::Pending(stamp),
                    stamp,
                },
            );
            st.lru.insert(stamp, key.into());
            self.evict(st);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        Lookup::Miss(stamp)
    }

    /// Stores the broker's answer for `key` (`None`: missing) if no invalidation or
    /// newer read came since [`NearCache::lookup`] returned `token`.
    pub fn fill(&self, key: &str, token: u64, value: Option<Raw<'_>>) {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let Some(e) = st.entries.get_mut(key) else {
            return;
        };
        if !matches!(e.slot, Slot::Pending(t) if t == token) {
            return;
        }
        let c: Cached = value.map(|r| (r.codec, Arc::from(r.bytes)));
        st.bytes += cached_len(&c);
        e.slot = Slot::Filled(c);
        self.evict(st);
    }

    /// The read for `token` failed: drops its pending mark.
    pub fn abandon(&self, key: &str, token: u64) {
        let mut st = lock(&self.state);
        if matches!(st.entries.get(key), Some(Entry { slot: Slot::Pending(t), .. }) if *t == token)
        {
            Self::remove(&mut st, key);
        }
    }

    /// Drops `key` (this client writes it: read-your-writes). Called before the write
    /// is sent and again after its reply, so a read that crossed the write is not kept.
    pub fn invalidate(&self, key: &str) {
        let mut st = lock(&self.state);
        Self::remove(&mut st, key);
    }

    /// Applies a broker `inv` push: `keys` is an array of strings, or null/absent for
    /// "everything".
    pub fn on_inv(&self, keys: Option<Raw<'_>>) {
        let Some(list) = keys.and_then(|k| k.array()) else {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
            self.clear();
            return;
        };
        let mut st = lock(&self.state);
        for k in list {
            if let Some(k) = k.as_str() {
                self.invalidations.fetch_add(1, Ordering::Relaxed);
                Self::remove(&mut st, &k);
            }
        }
    }

    /// Drops everything (this client sent `clear`).
    pub fn clear(&self) {
        let mut st = lock(&self.state);
        st.entries.clear();
        st.lru.clear();
        st.bytes = 0;
    }

    /// A connection dropped: invalidations may have been lost, so nothing cached can
    /// be trusted, and no read in flight may fill.
    pub fn flush_all(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.clear();
    }

    /// The counters.
    pub fn stats(&self) -> NearCacheStats {
        let st = lock(&self.state);
        NearCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            entries: st.entries.len(),
            bytes: st.bytes,
            enabled: self.is_enabled(),
        }
    }

    fn remove(st: &mut State, key: &str) {
        if let Some(e) = st.entries.remove(key) {
            st.lru.remove(&e.stamp);
            if let Slot::Filled(c) = &e.slot {
                st.bytes -= cached_len(c);
            }
        }
    }

    /// Evicts least recently used entries past the bounds (the newest one stays,
    /// however big).
    fn evict(&self, st: &mut State) {
        while st.entries.len() > self.max_entries
            || (self.max_bytes > 0 && st.bytes > self.max_bytes && st.entries.len() > 1)
        {
            let Some((_, k)) = st.lru.pop_first() else {
                return;
            };
            if let Some(e) = st.entries.remove(&k) {
                if let Slot::Filled(c) = &e.slot {
                    st.bytes -= cached_len(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(b: &[u8]) -> Option<Raw<'_>> {
        Some(Raw::new(Codec::Json, b))
    }

    fn hit(n: &NearCache, k: &str) -> Option<Cached> {
        match n.lookup(k) {
            Lookup::Hit(c) => Some(c),
            Lookup::Miss(t) => {
                n.abandon(k, t);
                None
            }
            Lookup::Off => None,
        }
    }

    #[test]
    fn a_fill_is_served_until_invalidated() {
        let n = NearCache::new(10, 0);
        let Lookup::Miss(t) = n.lookup("k") else {
            panic!("empty cache")
        };
        n.fill("k", t, v(b"1"));
        let (_, b) = hit(&n, "k").unwrap().unwrap();
        assert_eq!(&*b, b"1");
        n.on_inv(Some(Raw::new(Codec::Json, br#"["k"]"#)));
        assert!(hit(&n, "k").is_none());
        let s = n.stats();
        assert_eq!((s.hits, s.misses, s.invalidations), (1, 2, 1));
        // A missing key is cached as missing.
        let Lookup::Miss(t) = n.lookup("gone") else {
            panic!()
        };
        n.fill("gone", t, None);
        assert_eq!(hit(&n, "gone"), Some(None));
    }

    #[test]
    fn an_invalidation_that_crosses_the_reply_discards_the_fill() {
        let n = NearCache::new(10, 0);
        let Lookup::Miss(t) = n.lookup("k") else {
            panic!()
        };
        // The reader applies an inv before the caller stores the reply it got.
        n.on_inv(Some(Raw::new(Codec::Json, br#"["k"]"#)));
        n.fill("k", t, v(b"old"));
        assert!(hit(&n, "k").is_none(), "the crossed fill is not kept");
        // Same for a flush (reconnect), the client's own write, and "everything".
        let drops: [fn(&NearCache); 3] = [
            |n| n.flush_all(),
            |n| n.invalidate("k"),
            |n| n.on_inv(Some(Raw::new(Codec::Json, b"null"))),
        ];
        for drop in drops {
            let Lookup::Miss(t) = n.lookup("k") else {
                panic!()
            };
            drop(&n);
            n.fill("k", t, v(b"old"));
            assert!(hit(&n, "k").is_none());
        }
    }

    #[test]
    fn bounds_evict_the_least_recently_used() {
        let n = NearCache::new(2, 0);
        for k in ["a", "b"] {
            let Lookup::Miss(t) = n.lookup(k) else {
                panic!()
            };
            n.fill(k, t, v(b"1"));
        }
        assert!(hit(&n, "a").is_some());
        let Lookup::Miss(t) = n.lookup("c") else {
            panic!()
        };
        n.fill("c", t, v(b"1"));
        assert!(hit(&n, "a").is_some());
        assert!(hit(&n, "b").is_none(), "b was least recently used");
        assert!(n.stats().entries <= 2);
        let by_bytes = NearCache::new(100, 4);
        for k in ["x", "y", "z"] {
            let Lookup::Miss(t) = by_bytes.lookup(k) else {
                panic!()
            };
            by_bytes.fill(k, t, v(b"12"));
        }
        assert!(by_bytes.stats().bytes <= 4);
        assert!(hit(&by_bytes, "x").is_none());
    }

    #[test]
    fn disabled_serves_nothing() {
        let n = NearCache::new(10, 0);
        n.disable();
        assert!(matches!(n.lookup("k"), Lookup::Off));
        assert!(!n.stats().enabled);
    }
}
