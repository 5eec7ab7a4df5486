//! Broker counters and their export (PROTOCOL.md §10).
//!
//! `stats` owns counters that no other module owns (ops per kind, errors per code,
//! drops, reaps). Other modules' numbers come in through [`Gauges`]; the reply's
//! schema (keys, order, sums) is `procmesh_proto::stats::StatsReport`, shared with
//! the client and the CLI. Counters are fixed arrays indexed by kind and code: an
//! attacker-chosen type tag never creates state.

use procmesh_proto::stats::{PersistStats, ProcStats, StatsReport};
use procmesh_proto::{ErrorCode, Kind, Writer};

/// Counters kept by the reactor and dispatcher.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Requests handled, per known kind.
    pub ops: Vec<u64>,
    /// Frames with an unknown type tag.
    pub unknown: u64,
    /// Error replies sent, per code.
    pub errors: [u64; ErrorCode::ALL.len()],
    /// Best-effort messages dropped at a slow consumer.
    pub dropped: u64,
    /// Connections closed by the heartbeat for silence.
    pub reaped: u64,
    /// Connections closed for passing the send hard limit.
    pub slow_closed: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused at `maxConnections` (or for lack of descriptors).
    pub refused: u64,
    /// Connections closed at the handshake deadline.
    pub handshake_closed: u64,
    /// Replies refused with `ETOOBIG` (counted by the connection table).
    pub too_big: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ops: vec![0; Kind::ALL.len()],
            unknown: 0,
            errors: [0; ErrorCode::ALL.len()],
            dropped: 0,
            reaped: 0,
            slow_closed: 0,
            accepted: 0,
            refused: 0,
            handshake_closed: 0,
            too_big: 0,
        }
    }
}

/// The persistence part of stats.
#[derive(Debug, Clone, Default)]
pub struct PersistGauges<'a> {
    /// `no`, `everysec` or `always`.
    pub fsync: &'a str,
    /// Bytes in the current log segment.
    pub log_bytes: u64,
    /// The current log error, if failing.
    pub error: Option<&'a str>,
    /// Failures since start.
    pub errors: u64,
    /// Snapshots completed since start.
    pub snapshots: u64,
    /// A snapshot is being written.
    pub snapshot_running: bool,
}

/// Numbers owned by other modules, gathered for one `stats` reply.
#[derive(Debug, Clone, Default)]
pub struct Gauges<'a> {
    /// Mesh name.
    pub name: &'a str,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Open connections.
    pub connections: usize,
    /// Cache entries.
    pub cache_size: usize,
    /// Cache value bytes.
    pub cache_bytes: usize,
    /// Entries evicted by LRU bounds.
    pub evicted: u64,
    /// Entries removed by TTL.
    pub expired: u64,
    /// Cache reads that found a live value.
    pub hits: u64,
    /// Cache reads that found none.
    pub misses: u64,
    /// Locks held.
    pub locks: usize,
    /// Lock waiters queued.
    pub lock_waiters: usize,
    /// RPC calls in flight.
    pub pending_calls: usize,
    /// Subscriptions held.
    pub subscriptions: usize,
    /// Publishes dropped as idempotent-producer duplicates.
    pub duplicates: u64,
    /// Dedup entries held, (producer, channel) pairs.
    pub dedup_size: usize,
    /// `(name, workers)` per registered procedure.
    pub procs: Vec<(&'a str, usize)>,
    /// Resident set size in bytes.
    pub rss: u64,
    /// CPU time over wall time since start.
    pub cpu_core_fraction: f64,
    /// Operating-system process id.
    pub os_pid: u32,
    /// The CPU the broker is pinned to (`None` when its mask allows more than one).
    pub core: Option<usize>,
    /// Persistence state, when enabled.
    pub persistence: Option<PersistGauges<'a>>,
    /// The running I/O driver: `uring` or `epoll`.
    pub io_backend: &'a str,
}

impl Stats {
    /// Counts one handled request.
    #[inline]
    pub fn op(&mut self, kind: Kind) {
        match kind.index() {
            Some(i) => self.ops[i] += 1,
            None => self.unknown += 1,
        }
    }

    /// Counts one error reply.
    #[inline]
    pub fn error(&mut self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i] += 1;
        }
    }

    /// The report of this broker: these counters and the gauges `g`.
    pub fn report(&self, g: &Gauges<'_>) -> StatsReport {
        let nonzero = |n: &&u64| **n > 0;
        StatsReport {
            name: g.name.to_string(),
            pid: Some(g.os_pid.into()),
            core: g.core.map(|c| c as u64),
            uptime_ms: g.uptime_ms,
            connections: g.connections as u64,
            cache_size: g.cache_size as u64,
            cache_bytes: g.cache_bytes as u64,
            evicted: g.evicted,
            expired: g.expired,
            hits: g.hits,
            misses: g.misses,
            ops: Kind::ALL
                .iter()
                .zip(&self.ops)
                .filter(|(_, n)| nonzero(n))
                .map(|(k, n)| (k.tag().to_string(), *n))
                .collect(),
            errors: ErrorCode::ALL
                .iter()
                .zip(&self.errors)
                .filter(|(_, n)| nonzero(n))
                .map(|(c, n)| (c.as_str().to_string(), *n))
                .collect(),
            dropped: self.dropped,
            duplicates: g.duplicates,
            dedup_size: g.dedup_size as u64,
            reaped: self.reaped,
            slow_closed: self.slow_closed,
            refused: self.refused,
            handshake_closed: self.handshake_closed,
            too_big: self.too_big,
            locks: g.locks as u64,
            lock_waiters: g.lock_waiters as u64,
            pending_calls: g.pending_calls as u64,
            subscriptions: g.subscriptions as u64,
            procs: g
                .procs
                .iter()
                .map(|(name, workers)| ProcStats::new(*name, *workers as u64))
                .collect(),
            memory: [("rss".to_string(), g.rss)].into(),
            cpu_core_fraction: g.cpu_core_fraction,
            io_backend: g.io_backend.to_string(),
            persistence: g.persistence.as_ref().map(|p| PersistStats {
                fsync: p.fsync.to_string(),
                log_bytes: p.log_bytes,
                error: p.error.map(str::to_string),
                errors: p.errors,
                snapshots: p.snapshots,
                snapshot_running: p.snapshot_running,
            }),
        }
    }

    /// Writes the stats map (the `value` of the reply): [`report`](Self::report) in
    /// the schema of [`StatsReport`].
    pub fn encode(&self, g: &Gauges<'_>, w: &mut Writer<'_>) {
        self.report(g).encode_into(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procmesh_proto::{value::validate, Codec};

    #[test]
    fn encodes_a_valid_map_in_both_codecs() {
        let mut s = Stats::default();
        s.op(Kind::Get);
        s.op(Kind::Unknown);
        s.error(ErrorCode::Fenced);
        let g = Gauges {
            name: "x",
            procs: vec![("f", 2)],
            ..Default::default()
        };
        for codec in [Codec::Json, Codec::MsgPack] {
            let mut out = Vec::new();
            s.encode(&g, &mut Writer::new(codec, &mut out));
            let v = validate(codec, &out).unwrap();
            let m: Vec<_> = v.map().unwrap().collect();
            assert_eq!(m.len(), 29);
            let core = m.iter().find(|(k, _)| k == "core").unwrap().1;
            assert!(core.is_nil(), "no pinned core is encoded as null");
            let ops = m.iter().find(|(k, _)| k == "ops").unwrap().1;
            assert_eq!(ops.map().unwrap().next().unwrap().0, "get");
        }
        assert_eq!(s.unknown, 1);
    }

    /// The encoder before the shared schema, kept to check the wire did not change.
    fn legacy_encode(s: &Stats, g: &Gauges<'_>, w: &mut Writer<'_>) {
        let ops: Vec<(usize, u64)> = s
            .ops
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .collect();
        let errors: Vec<(usize, u64)> = s
            .errors
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .collect();
        // (plus `ioBackend`, added with the io_uring driver, when the gauges name one;
        // `hits` and `misses` were added with the inline store layout, and the three
        // limit counters of issue 12 after `subscriptions`)
        w.begin_map(29 + usize::from(!g.io_backend.is_empty()));
        w.key("persistence");
        match &g.persistence {
            Some(p) => {
                w.begin_map(6);
                w.key("fsync");
                w.str(p.fsync);
                w.key("logBytes");
                w.uint(p.log_bytes);
                w.key("error");
                match p.error {
                    Some(e) => w.str(e),
                    None => w.nil(),
                }
                w.key("errors");
                w.uint(p.errors);
                w.key("snapshots");
                w.uint(p.snapshots);
                w.key("snapshotRunning");
                w.bool(p.snapshot_running);
                w.end_map();
            }
            None => w.nil(),
        }
        w.key("name");
        w.str(g.name);
        w.key("pid");
        w.uint(g.os_pid as u64);
        w.key("core");
        match g.core {
            Some(c) => w.uint(c as u64),
            None => w.nil(),
        }
        w.key("uptimeMs");
        w.uint(g.uptime_ms);
        w.key("connections");
        w.uint(g.connections as u64);
        w.key("cacheSize");
        w.uint(g.cache_size as u64);
        w.key("cacheBytes");
        w.uint(g.cache_bytes as u64);
        w.key("evicted");
        w.uint(g.evicted);
        w.key("expired");
        w.uint(g.expired);
        w.key("hits");
        w.uint(g.hits);
        w.key("misses");
        w.uint(g.misses);
        w.key("ops");
        w.begin_map(ops.len());
        for (i, n) in ops {
            w.key(Kind::ALL[i].tag());
            w.uint(n);
        }
        w.end_map();
        w.key("errors");
        w.begin_map(errors.len());
        for (i, n) in errors {
            w.key(ErrorCode::ALL[i].as_str());
            w.uint(n);
        }
        w.end_map();
        w.key("dropped");
        w.uint(s.dropped);
        w.key("duplicates");
        w.uint(g.duplicates);
        w.key("dedupSize");
        w.uint(g.dedup_size as u64);
        w.key("reaped");
        w.uint(s.reaped);
        w.key("slowClosed");
        w.uint(s.slow_closed);
        w.key("locks");
        w.uint(g.locks as u64);
        w.key("lockWaiters");
        w.uint(g.lock_waiters as u64);
        w.key("pendingCalls");
        w.uint(g.pending_calls as u64);
        w.key("subscriptions");
        w.uint(g.subscriptions as u64);
        w.key("refused");
        w.uint(s.refused);
        w.key("handshakeClosed");
        w.uint(s.handshake_closed);
        w.key("tooBig");
        w.uint(s.too_big);
        w.key("procs");
        w.begin_array(g.procs.len());
        for (name, workers) in &g.procs {
            w.begin_map(2);
            w.key("name");
            w.str(name);
            w.key("workers");
            w.uint(*workers as u64);
            w.end_map();
        }
        w.end_array();
        w.key("memory");
        w.begin_map(1);
        w.key("rss");
        w.uint(g.rss);
        w.end_map();
        w.key("cpuCoreFraction");
        w.float(g.cpu_core_fraction);
        if !g.io_backend.is_empty() {
            w.key("ioBackend");
            w.str(g.io_backend);
        }
        w.end_map();
    }

    fn decoded(codec: Codec, bytes: &[u8]) -> serde_json::Value {
        match codec {
            Codec::Json => serde_json::from_slice(bytes).unwrap(),
            Codec::MsgPack => rmp_serde::from_slice(bytes).unwrap(),
        }
    }

    /// The shared schema writes the same keys and values as the hand-written encoder
    /// did (only the order inside `ops` and `errors` may differ).
    #[test]
    fn same_wire_map_as_before_the_shared_schema() {
        let mut s = Stats::default();
        for k in [Kind::Set, Kind::Get, Kind::Get, Kind::Pub, Kind::Unknown] {
            s.op(k);
        }
        s.error(ErrorCode::Unknown);
        s.error(ErrorCode::Auth);
        s.dropped = 3;
        s.reaped = 4;
        s.slow_closed = 5;
        (s.refused, s.handshake_closed, s.too_big) = (6, 7, 8);
        let persistence = PersistGauges {
            fsync: "always",
            log_bytes: 77,
            error: Some("disk full"),
            errors: 2,
            snapshots: 1,
            snapshot_running: true,
        };
        let gauges = [
            Gauges {
                name: "x",
                procs: vec![("f", 2), ("g", 1)],
                core: Some(3),
                os_pid: 1234,
                rss: 4096,
                cpu_core_fraction: 0.125,
                uptime_ms: 99,
                connections: 2,
                cache_size: 7,
                cache_bytes: 70,
                evicted: 1,
                expired: 2,
                hits: 10,
                misses: 11,
                locks: 3,
                lock_waiters: 4,
                pending_calls: 5,
                subscriptions: 6,
                duplicates: 8,
                dedup_size: 9,
                persistence: Some(persistence),
                io_backend: "uring",
            },
            Gauges::default(),
        ];
        for g in &gauges {
            for codec in [Codec::Json, Codec::MsgPack] {
                let (mut new, mut old) = (Vec::new(), Vec::new());
                s.encode(g, &mut Writer::new(codec, &mut new));
                legacy_encode(&s, g, &mut Writer::new(codec, &mut old));
                assert_eq!(decoded(codec, &new), decoded(codec, &old), "{codec:?}");
                let back = StatsReport::decode_slice(codec, &new).unwrap();
                assert_eq!(back, s.report(g), "{codec:?}");
            }
        }
    }
}
