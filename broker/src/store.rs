//! The cache: keys, values, TTLs and LRU order (PROTOCOL.md §6).
//!
//! `store` owns every cached entry and knows nothing about sockets or codecs beyond
//! the tag it keeps beside each value. Values are stored as the encoded bytes the
//! writer sent, with the codec they are in.
//!
//! Layout (chosen so a lookup follows as few pointers as possible, and a key costs
//! few bytes beyond its payload):
//!
//! ```text
//! table     HashTable<u32>      slot index per key (hashbrown: 1 control byte + 4 B)
//! entries   Vec<Entry>          slab, 64 B per slot, slots never move while live
//!   Entry   data: Inline {codec, key_len, len, [u8; 52]}   key + value inside the entry
//!              | Heap   {codec, key_len, Box<[u8]>}        larger: one allocation
//!              | Free   {next}                             free-list link
//!           used: u32            the access clock at the last read or write (LRU)
//!           exp_idx: u32         position in `expiring`, NIL without a deadline
//! expiring  Vec<Deadline>       (slot, deadline) of the keys with a TTL only
//! ```
//!
//! A hit costs the table's control bytes, its bucket and one entry (for a key and
//! value of at most 52 bytes together): no key allocation to follow, no list
//! neighbours to relink. LRU is sampled (Redis-style): every read or write stamps the
//! entry with the store's access clock, and an eviction looks at [`LRU_SAMPLES`]
//! random live entries and evicts the one used longest ago. A store of at most
//! `2 × LRU_SAMPLES` slots is scanned whole, so small caches evict exactly in LRU
//! order. The clock is 32 bits: an entry idle for more than 2^32 reads and writes
//! looks recently used again (Redis's LRU clock wraps the same way, after 194 days).
//!
//! Invariants:
//! - every live slot is in `table` exactly once, and in `expiring` exactly when it
//!   has a deadline (`exp_idx` is its position there); free slots are on the free
//!   list (`free`, linked through [`Data::Free`]);
//! - `bytes` is the sum of the value lengths of live slots;
//! - a live slot keeps its index until it is removed (snapshots walk the slab by
//!   index across loop turns while the store changes);
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

/// Key and value bytes kept inside the entry itself when together at most this long
/// (the rest of a 64-byte entry is its tags, lengths, LRU stamp and expiry index).
pub const INLINE_BYTES: usize = 52;

/// Live entries an eviction compares (Redis's `maxmemory-samples`, which defaults
/// to 5); more samples evict closer to true LRU order at one cache miss each.
pub const LRU_SAMPLES: usize = 8;

/// Slots an LRU sample walks forward from its random start to find a live entry
/// (a slab left sparse by deletes); past that the eviction scans the slab.
const LRU_PROBE: usize = 64;

/// Cache bounds (the Node.js package's `cache` options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Maximum number of entries (least recently used evicted first, sampled: see
    /// the module docs); 0 = unbounded.
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

/// Where a slot keeps its key and value.
enum Data {
    /// Key then value inside the entry: no allocation and no pointer to follow.
    Inline {
        codec: Codec,
        key_len: u8,
        len: u8,
        buf: [u8; INLINE_BYTES],
    },
    /// Key then value in one allocation.
    Heap {
        codec: Codec,
        key_len: u32,
        bytes: Box<[u8]>,
    },
    /// A free slot, linking to the next free one.
    Free { next: u32 },
}

impl Data {
    #[inline]
    fn new(key: &[u8], codec: Codec, value: &[u8]) -> Data {
        let len = key.len() + value.len();
        if len <= INLINE_BYTES {
            let mut buf = [0u8; INLINE_BYTES];
            buf[..key.len()].copy_from_slice(key);
            buf[key.len()..len].copy_from_slice(value);
            Data::Inline {
                codec,
                key_len: key.len() as u8,
                len: len as u8,
                buf,
            }
        } else {
            let mut bytes = Vec::with_capacity(len);
            bytes.extend_from_slice(key);
            bytes.extend_from_slice(value);
            Data::Heap {
                codec,
                key_len: key.len() as u32,
                bytes: bytes.into_boxed_slice(),
            }
        }
    }

    #[inline]
    fn key(&self) -> &[u8] {
        match self {
            Data::Inline { key_len, buf, .. } => &buf[..*key_len as usize],
            Data::Heap { key_len, bytes, .. } => &bytes[..*key_len as usize],
            Data::Free { .. } => &[],
        }
    }

    #[inline]
    fn value(&self) -> &[u8] {
        match self {
            Data::Inline {
                key_len, len, buf, ..
            } => &buf[*key_len as usize..*len as usize],
            Data::Heap { key_len, bytes, .. } => &bytes[*key_len as usize..],
            Data::Free { .. } => &[],
        }
    }

    #[inline]
    fn codec(&self) -> Codec {
        match self {
            Data::Inline { codec, .. } | Data::Heap { codec, .. } => *codec,
            Data::Free { .. } => Codec::MsgPack,
        }
    }

    #[inline]
    fn raw(&self) -> Raw<'_> {
        Raw::new(self.codec(), self.value())
    }

    #[inline]
    fn is_free(&self) -> bool {
        matches!(self, Data::Free { .. })
    }

    /// Replaces the value, in place when the new one fits where the old one was.
    #[inline]
    fn set_value(&mut self, new_codec: Codec, value: &[u8]) {
        match self {
            Data::Inline {
                codec,
                key_len,
                len,
                buf,
            } if *key_len as usize + value.len() <= INLINE_BYTES => {
                let k = *key_len as usize;
                let end = k + value.len();
                buf[k..end].copy_from_slice(value);
                *len = end as u8;
                *codec = new_codec;
            }
            Data::Heap {
                codec,
                key_len,
                bytes,
            } if bytes.len() - *key_len as usize == value.len() => {
                bytes[*key_len as usize..].copy_from_slice(value);
                *codec = new_codec;
            }
            _ => *self = Data::new(self.key(), new_codec, value),
        }
    }
}

struct Entry {
    data: Data,
    /// The store's access clock at this entry's last read or write.
    used: u32,
    /// Position in `expiring`, or NIL when the entry has no deadline.
    exp_idx: u32,
}

/// One entry with a deadline (ms on the broker clock, never 0).
#[derive(Clone, Copy)]
struct Deadline {
    slot: u32,
    at: u64,
}

/// Key equality with word compares for the common short keys (no `bcmp` call).
#[inline(always)]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        let w =
            |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
        return w(a, 0) == w(b, 0) && w(a, n - 8) == w(b, n - 8);
    }
    if (4..8).contains(&n) {
        let w =
            |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().unwrap_or([0; 4]));
        return w(a, 0) == w(b, 0) && w(a, n - 4) == w(b, n - 4);
    }
    a == b
}

/// Why an atomic operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtomicError {
    /// The stored value is not a number.
    NotNumber,
    /// The result is not finite (a float sum past ±f64::MAX): nothing was stored.
    NotFinite,
}

/// Counters the store keeps for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Entries evicted by the LRU bounds.
    pub evicted: u64,
    /// Entries removed because their TTL passed.
    pub expired: u64,
    /// Reads (`get`, each key of `mget`, `has`) that found a live value.
    pub hits: u64,
    /// Reads (`get`, each key of `mget`, `has`) that found none (missing or expired).
    pub misses: u64,
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
    len: usize,
    bytes: usize,
    expiring: Vec<Deadline>,
    cursor: usize,
    rng: u64,
    /// Ticks once per read or write; entries keep the tick of their last use.
    clock: u32,
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
            len: 0,
            bytes: 0,
            expiring: Vec::new(),
            cursor: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            clock: 0,
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
            if e.data.is_free() || self.entry_expired(e, now) {
                continue;
            }
            f(
                std::str::from_utf8(e.data.key()).unwrap_or_default(),
                e.data.raw(),
                self.deadline_of(e),
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

    /// Eviction, expiry and hit/miss counters.
    pub fn counters(&self) -> StoreCounters {
        self.counters
    }

    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline(always)]
    fn find(&self, key: &[u8]) -> Option<u32> {
        let h = self.hash(key);
        let entries = &self.entries;
        self.table
            .find(h, |&i| same_key(entries[i as usize].data.key(), key))
            .copied()
    }

    /// The absolute deadline of `e` (0 = none).
    #[inline]
    fn deadline_of(&self, e: &Entry) -> u64 {
        if e.exp_idx == NIL {
            0
        } else {
            self.expiring[e.exp_idx as usize].at
        }
    }

    #[inline]
    fn entry_expired(&self, e: &Entry, now: u64) -> bool {
        e.exp_idx != NIL && self.expiring[e.exp_idx as usize].at <= now
    }

    #[inline]
    fn is_expired(&self, slot: u32, now: u64) -> bool {
        self.entry_expired(&self.entries[slot as usize], now)
    }

    /// Marks `slot` as used now (sampled LRU).
    #[inline]
    fn stamp(&mut self, slot: u32) {
        self.clock = self.clock.wrapping_add(1);
        self.entries[slot as usize].used = self.clock;
    }

    /// Looks a key up, applying lazy expiry. Returns its slot when live. (Inlined:
    /// as a call it cost 20 instructions of register saves per lookup.)
    #[inline(always)]
    fn live(&mut self, key: &[u8], now: u64) -> Option<u32> {
        let slot = self.find(key)?;
        if self.is_expired(slot, now) {
            self.expire(slot);
            return None;
        }
        Some(slot)
    }

    /// Lazy expiry of a slot a read found past its deadline (kept out of line so
    /// the lookup stays small enough to inline).
    #[cold]
    #[inline(never)]
    fn expire(&mut self, slot: u32) {
        self.effects.expired(self.entries[slot as usize].data.key());
        self.remove_slot(slot);
        self.counters.expired += 1;
    }

    /// The value of `key`, marking it most recently used (counted as a hit or a miss).
    #[inline]
    pub fn get(&mut self, key: &str, now: u64) -> Option<Raw<'_>> {
        let Some(slot) = self.live(key.as_bytes(), now) else {
            self.counters.misses += 1;
            return None;
        };
        self.counters.hits += 1;
        self.stamp(slot);
        Some(self.entries[slot as usize].data.raw())
    }

    /// Whether `key` holds a live value (counted as a hit or a miss).
    pub fn has(&mut self, key: &str, now: u64) -> bool {
        let live = self.live(key.as_bytes(), now).is_some();
        if live {
            self.counters.hits += 1;
        } else {
            self.counters.misses += 1;
        }
        live
    }

    /// Remaining time to live of `key` in ms (`None`: missing; `Some(0)`: no expiry).
    pub fn ttl_left(&mut self, key: &str, now: u64) -> Option<u64> {
        let slot = self.live(key.as_bytes(), now)?;
        let at = self.deadline_of(&self.entries[slot as usize]);
        Some(if at == 0 { 0 } else { at - now })
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
                let data = &mut self.entries[slot as usize].data;
                let old_len = data.value().len();
                data.set_value(codec, value);
                self.bytes = self.bytes - old_len + value.len();
                self.set_expiry(slot, expire_at);
                slot
            }
            None => {
                let entry = Entry {
                    data: Data::new(key, codec, value),
                    used: 0,
                    exp_idx: NIL,
                };
                let slot = if self.free != NIL {
                    let s = self.free;
                    if let Data::Free { next } = self.entries[s as usize].data {
                        self.free = next;
                    }
                    self.entries[s as usize] = entry;
                    s
                } else {
                    self.entries.push(entry);
                    (self.entries.len() - 1) as u32
                };
                let h = self.hash(key);
                let entries = &self.entries;
                let hasher = &self.hasher;
                self.table.insert_unique(h, slot, |&i| {
                    hasher.hash_one(entries[i as usize].data.key())
                });
                self.len += 1;
                self.bytes += value.len();
                self.set_expiry(slot, expire_at);
                slot
            }
        };
        self.stamp(slot);
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
            let at = if e.exp_idx == NIL {
                0
            } else {
                self.expiring[e.exp_idx as usize].at
            };
            let v = u.bytes.len();
            u.bytes.extend_from_slice(e.data.value());
            (v, e.data.value().len(), e.data.codec(), at)
        });
        u.before.push(Before {
            key: (k, key.len()),
            value,
        });
    }

    /// Records the entry at `slot` before a write removes it.
    fn remember_slot(&mut self, slot: u32) {
        let e = &self.entries[slot as usize];
        let at = self.deadline_of(e);
        let u = &mut self.undo;
        let k = u.bytes.len();
        u.bytes.extend_from_slice(e.data.key());
        let v = u.bytes.len();
        u.bytes.extend_from_slice(e.data.value());
        u.before.push(Before {
            key: (k, e.data.key().len()),
            value: Some((v, e.data.value().len(), e.data.codec(), at)),
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
            let Some(victim) = self.lru_victim(keep) else {
                // The entry just written is the only one left: a single value larger
                // than max_bytes is kept rather than refused (as the Node.js store does).
                return;
            };
            self.remove_logged(victim);
            self.counters.evicted += 1;
        }
    }

    #[inline]
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The live entry other than `keep` used longest ago among [`LRU_SAMPLES`] random
    /// ones (every one, in a slab of at most `2 × LRU_SAMPLES` slots).
    fn lru_victim(&mut self, keep: u32) -> Option<u32> {
        let n = self.entries.len();
        let clock = self.clock;
        let mut best: Option<(u32, u32)> = None; // (age, slot)
        let mut consider = |entries: &[Entry], s: usize| -> bool {
            let e = &entries[s];
            if e.data.is_free() || s as u32 == keep {
                return false;
            }
            let age = clock.wrapping_sub(e.used);
            if best.is_none_or(|(a, _)| age > a) {
                best = Some((age, s as u32));
            }
            true
        };
        if n <= 2 * LRU_SAMPLES {
            for s in 0..n {
                consider(&self.entries, s);
            }
            return best.map(|(_, s)| s);
        }
        let mut any = false;
        for _ in 0..LRU_SAMPLES {
            let mut s = (self.next_random() % n as u64) as usize;
            for _ in 0..LRU_PROBE {
                if consider(&self.entries, s) {
                    any = true;
                    break;
                }
                s = if s + 1 == n { 0 } else { s + 1 };
            }
        }
        if !any {
            // Fewer than one slot in LRU_PROBE is live: any live one will do.
            for s in 0..n {
                if consider(&self.entries, s) {
                    break;
                }
            }
        }
        best.map(|(_, s)| s)
    }

    #[inline]
    fn set_expiry(&mut self, slot: u32, expire_at: u64) {
        let idx = self.entries[slot as usize].exp_idx;
        if expire_at == 0 && idx == NIL {
            return;
        }
        self.change_expiry(slot, idx, expire_at);
    }

    fn change_expiry(&mut self, slot: u32, idx: u32, expire_at: u64) {
        match (expire_at != 0, idx != NIL) {
            (true, false) => {
                self.entries[slot as usize].exp_idx = self.expiring.len() as u32;
                self.expiring.push(Deadline {
                    slot,
                    at: expire_at,
                });
            }
            (true, true) => self.expiring[idx as usize].at = expire_at,
            (false, true) => {
                self.entries[slot as usize].exp_idx = NIL;
                self.unlist_expiring(idx);
            }
            (false, false) => {}
        }
    }

    fn unlist_expiring(&mut self, idx: u32) {
        self.expiring.swap_remove(idx as usize);
        if let Some(moved) = self.expiring.get(idx as usize) {
            self.entries[moved.slot as usize].exp_idx = idx;
        }
    }

    /// Removes `key`; true if it held a live value.
    pub fn del(&mut self, key: &str, now: u64) -> bool {
        match self.find(key.as_bytes()) {
            Some(slot) => {
                let live = !self.is_expired(slot, now);
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
        self.effects.del(self.entries[slot as usize].data.key());
        self.remove_slot(slot);
    }

    fn remove_slot(&mut self, slot: u32) {
        let h = self.hash(self.entries[slot as usize].data.key());
        if let Ok(found) = self.table.find_entry(h, |&i| i == slot) {
            found.remove();
        }
        let e = &mut self.entries[slot as usize];
        let idx = e.exp_idx;
        e.exp_idx = NIL;
        self.bytes -= e.data.value().len();
        e.data = Data::Free { next: self.free };
        self.free = slot;
        self.len -= 1;
        if idx != NIL {
            self.unlist_expiring(idx);
        }
    }

    /// Every live key (in slot order).
    pub fn keys(&mut self, now: u64) -> Vec<&str> {
        let mut out = Vec::with_capacity(self.len);
        for e in &self.entries {
            if !e.data.is_free() && !self.entry_expired(e, now) {
                out.push(std::str::from_utf8(e.data.key()).unwrap_or_default());
            }
        }
        out
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        if self.effects.wants_undo() {
            for s in 0..self.entries.len() {
                if !self.entries[s].data.is_free() {
                    self.remember_slot(s as u32);
                }
            }
        }
        self.effects.clear();
        self.table.clear();
        self.entries.clear();
        self.entries.shrink_to(1024);
        self.expiring.clear();
        self.expiring.shrink_to(1024);
        self.free = NIL;
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
                match e.data.raw().as_num() {
                    Some(n) => (n, e.data.codec(), self.deadline_of(e)),
                    None => return Err(AtomicError::NotNumber),
                }
            }
            None => (Num::Int(0), Codec::MsgPack, self.deadline(None, now)),
        };
        let result = current + by;
        if !result.is_finite() {
            // JSON has no infinity: stored, JSON readers would get `null` (issue 12 #15).
            return Err(AtomicError::NotFinite);
        }
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
            (Some(s), Some(p)) => self.entries[s as usize].data.raw().structurally_eq(&p),
            _ => false,
        };
        if !matches {
            return false;
        }
        match (slot, next) {
            (Some(s), None) => self.remove_logged(s),
            (Some(s), Some(n)) => {
                let deadline = self.deadline_of(&self.entries[s as usize]);
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
                    self.cursor = (self.next_random() % self.expiring.len() as u64) as usize;
                }
                let d = self.expiring[self.cursor];
                if d.at <= now {
                    // swap_remove moves another entry into `cursor`: look at it next.
                    self.effects
                        .expired(self.entries[d.slot as usize].data.key());
                    self.remove_slot(d.slot);
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
        // Overflowing to infinity is refused and stores nothing.
        assert_eq!(
            s.incr("big", Num::Float(f64::MAX), 0),
            Ok(Num::Float(f64::MAX))
        );
        assert_eq!(
            s.incr("big", Num::Float(f64::MAX), 0),
            Err(AtomicError::NotFinite)
        );
        assert_eq!(s.incr("big", Num::Int(0), 0), Ok(Num::Float(f64::MAX)));
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

    #[test]
    fn an_entry_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
    }

    #[test]
    fn values_move_between_inline_and_heap_storage() {
        let mut s = store(0);
        let long = |n: usize| format!("\"{}\"", "y".repeat(n));
        // Inline (short), heap (long), inline again, heap of another length, the same
        // length in place, inline.
        for v in [
            "1".to_string(),
            long(200),
            long(2),
            long(100),
            long(100),
            long(1),
        ] {
            s.set("k", j(&v), None, 0);
            assert_eq!(text(s.get("k", 0)), Some(v.clone()));
            assert_eq!(s.value_bytes(), v.len());
        }
        let key = "k".repeat(INLINE_BYTES);
        s.set(&key, j("7"), Some(10), 0);
        assert_eq!(s.incr(&key, Num::Int(1), 1), Ok(Num::Int(8)));
        assert_eq!(s.ttl_left(&key, 1), Some(9));
        assert_eq!(s.keys(1).len(), 2);
        assert!(s.del(&key, 1));
        assert!(!s.has(&key, 1));
    }

    #[test]
    fn hits_and_misses_count_get_and_has() {
        let mut s = store(0);
        s.set("a", j("1"), Some(10), 0);
        assert!(s.get("a", 1).is_some());
        assert!(s.has("a", 1));
        assert!(s.get("b", 1).is_none());
        assert!(!s.has("b", 1));
        assert!(s.get("a", 10).is_none(), "expired: a miss");
        let c = s.counters();
        assert_eq!((c.hits, c.misses, c.expired), (2, 3, 1));
        // Writes, deletes and ttl lookups are not reads.
        s.set("c", j("1"), None, 20);
        s.incr("c", Num::Int(1), 20).unwrap();
        s.ttl_left("c", 20);
        s.del("c", 20);
        assert_eq!((s.counters().hits, s.counters().misses), (2, 3));
    }

    #[test]
    fn sampled_lru_evicts_mostly_cold_keys() {
        // 10k hot keys read after every write; 10k cold ones written once. Each new
        // key evicts one: with 8 samples, a cold key is the victim nearly always.
        let n = 10_000;
        let mut s = store(2 * n);
        for i in 0..2 * n {
            s.set(&format!("k{i}"), j("1"), None, 0);
        }
        for i in 0..n {
            s.get(&format!("k{i}"), 0);
        }
        for i in 0..n / 2 {
            s.set(&format!("new{i}"), j("1"), None, 0);
            s.get(&format!("k{}", i % n), 0);
        }
        assert_eq!(s.len(), 2 * n);
        assert_eq!(s.counters().evicted, (n / 2) as u64);
        let hot_left = (0..n).filter(|i| s.has(&format!("k{i}"), 0)).count();
        assert!(hot_left > n * 95 / 100, "hot keys kept: {hot_left} of {n}");
    }

    #[test]
    fn eviction_finds_live_entries_in_a_sparse_slab() {
        let mut s = Store::new(StoreConfig {
            max_entries: 0,
            max_bytes: 6000,
            default_ttl_ms: 0,
        });
        for i in 0..5000 {
            s.set(&format!("k{i}"), j("0"), None, 0);
        }
        // Leaves a slab of 5000 slots with 2 live ones (one beyond the probe reach).
        for i in 1..4999 {
            s.del(&format!("k{i}"), 0);
        }
        let big = format!("\"{}\"", "x".repeat(5998));
        s.set("big", j(&big), None, 0);
        assert!(s.has("big", 0));
        assert_eq!(s.value_bytes(), 6000);
        assert_eq!(s.counters().evicted, 2);
    }

    #[test]
    fn visit_slots_keeps_every_untouched_key_while_the_store_changes() {
        // A snapshot walks the slab over many turns: keys not written meanwhile are
        // visited exactly once however many others come and go.
        let mut s = store(0);
        for i in 0..1000 {
            s.set(&format!("k{i}"), j("1"), None, 0);
        }
        let mut seen = std::collections::HashMap::new();
        let mut from = Some(0);
        let mut turn = 0;
        while let Some(f) = from {
            from = s.visit_slots(f, 50, 0, |k, _, _| {
                *seen.entry(k.to_string()).or_insert(0) += 1
            });
            for x in 0..20 {
                s.set(&format!("t{turn}-{x}"), j("2"), None, 0);
                s.del(&format!("t{}-{x}", turn.max(1) - 1), 0);
            }
            turn += 1;
        }
        for i in 0..1000 {
            assert_eq!(seen.get(&format!("k{i}")), Some(&1), "k{i}");
        }
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

    proptest! {
        // Model test over values of every size around the inline limit (inline and
        // heap storage, in-place and resizing overwrites) and keys of 0..40 bytes.
        #[test]
        fn matches_model_with_values_of_any_size(
            ops in prop::collection::vec((0u8..12, 0usize..80, prop::option::of(1u64..20), 0u8..4), 1..300)
        ) {
            let mut s = store(0);
            let mut model: BTreeMap<String, (String, u64)> = BTreeMap::new();
            let mut now = 1u64;
            for (k, len, ttl, what) in ops {
                let key = "k".repeat(k as usize * 3);
                match what {
                    0 | 1 => {
                        let v = format!("\"{}\"", "v".repeat(len));
                        s.set(&key, j(&v), ttl, now);
                        model.insert(key.clone(), (v, ttl.map_or(0, |t| now + t)));
                    }
                    2 => {
                        prop_assert_eq!(s.del(&key, now), model.remove(&key).is_some());
                    }
                    _ => {
                        now += len as u64 / 8;
                        s.reclaim(now, 5);
                    }
                }
                model.retain(|_, (_, d)| *d == 0 || *d > now);
                for (mk, (mv, md)) in &model {
                    prop_assert_eq!(text(s.get(mk, now)), Some(mv.clone()));
                    prop_assert_eq!(s.ttl_left(mk, now), Some(if *md == 0 { 0 } else { md - now }));
                }
                let mut keys: Vec<String> = s.keys(now).into_iter().map(String::from).collect();
                keys.sort();
                prop_assert_eq!(keys, model.keys().cloned().collect::<Vec<_>>());
                let live: usize = model.values().map(|(v, _)| v.len()).sum();
                prop_assert!(s.value_bytes() >= live);
            }
        }
    }
}
