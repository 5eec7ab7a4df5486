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
