//! The io_uring driver: one ring, multishot accept, one receive and at most one send
//! in flight per connection, every turn's submissions and the wait in one
//! `io_uring_enter`; everything a frame means is `Core`'s business, as with
//! [`super::epoll`].
//!
//! `uring` owns the ring, the listener, the sockets and their in-flight buffers, and
//! the loop. The kernel writes into and reads from memory the driver owns (a provided
//! buffer ring shared by every connection's multishot receive — or, on kernels
//! without one, a receive buffer per socket — and a send buffer per socket), never
//! into a [`Connection`]'s buffers: received bytes are copied into the connection's
//! read buffer (the core needs contiguous frames) and the ring buffer handed straight
//! back, queued output is copied into the send
//! buffer when no send is in flight (at most [`SEND_CAP`] bytes, the rest stays
//! queued and counted by the connection's slow-consumer marks, as bytes beyond a
//! socket buffer do with epoll). A socket outlives its connection until its last
//! operation completes (a receive is cancelled, a send that carries a last reply is
//! allowed to finish), so the kernel never touches freed memory and a slot is never
//! reused under an operation.
//!
//! ```text
//!  submit + wait(timeout = core.next_wake | idle | 0 when work is pending)  ← one enter
//!   │  read `now` once → core.set_now
//!   ├─ completions: accept → core.open_conn, arm a multishot recv
//!   │               recv   → copy into Connection.rbuf, give the buffer back
//!   │               send   → advance (partial: resubmit), done: core.on_writable
//!   │               wake   → stop flag, signals (a mio poll watched by the ring)
//!   ├─ core.input for every connection that received (or has frames left)
//!   ├─ core.end_turn: timers, heartbeat, expiry, log commit (+ fsync), snapshot
//!   └─ core.flush: one send SQE per dirty connection (queued in the SQ, submitted
//!      with the next wait)
//! ```
//!
//! The persistence log write stays synchronous through the gate (it precedes the
//! flush, so replies that wait for it are still queued behind it).
//! `PROCMESH_URING_SQPOLL=<idle ms>` sets up a kernel submission thread (for pinned
//! shards; off by default).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring, Probe};
use mio::net::UnixStream as MioStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::{bind, lock_address, AddressLock, BindError};
use crate::config::{BrokerConfig, IoBackend};
use crate::connection::{Closing, ConnId, Connection, ReadOutcome, Transport};
use crate::core::Core;
use crate::locks::LockTable;
use crate::persistence::aof::EffectLog;
use crate::persistence::{self, Persistence};
use crate::store::Store;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);

const RING_ENTRIES: u32 = 4096;
/// Most bytes copied into one send; the rest waits in the connection's queue.
pub const SEND_CAP: usize = 256 * 1024;
/// A socket's first receive buffer; doubled (to [`RECV_MAX`]) when a receive fills it.
const RECV_MIN: usize = 16 * 1024;
const RECV_MAX: usize = 256 * 1024;
/// The provided buffer ring shared by every connection's multishot receive: buffers
/// and their size (the kernel picks one per completion; the driver copies it into the
/// connection and hands it straight back).
const RING_BUFS: u16 = 256;
const RING_BUF_SIZE: usize = 16 * 1024;
const BUF_GROUP: u16 = 0;
/// How long shutdown waits for the last replies to reach their peers.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Retry delay for accept after the process ran out of descriptors.
const ACCEPT_RETRY_MS: u64 = 10;

// user_data: socket key << 2 | kind, or one of the fixed tags below.
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const TAG_ACCEPT: u64 = u64::MAX;
const TAG_WAKE: u64 = u64::MAX - 1;
const TAG_IGNORE: u64 = u64::MAX - 2;

/// The driver's ring, or why io_uring cannot serve here (for `auto`'s one log line
/// or `uring`'s error): set up, timed waits, and the opcodes the driver uses.
pub fn probe() -> Result<IoUring, String> {
    let sqpoll = std::env::var("PROCMESH_URING_SQPOLL")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    let ring = match sqpoll {
        Some(idle) => IoUring::builder().setup_sqpoll(idle).build(RING_ENTRIES),
        // Completion work runs only when the loop enters (no interrupts of the loop
        // between waits), for the one thread that runs it: the ring starts disabled
        // and `run` enables it on that thread. Older kernels (before 6.1) get a plain ring.
        None => IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES)),
    }
    .map_err(|e| format!("io_uring_setup failed: {e}"))?;
    if !ring.params().is_feature_ext_arg() {
        return Err("the kernel's io_uring has no timed wait (IORING_FEAT_EXT_ARG, 5.11)".into());
    }
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (code, name) in [
        (opcode::Accept::CODE, "accept"),
        (opcode::Recv::CODE, "recv"),
        (opcode::Send::CODE, "send"),
        (opcode::AsyncCancel::CODE, "async_cancel"),
        (opcode::PollAdd::CODE, "poll_add"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("the kernel's io_uring lacks {name}"));
        }
    }
    Ok(ring)
}

/// One accepted socket and the memory its in-flight operations use.
struct Sock {
    fd: OwnedFd,
    /// The connection, until the core releases it.
    conn: Option<ConnId>,
    rbuf: Box<[u8]>,
    recv_armed: bool,
    sbuf: Vec<u8>,
    spos: usize,
    send_armed: bool,
    /// A send or receive failed: the next flush reports it.
    failed: bool,
    /// The last flush offered a closing connection's final output: on release, let
    /// the send finish instead of cancelling it.
    linger: bool,
    /// Listed for `core.input` this turn.
    listed: bool,
    outcome: ReadOutcome,
}

/// The driver's side of the ring: sockets and the submission queue ([`Transport`]).
struct Ring {
    ring: IoUring,
    /// The receive buffers, when the kernel has provided buffer rings (else each
    /// socket receives into its own buffer). Dropped after `ring`.
    bufs: Option<BufRing>,
    socks: Slab<Sock>,
    by_conn: Vec<Option<usize>>,
    /// Shutting down: every release lets its send finish.
    draining: bool,
}

impl Ring {
    fn push(&mut self, sqe: io_uring::squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to is owned by a `Sock` (boxed or a
            // Vec not touched while its operation is armed) and outlives the operation:
            // a socket is removed only once nothing is armed on it.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            // The queue is full: hand it to the kernel now (rare: a burst of accepts
            // and sends beyond the ring size).
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("io_uring submit failed: {e}");
                    return;
                }
            }
        }
    }

    fn key_of(&self, id: ConnId) -> Option<usize> {
        self.by_conn.get(id.index()).copied().flatten()
    }

    fn arm_recv(&mut self, key: usize) {
        let s = &mut self.socks[key];
        if s.recv_armed || s.conn.is_none() {
            return;
        }
        s.recv_armed = true;
        let fd = types::Fd(s.fd.as_raw_fd());
        let sqe = if self.bufs.is_some() {
            // Stays armed across completions (IORING_CQE_F_MORE) until it fails or
            // runs out of buffers.
            opcode::RecvMulti::new(fd, BUF_GROUP).build()
        } else {
            opcode::Recv::new(fd, s.rbuf.as_mut_ptr(), s.rbuf.len() as u32).build()
        };
        self.push(sqe.user_data(((key as u64) << 2) | KIND_RECV));
    }

    fn arm_send(&mut self, key: usize) {
        let s = &mut self.socks[key];
        s.send_armed = true;
        let rest = &s.sbuf[s.spos..];
        let sqe = opcode::Send::new(
            types::Fd(s.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(((key as u64) << 2) | KIND_SEND);
        self.push(sqe);
    }

    fn cancel(&mut self, key: usize, kind: u64) {
        let sqe = opcode::AsyncCancel::new(((key as u64) << 2) | kind)
            .build()
            .user_data(TAG_IGNORE);
        self.push(sqe);
    }

    /// Drops a released socket once nothing is in flight on it (closing the fd).
    fn reap(&mut self, key: usize) {
        let s = &self.socks[key];
        if s.conn.is_none() && !s.recv_armed && !s.send_armed {
            self.socks.remove(key);
        }
    }
}

/// Copies queued output into a socket's send buffer, up to [`SEND_CAP`].
struct SendCopy<'a>(&'a mut Vec<u8>);

impl Write for SendCopy<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let room = SEND_CAP.saturating_sub(self.0.len());
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = room.min(b.len());
        self.0.extend_from_slice(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Received bytes, read once by [`Connection::fill`] (then "would block").
struct Received<'a>(&'a [u8]);

impl Read for Received<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = out.len().min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// A provided buffer ring (kernel 5.19+): entries in page-aligned memory shared with
/// the kernel, buffers in one allocation, the tail published with release ordering.
struct BufRing {
    entries: *mut types::BufRingEntry,
    map_len: usize,
    bufs: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    /// Maps the ring and registers it with `ring` as [`BUF_GROUP`], every buffer given.
    fn register(ring: &IoUring) -> io::Result<BufRing> {
        let map_len = usize::from(RING_BUFS) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping; no existing memory is involved.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut b = BufRing {
            entries: p.cast(),
            map_len,
            bufs: vec![0; usize::from(RING_BUFS) * RING_BUF_SIZE].into_boxed_slice(),
            tail: 0,
        };
        // SAFETY: the mapping is page-aligned, holds RING_BUFS entries and lives as
        // long as `b`, which the driver drops only after the ring.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(p as u64, RING_BUFS, BUF_GROUP, 0)?
        };
        for bid in 0..RING_BUFS {
            b.give(bid);
        }
        Ok(b)
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn give(&mut self, bid: u16) {
        let i = usize::from(self.tail & (RING_BUFS - 1));
        let addr = self.bufs[usize::from(bid) * RING_BUF_SIZE..].as_ptr() as u64;
        // SAFETY: `i` < RING_BUFS entries of the mapping; the kernel reads an entry only
        // once the tail below covers it.
        unsafe {
            let e = &mut *self.entries.add(i);
            e.set_addr(addr);
            e.set_len(RING_BUF_SIZE as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives in the first entry of the mapping; the kernel
        // reads it with acquire ordering.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * RING_BUF_SIZE;
        &self.bufs[start..start + len.min(RING_BUF_SIZE)]
    }
}

// SAFETY: the mapping and buffers are owned by the ring's one driver, which moves to
// the loop's thread before anything is registered and touches them from there only.
unsafe impl Send for BufRing {}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; the ring that used it is gone (field
        // order of `Ring`) or never saw it.
        unsafe { libc::munmap(self.entries.cast(), self.map_len) };
    }
}

impl Transport for Ring {
    fn flush(&mut self, id: ConnId, conn: &mut Connection) -> bool {
        let Some(key) = self.key_of(id) else {
            return false;
        };
        let s = &mut self.socks[key];
        if s.failed {
            return false;
        }
        s.linger = conn.closing != Closing::No;
        if s.send_armed {
            // The completion lists the connection again if output is still queued.
            return true;
        }
        debug_assert!(s.sbuf.is_empty());
        conn.flush(&mut SendCopy(&mut s.sbuf));
        if !s.sbuf.is_empty() {
            s.spos = 0;
            self.arm_send(key);
        }
        true
    }

    fn release(&mut self, id: ConnId) {
        let Some(key) = self.by_conn.get_mut(id.index()).and_then(Option::take) else {
            return;
        };
        let draining = self.draining;
        let s = &mut self.socks[key];
        s.conn = None;
        let (recv, send, linger) = (s.recv_armed, s.send_armed, s.linger || draining);
        if recv {
            self.cancel(key, KIND_RECV);
        }
        if send && !linger {
            self.cancel(key, KIND_SEND);
        }
        self.reap(key);
    }
}

/// A bound broker on io_uring, ready to run its loop on the calling thread.
pub struct Reactor {
    io: Ring,
    listener: OwnedFd,
    accept_multi: bool,
    accept_armed: bool,
    accept_retry_at: Option<u64>,
    /// A spare descriptor (`/dev/null`), freed to accept and refuse one peer when the
    /// process runs out of descriptors, so the backlog never hangs (as epoll does).
    reserve: Option<std::fs::File>,
    /// Readiness of the stop waker and the signal pipe, watched through the ring.
    poll: Poll,
    events: Events,
    wake_armed: bool,
    lock: Option<AddressLock>,
    socket: PathBuf,
    core: Core,
    start: Instant,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: Option<MioStream>,
    cqes: Vec<(u64, i32, u32)>,
    inputs: Vec<usize>,
    pending: Vec<ConnId>,
    idle_since: Option<u64>,
    warnings: Vec<String>,
    /// Keys recovered from persistence and how long recovery took.
    recovered: Option<(usize, Duration)>,
}

impl Reactor {
    /// Recovers persistence and binds the socket of `cfg`, to run on `ring` (from
    /// [`probe`]).
    pub fn bind(mut cfg: BrokerConfig, ring: IoUring) -> Result<Reactor, BindError> {
        let lock = lock_address(&cfg.socket)?;
        let start = Instant::now();
        let unix_base = persistence::unix_ms();
        let mut store = Store::with_effects(cfg.cache.clone(), None::<EffectLog>);
        let mut locks = LockTable::default();
        let mut warnings = Vec::new();
        let mut recovered = None;
        let mut retain = crate::retain::Retain::new(cfg.pubsub.clone());
        let mut dedup = crate::dedup::Dedup::new(cfg.dedup.clone());
        let persist = match &cfg.persist {
            Some(pc) => {
                let (p, rec) = Persistence::open_with(
                    pc.clone(),
                    &mut store,
                    unix_base,
                    &mut retain,
                    &mut dedup,
                )
                .map_err(BindError::Recovery)?;
                // Recovery replayed with the sink off; from here on effects are logged.
                *store.effects_mut() = Some(EffectLog::new(unix_base));
                locks = LockTable::with_reservations(rec.fence_reserved);
                warnings = rec.warnings;
                recovered = Some((rec.keys, start.elapsed()));
                Some(p)
            }
            None => None,
        };
        let listener = bind(&cfg.socket)?;
        // SAFETY: the fd comes from a listener we own and give up here.
        let listener = unsafe { OwnedFd::from_raw_fd(listener.into_raw_fd()) };
        // Blocking, so the ring's accept waits on readiness instead of failing with
        // EAGAIN (a non-blocking file makes io_uring return it).
        set_blocking(listener.as_raw_fd())?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let socket = cfg.socket.clone();
        cfg.io = IoBackend::Uring;
        Ok(Reactor {
            io: Ring {
                ring,
                bufs: None,
                socks: Slab::new(),
                by_conn: Vec::new(),
                draining: false,
            },
            listener,
            accept_multi: true,
            accept_armed: false,
            accept_retry_at: None,
            reserve: std::fs::File::open("/dev/null").ok(),
            poll,
            events: Events::with_capacity(16),
            wake_armed: false,
            lock: Some(lock),
            socket,
            core: Core::new(cfg, store, locks, persist).restore(retain, dedup),
            start,
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            signals: None,
            cqes: Vec::with_capacity(RING_ENTRIES as usize),
            inputs: Vec::new(),
            pending: Vec::new(),
            idle_since: Some(0),
            warnings,
            recovered,
        })
    }

    /// Notes from recovery (torn log tails cut, repairs) for the operator.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Keys recovered from persistence and the time it took (`None` without it).
    pub fn recovered(&self) -> Option<(usize, Duration)> {
        self.recovered
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
    pub fn watch_signals(&mut self, mut stream: MioStream) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut stream, SIGNALS, Interest::READABLE)?;
        self.signals = Some(stream);
        Ok(())
    }

    fn clock(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The wait of this turn: `None` = until a completion, zero = none.
    fn wait_for(&self) -> Option<Duration> {
        if !self.pending.is_empty() || self.core.is_busy() {
            return Some(Duration::ZERO);
        }
        let now = self.clock();
        let mut next = self.core.next_wake(now).unwrap_or(u64::MAX);
        if let (Some(since), Some(idle)) = (self.idle_since, self.core.cfg().idle_timeout) {
            next = next.min(since + idle.as_millis() as u64);
        }
        if let Some(at) = self.accept_retry_at {
            next = next.min(at);
        }
        (next != u64::MAX).then(|| Duration::from_millis(next.saturating_sub(now)))
    }

    /// Runs until `shutdown`, a stop request, a signal, or the idle timeout; says which.
    pub fn run(mut self) -> io::Result<super::StopReason> {
        if self.io.ring.params().is_setup_single_issuer() {
            self.io.ring.submitter().register_enable_rings()?;
        }
        // Registered on the loop's thread (a single-issuer ring's owner).
        self.io.bufs = BufRing::register(&self.io.ring).ok();
        let mut result = self.run_loop();
        self.io.draining = true;
        if let Err(e) = self.core.shutdown(&mut self.io) {
            // Acknowledged writes may not be durable: the stop must not look clean.
            tracing::error!("{e}");
            if result.is_ok() {
                result = Err(io::Error::other(e));
            }
        }
        self.drain();
        let _ = std::fs::remove_file(&self.socket);
        if let Some(lock) = self.lock.take() {
            let _ = std::fs::remove_file(&lock.path);
            drop(lock.file);
        }
        result
    }

    /// Lets the last sends (the `shutdown` reply) reach their peers for a bounded
    /// time, then cancels what is left and waits for the kernel to let go of every
    /// buffer before the ring and the sockets are dropped.
    fn drain(&mut self) {
        let limit = Instant::now() + DRAIN_LIMIT;
        let mut cancelled = false;
        while !self.io.socks.is_empty() {
            let mut left = limit.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if cancelled {
                    break;
                }
                cancelled = true;
                let armed: Vec<usize> = self
                    .io
                    .socks
                    .iter()
                    .filter(|(_, s)| s.send_armed)
                    .map(|(k, _)| k)
                    .collect();
                for k in armed {
                    self.io.cancel(k, KIND_SEND);
                }
                left = Duration::from_millis(100);
            }
            let deadline = Instant::now() + left;
            if self.enter(Some(left)).is_err() {
                break;
            }
            self.collect();
            for i in 0..self.cqes.len() {
                let (ud, res, flags) = self.cqes[i];
                if ud < TAG_IGNORE {
                    self.on_sock(ud, res, flags);
                }
            }
            if cancelled && Instant::now() >= deadline {
                break;
            }
        }
    }

    /// Submits the queued entries and waits for a completion (or the timeout).
    fn enter(&mut self, wait: Option<Duration>) -> io::Result<()> {
        // Every enter asks for completions (a zero timeout when the turn must not
        // wait): with deferred task running, that is when completions are produced.
        let r = match wait {
            Some(d) => {
                let ts = types::Timespec::new()
                    .sec(d.as_secs())
                    .nsec(d.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.io
                    .ring
                    .submitter()
                    .submit_with_args(1, &args)
                    .map(drop)
            }
            None => self.io.ring.submit_and_wait(1).map(drop),
        };
        match r {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    fn collect(&mut self) {
        self.cqes.clear();
        let cq = self.io.ring.completion();
        self.cqes
            .extend(cq.map(|c| (c.user_data(), c.result(), c.flags())));
    }

    fn arm_accept(&mut self) {
        let fd = types::Fd(self.listener.as_raw_fd());
        let sqe = if self.accept_multi {
            opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        self.io.push(sqe.user_data(TAG_ACCEPT));
        self.accept_armed = true;
    }

    fn arm_wake(&mut self) {
        let sqe = opcode::PollAdd::new(types::Fd(self.poll.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(TAG_WAKE);
        self.io.push(sqe);
        self.wake_armed = true;
    }

    fn run_loop(&mut self) -> io::Result<super::StopReason> {
        loop {
            if !self.wake_armed {
                self.arm_wake();
            }
            if !self.accept_armed && self.accept_retry_at.is_none_or(|at| self.clock() >= at) {
                self.accept_retry_at = None;
                self.arm_accept();
            }
            let wait = self.wait_for();
            self.enter(wait)?;
            let now = self.clock();
            self.core.set_now(now);
            self.collect();
            for i in 0..self.cqes.len() {
                let (ud, res, flags) = self.cqes[i];
                match ud {
                    TAG_ACCEPT => self.on_accept(res, flags)?,
                    TAG_WAKE => self.on_wake(flags),
                    TAG_IGNORE => {}
                    _ => self.on_sock(ud, res, flags),
                }
            }
            let mut pending = std::mem::take(&mut self.pending);
            for id in pending.drain(..) {
                if let Some(key) = self.io.key_of(id) {
                    self.list(key, ReadOutcome::Drained);
                }
            }
            self.pending = pending;
            for i in 0..self.inputs.len() {
                let key = self.inputs[i];
                self.input(key);
            }
            self.inputs.clear();
            self.core.end_turn();
            self.core.flush(&mut self.io);
            if self.stop.load(Ordering::Relaxed) || self.core.is_shutdown() {
                self.core.flush(&mut self.io);
                return Ok(super::StopReason::Requested);
            }
            if self.core.has_no_conns() {
                let since = *self.idle_since.get_or_insert(now);
                if let Some(idle) = self.core.cfg().idle_timeout {
                    if now.saturating_sub(since) >= idle.as_millis() as u64 {
                        return Ok(super::StopReason::IdleTimeout);
                    }
                }
            } else {
                self.idle_since = None;
            }
        }
    }

    fn on_accept(&mut self, res: i32, flags: u32) -> io::Result<()> {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res >= 0 {
            // SAFETY: the completion hands us a new descriptor we now own.
            let fd = unsafe { OwnedFd::from_raw_fd(res as RawFd) };
            if self.core.at_capacity() {
                let why = format!(
                    "too many connections (maxConnections {}): try again later",
                    self.core.cfg().limits.max_connections
                );
                self.refuse(fd, &why);
                return Ok(());
            }
            let id = self.core.open_conn();
            let key = self.io.socks.insert(Sock {
                fd,
                conn: Some(id),
                rbuf: if self.io.bufs.is_some() {
                    Box::default()
                } else {
                    vec![0; RECV_MIN].into_boxed_slice()
                },
                recv_armed: false,
                sbuf: Vec::new(),
                spos: 0,
                send_armed: false,
                failed: false,
                linger: false,
                listed: false,
                outcome: ReadOutcome::Drained,
            });
            let i = id.index();
            if i >= self.io.by_conn.len() {
                self.io.by_conn.resize(i + 1, None);
            }
            self.io.by_conn[i] = Some(key);
            self.io.arm_recv(key);
            return Ok(());
        }
        match -res {
            libc::EINVAL if self.accept_multi => {
                // A kernel without multishot accept (before 5.19): one accept per entry.
                self.accept_multi = false;
            }
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                // Out of descriptors. With the reserve: free it, accept the waiting
                // peer, refuse it, take the reserve back and accept again at once.
                // Without: try again shortly rather than spin or die.
                if self.reserve.take().is_some() {
                    if let Some(fd) = self.accept_now() {
                        self.refuse(fd, "the broker is out of file descriptors");
                    }
                    self.reserve = std::fs::File::open("/dev/null").ok();
                    if self.reserve.is_some() {
                        return Ok(());
                    }
                }
                self.accept_retry_at = Some(self.clock() + ACCEPT_RETRY_MS);
            }
            libc::EINTR | libc::EAGAIN | libc::ECONNABORTED | libc::ECANCELED => {}
            e => return Err(io::Error::from_raw_os_error(e)),
        }
        Ok(())
    }

    /// Accepts one waiting peer synchronously, if one is waiting (the listener is
    /// blocking for the ring's sake, so look before accepting).
    fn accept_now(&mut self) -> Option<OwnedFd> {
        let lfd = self.listener.as_raw_fd();
        let mut p = libc::pollfd {
            fd: lfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
            return None;
        }
        // SAFETY: accept4 on our listener; no address is asked for.
        let fd = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        // SAFETY: a non-negative result is a new descriptor we now own.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Answers a peer the broker will not serve with an error frame and closes it
    /// (after draining what it already sent, so the close does not reset the frame).
    fn refuse(&mut self, fd: OwnedFd, why: &str) {
        let frame = self.core.refusal(why);
        let raw = fd.as_raw_fd();
        // SAFETY: writes from a live buffer to a descriptor we own.
        let _ = unsafe {
            libc::send(
                raw,
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            // SAFETY: reads into a live stack buffer from a descriptor we own.
            let n = unsafe {
                libc::recv(
                    raw,
                    sink.as_mut_ptr().cast(),
                    sink.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
        }
        drop(fd);
    }

    fn on_wake(&mut self, flags: u32) {
        if !cqueue::more(flags) {
            self.wake_armed = false;
        }
        if self
            .poll
            .poll(&mut self.events, Some(Duration::ZERO))
            .is_err()
        {
            return;
        }
        let mut signalled = false;
        for ev in self.events.iter() {
            if ev.token() == SIGNALS {
                signalled = true;
            }
        }
        if signalled {
            self.core.request_shutdown();
            if let Some(s) = self.signals.as_mut() {
                let mut b = [0u8; 64];
                while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            }
        }
    }

    fn list(&mut self, key: usize, outcome: ReadOutcome) {
        let s = &mut self.io.socks[key];
        if outcome == ReadOutcome::Closed {
            s.outcome = ReadOutcome::Closed;
        }
        if !s.listed {
            s.listed = true;
            self.inputs.push(key);
        }
    }

    /// A receive or send completed on socket `key`.
    fn on_sock(&mut self, ud: u64, res: i32, flags: u32) {
        let key = (ud >> 2) as usize;
        let kind = ud & 3;
        let Some(s) = self.io.socks.get_mut(key) else {
            return;
        };
        let conn = s.conn;
        if kind == KIND_RECV {
            let multishot = self.io.bufs.is_some();
            // A multishot receive stays armed while its completions say "more".
            s.recv_armed = multishot && cqueue::more(flags);
            let picked = cqueue::buffer_select(flags);
            let Some(id) = conn else {
                if let (Some(bid), Some(b)) = (picked, self.io.bufs.as_mut()) {
                    b.give(bid);
                }
                self.io.reap(key);
                return;
            };
            if res > 0 {
                let n = res as usize;
                let c = self.core.conn_mut(id).filter(|c| c.closing == Closing::No);
                match (picked, self.io.bufs.as_mut()) {
                    (Some(bid), Some(b)) => {
                        if let Some(c) = c {
                            c.fill(&mut Received(b.buf(bid, n)), usize::MAX);
                        }
                        b.give(bid);
                    }
                    _ => {
                        let full = n == s.rbuf.len();
                        if let Some(c) = c {
                            c.fill(&mut Received(&s.rbuf[..n]), usize::MAX);
                        }
                        if full && s.rbuf.len() < RECV_MAX {
                            s.rbuf = vec![0; s.rbuf.len() * 2].into_boxed_slice();
                        }
                    }
                }
                self.list(key, ReadOutcome::Drained);
                self.io.arm_recv(key);
            } else if res == 0 || !matches!(-res, libc::EINTR | libc::EAGAIN | libc::ENOBUFS) {
                if let Some(c) = self.core.conn_mut(id) {
                    c.peer_closed = true;
                }
                self.list(key, ReadOutcome::Closed);
            } else {
                self.io.arm_recv(key);
            }
        } else {
            s.send_armed = false;
            if res >= 0 {
                s.spos += res as usize;
                if s.spos < s.sbuf.len() {
                    if res > 0 {
                        // Partial: send the rest.
                        self.io.arm_send(key);
                        return;
                    }
                    s.failed = true;
                } else {
                    s.sbuf.clear();
                    s.spos = 0;
                    if s.sbuf.capacity() > SEND_CAP {
                        s.sbuf = Vec::new();
                    }
                    if let Some(id) = conn {
                        self.core.on_writable(id);
                    }
                }
            } else if matches!(-res, libc::EINTR | libc::EAGAIN) && conn.is_some() {
                self.io.arm_send(key);
                return;
            } else {
                s.failed = true;
            }
            if s.failed {
                s.sbuf.clear();
                s.spos = 0;
                if let Some(id) = conn {
                    // Let the core see the failure: the next flush reports it.
                    self.list(key, ReadOutcome::Closed);
                    self.core.on_writable(id);
                    if let Some(c) = self.core.conn_mut(id) {
                        c.peer_closed = true;
                    }
                }
            }
            if conn.is_none() {
                self.io.reap(key);
            }
        }
    }

    /// Hands a socket's received bytes (or its end) to the core.
    fn input(&mut self, key: usize) {
        let Some(s) = self.io.socks.get_mut(key) else {
            return;
        };
        s.listed = false;
        let outcome = std::mem::replace(&mut s.outcome, ReadOutcome::Drained);
        let Some(id) = s.conn else {
            return;
        };
        let open = self
            .core
            .conn_mut(id)
            .is_some_and(|c| c.closing == Closing::No);
        if !open {
            // As with epoll: a closing connection reads nothing more.
            return;
        }
        if self.core.input(id, outcome, &mut self.io) {
            self.pending.push(id);
        }
    }
}

fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
