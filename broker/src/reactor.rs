//! The event loop: the `Poll`, tokens, timers and the fixed loop order.
//!
//! `reactor` owns the listener, the slab of connections and the order of work in a
//! turn; what a frame means is `dispatch`'s business. One thread, no locks, no `Arc`
//! on the data path.
//!
//! ```text
//!  poll(timeout = next timer | heartbeat | idle | 0 when work is pending)
//!   │  read `now` once
//!   ├─ accept (≤ ACCEPT_BATCH)        ┐
//!   ├─ readable: read until WouldBlock├─ dispatch every complete frame
//!   │   (≤ READ_BUDGET, then requeue) ┘   (replies appended to out buffers)
//!   ├─ due timers (call deadlines, lock TTLs, lock waits)
//!   ├─ heartbeat pings / reaping
//!   ├─ active expiry (≤ EXPIRE_BUDGET samples)
//!   └─ close + flush dirty connections (one write per connection per turn)
//! ```

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use procmesh_proto::{frame, message, Codec, ErrorCode};
use slab::Slab;

use crate::config::BrokerConfig;
use crate::connection::{Closing, Connection, ReadOutcome};
use crate::locks::{LockEvent, LockTable};
use crate::persistence::{self, FsyncMode, Persistence};
use crate::pubsub::{ConnKey, PubSub};
use crate::rpc::Rpc;
use crate::stats::Stats;
use crate::store::Store;
use crate::sys;
use crate::timers::{TimerKind, Timers};

/// Writes one line to stderr, ignoring failures: a broker whose stderr was closed
/// (its parent went away) must keep serving, where `eprintln!` would panic.
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Wakes the loop for shutdown requests from other threads.
pub const WAKER: Token = Token(usize::MAX);
/// The listening socket.
pub const LISTENER: Token = Token(usize::MAX - 1);
/// The signal pipe of the `procmesh serve` binary.
pub const SIGNALS: Token = Token(usize::MAX - 2);

const EVENTS_CAPACITY: usize = 1024;
const ACCEPT_BATCH: usize = 128;
/// Bytes read from one connection per wake before others get a turn.
const READ_BUDGET: usize = 1 << 20;
/// Frames handled from one connection per wake before others get a turn.
const FRAME_BUDGET: usize = 4096;
/// Entries sampled by active expiry per turn.
const EXPIRE_BUDGET: usize = 20_000;
/// How often expiry runs while keys with a TTL exist and nothing else wakes us.
const EXPIRE_PERIOD_MS: u64 = 100;

/// Why a broker could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum BindError {
    /// A live broker already serves the address (it answered a connect, or holds the
    /// address lock). Auto-spawn races rely on the loser exiting quietly.
    AlreadyRunning(PathBuf),
    /// The persistence directory could not be recovered (the message names the file
    /// and offset) or is in use.
    Recovery(String),
    /// Anything else.
    Io(io::Error),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::AlreadyRunning(p) => {
                write!(f, "a broker is already serving {}", p.display())
            }
            BindError::Recovery(m) => write!(f, "{m}"),
            BindError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BindError {}

impl From<io::Error> for BindError {
    fn from(e: io::Error) -> Self {
        BindError::Io(e)
    }
}

/// The address lock: `<socket>.lock`, held (flock) for the broker's lifetime.
struct AddressLock {
    file: File,
    path: PathBuf,
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn acquire_lock(socket: &Path) -> Result<AddressLock, BindError> {
    let path = lock_path(socket);
    loop {
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(BindError::AlreadyRunning(socket.to_path_buf()));
            }
            return Err(e.into());
        }
        // The previous owner may have unlinked the file between our open and flock:
        // then we locked an orphan and must retry on the new file.
        match std::fs::metadata(&path) {
            Ok(m) if m.ino() == file.metadata()?.ino() && m.dev() == file.metadata()?.dev() => {
                return Ok(AddressLock { file, path });
            }
            _ => continue,
        }
    }
}

/// Takes the address lock (creating the socket's directory if needed).
fn lock_address(socket: &Path) -> Result<AddressLock, BindError> {
    if let Some(dir) = socket.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)?;
        }
    }
    acquire_lock(socket)
}

/// Binds the socket (with the address lock held): replaces a stale socket file,
/// refuses when a live broker answers, and restricts the socket to its owner (0600).
fn bind(socket: &Path) -> Result<UnixListener, BindError> {
    if socket.exists() {
        // A broker that does not use our lock (the Node.js one) may be alive.
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(BindError::AlreadyRunning(socket.to_path_buf()));
        }
        std::fs::remove_file(socket)?;
    }
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A write request of this turn: connection, offset of its reply, request id.
pub(crate) type TurnWrite = (ConnKey, usize, Option<Box<[u8]>>);

/// All broker state owned by the loop thread.
pub(crate) struct Core {
    pub(crate) cfg: BrokerConfig,
    pub(crate) store: Store,
    pub(crate) pubsub: PubSub,
    pub(crate) rpc: Rpc,
    pub(crate) locks: LockTable,
    pub(crate) timers: Timers,
    pub(crate) stats: Stats,
    pub(crate) conns: Slab<Connection>,
    pub(crate) dirty: Vec<ConnKey>,
    pub(crate) now: u64,
    pub(crate) cpu_start: Duration,
    pub(crate) next_pid: u64,
    pub(crate) shutdown: bool,
    pub(crate) lock_events: Vec<LockEvent>,
    pub(crate) fanout: [Vec<u8>; 2],
    pub(crate) targets: Vec<ConnKey>,
    pub(crate) persist: Option<Persistence>,
    /// With `fsync always`: this turn's write requests (connection, reply offset,
    /// request id), failed instead of acknowledged when the log cannot be synced.
    pub(crate) turn_writes: Vec<TurnWrite>,
}

impl Core {
    /// Marks `k` as having output; closes it at the end of the turn when its queue
    /// passes the hard limit (a consumer that stopped reading).
    #[inline]
    pub(crate) fn wrote(&mut self, k: ConnKey) {
        let hard = self.cfg.send_hard_limit;
        let conn = &mut self.conns[k];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(k);
        }
        if conn.queued() > hard && conn.closing != Closing::Now {
            conn.closing = Closing::Now;
            self.stats.slow_closed += 1;
        }
    }
}

/// A bound broker, ready to run its loop on the calling thread.
pub struct Reactor {
    poll: Poll,
    events: Events,
    listener: UnixListener,
    lock: Option<AddressLock>,
    socket: PathBuf,
    core: Core,
    start: Instant,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: Option<UnixStream>,
    pending_reads: Vec<ConnKey>,
    requeue: Vec<ConnKey>,
    next_serial: u64,
    next_heartbeat: u64,
    idle_since: Option<u64>,
    expiry_busy: bool,
    accept_more: bool,
    warnings: Vec<String>,
}

impl Reactor {
    /// Binds the socket of `cfg` and prepares the loop.
    ///
    /// With persistence configured, the directory is recovered (snapshot, then log)
    /// before the socket is bound, so no client ever sees a partial state.
    pub fn bind(cfg: BrokerConfig) -> Result<Reactor, BindError> {
        let lock = lock_address(&cfg.socket)?;
        let start = Instant::now();
        let unix_base = persistence::unix_ms();
        let mut store = Store::new(cfg.cache.clone());
        let mut locks = LockTable::default();
        let mut warnings = Vec::new();
        let persist = match &cfg.persist {
            Some(pc) => {
                let (p, rec) = Persistence::open(pc.clone(), &mut store, unix_base)
                    .map_err(BindError::Recovery)?;
                store.enable_journal(unix_base);
                locks = LockTable::with_reservations(rec.fence_reserved);
                warnings = rec.warnings;
                Some(p)
            }
            None => None,
        };
        let mut listener = bind(&cfg.socket)?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let socket = cfg.socket.clone();
        let heartbeat = cfg.heartbeat;
        Ok(Reactor {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            listener,
            lock: Some(lock),
            socket,
            core: Core {
                cfg,
                store,
                pubsub: PubSub::new(),
                rpc: Rpc::new(),
                locks,
                timers: Timers::default(),
                stats: Stats::default(),
                conns: Slab::new(),
                dirty: Vec::new(),
                now: 0,
                cpu_start: sys::cpu_time(),
                next_pid: 0,
                shutdown: false,
                lock_events: Vec::new(),
                fanout: [Vec::new(), Vec::new()],
                targets: Vec::new(),
                persist,
                turn_writes: Vec::new(),
            },
            start,
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            signals: None,
            pending_reads: Vec::new(),
            requeue: Vec::new(),
            next_serial: 0,
            next_heartbeat: heartbeat.map_or(u64::MAX, |h| h.as_millis() as u64),
            idle_since: Some(0),
            expiry_busy: false,
            accept_more: false,
            warnings,
        })
    }

    /// Notes from recovery (torn log tails cut, repairs) for the operator.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A flag and waker that stop the loop from another thread.
    pub fn stopper(&self) -> (Arc<AtomicBool>, Arc<Waker>) {
        (self.stop.clone(), self.waker.clone())
    }

    /// Watches a stream whose readability means "shut down" (the binary's signal pipe).
    pub fn watch_signals(&mut self, mut stream: UnixStream) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut stream, SIGNALS, Interest::READABLE)?;
        self.signals = Some(stream);
        Ok(())
    }

    fn clock(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.pending_reads.is_empty() || self.expiry_busy || self.accept_more {
            return Some(Duration::ZERO);
        }
        let now = self.clock();
        let mut next = u64::MAX;
        if let Some(d) = self.core.timers.next_deadline() {
            next = next.min(d);
        }
        next = next.min(self.next_heartbeat);
        if let (Some(since), Some(idle)) = (self.idle_since, self.core.cfg.idle_timeout) {
            next = next.min(since + idle.as_millis() as u64);
        }
        if !self.core.store.is_empty() {
            next = next.min(now + EXPIRE_PERIOD_MS);
        }
        if next == u64::MAX {
            None
        } else {
            Some(Duration::from_millis(next.saturating_sub(now)))
        }
    }

    /// Runs until `shutdown`, a stop request, a signal, or the idle timeout.
    pub fn run(mut self) -> io::Result<()> {
        let result = self.run_loop();
        self.core.commit_log();
        self.close_all();
        if let Some(p) = self.core.persist.as_mut() {
            if let Err(e) = p.close() {
                log_line!("procmesh: {e}");
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(lock) = self.lock.take() {
            let _ = std::fs::remove_file(&lock.path);
            drop(lock.file);
        }
        result
    }

    fn run_loop(&mut self) -> io::Result<()> {
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.core.now = self.clock();
            let mut readable: Vec<ConnKey> = std::mem::take(&mut self.requeue);
            let mut accept = std::mem::take(&mut self.accept_more);
            for ev in self.events.iter() {
                match ev.token() {
                    LISTENER => accept = true,
                    WAKER => {}
                    SIGNALS => self.core.shutdown = true,
                    Token(k) => {
                        if ev.is_read_closed() || ev.is_error() {
                            if let Some(c) = self.core.conns.get_mut(k) {
                                c.peer_closed = true;
                            }
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            readable.push(k);
                        }
                        if ev.is_writable() {
                            if let Some(c) = self.core.conns.get_mut(k) {
                                if !c.dirty && c.queued() > 0 {
                                    c.dirty = true;
                                    self.core.dirty.push(k);
                                }
                            }
                        }
                    }
                }
            }
            if accept {
                self.accept()?;
            }
            readable.append(&mut self.pending_reads);
            for k in readable.drain(..) {
                self.read_conn(k);
            }
            self.requeue = readable;
            self.run_timers();
            self.heartbeat();
            self.expiry_busy = self.core.store.reclaim(self.core.now, EXPIRE_BUDGET);
            self.compact_timers();
            // The log write (and, with `always`, its fsync) precedes every reply of the turn.
            self.core.commit_log();
            if let Some(p) = self.core.persist.as_mut() {
                p.tick(&self.core.store, self.core.now);
            }
            self.flush_and_close();
            if self.stop.load(Ordering::Relaxed) || self.core.shutdown {
                self.flush_and_close();
                return Ok(());
            }
            if self.core.conns.is_empty() {
                let since = *self.idle_since.get_or_insert(self.core.now);
                if let Some(idle) = self.core.cfg.idle_timeout {
                    if self.core.now.saturating_sub(since) >= idle.as_millis() as u64 {
                        return Ok(());
                    }
                }
            } else {
                self.idle_since = None;
            }
        }
    }

    fn accept(&mut self) -> io::Result<()> {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let entry = self.core.conns.vacant_entry();
                    let k = entry.key();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(k),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    self.next_serial += 1;
                    let authed = self.core.cfg.token.is_none();
                    entry.insert(Connection::new(
                        stream,
                        self.next_serial,
                        authed,
                        self.core.now,
                    ));
                    self.core.stats.accepted += 1;
                    // Data may already be waiting: edge-triggered registration only
                    // reports new arrivals, so read once now.
                    self.pending_reads.push(k);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Out of descriptors: try again next turn rather than spin or die.
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => return Err(e),
            }
        }
        self.accept_more = true;
        Ok(())
    }

    fn read_conn(&mut self, k: ConnKey) {
        let max_frame = self.core.cfg.max_frame;
        let Some(conn) = self.core.conns.get_mut(k) else {
            return;
        };
        if conn.closing != Closing::No {
            return;
        }
        let outcome = conn.fill(READ_BUDGET);
        let (buf, mut pos, end) = conn.take_input();
        if end > pos {
            conn.last_in = self.core.now;
        }
        let mut frames = 0;
        let mut more = outcome == ReadOutcome::Budget;
        loop {
            if self.core.conns[k].closing != Closing::No {
                break;
            }
            match frame::try_decode(&buf[pos..end], max_frame) {
                Ok(Some((s, e))) => {
                    let payload = &buf[pos + s..pos + e];
                    pos += e;
                    self.core.handle_frame(k, payload);
                    frames += 1;
                    if frames >= FRAME_BUDGET {
                        more = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.core.stats.error(ErrorCode::TooBig);
                    let conn = &mut self.core.conns[k];
                    let codec = conn.codec.unwrap_or(Codec::Json);
                    message::err(codec, conn.out(), None, ErrorCode::TooBig, &e.to_string());
                    conn.closing = Closing::AfterFlush;
                    self.core.wrote(k);
                    pos = end;
                    break;
                }
            }
        }
        let conn = &mut self.core.conns[k];
        conn.put_input(buf, pos, end);
        if outcome == ReadOutcome::Closed {
            // The peer may only have shut down its writing side: answer what it sent,
            // then close (a fully closed peer fails the flush and is closed at once).
            if conn.closing == Closing::No {
                conn.closing = Closing::AfterFlush;
            }
            self.core.dirty_close(k);
        } else if more && conn.closing == Closing::No {
            self.pending_reads.push(k);
        }
    }

    fn run_timers(&mut self) {
        let now = self.core.now;
        let mut events = std::mem::take(&mut self.core.lock_events);
        while let Some(t) = self.core.timers.pop_due(now) {
            match t {
                TimerKind::CallDeadline(id) => {
                    if let Some(call) = self.core.rpc.expire(id) {
                        self.core.fail_call(call, ErrorCode::CallTimeout);
                    }
                }
                TimerKind::LockExpiry(_) | TimerKind::LockWait(_) => {
                    self.core
                        .locks
                        .on_timer(t, now, &mut self.core.timers, &mut events);
                }
            }
        }
        self.core.deliver_lock_events(&mut events);
        self.core.lock_events = events;
    }

    /// Rebuilds the timer heap when cancelled timers dominate it.
    fn compact_timers(&mut self) {
        let live = self.core.locks.held() + self.core.locks.waiters() + self.core.rpc.pending();
        if self.core.timers.len() > 4096 && self.core.timers.len() > 4 * live {
            let (locks, rpc) = (&self.core.locks, &self.core.rpc);
            self.core
                .timers
                .retain(|t| locks.timer_alive(t) || rpc.timer_alive(t));
        }
    }

    fn heartbeat(&mut self) {
        let Some(interval) = self.core.cfg.heartbeat else {
            return;
        };
        let now = self.core.now;
        if now < self.next_heartbeat {
            return;
        }
        let iv = interval.as_millis() as u64;
        // Check a few times per interval so reaping is prompt without a scan per turn.
        self.next_heartbeat = now + (iv / 4).max(1);
        let mut reap = Vec::new();
        let mut ping = Vec::new();
        for (k, c) in self.core.conns.iter() {
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
            let c = &mut self.core.conns[k];
            c.last_ping = now;
            let codec = c.codec.unwrap_or(Codec::Json);
            message::ping(codec, c.out());
            self.core.wrote(k);
        }
        for k in reap {
            self.core.stats.reaped += 1;
            self.core.conns[k].closing = Closing::Now;
            self.core.dirty_close(k);
        }
    }

    /// Writes every dirty connection and closes the ones marked for closing; closing
    /// can queue frames to others (lock hand-offs, failed calls), so repeat until
    /// settled.
    fn flush_and_close(&mut self) {
        loop {
            let dirty = std::mem::take(&mut self.core.dirty);
            if dirty.is_empty() {
                break;
            }
            let mut closing = Vec::new();
            for k in dirty.iter().copied() {
                let Some(c) = self.core.conns.get_mut(k) else {
                    continue;
                };
                c.dirty = false;
                if c.closing == Closing::Now {
                    closing.push(k);
                    continue;
                }
                let failed = !c.flush();
                if failed || (c.closing == Closing::AfterFlush && c.queued() == 0) {
                    closing.push(k);
                }
            }
            let mut v = dirty;
            v.clear();
            if self.core.dirty.is_empty() {
                self.core.dirty = v;
            }
            for k in closing {
                self.close(k);
            }
        }
    }

    fn close(&mut self, k: ConnKey) {
        if !self.core.conns.contains(k) {
            return;
        }
        let mut conn = self.core.conns.remove(k);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        drop(conn);
        let now = self.core.now;
        self.core.pubsub.remove_conn(k);
        let mut events = std::mem::take(&mut self.core.lock_events);
        self.core
            .locks
            .remove_conn(k, now, &mut self.core.timers, &mut events);
        self.core.deliver_lock_events(&mut events);
        self.core.lock_events = events;
        for call in self.core.rpc.remove_conn(k) {
            self.core.fail_call(call, ErrorCode::HandlerGone);
        }
    }

    fn close_all(&mut self) {
        let keys: Vec<ConnKey> = self.core.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some(c) = self.core.conns.get_mut(k) {
                // Best effort: the `shutdown` reply and anything else queued.
                c.flush();
            }
            self.close(k);
        }
    }
}

impl Core {
    /// Writes this turn's log records per the fsync policy. With `always`, a failure
    /// turns this turn's write acknowledgements into errors (and closes those
    /// connections, whose later replies of the turn are lost with them).
    pub(crate) fn commit_log(&mut self) {
        let Some(p) = self.persist.as_mut() else {
            return;
        };
        let reservation = self.locks.take_reservation();
        let Some(buf) = self.store.journal_buf() else {
            return;
        };
        if let Some(r) = reservation {
            p.reserve(buf, r);
        }
        let was_failing = p.error.is_some();
        let result = p.commit(buf, reservation.is_some());
        let mode = p.mode();
        match result {
            Ok(()) => {
                if was_failing && p.error.is_none() {
                    log_line!("procmesh: persistence recovered; writes are accepted again");
                }
                self.turn_writes.clear();
            }
            Err(e) => {
                if !was_failing {
                    log_line!(
                        "procmesh: persistence error: {e}; refusing writes until it recovers"
                    );
                }
                if mode == FsyncMode::Always {
                    self.fail_turn_writes(&e);
                }
                self.turn_writes.clear();
            }
        }
    }

    fn fail_turn_writes(&mut self, why: &str) {
        let writes = std::mem::take(&mut self.turn_writes);
        let mut cut: Vec<(ConnKey, usize)> = Vec::new();
        for (k, pos, _) in &writes {
            match cut.iter_mut().find(|(c, _)| c == k) {
                Some((_, p)) => *p = (*p).min(*pos),
                None => cut.push((*k, *pos)),
            }
        }
        for (k, pos) in cut {
            if let Some(c) = self.conns.get_mut(k) {
                c.out().truncate(pos);
                c.closing = Closing::AfterFlush;
            }
        }
        let msg = format!("write not persisted: {why}");
        for (k, _, id) in writes {
            let Some(c) = self.conns.get_mut(k) else {
                continue;
            };
            let codec = c.codec.unwrap_or(Codec::Json);
            let id = id.as_deref().map(|b| procmesh_proto::Raw::new(codec, b));
            message::err(codec, c.out(), id, ErrorCode::Broker, &msg);
            self.stats.error(ErrorCode::Broker);
            self.wrote(k);
        }
    }

    /// Puts `k` on the dirty list so the flush pass closes it.
    pub(crate) fn dirty_close(&mut self, k: ConnKey) {
        let c = &mut self.conns[k];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(k);
        }
    }
}
