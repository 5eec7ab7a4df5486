//! Retained pub/sub: broker-wide offsets, a bounded ring per channel, replay on `sub`.
//!
//! Rules (procmesh-js 0.1.1 `broker.js:_mintOffset/_retain/_replayTo`): with
//! [`RetainConfig::persist`] every published message gets the next offset of one
//! broker-wide counter; each channel keeps its last `retention` messages (and none older
//! than `retention_ms`, checked on append), at most `max_channels` channels are retained
//! (least recently published evicted).

/// Which publishes are acknowledged only after their record is fsynced
/// (`pubsub.durableAcks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DurableAcks {
    /// `"all"` (default): publishes with `acks: "all"`.
    #[default]
    All,
    /// `1`: publishes with `acks: 1` or `"all"`.
    One,
    /// `false`: none; records are queued like every other.
    Off,
}

/// Retained pub/sub settings (`PROCMESH_BROKER_OPTS`
/// `pubsub{persist,retention,retentionMs,durableAcks,maxChannels}`), with procmesh-js
/// 0.1.1's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainConfig {
    /// `pubsub.persist` (default false): offsets + retention; logged when persistence is on.
    pub persist: bool,
    /// `pubsub.retention`: messages kept per channel; 0 = none (default 1000).
    pub retention: usize,
    /// `pubsub.retentionMs`: drop retained messages older than this; 0 = no age bound.
    pub retention_ms: u64,
    /// `pubsub.durableAcks` (default `"all"`).
    pub durable_acks: DurableAcks,
    /// `pubsub.maxChannels`: retained channels kept, LRU (default 10000).
    pub max_channels: usize,
}

impl Default for RetainConfig {
    fn default() -> Self {
        RetainConfig {
            persist: false,
            retention: 1000,
            retention_ms: 0,
            durable_acks: DurableAcks::All,
            max_channels: 10_000,
        }
    }
}

use std::collections::{BTreeMap, VecDeque};

use ahash::RandomState;
use hashbrown::HashMap;
use procmesh_proto::{topic, Codec, Raw};

/// Offsets are reserved in the log in blocks of this many.
pub const OFFSET_BLOCK: u64 = 1024;

/// One retained message.
pub struct Retained {
    /// Its offset.
    pub offset: u64,
    /// Publish time, ms since the Unix epoch (ages survive a restart).
    pub ts: u64,
    /// The payload's codec.
    pub codec: Codec,
    /// The payload, encoded in `codec`.
    pub payload: Box<[u8]>,
}

impl Retained {
    /// The payload as a raw value.
    pub fn raw(&self) -> Raw<'_> {
        Raw::new(self.codec, &self.payload)
    }
}

struct Ring {
    msgs: VecDeque<Retained>,
    tick: u64,
}

/// Offsets and retained rings. Bounds: `retention` messages per channel (each at most
/// one frame, so `retention × max_frame` bytes), `max_channels` channels (LRU by last
/// publish), `retention_ms` age (pruned on append, skipped on replay).
pub struct Retain {
    cfg: RetainConfig,
    /// The last minted offset (the `sub` reply's high-water).
    pub last_offset: u64,
    /// With persistence: offsets up to this are durably reserved.
    pub reserved_to: u64,
    rings: HashMap<Box<str>, Ring, RandomState>,
    order: BTreeMap<u64, Box<str>>,
    tick: u64,
}

impl Retain {
    /// Empty, offsets from 0.
    pub fn new(cfg: RetainConfig) -> Retain {
        Retain {
            cfg,
            last_offset: 0,
            reserved_to: 0,
            rings: HashMap::default(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Whether retention (offsets, rings) is on (`pubsub.persist`).
    pub fn enabled(&self) -> bool {
        self.cfg.persist
    }

    /// The configuration.
    pub fn cfg(&self) -> &RetainConfig {
        &self.cfg
    }

    /// Retained channels held.
    pub fn channels(&self) -> usize {
        self.rings.len()
    }

    /// Retained messages held, over all channels.
    pub fn messages(&self) -> usize {
        self.rings.values().map(|r| r.msgs.len()).sum()
    }

    /// The next offset.
    pub fn mint(&mut self) -> u64 {
        self.last_offset += 1;
        self.last_offset
    }

    /// With persistence: when `offset` (just minted) is past the durable reservation,
    /// reserves the next block and returns the new bound to log (synced before the
    /// offset is visible, like fencing tokens).
    pub fn reserve(&mut self, offset: u64) -> Option<u64> {
        if offset <= self.reserved_to {
            return None;
        }
        self.reserved_to = offset + OFFSET_BLOCK - 1;
        Some(self.reserved_to)
    }

    /// After recovery: offsets continue above everything that may have been issued.
    pub fn recovered(&mut self) {
        self.last_offset = self.last_offset.max(self.reserved_to);
    }

    /// Recovery: like [`Retain::retain`], skipping a message the channel already
    /// holds (a record replayed twice, e.g. carried into a new segment while the old
    /// one was still read).
    pub fn restore(&mut self, channel: &str, msg: Retained, now_ms: u64) {
        self.last_offset = self.last_offset.max(msg.offset);
        if let Some(r) = self.rings.get(channel) {
            if r.msgs.back().is_some_and(|b| b.offset >= msg.offset) {
                return;
            }
        }
        self.retain(channel, msg, now_ms);
    }

    /// Keeps `msg` on `channel`, applying every bound.
    pub fn retain(&mut self, channel: &str, msg: Retained, now_ms: u64) {
        self.last_offset = self.last_offset.max(msg.offset);
        if self.cfg.retention == 0 {
            return;
        }
        self.tick += 1;
        let tick = self.tick;
        let ring = match self.rings.get_mut(channel) {
            Some(r) => {
                let k = self.order.remove(&r.tick).expect("order holds every ring");
                self.order.insert(tick, k);
                r.tick = tick;
                r
            }
            None => {
                if self.rings.len() >= self.cfg.max_channels.max(1) {
                    if let Some((_, k)) = self.order.pop_first() {
                        self.rings.remove(&k);
                    }
                }
                let k: Box<str> = channel.into();
                self.order.insert(tick, k.clone());
                self.rings.entry(k).or_insert(Ring {
                    msgs: VecDeque::new(),
                    tick,
                })
            }
        };
        ring.msgs.push_back(msg);
        while ring.msgs.len() > self.cfg.retention {
            ring.msgs.pop_front();
        }
        if self.cfg.retention_ms > 0 {
            let cutoff = now_ms.saturating_sub(self.cfg.retention_ms);
            while ring.msgs.front().is_some_and(|m| m.ts < cutoff) {
                ring.msgs.pop_front();
            }
        }
        if ring.msgs.is_empty() {
            let t = ring.tick;
            self.rings.remove(channel);
            self.order.remove(&t);
        }
    }

    /// The backlog for a `sub` to `pattern`, oldest first: offsets above `since` when
    /// given, else the last `limit` ([`procmesh_proto::REPLAY_ALL`] = all). Messages
    /// older than `retention_ms` are left out.
    pub fn backlog(
        &self,
        pattern: &str,
        since: Option<u64>,
        limit: u64,
        now_ms: u64,
    ) -> Vec<(&str, &Retained)> {
        let cutoff = match self.cfg.retention_ms {
            0 => 0,
            ms => now_ms.saturating_sub(ms),
        };
        let mut v: Vec<(&str, &Retained)> = Vec::new();
        let exact = !pattern.ends_with('*');
        if exact {
            if let Some((k, r)) = self.rings.get_key_value(pattern) {
                v.extend(r.msgs.iter().map(|m| (&**k, m)));
            }
        } else {
            for (k, r) in &self.rings {
                if topic::matches(pattern, k) {
                    v.extend(r.msgs.iter().map(|m| (&**k, m)));
                }
            }
            v.sort_unstable_by_key(|(_, m)| m.offset);
        }
        v.retain(|(_, m)| m.ts >= cutoff && since.is_none_or(|s| m.offset > s));
        if since.is_none() && (limit as usize) < v.len() {
            v.drain(..v.len() - limit as usize);
        }
        v
    }

    /// Every retained message, oldest channel first: (channel, message).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Retained)> {
        self.order.values().flat_map(move |k| {
            let r = &self.rings[k];
            r.msgs.iter().map(move |m| (&**k, m))
        })
    }
}
