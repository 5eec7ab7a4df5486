//! Broker counters and their export format (PROTOCOL.md §10).
//!
//! `stats` owns counters that no other module owns (ops per kind, errors per code,
//! drops, reaps) and the layout of the `stats` reply. Other modules' numbers come in
//! through [`Gauges`]. Counters are fixed arrays indexed by kind and code: an
//! attacker-chosen type tag never creates state.

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
    /// Locks held.
    pub locks: usize,
    /// Lock waiters queued.
    pub lock_waiters: usize,
    /// RPC calls in flight.
    pub pending_calls: usize,
    /// Subscriptions held.
    pub subscriptions: usize,
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

    /// Writes the stats map (the `value` of the reply).
    pub fn encode(&self, g: &Gauges<'_>, w: &mut Writer<'_>) {
        let ops: Vec<(usize, u64)> = self
            .ops
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .collect();
        let errors: Vec<(usize, u64)> = self
            .errors
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .collect();
        w.begin_map(25);
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
        w.uint(self.dropped);
        w.key("duplicates");
        w.uint(0);
        w.key("dedupSize");
        w.uint(0);
        w.key("reaped");
        w.uint(self.reaped);
        w.key("slowClosed");
        w.uint(self.slow_closed);
        w.key("locks");
        w.uint(g.locks as u64);
        w.key("lockWaiters");
        w.uint(g.lock_waiters as u64);
        w.key("pendingCalls");
        w.uint(g.pending_calls as u64);
        w.key("subscriptions");
        w.uint(g.subscriptions as u64);
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
        w.key("ioBackend");
        w.str(g.io_backend);
        w.end_map();
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
            assert_eq!(m.len(), 25);
            let core = m.iter().find(|(k, _)| k == "core").unwrap().1;
            assert!(core.is_nil(), "no pinned core is encoded as null");
            let ops = m.iter().find(|(k, _)| k == "ops").unwrap().1;
            assert_eq!(ops.map().unwrap().next().unwrap().0, "get");
        }
        assert_eq!(s.unknown, 1);
    }
}
