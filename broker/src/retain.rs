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
