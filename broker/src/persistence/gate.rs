//! The durability gate: the one place that decides when a write may be accepted and
//! when its reply may leave.
//!
//! `gate` owns the persistence handle (if any) and the replies held back this turn.
//! Per request, [`Gate::admit`] refuses writes while the log is failing and notes
//! where the write's reply starts in its connection's output; [`Gate::observe`]
//! notes where the reply of any later request of the turn starts (it may have read
//! what the turn wrote). Once per turn, [`Gate::commit`] writes the turn's log
//! records (and fence reservation) per the fsync policy (the log `write()` is
//! synchronous under every policy; `always` also fsyncs).
//!
//! Guarantee — nothing failed takes effect: when that write (or, with `always`, its
//! fsync) fails, the turn's cache writes are undone ([`Store::undo_turn`], from the
//! before-images the store kept), their records are dropped (never written later),
//! and the replies are retracted: each affected connection's output is cut back to
//! its first held or observed reply, every held write is answered `EBROKER "write
//! not persisted: …"`, and the connection is closed after that flush (its other
//! replies of the turn, which may have seen the undone writes, are lost with the
//! cut; the client fails them as on a closed connection). So a write answered
//! "not persisted" was never visible, and a retried `incr` counts once. Lock,
//! pub/sub and RPC state is not undone (only the cache is logged as effects).
//! It does not know about sockets; the core flushes only after the commit.
//!
//! Invariants: the held and observed lists are empty after every commit and bounded
//! by one turn's requests; a connection with a held reply is not flushed early.

use procmesh_proto::{ErrorCode, Raw, Reply};

use super::Persistence;
use crate::connection::{Closing, ConnId, Conns};
use crate::locks::LockTable;
use crate::stats::Stats;
use crate::store::Store;
use crate::tracking::MeshEffects;

/// A write whose reply waits for this turn's fsync.
struct Held {
    conn: ConnId,
    /// Offset of the reply in the connection's output.
    at: usize,
    /// The request id, raw in the connection's codec: a range of [`Gate::ids`].
    id: Option<(usize, usize)>,
}

/// Admission and commit of writes; see the module doc.
pub struct Gate {
    log: Option<Persistence>,
    held: Vec<Held>,
    /// The held requests' ids, back to back (one reused buffer: no allocation per
    /// write once grown).
    ids: Vec<u8>,
    /// Where replies of requests after the turn's first write start (connection,
    /// output offset): they are retracted with the writes if the commit fails.
    observed: Vec<(ConnId, usize)>,
    /// A durable ack (or an offset reservation) needs this turn's commit synced.
    sync: bool,
}

impl Gate {
    /// A gate over `log` (`None`: in-memory broker, every write is admitted).
    pub fn new(log: Option<Persistence>) -> Gate {
        Gate {
            log,
            held: Vec::new(),
            ids: Vec::new(),
            observed: Vec::new(),
            sync: false,
        }
    }

    /// The persistence handle, for stats.
    pub fn log(&self) -> Option<&Persistence> {
        self.log.as_ref()
    }

    /// Whether a log is attached: only then can [`Gate::admit`] refuse or hold a
    /// write (so an in-memory broker skips admission with one check).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.log.is_some()
    }

    /// Admits a write request from `conn` whose reply will start at `reply_at()` in
    /// its output (asked only when the reply is held). `Err` carries the refusal's
    /// message (the log is failing).
    #[inline]
    pub fn admit(
        &mut self,
        conn: ConnId,
        id: Option<Raw<'_>>,
        reply_at: impl FnOnce() -> usize,
    ) -> Result<(), String> {
        let Some(p) = &self.log else {
            return Ok(());
        };
        if let Some(e) = &p.error {
            return Err(format!(
                "persistence is failing ({e}); writes are refused until it recovers"
            ));
        }
        self.held.push(Held {
            conn,
            at: reply_at(),
            id: id.map(|i| {
                self.ids.extend_from_slice(i.bytes);
                (self.ids.len() - i.bytes.len(), i.bytes.len())
            }),
        });
        Ok(())
    }

    /// Notes that a request from `conn` whose reply starts at `reply_at()` runs after
    /// a write of this turn (so it may observe it). Cheap when the turn has no write.
    #[inline]
    pub fn observe(&mut self, conn: ConnId, reply_at: impl FnOnce() -> usize) {
        if self.held.is_empty() || self.observed.last().is_some_and(|o| o.0 == conn) {
            return;
        }
        self.observed.push((conn, reply_at()));
    }

    /// Makes this turn's commit fsync whatever the policy (an offset reservation, or a
    /// durable-ack publish whose reply `admit` holds until then).
    pub fn sync_this_turn(&mut self) {
        self.sync = true;
    }

    /// Whether `conn` has a reply held for this turn's commit (its output must not
    /// be flushed early).
    #[inline]
    pub fn holds(&self, conn: ConnId) -> bool {
        !self.held.is_empty()
            && (self.held.iter().any(|h| h.conn == conn)
                || self.observed.iter().any(|o| o.0 == conn))
    }

    /// Writes this turn's log records (the store's effects and a pending fence
    /// reservation) per the fsync policy; with `always`, retracts the held replies
    /// when that fails.
    pub fn commit(
        &mut self,
        store: &mut Store<MeshEffects>,
        locks: &mut LockTable,
        conns: &mut Conns,
        stats: &mut Stats,
    ) {
        let Some(p) = self.log.as_mut() else {
            return;
        };
        let reservation = locks.take_reservation();
        let Some(effects) = store.effects_mut().log_mut() else {
            return;
        };
        let buf = effects.buf();
        if let Some(r) = reservation {
            p.reserve(buf, r);
        }
        let was_failing = p.error.is_some();
        let force = reservation.is_some() || std::mem::take(&mut self.sync);
        let result = p.commit(buf, force);
        match result {
            Ok(()) => {
                store.commit_turn();
                if was_failing && p.error.is_none() {
                    tracing::info!("persistence recovered; writes are accepted again");
                }
            }
            Err(e) => {
                if reservation.is_some() {
                    locks.reservation_failed();
                }
                let undone = store.undo_turn();
                if !was_failing {
                    tracing::error!(
                        "persistence error: {e}; undid {undone} write(s) of this turn; \
                         refusing writes until it recovers"
                    );
                }
                self.retract(&e, conns, stats);
            }
        }
        self.held.clear();
        self.ids.clear();
        self.observed.clear();
    }

    fn retract(&mut self, why: &str, conns: &mut Conns, stats: &mut Stats) {
        let held = std::mem::take(&mut self.held);
        let ids = std::mem::take(&mut self.ids);
        let mut cut: Vec<(ConnId, usize)> = Vec::new();
        let marks = held.iter().map(|h| (h.conn, h.at));
        for (conn, at) in marks.chain(self.observed.drain(..)) {
            match cut.iter_mut().find(|(c, _)| *c == conn) {
                Some((_, p)) => *p = (*p).min(at),
                None => cut.push((conn, at)),
            }
        }
        for (k, pos) in cut {
            if let Some(c) = conns.get_mut(k) {
                c.out().truncate(pos);
                c.closing = Closing::AfterFlush;
            }
        }
        let msg = format!("write not persisted: {why}");
        for h in held {
            if conns.get(h.conn).is_none() {
                continue;
            }
            conns.send(h.conn, |codec, out| {
                let id = h.id.map(|(at, n)| Raw::new(codec, &ids[at..at + n]));
                Reply::Err {
                    code: ErrorCode::Broker,
                    message: &msg,
                }
                .encode_into(codec, id, out);
            });
            stats.error(ErrorCode::Broker);
        }
    }

    /// Starts, advances or completes a snapshot (once per turn, after the commit).
    pub fn tick(&mut self, store: &Store<MeshEffects>, now: u64, carry: impl FnOnce(&mut Vec<u8>)) {
        if let Some(p) = self.log.as_mut() {
            p.tick(store, now, carry);
        }
    }

    /// Makes everything written durable (clean shutdown).
    pub fn close(&mut self) -> Result<(), String> {
        match self.log.as_mut() {
            Some(p) => p.close(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::aof::EffectLog;
    use super::super::FsyncMode;
    use super::*;
    use crate::connection::Connection;
    use crate::store::StoreConfig;
    use procmesh_proto::Codec;

    fn store() -> Store<MeshEffects> {
        let mut e = MeshEffects::new(1);
        e.log = Some(EffectLog::new(0));
        Store::with_effects(StoreConfig::default(), e)
    }

    fn gate(fsync: FsyncMode, dir: &std::path::Path) -> Gate {
        let mut cfg = super::super::PersistConfig::new(dir);
        cfg.fsync = fsync;
        let (p, _) = Persistence::open(cfg, &mut store(), 0).expect("open");
        Gate::new(Some(p))
    }

    #[test]
    fn in_memory_admits_everything_and_holds_nothing() {
        let mut g = Gate::new(None);
        let id = Raw::new(Codec::Json, b"1");
        assert!(g.admit(ConnId(0), Some(id), || 0).is_ok());
        assert!(!g.holds(ConnId(0)));
    }

    #[test]
    fn every_policy_holds_write_replies_until_the_commit() {
        // The log write is synchronous under every policy, so every policy can fail
        // a write and must hold its reply until the commit.
        for (mode, holds) in [
            (FsyncMode::No, true),
            (FsyncMode::EverySec, true),
            (FsyncMode::Always, true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut g = gate(mode, dir.path());
            let (mut s, mut locks, mut stats) = (store(), LockTable::default(), Stats::default());
            let mut conns = Conns::new(usize::MAX, usize::MAX);
            let c = conns.insert(Connection::new(1, true, 0));
            assert!(g.admit(c, None, || 0).is_ok());
            s.set("k", Raw::new(Codec::Json, b"1"), None, 0);
            assert_eq!(g.holds(c), holds, "{mode:?}");
            g.commit(&mut s, &mut locks, &mut conns, &mut stats);
            assert!(!g.holds(c), "{mode:?}: nothing is held after the commit");
            assert_eq!(conns[c].queued(), 0, "a successful commit retracts nothing");
            assert!(g.log().is_some_and(|p| p.log_bytes() > 0), "{mode:?}");
        }
    }
}
