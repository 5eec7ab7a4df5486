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
//! The persistence log write goes through the ring (`RingLog`, the log's
//! [`aof::LogSubmit`]): the turn's write (and, when a sync is due, its fdatasync linked
//! after it) is submitted with whatever the turn queued so far, in one enter that
//! waits for it. The gate still sees the result before the flush, so a reply that
//! waits for the log is queued only after it (and with `always`, after the fsync);
//! completions reaped by that enter are the next turn's, which then skips its own.
//!
//! Receiving keeps to the read budget as epoll does: before `hello` one receive of
//! one ring buffer per turn, after it a multishot receive, cancelled while the
//! connection's backlog of whole frames reaches the budget (`Reactor::rearm`).
//!
//! `--sqpoll[=IDLE_MS]` (`ioSqpoll`, `PROCMESH_URING_SQPOLL`) sets up a kernel
//! submission thread (for pinned shards; off by default; refused is a startup error).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring, Probe};
use mio::Events;
use slab::Slab;

use super::common::{self, Base, SIGNALS};
use super::{BindError, READ_BUDGET};
use crate::config::{BrokerConfig, IoBackend};
use crate::connection::{Closing, ConnId, Connection, ReadOutcome, Transport};
use crate::core::Core;
use crate::persistence::aof;

mod bufring;
mod log;

use bufring::BufRing;
use log::{RingLog, STASH};

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
const TAG_LOG_WRITE: u64 = u64::MAX - 3;
const TAG_LOG_SYNC: u64 = u64::MAX - 4;

/// The driver's ring, or why io_uring cannot serve here (for `auto`'s one log line
/// or `uring`'s error): set up, timed waits, and the opcodes the driver uses.
///
/// `sqpoll` (idle ms, [`BrokerConfig::sqpoll`]) asks for a kernel submission thread;
/// a kernel that refuses it refuses the ring (the caller turns that into a startup
/// error: SQPOLL is only ever asked for explicitly).
pub fn probe(sqpoll: Option<u32>) -> Result<IoUring, String> {
    let ring = match sqpoll {
        Some(idle) => IoUring::builder()
            .setup_sqpoll(idle)
            .build(RING_ENTRIES)
            .map_err(|e| format!("io_uring_setup with IORING_SETUP_SQPOLL failed: {e}"))?,
        // Completion work runs only when the loop enters (no interrupts of the loop
        // between waits), for the one thread that runs it: the ring starts disabled
        // and `run` enables it on that thread. Older kernels (before 6.1) get a plain ring.
        None => IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))
            .map_err(|e| format!("io_uring_setup failed: {e}"))?,
    };
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
    /// The armed receive is multishot (cancelled when its connection falls behind).
    multishot: bool,
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

    /// Arms a receive on socket `key`: multishot from the buffer ring when `multi`
    /// (and the kernel has buffer rings), else one receive of at most one buffer.
    fn arm_recv(&mut self, key: usize, multi: bool) {
        let s = &mut self.socks[key];
        if s.recv_armed || s.conn.is_none() {
            return;
        }
        s.recv_armed = true;
        s.multishot = multi && self.bufs.is_some();
        let fd = types::Fd(s.fd.as_raw_fd());
        let sqe = if s.multishot {
            // Stays armed across completions (IORING_CQE_F_MORE) until it fails,
            // runs out of buffers or is cancelled.
            opcode::RecvMulti::new(fd, BUF_GROUP).build()
        } else if self.bufs.is_some() {
            opcode::Recv::new(fd, std::ptr::null_mut(), RING_BUF_SIZE as u32)
                .buf_group(BUF_GROUP)
                .build()
                .flags(io_uring::squeue::Flags::BUFFER_SELECT)
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
    /// The stop waker and the signal pipe live in its poll, watched through the ring.
    pub(crate) base: Base,
    events: Events,
    wake_armed: bool,
    core: Core,
    cqes: Vec<(u64, i32, u32)>,
    inputs: Vec<usize>,
    pending: Vec<ConnId>,
    idle_since: Option<u64>,
}

impl Reactor {
    /// Recovers persistence and binds the socket of `cfg`, to run on `ring` (from
    /// [`probe`]).
    pub fn bind(mut cfg: BrokerConfig, ring: IoUring) -> Result<Reactor, BindError> {
        cfg.io = IoBackend::Uring;
        let (base, core, listener) = common::open(cfg)?;
        // SAFETY: the fd comes from a listener we own and give up here.
        let listener = unsafe { OwnedFd::from_raw_fd(listener.into_raw_fd()) };
        // Blocking, so the ring's accept waits on readiness instead of failing with
        // EAGAIN (a non-blocking file makes io_uring return it).
        set_blocking(listener.as_raw_fd())?;
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
            base,
            events: Events::with_capacity(16),
            wake_armed: false,
            core,
            cqes: Vec::with_capacity(RING_ENTRIES as usize),
            inputs: Vec::new(),
            pending: Vec::new(),
            idle_since: Some(0),
        })
    }

    /// The wait of this turn: `None` = until a completion, zero = none.
    fn wait_for(&self) -> Option<Duration> {
        if !self.pending.is_empty() || self.core.is_busy() {
            return Some(Duration::ZERO);
        }
        let now = self.base.clock();
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
        // The log's writes go through the ring while the loop runs: `self` stays
        // where it is until `run` returns, and the submitter is removed before that.
        let log = RingLog {
            ring: &self.io.ring,
        };
        STASH.with(|s| s.borrow_mut().clear());
        let previous = aof::set_submit(Some(Box::new(log)));
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
        aof::set_submit(previous);
        // Nothing of this ring may reach another one run later on this thread.
        STASH.with(|s| s.borrow_mut().clear());
        self.base.release();
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
        STASH.with(|s| self.cqes.append(&mut s.borrow_mut()));
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
        let sqe = opcode::PollAdd::new(types::Fd(self.base.poll.as_raw_fd()), libc::POLLIN as u32)
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
            if !self.accept_armed
                && self
                    .accept_retry_at
                    .is_none_or(|at| self.base.clock() >= at)
            {
                self.accept_retry_at = None;
                self.arm_accept();
            }
            // The last turn's log commit already entered the ring (submitting what
            // was queued) and reaped completions: handle those before entering again.
            if STASH.with(|s| s.borrow().is_empty()) {
                let wait = self.wait_for();
                self.enter(wait)?;
            }
            let now = self.base.clock();
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
            if let Some(reason) = common::end_turn(
                &self.base,
                &mut self.core,
                &mut self.io,
                &mut self.idle_since,
                now,
            ) {
                return Ok(reason);
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
                multishot: false,
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
            self.rearm(key);
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
                self.accept_retry_at = Some(self.base.clock() + ACCEPT_RETRY_MS);
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
            .base
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
            if let Some(s) = self.base.signals.as_mut() {
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
            // A multishot receive stays armed while its completions say "more".
            s.recv_armed = s.multishot && cqueue::more(flags);
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
                // Re-armed (a single-shot receive) after the core has seen the bytes.
                self.list(key, ReadOutcome::Drained);
            } else if res == 0
                || !matches!(
                    -res,
                    // ECANCELED: stopped by `rearm` at the read budget (a released
                    // socket's cancel is handled above).
                    libc::EINTR | libc::EAGAIN | libc::ENOBUFS | libc::ECANCELED
                )
            {
                if let Some(c) = self.core.conn_mut(id) {
                    c.peer_closed = true;
                }
                self.list(key, ReadOutcome::Closed);
            } else {
                self.rearm(key);
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
        self.rearm(key);
    }

    /// Keeps socket `key` receiving within its connection's read budget, as epoll
    /// does: before `hello` (when a token is required) one receive of at most one
    /// ring buffer per turn; after it, a multishot receive. Either way, while the
    /// connection's backlog ([`Connection::backlog`]) reaches the budget, nothing
    /// more is received (a multishot receive is cancelled) until the core catches up.
    fn rearm(&mut self, key: usize) {
        let Some(s) = self.io.socks.get(key) else {
            return;
        };
        let Some(id) = s.conn else {
            return;
        };
        let (armed, multishot) = (s.recv_armed, s.multishot);
        let budget = self.core.read_budget(id, READ_BUDGET);
        let Some(c) = self.core.conn_mut(id) else {
            return;
        };
        if c.closing != Closing::No {
            return;
        }
        let full = c.backlog() >= budget;
        let authed = c.authed;
        if armed {
            if full && multishot {
                // Its final completion (without "more") clears `recv_armed`; the
                // turn that sees the core caught up arms it again.
                self.io.cancel(key, KIND_RECV);
            }
        } else if !full {
            self.io.arm_recv(key, authed);
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
