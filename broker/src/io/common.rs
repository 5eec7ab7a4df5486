//! What both drivers share: opening a broker (address lock, recovery, the bound
//! socket, the core) and the parts of a running one that do not depend on the loop
//! (the stop flag and its waker, the signal pipe, the clock, the recovery notes, and
//! the socket and lock released at the end).
//!
//! `common` owns nothing a loop turn touches; each driver keeps a [`Base`] beside
//! its own poll or ring. The mio `Poll` here is the epoll driver's whole poll and the
//! io_uring driver's wake source (a ring entry watches its epoll fd).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Poll, Token, Waker};

use super::{bind, lock_address, AddressLock, BindError};
use crate::config::BrokerConfig;
use crate::connection::Transport;
use crate::core::Core;
use crate::locks::LockTable;
use crate::persistence::aof::EffectLog;
use crate::persistence::{self, Persistence};
use crate::store::Store;
use crate::tracking::MeshEffects;

/// Wakes the loop for shutdown requests from other threads.
pub const WAKER: Token = Token(usize::MAX);
/// The signal pipe of the `procmesh serve` binary.
pub const SIGNALS: Token = Token(usize::MAX - 2);

/// The driver-independent half of a running broker.
pub(crate) struct Base {
    /// The epoll driver's poll; the io_uring driver's wake source.
    pub(crate) poll: Poll,
    lock: Option<AddressLock>,
    socket: PathBuf,
    start: Instant,
    /// Set by [`Base::stopper`]'s holder: the loop ends at the end of the turn.
    pub(crate) stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// The signal pipe, once watched: readable means "shut down".
    pub(crate) signals: Option<UnixStream>,
    warnings: Vec<String>,
    /// Keys recovered from persistence and how long recovery took.
    recovered: Option<(usize, std::time::Duration)>,
}

/// Takes the address lock, recovers the persistence directory of `cfg` (snapshot,
/// then log) and only then binds the socket, so no client ever sees a partial state.
/// Returns the base, the core and the listener (non-blocking, not registered).
pub(crate) fn open(cfg: BrokerConfig) -> Result<(Base, Core, UnixListener), BindError> {
    let lock = lock_address(&cfg.socket)?;
    let start = Instant::now();
    let unix_base = persistence::unix_ms();
    let mut store = Store::with_effects(
        cfg.cache.clone(),
        MeshEffects::new(cfg.limits.max_tracked_keys),
    );
    let mut locks = LockTable::default();
    let mut warnings = Vec::new();
    let mut recovered = None;
    let mut retain = crate::retain::Retain::new(cfg.pubsub.clone());
    let mut dedup = crate::dedup::Dedup::new(cfg.dedup.clone());
    let persist = match &cfg.persist {
        Some(pc) => {
            let (p, rec) =
                Persistence::open_with(pc.clone(), &mut store, unix_base, &mut retain, &mut dedup)
                    .map_err(BindError::Recovery)?;
            // Recovery replayed with the sink off; from here on effects are logged.
            store.effects_mut().log = Some(EffectLog::new(unix_base));
            locks = LockTable::with_reservations(rec.fence_reserved);
            warnings = rec.warnings;
            recovered = Some((rec.keys, start.elapsed()));
            Some(p)
        }
        None => None,
    };
    let listener = bind(&cfg.socket)?;
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let socket = cfg.socket.clone();
    let core = Core::new(cfg, store, locks, persist).restore(retain, dedup);
    let base = Base {
        poll,
        lock: Some(lock),
        socket,
        start,
        stop: Arc::new(AtomicBool::new(false)),
        waker,
        signals: None,
        warnings,
        recovered,
    };
    Ok((base, core, listener))
}

impl Base {
    /// Notes from recovery (torn log tails cut, repairs) for the operator.
    pub(crate) fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Keys recovered from persistence and the time it took (`None` without it).
    pub(crate) fn recovered(&self) -> Option<(usize, std::time::Duration)> {
        self.recovered
    }

    /// The socket path.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// A flag and waker that stop the loop from another thread.
    pub(crate) fn stopper(&self) -> (Arc<AtomicBool>, Arc<Waker>) {
        (self.stop.clone(), self.waker.clone())
    }

    /// Watches a stream whose readability means "shut down" (the binary's signal pipe).
    pub(crate) fn watch_signals(&mut self, mut stream: UnixStream) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut stream, SIGNALS, Interest::READABLE)?;
        self.signals = Some(stream);
        Ok(())
    }

    /// Milliseconds since the broker started (the core's clock).
    #[inline]
    pub(crate) fn clock(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The end of a run: removes the socket file and releases the address lock.
    pub(crate) fn release(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        if let Some(lock) = self.lock.take() {
            let _ = std::fs::remove_file(&lock.path);
            drop(lock.file);
        }
    }
}

/// The end of every turn, whatever the driver: the core's turn work (timers,
/// expiry, the log commit), the flush, then whether the loop ends: a stop request,
/// `shutdown`, or the idle timeout (`idle_since`: when the last connection left,
/// ms). `now` is the turn's clock.
pub(crate) fn end_turn<T: Transport>(
    base: &Base,
    core: &mut Core,
    io: &mut T,
    idle_since: &mut Option<u64>,
    now: u64,
) -> Option<super::StopReason> {
    core.end_turn();
    core.flush(io);
    if base.stop.load(Ordering::Relaxed) || core.is_shutdown() {
        core.flush(io);
        return Some(super::StopReason::Requested);
    }
    if !core.has_no_conns() {
        *idle_since = None;
        return None;
    }
    let since = *idle_since.get_or_insert(now);
    core.cfg()
        .idle_timeout
        .is_some_and(|idle| now.saturating_sub(since) >= idle.as_millis() as u64)
        .then_some(super::StopReason::IdleTimeout)
}
