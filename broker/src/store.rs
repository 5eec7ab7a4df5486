//! The cache: keys, values, TTLs and LRU order (PROTOCOL.md §6).
//!
//! `store` owns every cached entry and knows nothing about sockets or codecs beyond
//! the tag it keeps beside each value. Values are stored as the encoded bytes the
//! writer sent (one allocation holding key and value), with the codec they are in.
//!
//! Invariants:
//! - every live slot is in `table` exactly once, in the LRU list exactly once, and in
//!   `expiring` exactly when it has an expiry (`exp_idx` is its position there);
//! - `bytes` is the sum of the value lengths of live slots;
//! - an expired entry is never returned: reads check the deadline (lazy expiry), and
//!   [`Store::reclaim`] samples `expiring` each loop turn (Redis-style active expiry).
//!
//! Time is passed in as `now` (milliseconds on the broker's monotonic clock), so
//! tests drive it directly.
//!
//! Effects worth persisting (sets with their absolute deadline, deletes, evictions,
//! clears; not expiries, which the deadlines imply) go to the store's
//! [`EffectSink`], a type parameter: the broker's sink encodes log records, the
//! default [`NoEffects`] compiles to nothing. The store never sees the log format.

use hashbrown::HashTable;
use procmesh_proto::{Codec, Num, Raw, Writer};

const NIL: u32 = u32::MAX;

/// Cache bounds (the Node.js package's `cache` options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Maximum number of entries (least recently used evicted first); 0 = unbounded.
    pub max_entries: usize,
    /// Maximum total bytes of encoded values; when non-zero it replaces `max_entries`.
    pub max_bytes: usize,
    /// Default expiry in ms for writes without a TTL; 0 = none.
    pub default_ttl_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_entries: 10_000,
            max_bytes: 0,
            default_ttl_ms: 0,
        }
    }
}

struct Entry {
    /// Key bytes followed by value bytes.
    data: Box<[u8]>,
    key_len: u32,
    prev: u32,
    /// LRU successor, or the next free slot when the slot is free.
    next: u32,
    exp_idx: u32,
    /// Deadline in ms on the broker clock; 0 = none.
    expire_at: u64,
    codec: Codec,
}

impl Entry {
    #[inline]
    fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    #[inline]
    fn value(&self) -> &[u8] {
        &self.data[self.key_len as usize..]
    }

    #[inline]
    fn is_expired(&self, now: u64) -> bool {
        self.expire_at != 0 && self.expire_at <= now
    }
}

/// Why an atomic operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtomicError {
    /// The stored value is not a number.
    NotNumber,
}

/// Counters the store keeps for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Entries evicted by the LRU bounds.
    pub evicted: u64,
    /// Entries removed because their TTL passed.
    pub expired: u64,
}

/// Receives the store's effects as they happen, in order. Deadlines are in ms on
/// the broker clock (0 = none). Implementations must not allocate per call on the
/// hot path (append to a reused buffer).
pub trait EffectSink {
    /// `key` now holds `value` (in `codec`) until `expire_at`.
    fn set(&mut self, key: &[u8], codec: Codec, value: &[u8], expire_at: u64);
    /// `key` was deleted or evicted.
    fn del(&mut self, key: &[u8]);
    /// Everything was removed.
    fn clear(&mut self);
    /// `key` passed its deadline and was removed (lazily or by the sweep). Not a
    /// persistence effect (records carry absolute deadlines); near-cache tracking
    /// needs it.
    #[inline]
    fn expired(&mut self, _key: &[u8]) {}
    /// Whether the store should keep before-images of this turn's writes so that
    /// [`Store::undo_turn`] can take them back (a log that may refuse them).
    #[inline]
    fn wants_undo(&self) -> bool {
        false
    }
}

/// A sink that drops every effect (a store without persistence).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEffects;

impl EffectSink for NoEffects {
    #[inline]
    fn set(&mut self, _: &[u8], _: Codec, _: &[u8], _: u64) {}
    #[inline]
    fn del(&mut self, _: &[u8]) {}
    #[inline]
    fn clear(&mut self) {}
}

/// A sink switched on later (`None` records nothing: recovery replays with it off).
impl<E: EffectSink> EffectSink for Option<E> {
    #[inline]
    fn set(&mut self, key: &[u8], codec: Codec, value: &[u8], expire_at: u64) {
        if let Some(e) = self {
            e.set(key, codec, value, expire_at);
        }
    }
    #[inline]
    fn del(&mut self, key: &[u8]) {
        if let Some(e) = self {
            e.del(key);
        }
    }
    #[inline]
    fn clear(&mut self) {
        if let Some(e) = self {
            e.clear();
        }
    }
    #[inline]
    fn expired(&mut self, key: &[u8]) {
        if let Some(e) = self {
            e.expired(key);
        }
    }
    #[inline]
    fn wants_undo(&self) -> bool {
        self.as_ref().is_some_and(E::wants_undo)
    }
}

/// The state of one key before a write of this turn: `value` is `None` when the key
/// was absent. Ranges index [`Undo::bytes`].
struct Before {
    key: (usize, usize),
    value: Option<(usize, usize, Codec, u64)>,
}

/// Before-images of the current turn's writes, oldest first (reused buffers: no
/// allocation per write once grown). Bound: one turn's writes (a `clear` copies the
/// whole store); emptied by [`Store::commit_turn`] / [`Store::undo_turn`].
#[derive(Default)]
struct Undo {
    bytes: Vec<u8>,
    before: Vec<Before>,
    replaying: bool,
}

/// The cache, reporting its effects to `E`.
pub struct Store<E = NoEffects> {
    cfg: StoreConfig,
    hasher: ahash::RandomState,
    table: HashTable<u32>,
    entries: Vec<Entry>,
    free: u32,
    head: u32,
    tail: u32,
    len: usize,
    bytes: usize,
    expiring: Vec<u32>,
    cursor: usize,
    rng: u64,
    counters: StoreCounters,
    scratch: Vec<u8>,
    undo: Undo,
    effects: E,
}

/// Entries sampled per active-expiry round.
const SAMPLE: usize = 20;

impl Store {
    /// An empty store with the given bounds that records no effects.
    pub fn new(cfg: StoreConfig) -> Store {
        Store::with_effects(cfg, NoEffects)
    }
}

impl<E: EffectSink> Store<E> {
    /// An empty store with the given bounds, reporting effects to `effects`.
    pub fn with_effects(cfg: StoreConfig, effects: E) -> Store<E> {
        Store {
            cfg,
            hasher: ahash::RandomState::new(),
            table: HashTable::new(),
            entries: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            bytes: 0,
            expiring: Vec::new(),
            cursor: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            counters: StoreCounters::default(),
            scratch: Vec::new(),
            undo: Undo::default(),
            effects,
        }
    }

    /// The effect sink (to switch it on, or to drain what it collected).
    pub fn effects_mut(&mut self) -> &mut E {
        &mut self.effects
    }

    /// Visits up to `max` live entries from slot `from` on, with their absolute
    /// deadline (0 = none). Returns the slot to continue from, `None` when done.
    pub fn visit_slots(
        &self,
        from: usize,
        max: usize,
        now: u64,
        mut f: impl FnMut(&str, Raw<'_>, u64),
    ) -> Option<usize> {
        let end = from.saturating_add(max).min(self.entries.len());
        for e in &self.entries[from.min(end)..end] {
            if e.data.is_empty() || e.is_expired(now) {
                continue;
            }
            f(
                std::str::from_utf8(e.key()).unwrap_or_default(),
                Raw::new(e.codec, e.value()),
                e.expire_at,
            );
        }
        (end < self.entries.len()).then_some(end)
    }

    /// The bounds in force.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Number of entries held (expired ones not yet reclaimed included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total bytes of stored values.
    pub fn value_bytes(&self) -> usize {
        self.bytes
    }

    /// Eviction and expiry counters.
    pub fn counters(&self) -> StoreCounters {
        self.counters
    }

    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn find(&self, key: &[u8]) -> Option<u32> {
        let h = self.hash(key);
        let entries = &self.entries;
        self.table
            .find(h, |&i| entries[i as usize].key() == key)
            .copied()
    }

    /// Looks a key up, applying lazy expiry. Returns its slot when live.
    #[inline]
    fn live(&mut self, key: &[u8], now: u64) -> Option<u32> {
        let slot = self.find(key)?;
        if self.entries[slot as usize].is_expired(now) {
            self.effects.expired(key);
            self.remove_slot(slot);
            self.counters.expired += 1;
            return None;
        }
        Some(slot)
    }

    /// The value of `key`, marking it most recently used.
    #[inline]
    pub fn get(&mut self, key: &str, now: u64) -> Option<Raw<'_>> {
        let slot = self.live(key.as_bytes(), now)?;
        self.touch(slot);
        let e = &self.entries[slot as usize];
        Some(Raw::new(e.codec, e.value()))
    }

    /// Whether `key` holds a live value.
    pub fn has(&mut self, key: &str, now: u64) -> bool {
        self.live(key.as_bytes(), now).is_some()
    }

    /// Remaining time to live of `key` in ms (`None`: missing; `Some(0)`: no expiry).
    pub fn ttl_left(&mut self, key: &str, now: u64) -> Option<u64> {
        let slot = self.live(key.as_bytes(), now)?;
        let e = &self.entries[slot as usize];
        Some(if e.expire_at == 0 {
            0
        } else {
            e.expire_at - now
        })
    }

    fn deadline(&self, ttl_ms: Option<u64>, now: u64) -> u64 {
        match ttl_ms {
            Some(t) if t > 0 => now.saturating_add(t),
            _ if self.cfg.default_ttl_ms > 0 => now.saturating_add(self.cfg.default_ttl_ms),
            _ => 0,
        }
    }

    /// Stores `value` under `key`. `ttl_ms` absent or 0 means the default TTL.
    pub fn set(&mut self, key: &str, value: Raw<'_>, ttl_ms: Option<u64>, now: u64) {
        let deadline = self.deadline(ttl_ms, now);
        self.put(key.as_bytes(), value.codec, value.bytes, deadline);
    }

    /// Stores with an absolute deadline (0 = none): used by replay and by updates
    /// that keep the remaining TTL.
    pub fn set_with_deadline(&mut self, key: &str, value: Raw<'_>, expire_at: u64) {
        self.put(key.as_bytes(), value.codec, value.bytes, expire_at);
    }

    fn put(&mut self, key: &[u8], codec: Codec, value: &[u8], expire_at: u64) -> u32 {
        let found = self.find(key);
        self.put_at(found, key, codec, value, expire_at)
    }

    /// `put` when the caller already looked the key up (`found` is its slot, if any):
    /// atomics update in place with one hash lookup, not two.
    fn put_at(
        &mut self,
        found: Option<u32>,
        key: &[u8],
        codec: Codec,
        value: &[u8],
        expire_at: u64,
    ) -> u32 {
        if !self.undo.replaying && self.effects.wants_undo() {
            self.remember(found, key);
        }
        let slot = match found {
            Some(slot) => {
                let e = &mut self.entries[slot as usize];
                let old_len = e.data.len() - e.key_len as usize;
                if old_len == value.len() {
                    let kl = e.key_len as usize;
                    e.data[kl..].copy_from_slice(value);
                } else {
                    let mut data = Vec::with_capacity(key.len() + value.len());
                    data.extend_from_slice(key);
                    data.extend_from_slice(value);
                    e.data = data.into_boxed_slice();
                }
                e.codec = codec;
                self.bytes = self.bytes - old_len + value.len();
                self.set_expiry(slot, expire_at);
                self.touch(slot);
                slot
            }
            None => {
                let mut data = Vec::with_capacity(key.len() + value.len());
                data.extend_from_slice(key);
                data.extend_from_slice(value);
                let entry = Entry {
                    data: data.into_boxed_slice(),
                    key_len: key.len() as u32,
                    prev: NIL,
                    next: NIL,
                    exp_idx: NIL,
                    expire_at: 0,
                    codec,
                };
                let slot = if self.free != NIL {
                    let s = self.free;
                    self.free = self.entries[s as usize].next;
                    self.entries[s as usize] = entry;
                    s
                } else {
                    self.entries.push(entry);
                    (self.entries.len() - 1) as u32
                };
                let h = self.hash(key);
                let entries = &self.entries;
                let hasher = &self.hasher;
                self.table
                    .insert_unique(h, slot, |&i| hasher.hash_one(entries[i as usize].key()));
                self.len += 1;
                self.bytes += value.len();
                self.link_front(slot);
                self.set_expiry(slot, expire_at);
                slot
            }
        };
        if self.undo.replaying {
            // Restoring the turn's starting state, which was within bounds.
            return slot;
        }
        self.effects.set(key, codec, value, expire_at);
        self.enforce_bounds(slot);
        slot
    }

    /// Records the state of `key` (at `slot`, or absent) before a write changes it.
    fn remember(&mut self, slot: Option<u32>, key: &[u8]) {
        let u = &mut self.undo;
        let k = u.bytes.len();
        u.bytes.extend_from_slice(key);
        let value = slot.map(|s| {
            let e = &self.entries[s as usize];
            let v = u.bytes.len();
            u.bytes.extend_from_slice(e.value());
            (v, e.value().len(), e.codec, e.expire_at)
        });
        u.before.push(Before {
            key: (k, key.len()),
            value,
        });
    }

    /// Records the entry at `slot` before a write removes it.
    fn remember_slot(&mut self, slot: u32) {
        let u = &mut self.undo;
        let e = &self.entries[slot as usize];
        let k = u.bytes.len();
        u.bytes.extend_from_slice(e.key());
        let v = u.bytes.len();
        u.bytes.extend_from_slice(e.value());
        u.before.push(Before {
            key: (k, e.key().len()),
            value: Some((v, e.value().len(), e.codec, e.expire_at)),
        });
    }

    /// Forgets the before-images of this turn: its writes are committed.
    pub fn commit_turn(&mut self) {
        self.undo.bytes.clear();
        self.undo.before.clear();
    }

    /// Takes back every write of this turn (they were not persisted): each key
    /// touched returns to its state at the start of the turn, newest write undone
    /// first. The undo is not reported to the effect sink. Returns the writes undone.
    pub fn undo_turn(&mut self) -> usize {
        let mut u = std::mem::take(&mut self.undo);
        self.undo.replaying = true;
        let n = u.before.len();
        for b in u.before.iter().rev() {
            let key = &u.bytes[b.key.0..b.key.0 + b.key.1];
            match b.value {
                Some((v, len, codec, expire_at)) => {
                    self.put(key, codec, &u.bytes[v..v + len], expire_at);
                }
                None => {
                    if let Some(slot) = self.find(key) {
                        self.remove_slot(slot);
                    }
                }
            }
        }
        u.bytes.clear();
        u.before.clear();
        self.undo = u;
        n
    }

    fn enforce_bounds(&mut self, keep: u32) {
        loop {
            let over = if self.cfg.max_bytes > 0 {
                self.bytes > self.cfg.max_bytes
            } else {
                self.cfg.max_entries > 0 && self.len > self.cfg.max_entries
            };
            if !over {
                return;
            }
            let victim = self.tail;
            if victim == NIL || victim == keep {
                // The entry just written is the only one left: a single value larger
                // than max_bytes is kept rather than refused (as the Node.js store does).
                return;
            }
            self.remove_logged(victim);
            self.counters.evicted += 1;
        }
    }

    fn set_expiry(&mut self, slot: u32, expire_at: u64) {
        let e = &mut self.entries[slot as usize];
        e.expire_at = expire_at;
        match (expire_at != 0, e.exp_idx != NIL) {
            (true, false) => {
                e.exp_idx = self.expiring.len() as u32;
                self.expiring.push(slot);
            }
            (false, true) => {
                let idx = e.exp_idx;
                e.exp_idx = NIL;
                self.unlist_expiring(idx);
            }
            _ => {}
        }
    }

    fn unlist_expiring(&mut self, idx: u32) {
        let last = self
            .expiring
            .pop()
            .expect("invariant: expiring is non-empty when an entry is listed");
        if (idx as usize) < self.expiring.len() {
            self.expiring[idx as usize] = last;
            self.entries[last as usize].exp_idx = idx;
        }
    }

    /// Removes `key`; true if it held a live value.
    pub fn del(&mut self, key: &str, now: u64) -> bool {
        match self.find(key.as_bytes()) {
            Some(slot) => {
                let live = !self.entries[slot as usize].is_expired(now);
                self.remove_logged(slot);
                live
            }
            None => false,
        }
    }

    /// Removes a slot as an effect worth logging (delete, eviction); expiry is not
    /// logged because records carry absolute deadlines.
    fn remove_logged(&mut self, slot: u32) {
        if !self.undo.replaying && self.effects.wants_undo() {
            self.remember_slot(slot);
        }
        self.effects.del(self.entries[slot as usize].key());
        self.remove_slot(slot);
    }

    fn remove_slot(&mut self, slot: u32) {
        let h = self.hash(self.entries[slot as usize].key());
        if let Ok(found) = self.table.find_entry(h, |&i| i == slot) {
            found.remove();
        }
        self.unlink(slot);
        let e = &mut self.entries[slot as usize];
        let idx = e.exp_idx;
        e.exp_idx = NIL;
        self.bytes -= e.data.len() - e.key_len as usize;
        e.data = Box::default();
        e.key_len = 0;
        e.next = self.free;
        self.free = slot;
        self.len -= 1;
        if idx != NIL {
            self.unlist_expiring(idx);
        }
    }

    /// Every live key.
    pub fn keys(&mut self, now: u64) -> Vec<&str> {
        let mut out = Vec::with_capacity(self.len);
        let mut s = self.head;
        while s != NIL {
            let e = &self.entries[s as usize];
            if !e.is_expired(now) {
                out.push(std::str::from_utf8(e.key()).unwrap_or_default());
            }
            s = e.next;
        }
        out
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        if self.effects.wants_undo() {
            let mut s = self.head;
            while s != NIL {
                self.remember_slot(s);
                s = self.entries[s as usize].next;
            }
        }
        self.effects.clear();
        self.table.clear();
        self.entries.clear();
        self.entries.shrink_to(1024);
        self.expiring.clear();
        self.expiring.shrink_to(1024);
        self.free = NIL;
        self.head = NIL;
        self.tail = NIL;
        self.len = 0;
        self.bytes = 0;
        self.cursor = 0;
    }

    /// Adds `by` to the number at `key` (a missing key counts from 0) and returns the
    /// new number. The key keeps its remaining TTL; a new key gets the default TTL.
    pub fn incr(&mut self, key: &str, by: Num, now: u64) -> Result<Num, AtomicError> {
        let found = self.live(key.as_bytes(), now);
        let (current, codec, deadline) = match found {
            Some(slot) => {
                let e = &self.entries[slot as usize];
                match Raw::new(e.codec, e.value()).as_num() {
                    Some(n) => (n, e.codec, e.expire_at),
                    None => return Err(AtomicError::NotNumber),
                }
            }
            None => (Num::Int(0), Codec::MsgPack, self.deadline(None, now)),
        };
        let result = current + by;
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        result.write(&mut Writer::new(codec, &mut buf));
        self.put_at(found, key.as_bytes(), codec, &buf, deadline);
        self.scratch = buf;
        Ok(result)
    }

    /// Compare-and-swap: when the current value structurally equals `prev` (absent
    /// `prev` matches a missing key), stores `next`, or deletes the key when `next`
    /// is absent. An in-place update keeps the remaining TTL; a new key gets the
    /// default TTL.
    pub fn cas(
        &mut self,
        key: &str,
        prev: Option<Raw<'_>>,
        next: Option<Raw<'_>>,
        now: u64,
    ) -> bool {
        let slot = self.live(key.as_bytes(), now);
        let matches = match (slot, prev) {
            (None, None) => true,
            (Some(s), Some(p)) => {
                let e = &self.entries[s as usize];
                Raw::new(e.codec, e.value()).structurally_eq(&p)
            }
            _ => false,
        };
        if !matches {
            return false;
        }
        match (slot, next) {
            (Some(s), None) => self.remove_logged(s),
            (Some(s), Some(n)) => {
                let deadline = self.entries[s as usize].expire_at;
                self.put_at(Some(s), key.as_bytes(), n.codec, n.bytes, deadline);
            }
            (None, Some(n)) => {
                let deadline = self.deadline(None, now);
                self.put_at(None, key.as_bytes(), n.codec, n.bytes, deadline);
            }
            (None, None) => {}
        }
        true
    }

    /// Active expiry: samples entries with a TTL and removes the expired ones, for at
    /// most `budget` samples. Returns true when more expired entries are likely
    /// (the caller should run again soon).
    pub fn reclaim(&mut self, now: u64, budget: usize) -> bool {
        let mut sampled = 0;
        while sampled < budget && !self.expiring.is_empty() {
            let mut expired = 0;
            let round = SAMPLE.min(self.expiring.len());
            for _ in 0..round {
                if self.expiring.is_empty() {
                    break;
                }
                if self.cursor >= self.expiring.len() {
                    // Restart at a random place so a hot region is not always first.
                    self.rng ^= self.rng << 13;
                    self.rng ^= self.rng >> 7;
                    self.rng ^= self.rng << 17;
                    self.cursor = (self.rng % self.expiring.len() as u64) as usize;
                }
                let slot = self.expiring[self.cursor];
                if self.entries[slot as usize].is_expired(now) {
                    // swap_remove moves another entry into `cursor`: look at it next.
                    self.effects.expired(self.entries[slot as usize].key());
                    self.remove_slot(slot);
                    self.counters.expired += 1;
                    expired += 1;
                } else {
                    self.cursor += 1;
                }
                sampled += 1;
            }
            if expired * 4 < round {
                return false;
            }
        }
        !self.expiring.is_empty() && sampled >= budget
    }

    fn touch(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.link_front(slot);
        }
    }

    fn link_front(&mut self, slot: u32) {
        let old = self.head;
        {
            let e = &mut self.entries[slot as usize];
            e.prev = NIL;
            e.next = old;
        }
        if old != NIL {
            self.entries[old as usize].prev = slot;
        } else {
            self.tail = slot;
        }
        self.head = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let e = &self.entries[slot as usize];
            (e.prev, e.next)
        };
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procmesh_proto::value::validate;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn j(s: &str) -> Raw<'_> {
        validate(Codec::Json, s.as_bytes()).unwrap()
    }

    fn text(r: Option<Raw<'_>>) -> Option<String> {
        r.map(|r| {
            let mut out = Vec::new();
            procmesh_proto::value::transcode(r, Codec::Json, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        })
    }

    fn store(max: usize) -> Store {
        Store::new(StoreConfig {
            max_entries: max,
            ..Default::default()
        })
    }

    #[test]
    fn ttl_expires_lazily_and_by_reclaim() {
        let mut s = store(0);
        s.set("a", j("1"), Some(100), 0);
        s.set("b", j("2"), None, 0);
        assert_eq!(text(s.get("a", 99)), Some("1".into()));
        assert_eq!(s.get("a", 100), None);
        s.set("c", j("3"), Some(10), 0);
        assert_eq!(s.len(), 2);
        s.reclaim(50, 100);
        assert_eq!(s.len(), 1);
        assert!(s.has("b", 1_000_000));
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let mut s = store(2);
        s.set("a", j("1"), None, 0);
        s.set("b", j("2"), None, 0);
        s.get("a", 0);
        s.set("c", j("3"), None, 0);
        assert!(s.has("a", 0));
        assert!(!s.has("b", 0));
        assert!(s.has("c", 0));
        assert_eq!(s.counters().evicted, 1);
    }

    #[test]
    fn max_bytes_replaces_max_entries() {
        let mut s = Store::new(StoreConfig {
            max_entries: 1,
            max_bytes: 10,
            default_ttl_ms: 0,
        });
        s.set("a", j("\"xxx\""), None, 0); // 5 bytes
        s.set("b", j("\"yyy\""), None, 0); // 10 total
        assert_eq!(s.len(), 2);
        s.set("c", j("1"), None, 0);
        assert!(!s.has("a", 0));
        assert_eq!(s.value_bytes(), 6);
    }

    /// A sink that asks for undo, counting what reaches it.
    #[derive(Default)]
    struct Undoable(usize);

    impl EffectSink for Undoable {
        fn set(&mut self, _: &[u8], _: Codec, _: &[u8], _: u64) {
            self.0 += 1;
        }
        fn del(&mut self, _: &[u8]) {
            self.0 += 1;
        }
        fn clear(&mut self) {
            self.0 += 1;
        }
        fn wants_undo(&self) -> bool {
            true
        }
    }

    #[test]
    fn undo_turn_restores_every_key_to_the_start_of_the_turn() {
        let cfg = StoreConfig {
            max_entries: 3,
            ..StoreConfig::default()
        };
        let mut s = Store::with_effects(cfg, Undoable::default());
        s.set("a", j("1"), Some(500), 0);
        s.set("b", j("\"two\""), None, 0);
        s.set("c", j("3"), None, 0);
        s.commit_turn();
        let logged = s.effects_mut().0;
        // A turn: update in place, resize, delete, a new key evicting the LRU one,
        // an incr, then a clear and a write after it.
        s.set("a", j("9"), None, 10);
        s.set("b", j("\"a longer value\""), None, 10);
        assert!(s.del("c", 10));
        s.set("d", j("4"), None, 10);
        s.set("e", j("5"), None, 10);
        assert_eq!(s.incr("n", Num::Int(1), 10), Ok(Num::Int(1)));
        s.clear();
        s.set("z", j("0"), None, 10);
        assert!(s.undo_turn() > 0);
        assert_eq!(s.len(), 3);
        assert_eq!(text(s.get("a", 20)).as_deref(), Some("1"));
        assert_eq!(s.ttl_left("a", 20), Some(480), "the deadline is restored");
        assert_eq!(text(s.get("b", 20)).as_deref(), Some("\"two\""));
        assert_eq!(text(s.get("c", 20)).as_deref(), Some("3"));
        for k in ["d", "e", "n", "z"] {
            assert!(!s.has(k, 20), "{k} was written in the undone turn");
        }
        assert_eq!(s.value_bytes(), 1 + 5 + 1);
        assert_eq!(
            s.effects_mut().0 - logged,
            10,
            "the undo itself is not logged"
        );
        assert_eq!(s.undo_turn(), 0, "nothing left to undo");
    }

    #[test]
    fn incr_keeps_ttl_and_integer_type() {
        let mut s = store(0);
        s.set("n", j("5"), Some(1000), 0);
        assert_eq!(s.incr("n", Num::Int(2), 100), Ok(Num::Int(7)));
        assert_eq!(s.ttl_left("n", 100), Some(900));
        assert_eq!(s.incr("n", Num::Float(0.5), 200), Ok(Num::Float(7.5)));
        assert_eq!(s.get("n", 1000), None);
        assert_eq!(s.incr("fresh", -Num::Int(3), 0), Ok(Num::Int(-3)));
        s.set("s", j("\"x\""), None, 0);
        assert_eq!(s.incr("s", Num::Int(1), 0), Err(AtomicError::NotNumber));
        assert_eq!(
            Num::Int(i64::MAX) + Num::Int(1),
            Num::UInt(i64::MAX as u64 + 1)
        );
    }

    #[test]
    fn cas_is_structural_and_keeps_ttl() {
        let mut s = store(0);
        assert!(s.cas("k", None, Some(j(r#"{"a":1,"b":2}"#)), 0));
        assert!(!s.cas("k", None, Some(j("1")), 0));
        s.set("k", j(r#"{"a":1,"b":2}"#), Some(500), 0);
        assert!(s.cas("k", Some(j(r#"{"b":2.0,"a":1}"#)), Some(j("3")), 100));
        assert_eq!(s.ttl_left("k", 100), Some(400));
        assert!(s.cas("k", Some(j("3")), None, 100));
        assert!(!s.has("k", 100));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, i64, Option<u64>),
        Get(u8),
        Del(u8),
        Incr(u8, i64),
        Advance(u64),
        Reclaim,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..16, any::<i32>(), prop::option::of(1u64..50))
                .prop_map(|(k, v, t)| Op::Set(k, v as i64, t)),
            (0u8..16).prop_map(Op::Get),
            (0u8..16).prop_map(Op::Del),
            (0u8..16, -5i64..5).prop_map(|(k, b)| Op::Incr(k, b)),
            (0u64..30).prop_map(Op::Advance),
            Just(Op::Reclaim),
        ]
    }

    proptest! {
        // Model test: an unbounded store behaves like a BTreeMap with deadlines.
        #[test]
        fn matches_model(ops in prop::collection::vec(op(), 1..200)) {
            let mut s = store(0);
            let mut model: BTreeMap<String, (i64, u64)> = BTreeMap::new();
            let mut now = 1u64;
            for op in ops {
                model.retain(|_, (_, d)| *d == 0 || *d > now);
                match op {
                    Op::Set(k, v, t) => {
                        let key = k.to_string();
                        let bytes = v.to_string();
                        s.set(&key, j(&bytes), t, now);
                        model.insert(key, (v, t.map_or(0, |t| now + t)));
                    }
                    Op::Get(k) => {
                        let key = k.to_string();
                        let got = s.get(&key, now).and_then(|r| r.as_i64());
                        prop_assert_eq!(got, model.get(&key).map(|e| e.0));
                    }
                    Op::Del(k) => {
                        let key = k.to_string();
                        prop_assert_eq!(s.del(&key, now), model.remove(&key).is_some());
                    }
                    Op::Incr(k, b) => {
                        let key = k.to_string();
                        let r = s.incr(&key, Num::Int(b), now).unwrap();
                        let e = model.entry(key).or_insert((0, 0));
                        e.0 += b;
                        prop_assert_eq!(r, Num::Int(e.0));
                    }
                    Op::Advance(d) => now += d,
                    Op::Reclaim => { s.reclaim(now, 1000); }
                }
                let mut keys: Vec<String> = s.keys(now).into_iter().map(String::from).collect();
                keys.sort();
                model.retain(|_, (_, d)| *d == 0 || *d > now);
                let want: Vec<String> = model.keys().cloned().collect();
                prop_assert_eq!(keys, want);
                prop_assert!(s.len() >= model.len());
            }
        }
    }
}
