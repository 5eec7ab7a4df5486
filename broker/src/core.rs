//! The state machine: the mesh state and the connections' output, advanced one loop
//! turn at a time by whichever I/O driver feeds it.
//!
//! `core` owns a [`Mesh`] (cache, locks, pub/sub, RPC, timers, stats, durability
//! gate) and the [`Conns`] table (buffers, codec, close state, dirty list). A driver
//! (today the mio `Reactor` in `io::epoll`) owns the sockets and the poll, reads bytes
//! into a connection's buffer, then calls in:
//!
//! ```text
//!  driver                         core
//!  ─────────────────────────────  ──────────────────────────────────────────────
//!  accept ───────────────────────▶ open_conn
//!  read into Connection.rbuf ────▶ input: frames → dispatch::handle → families
//!  (once per turn) ──────────────▶ end_turn: timers, heartbeat, expiry, log commit
//!  ◀── Transport::flush/release ── flush: write dirty connections, close, repeat
//! ```
//!
//! It performs no I/O of its own: sockets are reached only through the driver's
//! [`Transport`] (flushes, releases), files only through the persistence gate.
//! Invariants: every reply of a turn is in an output buffer before
//! [`Core::end_turn`] commits the log, and none is flushed before that commit
//! (except early flushes the gate allows); closing a connection releases its
//! locks, subscriptions and calls in the same turn.

use procmesh_proto::{frame, ErrorCode, Push};

use crate::config::BrokerConfig;
use crate::connection::{Closing, ConnId, Connection, Conns, ReadOutcome, Transport};
use crate::dedup::Dedup;
use crate::dispatch;
use crate::events::{BrokerEvent, ConnSerial, Events};
use crate::locks::LockTable;
use crate::mesh::{Mesh, MeshStore};
use crate::persistence::gate::Gate;
use crate::persistence::Persistence;
use crate::pubsub::PubSub;
use crate::retain::Retain;
use crate::rpc::Rpc;
use crate::stats::Stats;
use crate::sys;
use crate::timers::{TimerKind, Timers};

/// Frames handled from one connection per wake before others get a turn.
const FRAME_BUDGET: usize = 4096;
/// Entries sampled by active expiry per turn.
const EXPIRE_BUDGET: usize = 20_000;
/// How often expiry runs while keys exist and nothing else wakes the loop.
const EXPIRE_PERIOD_MS: u64 = 100;
/// Largest frame accepted before `hello` passed (when a token is required).
pub const PREAUTH_MAX_FRAME: usize = 64 * 1024;
/// Bytes read per wake from a connection that has not passed `hello`.
pub const PREAUTH_READ_BUDGET: usize = 64 * 1024;
/// How often the connection sweep runs (handshake deadlines, idle buffers).
const SWEEP_PERIOD_MS: u64 = 1000;
/// Silence after which an idle connection's buffers are freed.
const IDLE_SHRINK_MS: u64 = 1000;

/// The broker's state machine; see the module doc.
pub struct Core {
    mesh: Mesh,
    conns: Conns,
    next_serial: u64,
    next_heartbeat: u64,
    next_sweep: u64,
    /// The previous turn's time: a gap longer than the heartbeat's check period
    /// means the broker itself stalled, and that silence is not the clients'.
    last_turn: u64,
    /// When the next `stats` event is due (`u64::MAX`: never).
    next_stats: u64,
    expiry_busy: bool,
}

impl Core {
    /// A state machine over a recovered `store` and `locks` and the persistence
    /// directory they came from (if any).
    pub fn new(
        cfg: BrokerConfig,
        store: MeshStore,
        locks: LockTable,
        persist: Option<Persistence>,
    ) -> Core {
        let next_heartbeat = cfg.heartbeat.map_or(u64::MAX, |h| h.as_millis() as u64);
        let conns = Conns::new(cfg.send_hard_limit, cfg.limits.max_output_bytes);
        let events = Events::new(cfg.events.clone());
        // Stats events are built only for a listener.
        let next_stats = match (cfg.stats_interval, events.is_on()) {
            (Some(iv), true) => iv.as_millis() as u64,
            _ => u64::MAX,
        };
        Core {
            mesh: Mesh {
                store,
                pubsub: PubSub::new(),
                dedup: Dedup::new(cfg.dedup.clone()),
                retain: Retain::new(cfg.pubsub.clone()),
                epoch0: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                rpc: Rpc::new(),
                locks,
                timers: Timers::default(),
                stats: Stats::default(),
                gate: Gate::new(persist),
                now: 0,
                cpu_start: sys::cpu_time(),
                next_pid: 0,
                cfg,
                shutdown: false,
                lock_events: Vec::new(),
                fanout: Default::default(),
                mpr_in: Default::default(),
                mpr_plain: Vec::new(),
                mpr_enc: Default::default(),
                targets: Vec::new(),
                events,
            },
            conns,
            next_serial: 0,
            next_heartbeat,
            next_sweep: SWEEP_PERIOD_MS,
            last_turn: 0,
            next_stats,
            expiry_busy: false,
        }
    }

    /// The configuration.
    pub fn cfg(&self) -> &BrokerConfig {
        &self.mesh.cfg
    }

    /// Sets this turn's time (ms on the broker clock), read once per turn.
    #[inline]
    pub fn set_now(&mut self, now: u64) {
        self.mesh.now = now;
    }

    /// Asks the loop to stop after this turn (a signal).
    pub fn request_shutdown(&mut self) {
        self.mesh.shutdown = true;
    }

    /// Whether a client or signal asked for shutdown.
    pub fn is_shutdown(&self) -> bool {
        self.mesh.shutdown
    }

    /// True when no connection is open.
    pub fn has_no_conns(&self) -> bool {
        self.conns.is_empty()
    }

    /// Whether work is left that should not wait for an event (active expiry found
    /// more to reclaim).
    pub fn is_busy(&self) -> bool {
        self.expiry_busy
    }

    /// The earliest time (ms on the broker clock) the core needs a turn without any
    /// event: a timer, the heartbeat, or periodic expiry. `now` is the current clock.
    pub fn next_wake(&self, now: u64) -> Option<u64> {
        let mut next = self.next_heartbeat.min(self.next_stats);
        if let Some(d) = self.mesh.timers.next_deadline() {
            next = next.min(d);
        }
        if !self.mesh.store.is_empty() {
            next = next.min(now + EXPIRE_PERIOD_MS);
        }
        if !self.conns.is_empty() {
            next = next.min(self.next_sweep);
        }
        (next != u64::MAX).then_some(next)
    }

    // ------------------------------------------------------------ connections

    /// The id the next [`Core::open_conn`] returns (for the driver's token).
    pub fn next_conn_id(&self) -> ConnId {
        self.conns.vacant_id()
    }

    /// Whether a new connection must be refused (`maxConnections` reached); the
    /// driver then sends [`Core::refusal`] and closes it without opening state.
    pub fn at_capacity(&self) -> bool {
        self.conns.len() >= self.mesh.cfg.limits.max_connections
    }

    /// The frame (JSON: the peer's codec is unknown) a refused connection gets, and
    /// counts the refusal. `why` says what ran out.
    pub fn refusal(&mut self, why: &str) -> Vec<u8> {
        self.mesh.stats.refused += 1;
        self.mesh.stats.error(ErrorCode::Broker);
        let mut out = Vec::new();
        procmesh_proto::Reply::Err {
            code: ErrorCode::Broker,
            message: why,
        }
        .encode_into(procmesh_proto::Codec::Json, None, &mut out);
        out
    }

    /// The most bytes the driver should read from `id` per wake: small until the
    /// connection passed `hello` (when a token is required).
    #[inline]
    pub fn read_budget(&self, id: ConnId, full: usize) -> usize {
        match self.conns.get(id) {
            Some(c) if !c.authed => full.min(PREAUTH_READ_BUDGET),
            _ => full,
        }
    }

    /// Opens state for an accepted connection.
    pub fn open_conn(&mut self) -> ConnId {
        self.next_serial += 1;
        let authed = self.mesh.cfg.token.is_none();
        self.mesh.stats.accepted += 1;
        let serial = self.next_serial;
        self.mesh
            .events
            .emit(|| BrokerEvent::Connect(ConnSerial(serial)));
        self.conns
            .insert(Connection::new(serial, authed, self.mesh.now))
    }

    /// A connection's state, for the driver to read into (or flag).
    #[inline]
    pub fn conn_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        self.conns.get_mut(id)
    }

    /// The socket can take more output: list the connection if it has some queued.
    #[inline]
    pub fn on_writable(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get(id) {
            if !c.dirty && c.queued() > 0 {
                self.conns.mark_dirty(id);
            }
        }
    }

    /// Handles the complete frames the driver read into `id`'s buffer (`outcome` is
    /// how that read ended). Returns true when the driver should read `id` again
    /// this turn-cycle (budget reached with input left).
    pub fn input<T: Transport>(&mut self, id: ConnId, outcome: ReadOutcome, io: &mut T) -> bool {
        let full_frame = self.mesh.cfg.max_frame;
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        let (buf, mut pos, end) = conn.take_input();
        if end > pos {
            conn.last_in = self.mesh.now;
        }
        let mut frames = 0;
        let mut more = outcome == ReadOutcome::Budget;
        loop {
            let conn = &self.conns[id];
            if conn.closing != Closing::No {
                break;
            }
            // Before `hello` passed, a peer gets a small frame limit (so an announced
            // 64 MiB frame never grows its buffer); re-read per frame, since `hello`
            // may be the frame just handled.
            let max_frame = if conn.authed {
                full_frame
            } else {
                full_frame.min(PREAUTH_MAX_FRAME)
            };
            match frame::try_decode(&buf[pos..end], max_frame) {
                Ok(Some((s, e))) => {
                    let payload = &buf[pos + s..pos + e];
                    pos += e;
                    dispatch::handle(&mut self.mesh, &mut self.conns, io, id, payload);
                    frames += 1;
                    if frames >= FRAME_BUDGET {
                        more = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.mesh.stats.error(ErrorCode::TooBig);
                    dispatch::send_err(
                        &mut self.conns,
                        id,
                        None,
                        ErrorCode::TooBig,
                        &e.to_string(),
                    );
                    self.conns[id].closing = Closing::AfterFlush;
                    pos = end;
                    break;
                }
            }
        }
        let conn = &mut self.conns[id];
        conn.put_input(buf, pos, end);
        if outcome == ReadOutcome::Closed {
            // The peer may only have shut down its writing side: answer what it sent,
            // then close (a fully closed peer fails the flush and is closed at once).
            if conn.closing == Closing::No {
                conn.closing = Closing::AfterFlush;
            }
            self.conns.mark_dirty(id);
            false
        } else {
            more && conn.closing == Closing::No
        }
    }

    // ------------------------------------------------------------ the turn

    /// The work of a turn after input, in this fixed order: due timers (call
    /// deadlines, lock TTLs and waits), heartbeat pings and reaping, active expiry,
    /// timer-heap compaction, then the log commit (with `always`, its fsync) that
    /// precedes every reply of the turn, then snapshot progress.
    pub fn end_turn(&mut self) {
        self.run_timers();
        self.credit_stall();
        self.heartbeat();
        self.sweep();
        self.expiry_busy = self.mesh.store.reclaim(self.mesh.now, EXPIRE_BUDGET);
        self.compact_timers();
        let errors = self.persist_errors();
        self.commit();
        // After the commit: a retracted turn's invalidations still go out (harmless),
        // and none is cut back with its replies.
        self.mesh.store.effects_mut().track.flush(&mut self.conns);
        let m = &mut self.mesh;
        let (retain, dedup) = (&m.retain, &m.dedup);
        m.gate
            .tick(&m.store, m.now, |buf| carry(retain, dedup, buf));
        if self.mesh.events.is_on() {
            self.emit_persist_error(errors);
            self.emit_stats();
        }
    }

    /// Log and snapshot failures so far (0 without persistence).
    fn persist_errors(&self) -> u64 {
        self.mesh.gate.log().map_or(0, |p| p.error_count)
    }

    /// `persist-error` when the turn's commit or snapshot step failed anew.
    fn emit_persist_error(&mut self, before: u64) {
        let Some(p) = self.mesh.gate.log() else {
            return;
        };
        if p.error_count > before {
            let why = p
                .error
                .clone()
                .unwrap_or_else(|| "persistence failed".into());
            self.mesh.events.emit(|| BrokerEvent::PersistError(why));
        }
    }

    /// The periodic `stats` event, when due.
    fn emit_stats(&mut self) {
        let now = self.mesh.now;
        if now < self.next_stats {
            return;
        }
        let iv = self
            .mesh
            .cfg
            .stats_interval
            .map_or(u64::MAX, |d| d.as_millis() as u64);
        self.next_stats = now.saturating_add(iv.max(1));
        let report = dispatch::control::report(&mut self.mesh, &mut self.conns);
        self.mesh
            .events
            .emit(|| BrokerEvent::Stats(Box::new(report)));
    }

    /// Replaces the pub/sub retention and dedup state with what recovery restored
    /// ([`crate::persistence::Persistence::open_with`]).
    pub fn restore(mut self, retain: Retain, dedup: Dedup) -> Core {
        self.mesh.retain = retain;
        self.mesh.dedup = dedup;
        self
    }

    /// Commits the turn's log records through the durability gate.
    fn commit(&mut self) {
        let m = &mut self.mesh;
        m.gate
            .commit(&mut m.store, &mut m.locks, &mut self.conns, &mut m.stats);
    }

    fn run_timers(&mut self) {
        let m = &mut self.mesh;
        let now = m.now;
        let mut events = std::mem::take(&mut m.lock_events);
        while let Some(t) = m.timers.pop_due(now) {
            match t {
                TimerKind::CallDeadline(id) => {
                    if let Some(call) = m.rpc.expire(id) {
                        dispatch::rpc::fail_call(m, &mut self.conns, call, ErrorCode::CallTimeout);
                    }
                }
                TimerKind::LockExpiry(_) | TimerKind::LockWait(_) => {
                    m.locks.on_timer(t, now, &mut m.timers, &mut events);
                }
            }
        }
        dispatch::locks::deliver_events(&mut self.conns, &mut events);
        m.lock_events = events;
    }

    /// Rebuilds the timer heap when cancelled timers dominate it.
    fn compact_timers(&mut self) {
        let m = &mut self.mesh;
        let live = m.locks.held() + m.locks.waiters() + m.rpc.pending();
        if m.timers.len() > 4096 && m.timers.len() > 4 * live {
            let (locks, rpc) = (&m.locks, &m.rpc);
            m.timers
                .retain(|t| locks.timer_alive(t) || rpc.timer_alive(t));
        }
    }

    /// Credits every connection with a gap between turns longer than half a
    /// heartbeat interval (the loop wakes every quarter interval while heartbeats
    /// are on, so such a gap is the broker's own stall — SIGSTOP, a long snapshot —
    /// not its clients' silence). Silence then counts from the last turn, and a
    /// resumed broker pings its idle clients instead of reaping them.
    fn credit_stall(&mut self) {
        let now = self.mesh.now;
        let gap = now.saturating_sub(self.last_turn);
        self.last_turn = now;
        let Some(interval) = self.mesh.cfg.heartbeat else {
            return;
        };
        if gap <= (interval.as_millis() as u64 / 2).max(1) {
            return;
        }
        for (_, c) in self.conns.iter_mut() {
            c.last_in = c.last_in.saturating_add(gap).min(now);
            c.last_ping = c.last_ping.saturating_add(gap).min(now);
            c.opened = c.opened.saturating_add(gap).min(now);
        }
    }

    /// Once a second: closes connections that have not passed `hello` by the
    /// handshake deadline (however many bytes they trickle), and frees the buffers
    /// of connections idle for a second.
    fn sweep(&mut self) {
        let now = self.mesh.now;
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_PERIOD_MS;
        let deadline = match (&self.mesh.cfg.token, self.mesh.cfg.limits.handshake_timeout) {
            (Some(_), Some(d)) => Some(d.as_millis() as u64),
            _ => None,
        };
        let mut late = Vec::new();
        for (k, c) in self.conns.iter_mut() {
            if c.closing != Closing::No {
                continue;
            }
            if let Some(d) = deadline {
                if !c.authed && now.saturating_sub(c.opened) >= d {
                    late.push(k);
                    continue;
                }
            }
            if !c.dirty && now.saturating_sub(c.last_in) >= IDLE_SHRINK_MS {
                c.shrink_idle();
            }
        }
        for k in late {
            self.mesh.stats.handshake_closed += 1;
            self.mesh.stats.error(ErrorCode::Auth);
            dispatch::send_err(
                &mut self.conns,
                k,
                None,
                ErrorCode::Auth,
                "handshake timeout: no hello with the broker's token in time",
            );
            self.conns.close_later(k, Closing::AfterFlush);
        }
    }

    /// Pings connections silent for an interval and closes those silent for three.
    fn heartbeat(&mut self) {
        let Some(interval) = self.mesh.cfg.heartbeat else {
            return;
        };
        let now = self.mesh.now;
        if now < self.next_heartbeat {
            return;
        }
        let iv = interval.as_millis() as u64;
        // Check a few times per interval so reaping is prompt without a scan per turn.
        self.next_heartbeat = now + (iv / 4).max(1);
        let mut reap = Vec::new();
        let mut ping = Vec::new();
        for (k, c) in self.conns.iter() {
            if c.closing != Closing::No {
                continue;
            }
            let silent = now.saturating_sub(c.last_in);
            if silent > 3 * iv {
                reap.push(k);
            } else if silent > iv && now.saturating_sub(c.last_ping) >= iv {
                ping.push(k);
            }
        }
        for k in ping {
            self.conns[k].last_ping = now;
            // A ping has no value to convert: encoding cannot fail.
            let _ = self
                .conns
                .send(k, |codec, buf| Push::Ping.encode_into(codec, buf));
        }
        for k in reap {
            self.mesh.stats.reaped += 1;
            let serial = ConnSerial(self.conns[k].serial);
            self.mesh.events.emit(|| BrokerEvent::Reap(serial));
            self.conns.close_later(k, Closing::Now);
        }
    }

    /// Writes every dirty connection through `io` and closes the ones marked for
    /// closing; closing can queue frames to others (lock hand-offs, failed calls),
    /// so this repeats until settled.
    pub fn flush<T: Transport>(&mut self, io: &mut T) {
        loop {
            let dirty = self.conns.take_dirty();
            if dirty.is_empty() {
                break;
            }
            let mut closing = Vec::new();
            for k in dirty.iter().copied() {
                let Some(c) = self.conns.get_mut(k) else {
                    continue;
                };
                c.dirty = false;
                if c.closing == Closing::Now {
                    closing.push(k);
                    continue;
                }
                let failed = !io.flush(k, c);
                let done = c.closing == Closing::AfterFlush && c.queued() == 0;
                self.conns.sync(k);
                if failed || done {
                    closing.push(k);
                }
            }
            self.conns.put_dirty(dirty);
            for k in closing {
                self.close(k, io);
            }
        }
    }

    /// Closes `id`: its socket goes back to the driver, its subscriptions, locks
    /// (handed to waiters) and calls (failed to their callers) go with it.
    fn close<T: Transport>(&mut self, id: ConnId, io: &mut T) {
        let Some(conn) = self.conns.remove(id) else {
            return;
        };
        let serial = ConnSerial(conn.serial);
        self.mesh.events.emit(|| BrokerEvent::Disconnect(serial));
        io.release(id);
        let m = &mut self.mesh;
        m.pubsub.remove_conn(id);
        m.store.effects_mut().track.remove_conn(id);
        let mut events = std::mem::take(&mut m.lock_events);
        m.locks.remove_conn(id, m.now, &mut m.timers, &mut events);
        dispatch::locks::deliver_events(&mut self.conns, &mut events);
        m.lock_events = events;
        for call in m.rpc.remove_conn(id) {
            dispatch::rpc::fail_call(m, &mut self.conns, call, ErrorCode::HandlerGone);
        }
    }

    /// The end of the broker: commits what is left, offers every connection its
    /// queued output (best effort: the `shutdown` reply), closes them all, and makes
    /// the log durable. Returns the final sync's error, if any.
    pub fn shutdown<T: Transport>(&mut self, io: &mut T) -> Result<(), String> {
        self.commit();
        let ids: Vec<ConnId> = self.conns.iter().map(|(k, _)| k).collect();
        for k in ids {
            if let Some(c) = self.conns.get_mut(k) {
                io.flush(k, c);
            }
            self.close(k, io);
        }
        self.mesh.gate.close()
    }
}

/// Writes the state kept outside the store into a new log segment (see
/// [`crate::persistence::Persistence::tick`]): the offset reservation, every retained
/// message, every accepted idempotent seq of channels not retained.
fn carry(retain: &Retain, dedup: &Dedup, buf: &mut Vec<u8>) {
    use crate::persistence::aof;
    if retain.reserved_to > 0 {
        aof::encode_offset(buf, retain.reserved_to);
    }
    for (ch, r) in retain.iter() {
        aof::encode_pub(buf, ch, r.offset, r.ts, None, r.codec, &r.payload);
    }
    dedup.for_each(|pid, ch, seq| aof::encode_dedup(buf, pid, ch, seq));
}
