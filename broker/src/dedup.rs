//! Idempotent producer: at-most-once delivery per (producer id, channel).
//!
//! Rules (procmesh-js 0.1.1 `broker.js:_dedupSeen`): per (pid, channel) an entry keeps the
//! highest accepted `seq` (`hi`) and the accepted seqs inside the window `(hi - window, hi]`.
//! A seq above `hi` is accepted; one inside the window is a duplicate iff it was accepted
//! before (else it fills a gap and is delivered); one at or below `hi - window` is a duplicate.
//!
//! Bounds: at most [`DedupConfig::max`] entries (least recently used evicted), an entry idle
//! for [`DedupConfig::ttl_ms`] is forgotten, and each entry holds at most `window` seqs.

/// Dedup settings (`PROCMESH_BROKER_OPTS` `dedup{enabled,max,ttl,window}`), with
/// procmesh-js 0.1.1's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupConfig {
    /// `dedup.enabled` (default true; only `false` disables).
    pub enabled: bool,
    /// `dedup.max`: most (pid, channel) entries kept, LRU (default 100000).
    pub max: usize,
    /// `dedup.ttl`: an entry idle this long is forgotten; 0 = never (default 600000 ms).
    pub ttl_ms: u64,
    /// `dedup.window`: how far below the highest seq a gap may still be filled (default 1024).
    pub window: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled: true,
            max: 100_000,
            ttl_ms: 600_000,
            window: 1024,
        }
    }
}

use std::collections::{BTreeMap, BTreeSet};

use ahash::RandomState;
use hashbrown::HashMap;

struct Entry {
    hi: u64,
    /// Accepted seqs in `(hi - window, hi]`: at most `window` of them.
    seen: BTreeSet<u64>,
    /// Recency tick (key of `order`).
    tick: u64,
    /// Last check, ms on the broker clock.
    touched: u64,
    /// The key is `pid \0 channel`; this is `pid`'s length.
    pid_len: usize,
}

/// The dedup table: (pid, channel) → accepted seqs. Bounded as the module doc says.
pub struct Dedup {
    cfg: DedupConfig,
    entries: HashMap<Box<str>, Entry, RandomState>,
    /// Recency order: tick → key; the first is the least recently checked.
    order: BTreeMap<u64, Box<str>>,
    tick: u64,
    key: String,
    /// Publishes dropped as duplicates since start.
    pub duplicates: u64,
}

/// What [`Dedup::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver (new seq or a gap fill).
    Accept,
    /// Already accepted (or below the window): answer null, deliver to nobody.
    Duplicate,
}

impl Dedup {
    /// An empty table.
    pub fn new(cfg: DedupConfig) -> Dedup {
        Dedup {
            cfg,
            entries: HashMap::default(),
            order: BTreeMap::new(),
            tick: 0,
            key: String::new(),
            duplicates: 0,
        }
    }

    /// Whether dedup is on.
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// (pid, channel) entries held (`dedupSize`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: u64) {
        if self.cfg.ttl_ms == 0 {
            return;
        }
        while let Some((_, k)) = self.order.first_key_value() {
            let e = &self.entries[k];
            if now.saturating_sub(e.touched) < self.cfg.ttl_ms {
                break;
            }
            let (_, k) = self.order.pop_first().expect("non-empty");
            self.entries.remove(&k);
        }
    }

    /// Decides on `seq` from `pid` on `channel` at `now` (ms) and records an accepted
    /// one. Counts duplicates.
    pub fn check(&mut self, pid: &str, channel: &str, seq: u64, now: u64) -> Verdict {
        let v = self.observe(pid, channel, seq, now);
        if v == Verdict::Duplicate {
            self.duplicates += 1;
        }
        v
    }

    /// Like [`Dedup::check`] without counting (log replay after a restart).
    pub fn observe(&mut self, pid: &str, channel: &str, seq: u64, now: u64) -> Verdict {
        self.expire(now);
        self.key.clear();
        self.key.push_str(pid);
        self.key.push('\0');
        self.key.push_str(channel);
        self.tick += 1;
        let tick = self.tick;
        let w = self.cfg.window.max(1);
        if let Some(e) = self.entries.get_mut(self.key.as_str()) {
            let k = self.order.remove(&e.tick).expect("order holds every entry");
            self.order.insert(tick, k);
            e.tick = tick;
            e.touched = now;
            if seq > e.hi {
                e.hi = seq;
                e.seen.insert(seq);
                if seq > w {
                    // Keep only (hi - w, hi].
                    e.seen = e.seen.split_off(&(seq - w + 1));
                }
                Verdict::Accept
            } else if seq.saturating_add(w) <= e.hi {
                Verdict::Duplicate
            } else if e.seen.insert(seq) {
                Verdict::Accept
            } else {
                Verdict::Duplicate
            }
        } else {
            if self.entries.len() >= self.cfg.max.max(1) {
                if let Some((_, k)) = self.order.pop_first() {
                    self.entries.remove(&k);
                }
            }
            let k: Box<str> = self.key.as_str().into();
            self.order.insert(tick, k.clone());
            self.entries.insert(
                k,
                Entry {
                    hi: seq,
                    seen: BTreeSet::from([seq]),
                    tick,
                    touched: now,
                    pid_len: pid.len(),
                },
            );
            Verdict::Accept
        }
    }
}

impl Dedup {
    /// Calls `f(pid, channel, seq)` for every accepted seq held, least recently used
    /// entry first (for carrying the state into a new log segment).
    pub fn for_each(&self, mut f: impl FnMut(&str, &str, u64)) {
        for k in self.order.values() {
            let e = &self.entries[k];
            let (pid, ch) = (&k[..e.pid_len], &k[e.pid_len + 1..]);
            for &s in &e.seen {
                f(pid, ch, s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(max: usize, ttl_ms: u64, window: u64) -> Dedup {
        Dedup::new(DedupConfig {
            enabled: true,
            max,
            ttl_ms,
            window,
        })
    }

    #[test]
    fn retry_is_duplicate_gap_fill_is_not() {
        let mut t = d(10, 0, 4);
        assert_eq!(t.check("p", "c", 1, 0), Verdict::Accept);
        assert_eq!(t.check("p", "c", 1, 0), Verdict::Duplicate);
        assert_eq!(t.check("p", "c", 3, 0), Verdict::Accept);
        assert_eq!(t.check("p", "c", 2, 0), Verdict::Accept);
        assert_eq!(t.check("p", "c", 2, 0), Verdict::Duplicate);
        // Another channel is another entry.
        assert_eq!(t.check("p", "d", 1, 0), Verdict::Accept);
        assert_eq!(t.check("p", "c", 9, 0), Verdict::Accept);
        // 5 is at hi - window: too old, a duplicate; 6 fills a gap.
        assert_eq!(t.check("p", "c", 5, 0), Verdict::Duplicate);
        assert_eq!(t.check("p", "c", 6, 0), Verdict::Accept);
        assert_eq!(t.duplicates, 3);
        assert!(t.entries.values().all(|e| e.seen.len() <= 4));
    }

    #[test]
    fn lru_max_and_idle_ttl_bound_entries() {
        let mut t = d(2, 100, 16);
        t.check("a", "c", 1, 0);
        t.check("b", "c", 1, 10);
        t.check("a", "c", 2, 20); // a is now most recent
        t.check("x", "c", 1, 30); // evicts b
        assert_eq!(t.len(), 2);
        assert_eq!(t.check("b", "c", 1, 40), Verdict::Accept);
        // Idle past the ttl: forgotten.
        assert_eq!(t.check("b", "c", 1, 200), Verdict::Accept);
        assert_eq!(t.len(), 1);
    }
}
