//! `procmesh-broker`: the broker that holds a mesh's shared state.
//!
//! One single-threaded loop per broker: every operation serialises through it, so
//! atomics and locks are correct by construction. The loop is split one way: an I/O
//! driver ([`io`]) feeds a state machine (`core`) that knows nothing about sockets.
//! Clients connect over a Unix domain socket and speak the protocol of
//! `procmesh-proto` in JSON or MessagePack (detected per connection).
//!
//! ```text
//!  socket ─▶ io (poll, accept, read) ─▶ Connection.rbuf ─▶ core::input ─▶ frame
//!                                                                  │
//!  dispatch: codec · Frame → Request · auth · gate admits writes ◀─┘
//!     ├─ cache ─▶ store          ├─ pubsub ─▶ pubsub (fan-out)   ├─ control
//!     ├─ locks ─▶ locks, store   ├─ rpc ─▶ rpc (invoke/result)
//!     └─▶ reply builder ─▶ Conns::send ─▶ Connection.wbuf
//!  core::end_turn: timers · heartbeat · expiry · gate.commit (log, fsync)
//!  core::flush ─▶ Transport::flush (io) ─▶ socket      (one write per connection)
//! ```
//!
//! # Layout
//! - [`io`]: drivers: the address lock and listener, the driver choice
//!   (`--io auto|uring|epoll`); [`io::uring`], the io_uring loop (multishot accept,
//!   receives and sends in one submission per turn), and [`io::epoll`], the mio loop
//!   (poll, accept, read, flush, loop order, idle exit). Either feeds `core`.
//! - `core`: the state machine: mesh state plus the connections' output, advanced one
//!   turn at a time; reaches sockets only through [`connection::Transport`].
//! - `mesh`: the state modules gathered for the command families.
//! - `dispatch`: what each frame does: `dispatch/mod.rs` (codec, decode, auth, write
//!   admission) and one file per command family (`cache`, `locks`, `pubsub`, `rpc`,
//!   `control`).
//! - [`connection`]: per-connection buffers, codec and close state; the `Conns` table,
//!   its dirty list and the one reply helper; [`connection::ConnId`].
//! - [`store`]: the cache (TTL, LRU, atomics); effects go to an [`store::EffectSink`].
//! - [`tracking`]: near-cache tracking (ours): which connections read which keys, the
//!   `inv` pushes owed when they change; [`tracking::MeshEffects`], the store's sink.
//! - [`locks`]: locks, FIFO waiters and fencing tokens.
//! - [`pubsub`]: subscriptions and the wildcard index.
//! - [`rpc`]: worker pools and pending calls.
//! - [`timers`]: the one timer heap.
//! - [`persistence`]: snapshot + append-only log, fsync policy, recovery, and the
//!   durability gate ([`persistence::gate`]).
//! - [`stats`]: counters and the `stats` reply.
//! - [`events`]: broker events for an embedder (connect, disconnect, drop, reap,
//!   stats, persist-error) on a bounded channel ([`BrokerBuilder::events`]).
//! - [`config`](crate::config): configuration.
//! - [`log`]: what the broker logs (`tracing` events; it installs no subscriber) and
//!   the line format the binaries install.
//! - [`cli`]: the blocking JSON connection of `procmesh status|stop|stats` (the binary, `main.rs` + `commands/`, is not part of the library).
//!
//! # Example
//! ```no_run
//! let dir = tempfile::tempdir().unwrap();
//! let broker = procmesh_broker::Broker::builder()
//!     .socket(dir.path().join("mesh.sock"))
//!     .max_keys(100_000)
//!     .start()
//!     .unwrap();
//! println!("serving on {}", broker.path().display());
//! broker.shutdown();
//! ```
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod connection;
mod core;
pub mod dedup;
mod dispatch;
pub mod events;
pub mod io;
pub mod locks;
pub mod log;
mod mesh;
pub mod persistence;
pub mod pubsub;
pub mod retain;
pub mod rpc;
pub mod stats;
pub mod store;
pub mod sys;
pub mod timers;
pub mod tracking;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use config::BrokerConfig;
pub use events::BrokerEvent;
pub use io::{BindError, Reactor, StopReason};
pub use store::StoreConfig;

/// Entry point for embedding a broker: `Broker::builder()…start()`.
pub struct Broker;

impl Broker {
    /// A builder with default options (mesh `default`, its derived socket path).
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder {
            cfg: BrokerConfig::default(),
            events: None,
        }
    }
}

/// Options for a broker started in-process.
#[derive(Debug, Clone)]
pub struct BrokerBuilder {
    cfg: BrokerConfig,
    events: Option<usize>,
}

impl BrokerBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, cfg: BrokerConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Mesh name (also derives the socket path unless `socket` is set after it).
    pub fn name(mut self, name: &str) -> Self {
        self.cfg.name = name.to_string();
        self.cfg.socket =
            procmesh_proto::addr::AddrEnv::from_lookup(std::env::var_os).socket_path(name);
        self
    }

    /// Socket path.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.socket = path.into();
        self
    }

    /// Require this token in `hello`.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.cfg.token = token;
        self
    }

    /// Maximum cache entries (0 = unbounded).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.cfg.cache.max_entries = n;
        self
    }

    /// Maximum cache value bytes (0 = unbounded; replaces `max_keys` when set).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.cfg.cache.max_bytes = n;
        self
    }

    /// Default TTL for writes without one.
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.cfg.cache.default_ttl_ms = ttl.map_or(0, |d| d.as_millis() as u64);
        self
    }

    /// Heartbeat interval (`None` = off).
    pub fn heartbeat(mut self, every: Option<Duration>) -> Self {
        self.cfg.heartbeat = every;
        self
    }

    /// Exit after this long without connections (`None` = never).
    pub fn idle_timeout(mut self, after: Option<Duration>) -> Self {
        self.cfg.idle_timeout = after;
        self
    }

    /// Default RPC call timeout.
    pub fn call_timeout(mut self, t: Duration) -> Self {
        self.cfg.call_timeout = t;
        self
    }

    /// Grace added to a call's timeout before the broker reaps it.
    pub fn call_grace(mut self, t: Duration) -> Self {
        self.cfg.call_grace = t;
        self
    }

    /// Queued bytes past which best-effort messages to a connection are dropped.
    pub fn send_hwm(mut self, bytes: usize) -> Self {
        self.cfg.send_hwm = bytes;
        self
    }

    /// Queued bytes past which a connection is closed.
    pub fn send_hard_limit(mut self, bytes: usize) -> Self {
        self.cfg.send_hard_limit = bytes;
        self
    }

    /// Persist to a directory (snapshot + append-only log); `None` = in memory only.
    pub fn persistence(mut self, p: Option<persistence::PersistConfig>) -> Self {
        self.cfg.persist = p;
        self
    }

    /// Idempotent-producer dedup settings.
    pub fn dedup(mut self, cfg: dedup::DedupConfig) -> Self {
        self.cfg.dedup = cfg;
        self
    }

    /// Retained pub/sub and durable-ack settings.
    pub fn pubsub(mut self, cfg: retain::RetainConfig) -> Self {
        self.cfg.pubsub = cfg;
        self
    }

    /// The I/O driver (default `Auto`: io_uring where the kernel allows it).
    pub fn io(mut self, io: config::IoBackend) -> Self {
        self.cfg.io = io;
        self
    }

    /// Largest frame payload accepted.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.cfg.max_frame = bytes;
        self
    }

    /// Emit a [`BrokerEvent::Stats`] snapshot this often (`None` = never).
    pub fn stats_interval(mut self, every: Option<Duration>) -> Self {
        self.cfg.stats_interval = every;
        self
    }

    /// Deliver broker events to [`BrokerHandle::events`], holding at most `capacity`
    /// undelivered ones: when the receiver lags further, events are dropped (and
    /// counted in [`BrokerHandle::events_dropped`]); the loop never waits for it.
    /// Without this call no event is built at all.
    pub fn events(mut self, capacity: usize) -> Self {
        self.events = Some(capacity);
        self
    }

    /// Binds the socket and runs the broker on its own thread.
    pub fn start(mut self) -> Result<BrokerHandle, BindError> {
        let mut events = None;
        let mut events_dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        if let Some(cap) = self.events {
            let (sink, rx) = events::channel(cap);
            events_dropped = sink.dropped();
            self.cfg.events = Some(sink);
            events = Some(rx);
        }
        let reactor = Reactor::bind(self.cfg)?;
        let path = reactor.socket().to_path_buf();
        let (stop, waker) = reactor.stopper();
        let thread = std::thread::Builder::new()
            .name("procmesh-broker".into())
            .spawn(move || reactor.run().map(drop))
            .map_err(BindError::Io)?;
        Ok(BrokerHandle {
            path,
            stop,
            waker,
            thread: Some(thread),
            events,
            events_dropped,
        })
    }
}

/// A broker running on its own thread. Dropping it shuts the broker down.
pub struct BrokerHandle {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    events: Option<Receiver<BrokerEvent>>,
    events_dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl BrokerHandle {
    /// The socket path clients connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The broker's events (once: later calls return `None`; also `None` unless
    /// the builder asked for [`events`](BrokerBuilder::events)). The channel closes
    /// when the broker stops.
    pub fn events(&mut self) -> Option<Receiver<BrokerEvent>> {
        self.events.take()
    }

    /// Events dropped so far because the receiver lagged.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped.load(Ordering::Relaxed)
    }

    /// Whether the loop has exited (after `shutdown` from a client or idle timeout).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the broker and waits for its thread; returns the loop's result.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        self.stop_and_join()
    }

    /// Waits for the loop to exit by itself (client `shutdown` or idle timeout).
    pub fn join(mut self) -> std::io::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("broker thread panicked"))),
            None => Ok(()),
        }
    }

    fn stop_and_join(&mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("broker thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
