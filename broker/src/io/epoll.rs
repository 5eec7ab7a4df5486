//! The mio (epoll) driver: the `Poll`, tokens, accept, reads, flushes and the fixed
//! loop order; everything a frame means is `Core`'s business.
//!
//! `epoll` owns the listener, the sockets (one per connection, indexed by
//! [`ConnId`], which is also the mio token) and the loop; it calls into `Core` and is
//! never called back except through [`Transport`] (flush a socket, release one).
//! One thread, no locks, no `Arc` on the data path.
//!
//! ```text
//!  poll(timeout = core.next_wake | idle | 0 when work is pending)
//!   │  read `now` once → core.set_now
//!   ├─ accept (≤ ACCEPT_BATCH)                 → core.open_conn
//!   ├─ readable: read until WouldBlock         → core.input (frames → dispatch)
//!   │   (≤ READ_BUDGET bytes, then requeue)
//!   ├─ core.end_turn: timers, heartbeat, expiry, log commit (+ fsync), snapshot
//!   └─ core.flush: write dirty connections (one write each), close, until settled
//! ```

use std::io;
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Registry, Token};

use super::common::{self, Base, SIGNALS, WAKER};
use super::{BindError, READ_BUDGET};
use crate::config::BrokerConfig;
use crate::connection::{Closing, ConnId, Connection, ReadOutcome, Transport};
use crate::core::Core;

/// The listening socket.
pub const LISTENER: Token = Token(usize::MAX - 1);

const EVENTS_CAPACITY: usize = 1024;
const ACCEPT_BATCH: usize = 128;

/// The connections' sockets, indexed by [`ConnId`] (the core's table decides ids).
struct Sockets {
    registry: Registry,
    streams: Vec<Option<UnixStream>>,
}

impl Sockets {
    fn insert(&mut self, id: ConnId, stream: UnixStream) {
        let i = id.index();
        if i >= self.streams.len() {
            self.streams.resize_with(i + 1, || None);
        }
        self.streams[i] = Some(stream);
    }

    #[inline]
    fn get_mut(&mut self, id: ConnId) -> Option<&mut UnixStream> {
        self.streams.get_mut(id.index()).and_then(Option::as_mut)
    }
}

impl Transport for Sockets {
    #[inline]
    fn flush(&mut self, id: ConnId, conn: &mut Connection) -> bool {
        match self.get_mut(id) {
            Some(s) => conn.flush(s),
            None => false,
        }
    }

    fn release(&mut self, id: ConnId) {
        if let Some(mut s) = self.streams.get_mut(id.index()).and_then(Option::take) {
            let _ = self.registry.deregister(&mut s);
        }
    }
}

/// A bound broker, ready to run its loop on the calling thread.
pub struct Reactor {
    pub(crate) base: Base,
    events: Events,
    listener: UnixListener,
    core: Core,
    sockets: Sockets,
    pending_reads: Vec<ConnId>,
    requeue: Vec<ConnId>,
    idle_since: Option<u64>,
    accept_more: bool,
    /// Accepting stopped for lack of descriptors with no reserve to free: retry at
    /// this time (ms on the broker clock), since the edge-triggered listener will not
    /// report the backlog again.
    accept_retry_at: Option<u64>,
    /// A descriptor held open (`/dev/null`) to free on EMFILE, so the backlog can
    /// still be accepted and refused instead of hanging (as Redis and nginx do).
    reserve: Option<std::fs::File>,
}

/// How long to wait before accepting again after running out of descriptors with
/// no reserve left.
const ACCEPT_RETRY_MS: u64 = 100;

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

impl Reactor {
    /// Binds the socket of `cfg` and prepares the loop.
    ///
    /// With persistence configured, the directory is recovered (snapshot, then log)
    /// before the socket is bound, so no client ever sees a partial state.
    pub fn bind(cfg: BrokerConfig) -> Result<Reactor, BindError> {
        let (base, core, mut listener) = common::open(cfg)?;
        base.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let registry = base.poll.registry().try_clone()?;
        Ok(Reactor {
            base,
            events: Events::with_capacity(EVENTS_CAPACITY),
            listener,
            core,
            sockets: Sockets {
                registry,
                streams: Vec::new(),
            },
            pending_reads: Vec::new(),
            requeue: Vec::new(),
            idle_since: Some(0),
            accept_more: false,
            accept_retry_at: None,
            reserve: open_reserve(),
        })
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.pending_reads.is_empty() || self.core.is_busy() || self.accept_more {
            return Some(Duration::ZERO);
        }
        let now = self.base.clock();
        let mut next = self.core.next_wake(now).unwrap_or(u64::MAX);
        if let Some(t) = self.accept_retry_at {
            next = next.min(t);
        }
        if let (Some(since), Some(idle)) = (self.idle_since, self.core.cfg().idle_timeout) {
            next = next.min(since + idle.as_millis() as u64);
        }
        if next == u64::MAX {
            None
        } else {
            Some(Duration::from_millis(next.saturating_sub(now)))
        }
    }

    /// Runs until `shutdown`, a stop request, a signal, or the idle timeout; says which.
    pub fn run(mut self) -> io::Result<super::StopReason> {
        let mut result = self.run_loop();
        if let Err(e) = self.core.shutdown(&mut self.sockets) {
            // Acknowledged writes may not be durable: the stop must not look clean.
            tracing::error!("{e}");
            if result.is_ok() {
                result = Err(io::Error::other(e));
            }
        }
        self.base.release();
        result
    }

    fn run_loop(&mut self) -> io::Result<super::StopReason> {
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.base.poll.poll(&mut self.events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = self.base.clock();
            self.core.set_now(now);
            let mut readable: Vec<ConnId> = std::mem::take(&mut self.requeue);
            let mut accept = std::mem::take(&mut self.accept_more);
            if self.accept_retry_at.is_some_and(|t| now >= t) {
                self.accept_retry_at = None;
                accept = true;
            }
            for ev in self.events.iter() {
                match ev.token() {
                    LISTENER => accept = true,
                    WAKER => {}
                    SIGNALS => self.core.request_shutdown(),
                    Token(k) => {
                        let id = ConnId::new(k);
                        if ev.is_read_closed() || ev.is_error() {
                            if let Some(c) = self.core.conn_mut(id) {
                                c.peer_closed = true;
                            }
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            readable.push(id);
                        }
                        if ev.is_writable() {
                            self.core.on_writable(id);
                        }
                    }
                }
            }
            if accept {
                self.accept()?;
            }
            readable.append(&mut self.pending_reads);
            for id in readable.drain(..) {
                self.read_conn(id);
            }
            self.requeue = readable;
            if let Some(reason) = common::end_turn(
                &self.base,
                &mut self.core,
                &mut self.sockets,
                &mut self.idle_since,
                now,
            ) {
                return Ok(reason);
            }
        }
    }

    /// Best effort: tells a connection that will not be served why, then drops it.
    fn refuse(&mut self, mut stream: UnixStream, why: &str) {
        let frame = self.core.refusal(why);
        let _ = io::Write::write(&mut stream, &frame);
        // Closing with unread input resets the connection and may destroy the frame
        // before the peer reads it: drain what already arrived (bounded, nonblocking).
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match io::Read::read(&mut stream, &mut sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }

    fn accept(&mut self) -> io::Result<()> {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) if self.core.at_capacity() => {
                    let why = format!(
                        "too many connections (maxConnections {}): try again later",
                        self.core.cfg().limits.max_connections
                    );
                    self.refuse(stream, &why);
                }
                Ok((mut stream, _)) => {
                    let id = self.core.next_conn_id();
                    if self
                        .base
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(id.index()),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    let opened = self.core.open_conn();
                    debug_assert_eq!(opened, id, "invariant: the core opens the vacant id");
                    self.sockets.insert(id, stream);
                    // Data may already be waiting: edge-triggered registration only
                    // reports new arrivals, so read once now.
                    self.pending_reads.push(id);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Out of descriptors. With the reserve: free it, accept the
                    // first waiting peer, refuse it, take the reserve back, and go on
                    // draining the backlog. Without: retry shortly (never spin, never
                    // wait for an edge that will not come).
                    if self.reserve.take().is_some() {
                        if let Ok((stream, _)) = self.listener.accept() {
                            self.refuse(stream, "the broker is out of file descriptors");
                        }
                        self.reserve = open_reserve();
                        if self.reserve.is_some() {
                            continue;
                        }
                    }
                    self.accept_retry_at = Some(self.base.clock() + ACCEPT_RETRY_MS);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => return Err(e),
            }
        }
        self.accept_more = true;
        Ok(())
    }

    /// Reads `id`'s socket, then lets the core handle the frames.
    fn read_conn(&mut self, id: ConnId) {
        let budget = self.core.read_budget(id, READ_BUDGET);
        let Some(conn) = self.core.conn_mut(id) else {
            return;
        };
        if conn.closing != Closing::No {
            return;
        }
        let Some(stream) = self.sockets.get_mut(id) else {
            return;
        };
        // A backlog past the budget waits in the socket (requeued: the core says
        // "more" for a budget outcome) until the core catches up.
        let outcome = if conn.backlog() >= budget {
            ReadOutcome::Budget
        } else {
            conn.fill(stream, budget)
        };
        if self.core.input(id, outcome, &mut self.sockets) {
            self.pending_reads.push(id);
        }
    }
}
