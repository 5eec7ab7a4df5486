//! The `stats` reply (PROTOCOL.md §10) as one typed schema: the broker encodes it,
//! the client and the CLI decode it, and a sharded mesh's reports add up with
//! [`StatsReport::sum`].
//!
//! `stats` owns the key names, their order on the wire and how each field sums; it
//! does not own the counters (the broker's `stats` module does) or how they are shown
//! (the CLI does). Decoding is lenient, because brokers in JavaScript send integers as
//! doubles and may add fields: a missing or mistyped counter reads as 0, unknown keys
//! are ignored, and only a value that is not a map is an error.
//!
//! Layout of one broker's report (29 keys, in this order; a sum has no `pid`/`core`):
//!
//! ```text
//! persistence  null | {fsync: str, logBytes, error: str|null, errors, snapshots, snapshotRunning: bool}
//! name         str           mesh name (for a sum: the mesh, set by the caller)
//! pid          uint          operating-system process id
//! core         uint | null   the CPU the broker is pinned to
//! uptimeMs connections cacheSize cacheBytes evicted expired                  uint
//! hits misses  uint          cache reads that found a live value / found none (ours)
//! ops          {tag: uint}   requests handled per type tag (only non-zero)
//! errors       {code: uint}  error replies per code (only non-zero)
//! dropped duplicates dedupSize reaped slowClosed                            uint
//! locks lockWaiters pendingCalls subscriptions                              uint
//! refused handshakeClosed tooBig                                            uint
//! procs        [{name: str, workers: uint}]
//! memory       {rss: uint, …}
//! cpuCoreFraction float      CPU time over wall time since start
//! ioBackend    str           the broker's I/O driver, `uring` or `epoll` (a 30th key;
//!                            absent from a sum and from reports that name none)
//! ```

use std::collections::BTreeMap;

use crate::{Codec, DecodeError, Num, Raw, Writer};

/// A broker's statistics, or with [`StatsReport::sum`] a sharded mesh's totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsReport {
    /// Mesh name (for a sum, empty until the caller names the mesh).
    pub name: String,
    /// The broker's operating-system process id; `None` for a sum, which then has
    /// neither `pid` nor `core` on the wire.
    pub pid: Option<u64>,
    /// The CPU the broker is pinned to; `None` when its mask allows more than one.
    pub core: Option<u64>,
    /// Milliseconds since the broker started (the longest, when summed).
    pub uptime_ms: u64,
    /// Open connections.
    pub connections: u64,
    /// Live cache entries.
    pub cache_size: u64,
    /// Bytes of cached values.
    pub cache_bytes: u64,
    /// Entries evicted by the LRU bounds.
    pub evicted: u64,
    /// Entries removed by TTL.
    pub expired: u64,
    /// Cache reads (`get`, each key of `mget`, `has`) that found a live value.
    pub hits: u64,
    /// Cache reads (`get`, each key of `mget`, `has`) that found none.
    pub misses: u64,
    /// Requests handled, by type tag.
    pub ops: BTreeMap<String, u64>,
    /// Error replies sent, by code.
    pub errors: BTreeMap<String, u64>,
    /// Message frames dropped for slow consumers.
    pub dropped: u64,
    /// Deduplicated publish retries.
    pub duplicates: u64,
    /// Entries in the idempotent-producer table.
    pub dedup_size: u64,
    /// Connections closed for missing heartbeats.
    pub reaped: u64,
    /// Connections closed for passing the send hard limit.
    pub slow_closed: u64,
    /// Locks held.
    pub locks: u64,
    /// Connections waiting for a lock.
    pub lock_waiters: u64,
    /// RPC calls in flight.
    pub pending_calls: u64,
    /// Subscriptions, over all connections.
    pub subscriptions: u64,
    /// Connections refused at `maxConnections` or for lack of descriptors.
    pub refused: u64,
    /// Connections closed at the handshake deadline (no `hello` with the token).
    pub handshake_closed: u64,
    /// Replies refused with `ETOOBIG` (over the reply budget or the connection's room).
    pub too_big: u64,
    /// Registered procedures and their worker counts.
    pub procs: Vec<ProcStats>,
    /// Memory figures in bytes (at least `rss`).
    pub memory: BTreeMap<String, u64>,
    /// Process CPU time over wall time since start (cores' worth, when summed).
    pub cpu_core_fraction: f64,
    /// The broker's I/O driver (`uring` or `epoll`); empty for a sum or a broker that
    /// does not say, and then not on the wire.
    pub io_backend: String,
    /// Persistence state; `None` when the broker keeps everything in memory.
    pub persistence: Option<PersistStats>,
}

/// One registered procedure in [`StatsReport::procs`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// The procedure name.
    pub name: String,
    /// Connections serving it.
    pub workers: u64,
}

impl ProcStats {
    /// A procedure and its worker count.
    pub fn new(name: impl Into<String>, workers: u64) -> Self {
        ProcStats {
            name: name.into(),
            workers,
        }
    }
}

/// The persistence part of a [`StatsReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistStats {
    /// `no`, `everysec` or `always`.
    pub fsync: String,
    /// Bytes in the current log segment.
    pub log_bytes: u64,
    /// The current log error, while failing.
    pub error: Option<String>,
    /// Log failures since start.
    pub errors: u64,
    /// Snapshots completed since start.
    pub snapshots: u64,
    /// A snapshot is being written.
    pub snapshot_running: bool,
}

/// A counter from the wire: any number, negative and non-finite read as 0.
fn count(v: Raw<'_>) -> u64 {
    match v.as_num() {
        Some(Num::Int(i)) => i.max(0) as u64,
        Some(Num::UInt(u)) => u,
        Some(Num::Float(f)) if f.is_finite() && f > 0.0 => f as u64,
        _ => 0,
    }
}

fn counts(v: Raw<'_>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (k, x) in v.map().into_iter().flatten() {
        if x.as_num().is_some() {
            m.insert(k.into_owned(), count(x));
        }
    }
    m
}

fn text(v: Raw<'_>) -> Option<String> {
    v.as_str().map(|s| s.into_owned())
}

fn add_counts(acc: &mut BTreeMap<String, u64>, more: &BTreeMap<String, u64>) {
    for (k, n) in more {
        let e = acc.entry(k.clone()).or_default();
        *e = e.saturating_add(*n);
    }
}

fn write_counts(w: &mut Writer<'_>, m: &BTreeMap<String, u64>) {
    w.begin_map(m.len());
    for (k, n) in m {
        w.key(k);
        w.uint(*n);
    }
    w.end_map();
}

impl StatsReport {
    /// Writes the report as one map (the `value` of the `stats` reply), in the key
    /// order of the module docs.
    pub fn encode_into(&self, w: &mut Writer<'_>) {
        let io = usize::from(!self.io_backend.is_empty());
        w.begin_map(if self.pid.is_some() { 29 } else { 27 } + io);
        w.key("persistence");
        match &self.persistence {
            Some(p) => {
                w.begin_map(6);
                w.key("fsync");
                w.str(&p.fsync);
                w.key("logBytes");
                w.uint(p.log_bytes);
                w.key("error");
                match &p.error {
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
        w.str(&self.name);
        if let Some(pid) = self.pid {
            w.key("pid");
            w.uint(pid);
            w.key("core");
            match self.core {
                Some(c) => w.uint(c),
                None => w.nil(),
            }
        }
        let counters1 = [
            ("uptimeMs", self.uptime_ms),
            ("connections", self.connections),
            ("cacheSize", self.cache_size),
            ("cacheBytes", self.cache_bytes),
            ("evicted", self.evicted),
            ("expired", self.expired),
            ("hits", self.hits),
            ("misses", self.misses),
        ];
        for (k, n) in counters1 {
            w.key(k);
            w.uint(n);
        }
        w.key("ops");
        write_counts(w, &self.ops);
        w.key("errors");
        write_counts(w, &self.errors);
        let counters2 = [
            ("dropped", self.dropped),
            ("duplicates", self.duplicates),
            ("dedupSize", self.dedup_size),
            ("reaped", self.reaped),
            ("slowClosed", self.slow_closed),
            ("locks", self.locks),
            ("lockWaiters", self.lock_waiters),
            ("pendingCalls", self.pending_calls),
            ("subscriptions", self.subscriptions),
        ];
        for (k, n) in counters2 {
            w.key(k);
            w.uint(n);
        }
        let limits = [
            ("refused", self.refused),
            ("handshakeClosed", self.handshake_closed),
            ("tooBig", self.too_big),
        ];
        for (k, n) in limits {
            w.key(k);
            w.uint(n);
        }
        w.key("procs");
        w.begin_array(self.procs.len());
        for p in &self.procs {
            w.begin_map(2);
            w.key("name");
            w.str(&p.name);
            w.key("workers");
            w.uint(p.workers);
            w.end_map();
        }
        w.end_array();
        w.key("memory");
        write_counts(w, &self.memory);
        w.key("cpuCoreFraction");
        w.float(self.cpu_core_fraction);
        if io == 1 {
            w.key("ioBackend");
            w.str(&self.io_backend);
        }
        w.end_map();
    }

    /// Reads a report from the `value` of a `stats` reply (leniently: see the module
    /// docs). Fails only when `v` is not a map.
    pub fn decode(v: Raw<'_>) -> Result<StatsReport, DecodeError> {
        let entries = v
            .map()
            .ok_or_else(|| DecodeError::new("stats: the value is not a map"))?;
        let mut s = StatsReport::default();
        for (k, x) in entries {
            match &*k {
                "name" => s.name = text(x).unwrap_or_default(),
                "pid" => s.pid = x.as_num().map(|_| count(x)),
                "core" => s.core = x.as_num().map(|_| count(x)),
                "uptimeMs" => s.uptime_ms = count(x),
                "connections" => s.connections = count(x),
                "cacheSize" => s.cache_size = count(x),
                "cacheBytes" => s.cache_bytes = count(x),
                "evicted" => s.evicted = count(x),
                "expired" => s.expired = count(x),
                "hits" => s.hits = count(x),
                "misses" => s.misses = count(x),
                "ops" => s.ops = counts(x),
                "errors" => s.errors = counts(x),
                "dropped" => s.dropped = count(x),
                "duplicates" => s.duplicates = count(x),
                "dedupSize" => s.dedup_size = count(x),
                "reaped" => s.reaped = count(x),
                "slowClosed" => s.slow_closed = count(x),
                "locks" => s.locks = count(x),
                "lockWaiters" => s.lock_waiters = count(x),
                "pendingCalls" => s.pending_calls = count(x),
                "subscriptions" => s.subscriptions = count(x),
                "refused" => s.refused = count(x),
                "handshakeClosed" => s.handshake_closed = count(x),
                "tooBig" => s.too_big = count(x),
                "procs" => {
                    s.procs = x
                        .array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| {
                            let mut proc = ProcStats::default();
                            for (pk, pv) in p.map()? {
                                match &*pk {
                                    "name" => proc.name = text(pv).unwrap_or_default(),
                                    "workers" => proc.workers = count(pv),
                                    _ => {}
                                }
                            }
                            Some(proc)
                        })
                        .collect()
                }
                "memory" => s.memory = counts(x),
                "cpuCoreFraction" => s.cpu_core_fraction = x.as_num().map_or(0.0, Num::as_f64),
                "ioBackend" => s.io_backend = text(x).unwrap_or_default(),
                "persistence" => {
                    s.persistence = x.map().map(|m| {
                        let mut p = PersistStats::default();
                        for (pk, pv) in m {
                            match &*pk {
                                "fsync" => p.fsync = text(pv).unwrap_or_default(),
                                "logBytes" => p.log_bytes = count(pv),
                                "error" => p.error = text(pv),
                                "errors" => p.errors = count(pv),
                                "snapshots" => p.snapshots = count(pv),
                                "snapshotRunning" => {
                                    p.snapshot_running = pv.as_bool() == Some(true)
                                }
                                _ => {}
                            }
                        }
                        p
                    })
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// [`decode`](Self::decode) of one encoded value in `codec` (for example the
    /// JSON text of a reply's `value`); fails when `bytes` is not exactly one valid
    /// value or not a map.
    pub fn decode_slice(codec: Codec, bytes: &[u8]) -> Result<StatsReport, DecodeError> {
        StatsReport::decode(crate::value::validate(codec, bytes)?)
    }

    /// The totals of a sharded mesh, the one sum every caller uses: counters, `ops`,
    /// `errors`, `memory` and `cpuCoreFraction` add up, `uptimeMs` is the longest,
    /// `procs` merge by name (sorted by name), persistence counters add up (the first
    /// shard's `fsync` and error are kept, a snapshot runs if one does). `pid` and
    /// `core` are per broker and `None`; `name` is empty for the caller to set.
    pub fn sum(shards: &[StatsReport]) -> StatsReport {
        let mut t = StatsReport::default();
        let mut procs: BTreeMap<&str, u64> = BTreeMap::new();
        for s in shards {
            t.uptime_ms = t.uptime_ms.max(s.uptime_ms);
            for (acc, n) in [
                (&mut t.connections, s.connections),
                (&mut t.cache_size, s.cache_size),
                (&mut t.cache_bytes, s.cache_bytes),
                (&mut t.evicted, s.evicted),
                (&mut t.expired, s.expired),
                (&mut t.hits, s.hits),
                (&mut t.misses, s.misses),
                (&mut t.dropped, s.dropped),
                (&mut t.duplicates, s.duplicates),
                (&mut t.dedup_size, s.dedup_size),
                (&mut t.reaped, s.reaped),
                (&mut t.slow_closed, s.slow_closed),
                (&mut t.locks, s.locks),
                (&mut t.lock_waiters, s.lock_waiters),
                (&mut t.pending_calls, s.pending_calls),
                (&mut t.subscriptions, s.subscriptions),
                (&mut t.refused, s.refused),
                (&mut t.handshake_closed, s.handshake_closed),
                (&mut t.too_big, s.too_big),
            ] {
                *acc = acc.saturating_add(n);
            }
            add_counts(&mut t.ops, &s.ops);
            add_counts(&mut t.errors, &s.errors);
            add_counts(&mut t.memory, &s.memory);
            for p in &s.procs {
                let e = procs.entry(&p.name).or_default();
                *e = e.saturating_add(p.workers);
            }
            t.cpu_core_fraction += s.cpu_core_fraction;
            if let Some(p) = &s.persistence {
                let acc = t.persistence.get_or_insert_with(|| PersistStats {
                    fsync: p.fsync.clone(),
                    ..Default::default()
                });
                acc.log_bytes = acc.log_bytes.saturating_add(p.log_bytes);
                acc.errors = acc.errors.saturating_add(p.errors);
                acc.snapshots = acc.snapshots.saturating_add(p.snapshots);
                acc.snapshot_running |= p.snapshot_running;
                if acc.error.is_none() {
                    acc.error.clone_from(&p.error);
                }
            }
        }
        t.procs = procs
            .into_iter()
            .map(|(name, workers)| ProcStats::new(name, workers))
            .collect();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatsReport {
        StatsReport {
            name: "m".into(),
            pid: Some(42),
            core: None,
            uptime_ms: 1500,
            connections: 2,
            cache_size: 3,
            cache_bytes: 30,
            evicted: 1,
            expired: 4,
            hits: 13,
            misses: 14,
            ops: [("get".to_string(), 5), ("set".to_string(), 1)].into(),
            errors: [("EUNKNOWN".to_string(), 2)].into(),
            dropped: 6,
            duplicates: 0,
            dedup_size: 0,
            reaped: 7,
            slow_closed: 8,
            locks: 9,
            lock_waiters: 10,
            pending_calls: 11,
            subscriptions: 12,
            refused: 13,
            handshake_closed: 14,
            too_big: 15,
            procs: vec![ProcStats::new("f", 2)],
            memory: [("rss".to_string(), 4096)].into(),
            cpu_core_fraction: 0.25,
            io_backend: String::new(),
            persistence: Some(PersistStats {
                fsync: "everysec".into(),
                log_bytes: 100,
                error: None,
                errors: 0,
                snapshots: 1,
                snapshot_running: false,
            }),
        }
    }

    fn encode(codec: Codec, s: &StatsReport) -> Vec<u8> {
        let mut out = Vec::new();
        s.encode_into(&mut Writer::new(codec, &mut out));
        out
    }

    /// The exact bytes of a broker's report in JSON, and its MessagePack head.
    #[test]
    fn golden_bytes() {
        let json = String::from_utf8(encode(Codec::Json, &sample())).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"persistence":{"fsync":"everysec","logBytes":100,"error":null,"errors":0,"#,
                r#""snapshots":1,"snapshotRunning":false},"name":"m","pid":42,"core":null,"#,
                r#""uptimeMs":1500,"connections":2,"cacheSize":3,"cacheBytes":30,"evicted":1,"#,
                r#""expired":4,"hits":13,"misses":14,"ops":{"get":5,"set":1},"#,
                r#""errors":{"EUNKNOWN":2},"dropped":6,"#,
                r#""duplicates":0,"dedupSize":0,"reaped":7,"slowClosed":8,"locks":9,"#,
                r#""lockWaiters":10,"pendingCalls":11,"subscriptions":12,"#,
                r#""refused":13,"handshakeClosed":14,"tooBig":15,"#,
                r#""procs":[{"name":"f","workers":2}],"memory":{"rss":4096},"#,
                r#""cpuCoreFraction":0.25}"#
            )
        );
        let mp = encode(Codec::MsgPack, &sample());
        // map16 of 29, then fixstr "persistence" and a fixmap of 6.
        assert_eq!(&mp[..3], [0xde, 0x00, 29]);
        assert_eq!(&mp[3..15], b"\xabpersistence");
        assert_eq!(mp[15], 0x86);
        // Ends with "cpuCoreFraction" and a float64 0.25.
        let tail = [&b"\xafcpuCoreFraction\xcb"[..], &0.25f64.to_be_bytes()].concat();
        assert!(mp.ends_with(&tail));
        let sum = String::from_utf8(encode(Codec::Json, &StatsReport::default())).unwrap();
        assert!(
            sum.starts_with(r#"{"persistence":null,"name":"","uptimeMs":0,"#),
            "a sum has no pid or core: {sum}"
        );
    }

    #[test]
    fn round_trips_in_both_codecs() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let mut s = sample();
            assert_eq!(
                StatsReport::decode_slice(codec, &encode(codec, &s)),
                Ok(s.clone())
            );
            s.core = Some(3);
            s.persistence = None;
            s.pid = None;
            // Without a pid the core is not on the wire.
            let back = StatsReport::decode_slice(codec, &encode(codec, &s)).unwrap();
            assert_eq!(back.core, None);
            s.core = None;
            assert_eq!(back, s);
        }
    }

    #[test]
    fn decodes_leniently() {
        let s = StatsReport::decode_slice(
            Codec::Json,
            br#"{"uptimeMs":12.0,"connections":2,"cacheSize":-3,"ops":{"get":4,"x":"y"},
                "procs":[{"name":"add","workers":1.0},7],"memory":{"rss":1000.5},
                "cpuCoreFraction":1,"somethingNew":true,"pid":"?","core":2}"#,
        )
        .unwrap();
        assert_eq!((s.uptime_ms, s.connections, s.cache_size), (12, 2, 0));
        assert_eq!(s.ops, [("get".to_string(), 4)].into());
        assert_eq!(s.procs, vec![ProcStats::new("add", 1)]);
        assert_eq!(s.memory["rss"], 1000);
        assert_eq!(s.cpu_core_fraction, 1.0);
        assert_eq!((s.pid, s.core, s.lock_waiters), (None, Some(2), 0));
        assert!(StatsReport::decode_slice(Codec::Json, b"[1]").is_err());
        assert!(StatsReport::decode_slice(Codec::Json, b"{").is_err());
    }

    #[test]
    fn sums_shards() {
        let a = sample();
        let mut b = sample();
        b.uptime_ms = 9000;
        b.core = Some(1);
        b.ops = [("get".to_string(), 2)].into();
        b.procs = vec![ProcStats::new("g", 1), ProcStats::new("f", 1)];
        b.cpu_core_fraction = 0.5;
        b.persistence.as_mut().unwrap().error = Some("disk full".into());
        b.persistence.as_mut().unwrap().snapshot_running = true;
        let t = StatsReport::sum(&[a, b]);
        assert_eq!((t.name.as_str(), t.pid, t.core), ("", None, None));
        assert_eq!((t.uptime_ms, t.connections, t.cache_bytes), (9000, 4, 60));
        assert_eq!(
            t.ops,
            [("get".to_string(), 7), ("set".to_string(), 1)].into()
        );
        assert_eq!(t.errors["EUNKNOWN"], 4);
        assert_eq!((t.hits, t.misses), (26, 28));
        assert_eq!((t.refused, t.handshake_closed, t.too_big), (26, 28, 30));
        assert_eq!(
            t.procs,
            vec![ProcStats::new("f", 3), ProcStats::new("g", 1)]
        );
        assert_eq!(t.memory["rss"], 8192);
        assert_eq!(t.cpu_core_fraction, 0.75);
        let p = t.persistence.unwrap();
        assert_eq!((p.log_bytes, p.snapshots), (200, 2));
        assert_eq!(p.error.as_deref(), Some("disk full"));
        assert!(p.snapshot_running);
        assert_eq!(StatsReport::sum(&[]), StatsReport::default());
    }

    #[test]
    fn io_backend_is_one_more_key_when_named() {
        let mut s = sample();
        s.io_backend = "uring".into();
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = encode(codec, &s);
            assert_eq!(StatsReport::decode_slice(codec, &bytes).unwrap(), s);
        }
        let json = String::from_utf8(encode(Codec::Json, &s)).unwrap();
        assert!(json.ends_with(r#","ioBackend":"uring"}"#), "{json}");
        assert_eq!(encode(Codec::MsgPack, &s)[..3], [0xde, 0x00, 30]);
        assert_eq!(StatsReport::sum(&[s.clone(), s]).io_backend, "");
    }
}
