//! One connection to one broker (one shard): sending requests and the state
//! they share with the reader thread.
//!
//! Owns the socket's write half, the requests in flight (`pending`), and this
//! connection's subscription and registration tables (replayed after a
//! reconnect). It does not know about shards or serde types: `client` builds
//! the requests and decodes the replies' values.
//!
//! The methods of [`Conn`] are split by concern, each file one side of it:
//! - this file: the callers' side: send a request, wait for its reply
//!   ([`Ticket`]), close;
//! - `link`: the socket's life: connect or spawn, the hello handshake,
//!   disconnect and reconnect with replay;
//! - `reader`: the reader thread: read frames, route replies to `pending`,
//!   `msg` to subscriptions, `invoke` to the handler pool, answer pings;
//! - `buf`: the read buffer, shared by the handshake and the reader.
//!
//! A request goes one way: `client` builds a typed `Request` → encoded (by
//! proto) under `io` into this connection's one write buffer → socket. A reply
//! goes one way back: socket → `ReadBuf` → `reader` decodes the frame once →
//! the `value` bytes in a [`Reply`] → the request's `Slot` → the caller.
//!
//! # Threads
//! Any number of caller threads send requests; one reader thread per
//! connection reads every frame (replies, `msg`, `invoke`, broker `ping`) and,
//! when the socket dies, fails what is in flight and reconnects. Subscription
//! handlers run on the dispatch thread, RPC handlers on the pool. Async tasks
//! (the `aio` client) share the same connection: they enter a request with
//! [`Conn::try_start_batch`], which never waits for a reconnect (the task
//! waits with [`Conn::poll_link`] instead), and await the slot's waker. The
//! write itself happens on the task's thread under `io`: a small frame into the
//! socket buffer; when the buffer is full (a broker not reading) the write
//! blocks that thread up to the write timeout (the call timeout), after which
//! the link is dropped and reconnected.
//!
//! # Lock order
//! `io` → `pending`, `io` → `subs`, `io` → `regs`, `io` → `link_wakers`.
//! `pending`, `subs`, `regs`, `link_wakers`, each request's `Slot` and the pool's
//! queue are leaves: nothing else is
//! locked while one is held,
//! and no user code ever runs under any of them. A request is entered into
//! `pending` only while `io` is held and the link is up, and a disconnect marks
//! the link down and drains `pending` under `io` too; so every request in
//! flight is either answered or failed with `EDISCONNECTED`, never lost.

mod buf;
mod link;
mod reader;

use std::collections::HashMap;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use procmesh_proto::msgpackr::Encoder;
use procmesh_proto::{Codec, Dialect, Request};

use crate::dispatch::{Dispatcher, Subs};
use crate::error::{ClientError, Result};
use crate::event::{Event, ShardId};
use crate::near::NearCache;
pub(crate) use crate::pending::Reply;
use crate::pending::{lock, Pending, Slot};
use crate::pool::{Pool, RpcHandler};

/// Auto-spawn settings (present when auto-spawn is on).
#[derive(Debug, Clone)]
pub(crate) struct SpawnSettings {
    /// An explicit broker binary, else it is searched for.
    pub program: Option<PathBuf>,
    /// `--idle-timeout`.
    pub idle_timeout: Duration,
    /// `--max-keys`.
    pub max_keys: Option<u64>,
    /// `PROCMESH_BROKER_OPTS`.
    pub opts: serde_json::Map<String, serde_json::Value>,
}

/// Settings common to every connection of one client.
pub(crate) struct Settings {
    /// The codec values are encoded in (and, unless `negotiate`, the wire codec).
    pub codec: Codec,
    /// Negotiate the wire dialect at every connect (see [`Conn::dialect`]).
    pub negotiate: bool,
    pub token: Option<String>,
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    pub ping_interval: Option<Duration>,
    pub reconnect: bool,
    pub spawn: Option<SpawnSettings>,
    pub handler_threads: usize,
    /// Near cache bounds (entries, value bytes; 0 = no byte bound), when on.
    pub near_cache: Option<(usize, usize)>,
    /// How many shards the client routes over (checked against what a broker
    /// announces in `welcome`).
    pub shards: usize,
    /// Idempotent publishing: settings and sequence numbers.
    pub producer: crate::producer::Producer,
}

/// What the connections of one client share.
pub(crate) struct Shared {
    pub settings: Settings,
    pub dispatch: Dispatcher,
    pool: Mutex<Option<Arc<Pool>>>,
    /// The near cache every connection of the client fills and invalidates.
    pub near: Option<Arc<NearCache>>,
}

impl Shared {
    pub fn new(settings: Settings, dispatch: Dispatcher) -> Self {
        let near = settings
            .near_cache
            .map(|(entries, bytes)| Arc::new(NearCache::new(entries, bytes)));
        Shared {
            settings,
            dispatch,
            pool: Mutex::new(None),
            near,
        }
    }

    /// The handler pool, started on first use (a client that never registers a
    /// procedure has no worker threads).
    pub fn pool(&self) -> Result<Arc<Pool>> {
        let mut g = lock(&self.pool);
        if let Some(p) = &*g {
            return Ok(p.clone());
        }
        let p = Arc::new(
            Pool::new(self.settings.handler_threads)
                .map_err(|e| ClientError::Config(format!("cannot start handler threads: {e}")))?,
        );
        *g = Some(p.clone());
        Ok(p)
    }

    fn pool_if_started(&self) -> Option<Arc<Pool>> {
        lock(&self.pool).clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Reconnecting,
    Closed,
}

struct Io {
    /// The write half (a clone of the reader's socket) while the link is up.
    stream: Option<UnixStream>,
    link: Link,
    /// Bumped at every disconnect: results computed for an older connection
    /// are dropped.
    generation: u64,
    /// The producer id the broker gave us, presented again after a reconnect.
    pid: Option<String>,
    /// Why the link is closed.
    closed_reason: String,
    /// Every outbound frame is encoded here, under `io`, then written: one
    /// buffer per connection, reused, instead of one allocation per request.
    wbuf: Vec<u8>,
    /// msgpackr links: frames are encoded plain, then converted to records here.
    records: Option<Box<(Encoder, Vec<u8>)>>,
}

/// Capacity the write buffer returns to after a large request.
const WRITE_BUF_TARGET: usize = 64 * 1024;

impl Io {
    /// Encodes `req` (with `id`) as the one frame in the write buffer.
    fn encode(&mut self, d: Dialect, req: &Request<'_>, id: Option<u64>) -> Result<()> {
        self.encode_batch(d, std::iter::once((req, id)))
    }

    /// Encodes every `(request, id)` as consecutive frames in the write buffer,
    /// so they go out in one write (a pipeline).
    fn encode_batch<'r, 'a: 'r>(
        &mut self,
        d: Dialect,
        reqs: impl Iterator<Item = (&'r Request<'a>, Option<u64>)>,
    ) -> Result<()> {
        self.wbuf.clear();
        for (req, id) in reqs {
            req.encode_into(d.codec, id, &mut self.wbuf)
                .map_err(|e| ClientError::Encode(e.message().to_owned()))?;
        }
        if d.records {
            let (enc, out) = &mut **self.records.get_or_insert_with(Default::default);
            out.clear();
            enc.encode_frames_into(&self.wbuf, out)
                .map_err(|e| ClientError::Encode(e.message().to_owned()))?;
            std::mem::swap(&mut self.wbuf, out);
        }
        Ok(())
    }

    /// Writes the encoded frame. On a write error the socket is shut down: the
    /// reader then sees it die and fails `pending`.
    fn write_encoded(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            if s.write_all(&self.wbuf).is_err() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if self.wbuf.capacity() > WRITE_BUF_TARGET {
            self.wbuf.clear();
            self.wbuf.shrink_to(WRITE_BUF_TARGET);
        }
    }
}

/// Encodes `req` as one whole frame (length prefix included) into a new buffer,
/// for writes outside a connection's `io` (the handshake).
pub(crate) fn frame(codec: Codec, req: &Request<'_>, id: Option<u64>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    req.encode_into(codec, id, &mut out)
        .map_err(|e| ClientError::Encode(e.message().to_owned()))?;
    Ok(out)
}

/// Like [`frame`], in dialect `d` (msgpackr records converted from plain MessagePack).
pub(crate) fn frame_in(d: Dialect, req: &Request<'_>, id: Option<u64>) -> Result<Vec<u8>> {
    let plain = frame(d.codec, req, id)?;
    if !d.records {
        return Ok(plain);
    }
    let mut out = Vec::with_capacity(plain.len());
    Encoder::new()
        .encode_frames_into(&plain, &mut out)
        .map_err(|e| ClientError::Encode(e.message().to_owned()))?;
    Ok(out)
}

/// A request in flight.
pub(crate) struct Ticket<'c> {
    conn: &'c Conn,
    id: u64,
    slot: Arc<Slot>,
    deadline: Instant,
    op: &'static str,
    timeout: Duration,
}

impl Ticket<'_> {
    /// Waits for the reply until the request's deadline.
    pub fn wait(self) -> Result<Reply> {
        match self.slot.wait_until(self.deadline) {
            Some(o) => o,
            None => {
                lock(&self.conn.pending).remove(&self.id);
                // The reply may have landed between the timeout and the removal.
                match self.slot.take() {
                    Some(o) => o,
                    None => Err(ClientError::Timeout {
                        op: self.op,
                        after: self.timeout,
                    }),
                }
            }
        }
    }
}

/// One connection to one broker.
pub(crate) struct Conn {
    pub shard: ShardId,
    pub path: PathBuf,
    /// The mesh name of this shard (`hello` name, spawned broker's `--name`).
    pub name: String,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    io: Mutex<Io>,
    /// Signalled when the link changes state.
    link_changed: Condvar,
    /// Tasks waiting for the link to change state (async requests during a
    /// reconnect); woken and cleared with `link_changed`. Bounded by the tasks
    /// waiting: a task re-polled adds its waker only when it is not there yet.
    link_wakers: Mutex<Vec<Waker>>,
    pending: Mutex<HashMap<u64, Pending>>,
    /// This connection's subscriptions (local handlers by pattern).
    pub subs: Mutex<Subs>,
    /// This connection's registered procedures.
    pub regs: Mutex<HashMap<String, RpcHandler>>,
    /// The wire dialect of the current link ([`dialect_code`]), fixed by each handshake.
    wire: AtomicU8,
    /// The Redis backend, when this connection is to Redis instead of a broker:
    /// every request is then executed by it (the socket fields stay unused).
    #[cfg(feature = "redis")]
    redis: Option<Arc<crate::redis::Backend>>,
}

/// A dialect as stored in [`Conn`]'s `wire`.
fn dialect_code(d: Dialect) -> u8 {
    match (d.codec, d.records) {
        (Codec::Json, _) => 0,
        (Codec::MsgPack, false) => 1,
        (Codec::MsgPack, true) => 2,
    }
}

impl Conn {
    /// Connects (spawning a broker when allowed and none listens), says hello,
    /// and starts the reader thread.
    pub fn open(
        shard: ShardId,
        path: PathBuf,
        name: String,
        shared: Arc<Shared>,
    ) -> Result<Arc<Conn>> {
        let wire = dialect_code(shared.settings.codec.into());
        let pid = shared.settings.producer.id.clone();
        let conn = Arc::new(Conn {
            shard,
            path,
            name,
            shared,
            next_id: AtomicU64::new(1),
            io: Mutex::new(Io {
                stream: None,
                link: Link::Reconnecting,
                generation: 0,
                pid,
                closed_reason: String::new(),
                wbuf: Vec::new(),
                records: None,
            }),
            link_changed: Condvar::new(),
            link_wakers: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            subs: Mutex::new(Subs::default()),
            regs: Mutex::new(HashMap::new()),
            wire: AtomicU8::new(wire),
            #[cfg(feature = "redis")]
            redis: None,
        });
        let (stream, buf) = conn.establish()?;
        let writer = stream.try_clone().map_err(|source| ClientError::Connect {
            path: conn.path.clone(),
            source,
        })?;
        {
            let mut io = lock(&conn.io);
            io.stream = Some(writer);
            io.link = Link::Up;
        }
        conn.emit(Event::Connected {
            shard,
            path: conn.path.clone(),
        });
        let c = conn.clone();
        std::thread::Builder::new()
            .name(format!("procmesh-io-{}", shard.0))
            .spawn(move || reader::run(c, stream, buf))
            .map_err(|e| ClientError::Config(format!("cannot start the I/O thread: {e}")))?;
        Ok(conn)
    }

    /// Connects to Redis instead of a broker (the Redis backend executes every
    /// request; subscriptions and registrations use this connection's tables).
    #[cfg(feature = "redis")]
    pub fn open_redis(
        target: crate::redis::RedisTarget,
        name: String,
        shared: Arc<Shared>,
    ) -> Result<Arc<Conn>> {
        let backend = Arc::new(crate::redis::Backend::connect(
            target,
            &name,
            shared.settings.connect_timeout,
            shared.settings.call_timeout,
        )?);
        // Idempotent publishing's producer id: the configured one, else this
        // client's own (a broker would mint one at hello).
        let pid = shared
            .settings
            .producer
            .id
            .clone()
            .unwrap_or_else(|| backend.id().to_owned());
        let conn = Arc::new(Conn {
            shard: ShardId(0),
            path: PathBuf::from(backend.display_url()),
            name,
            shared,
            next_id: AtomicU64::new(1),
            io: Mutex::new(Io {
                stream: None,
                link: Link::Up,
                generation: 0,
                // Idempotent publishing's producer id: the configured one, else
                // this client's own (a broker would mint one at hello).
                pid: Some(pid),
                closed_reason: String::new(),
                wbuf: Vec::new(),
                records: None,
            }),
            link_changed: Condvar::new(),
            link_wakers: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            subs: Mutex::new(Subs::default()),
            regs: Mutex::new(HashMap::new()),
            wire: AtomicU8::new(dialect_code(Dialect::MSGPACK)),
            redis: Some(backend.clone()),
        });
        backend.attach(Arc::downgrade(&conn))?;
        conn.emit(Event::Connected {
            shard: conn.shard,
            path: conn.path.clone(),
        });
        Ok(conn)
    }

    /// What the connections of this client share.
    #[cfg(feature = "redis")]
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The wire dialect of the current link: the configured codec, or what the last
    /// handshake negotiated.
    pub fn dialect(&self) -> Dialect {
        match self.wire.load(Ordering::Relaxed) {
            0 => Dialect::JSON,
            1 => Dialect::MSGPACK,
            _ => Dialect::MSGPACKR,
        }
    }

    fn set_dialect(&self, d: Dialect) {
        self.wire.store(dialect_code(d), Ordering::Relaxed);
    }

    fn emit(&self, e: Event) {
        self.shared.dispatch.event(e);
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `req` and waits up to `timeout` for its reply.
    pub fn request(&self, req: &Request<'_>, timeout: Duration) -> Result<Reply> {
        self.start(req, timeout)?.wait()
    }

    /// Sends `req`; the reply is waited for with [`Ticket::wait`], so a caller
    /// can have requests to several shards in flight at once.
    pub fn start(&self, req: &Request<'_>, timeout: Duration) -> Result<Ticket<'_>> {
        let id = self.next_id();
        let deadline = Instant::now() + timeout;
        let slot = Arc::new(Slot::default());
        #[cfg(feature = "redis")]
        if let Some(b) = &self.redis {
            // Executed now; the ticket only hands the outcome over.
            slot.fill(b.execute(self, req, timeout));
            return Ok(Ticket {
                conn: self,
                id,
                slot,
                deadline,
                op: req.kind().tag(),
                timeout,
            });
        }
        let mut io = self.wait_up(deadline)?;
        self.write_locked(&mut io, id, req, Pending::Waiter(slot.clone()))?;
        drop(io);
        Ok(Ticket {
            conn: self,
            id,
            slot,
            deadline,
            op: req.kind().tag(),
            timeout,
        })
    }

    /// Sends every request of `reqs` in one write (a pipeline); the replies are
    /// waited for with each [`Ticket::wait`], in any order.
    pub fn start_batch(&self, reqs: &[Request<'_>], timeout: Duration) -> Result<Vec<Ticket<'_>>> {
        let deadline = Instant::now() + timeout;
        let slots: Vec<Arc<Slot>> = reqs.iter().map(|_| Arc::default()).collect();
        #[cfg(feature = "redis")]
        if let Some(b) = &self.redis {
            // Executed now, one by one; the tickets only hand the outcomes over.
            for (req, slot) in reqs.iter().zip(&slots) {
                slot.fill(b.execute(self, req, timeout));
            }
            return Ok(slots
                .into_iter()
                .zip(reqs)
                .map(|(slot, req)| Ticket {
                    conn: self,
                    id: self.next_id(),
                    slot,
                    deadline,
                    op: req.kind().tag(),
                    timeout,
                })
                .collect());
        }
        let mut io = self.wait_up(deadline)?;
        let ids = self.write_batch_locked(&mut io, reqs, &slots)?;
        drop(io);
        Ok(ids
            .into_iter()
            .zip(slots)
            .zip(reqs)
            .map(|((id, slot), req)| Ticket {
                conn: self,
                id,
                slot,
                deadline,
                op: req.kind().tag(),
                timeout,
            })
            .collect())
    }

    /// Sends `req`, its reply going to `slot`; returns its id. Never waits for a
    /// reconnect: `Ok(None)` while the link is down and may come back.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn try_start(&self, req: &Request<'_>, slot: &Arc<Slot>) -> Result<Option<u64>> {
        #[cfg(feature = "redis")]
        if let Some(b) = &self.redis {
            // The Redis backend executes on the calling thread (blocking it for
            // the round trip); the slot is filled before the task awaits it.
            slot.fill(b.execute(self, req, self.shared.settings.call_timeout));
            return Ok(Some(self.next_id()));
        }
        let mut io = lock(&self.io);
        match io.link {
            Link::Up => {
                let id = self.next_id();
                self.write_locked(&mut io, id, req, Pending::Waiter(slot.clone()))?;
                Ok(Some(id))
            }
            Link::Reconnecting => Ok(None),
            Link::Closed => Err(ClientError::disconnected(io.closed_reason.clone())),
        }
    }

    /// Sends every request of `reqs` in one write, each reply going to its slot
    /// of `slots`; returns their ids. Never waits for a reconnect: `Ok(None)`
    /// while the link is down and may come back (wait with [`Conn::poll_link`]
    /// and try again), an error once it is closed for good.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn try_start_batch(
        &self,
        reqs: &[Request<'_>],
        slots: &[Arc<Slot>],
    ) -> Result<Option<Vec<u64>>> {
        #[cfg(feature = "redis")]
        if let Some(b) = &self.redis {
            let mut ids = Vec::with_capacity(reqs.len());
            for (req, slot) in reqs.iter().zip(slots) {
                slot.fill(b.execute(self, req, self.shared.settings.call_timeout));
                ids.push(self.next_id());
            }
            return Ok(Some(ids));
        }
        let mut io = lock(&self.io);
        match io.link {
            Link::Up => self.write_batch_locked(&mut io, reqs, slots).map(Some),
            Link::Reconnecting => Ok(None),
            Link::Closed => Err(ClientError::disconnected(io.closed_reason.clone())),
        }
    }

    /// Writes `req` without an id (no reply) if the link is up: false while it
    /// reconnects (wait with [`Conn::poll_link`]), an error once closed.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn try_send_oneway(&self, req: &Request<'_>) -> Result<bool> {
        #[cfg(feature = "redis")]
        if let Some(b) = &self.redis {
            return b
                .execute(self, req, self.shared.settings.call_timeout)
                .map(|_| true);
        }
        let mut io = lock(&self.io);
        match io.link {
            Link::Up => {
                io.encode(self.dialect(), req, None)?;
                io.write_encoded();
                Ok(true)
            }
            Link::Reconnecting => Ok(false),
            Link::Closed => Err(ClientError::disconnected(io.closed_reason.clone())),
        }
    }

    /// Ready once the link is no longer reconnecting (up or closed); else the
    /// task is woken at the next change of the link.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn poll_link(&self, cx: &mut Context<'_>) -> Poll<()> {
        let io = lock(&self.io);
        if io.link != Link::Reconnecting {
            return Poll::Ready(());
        }
        let mut w = lock(&self.link_wakers);
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Forgets request `id`: its reply, if it still comes, is dropped by id.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn forget(&self, id: u64) {
        lock(&self.pending).remove(&id);
    }

    /// Wakes every thread and task waiting for the link to change (call under `io`).
    fn notify_link(&self) {
        self.link_changed.notify_all();
        for w in std::mem::take(&mut *lock(&self.link_wakers)) {
            w.wake();
        }
    }

    /// Sends `req` without waiting; an error reply becomes an `Event::Error`.
    /// Does nothing while the link is down (what it would undo, such as a lock
    /// or a subscription, died with the old connection).
    pub fn request_nowait(&self, req: &Request<'_>) {
        #[cfg(feature = "redis")]
        if let Some(b) = &self.redis {
            if let Err(e) = b.execute(self, req, self.shared.settings.call_timeout) {
                self.emit(Event::Error {
                    shard: self.shard,
                    message: format!("{}: {e}", req.kind().tag()),
                });
            }
            return;
        }
        let id = self.next_id();
        let mut io = lock(&self.io);
        if io.link != Link::Up {
            return;
        }
        let what = req.kind().tag();
        if let Err(e) = self.write_locked(&mut io, id, req, Pending::Background(what)) {
            drop(io);
            self.emit(Event::Error {
                shard: self.shard,
                message: format!("{what}: {e}"),
            });
        }
    }

    /// Sends `req` without an id, which the broker never answers. Waits for a
    /// reconnect like a request would.
    pub fn send_oneway(&self, req: &Request<'_>) -> Result<()> {
        #[cfg(feature = "redis")]
        if let Some(b) = &self.redis {
            return b
                .execute(self, req, self.shared.settings.call_timeout)
                .map(drop);
        }
        let deadline = Instant::now() + self.shared.settings.call_timeout;
        let mut io = self.wait_up(deadline)?;
        io.encode(self.dialect(), req, None)?;
        io.write_encoded();
        Ok(())
    }

    /// Locks `io` once the link is up, waiting for a reconnect until `deadline`.
    fn wait_up(&self, deadline: Instant) -> Result<std::sync::MutexGuard<'_, Io>> {
        let mut io = lock(&self.io);
        loop {
            match io.link {
                Link::Up => return Ok(io),
                Link::Closed => return Err(ClientError::disconnected(io.closed_reason.clone())),
                Link::Reconnecting => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ClientError::disconnected(format!(
                            "not connected to the broker at {} (reconnecting)",
                            self.path.display()
                        )));
                    }
                    io = self
                        .link_changed
                        .wait_timeout(io, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Encodes `req` as request `id`, enters it in `pending` and writes it,
    /// with the link up. A write error fails it later (the reader sees the
    /// socket die); an encoding error fails it now, before anything is sent.
    fn write_locked(&self, io: &mut Io, id: u64, req: &Request<'_>, p: Pending) -> Result<()> {
        io.encode(self.dialect(), req, Some(id))?;
        lock(&self.pending).insert(id, p);
        io.write_encoded();
        Ok(())
    }

    /// Encodes `reqs` with fresh ids, enters each in `pending` with its slot and
    /// writes them in one write, with the link up; returns their ids.
    fn write_batch_locked(
        &self,
        io: &mut Io,
        reqs: &[Request<'_>],
        slots: &[Arc<Slot>],
    ) -> Result<Vec<u64>> {
        let ids: Vec<u64> = reqs.iter().map(|_| self.next_id()).collect();
        io.encode_batch(
            self.dialect(),
            reqs.iter().zip(ids.iter().map(|&i| Some(i))),
        )?;
        {
            let mut p = lock(&self.pending);
            for (&id, slot) in ids.iter().zip(slots) {
                p.insert(id, Pending::Waiter(slot.clone()));
            }
        }
        io.write_encoded();
        Ok(ids)
    }

    /// Writes a frame that expects no reply (a `pong`, a `result`) if the link
    /// is up and still the connection of `generation` (any, when `None`).
    fn write_oneway(&self, req: &Request<'_>, generation: Option<u64>) {
        let mut io = lock(&self.io);
        if io.link != Link::Up || generation.is_some_and(|g| g != io.generation) {
            return;
        }
        // The values in `req` are in this connection's codec: encoding cannot fail.
        if io.encode(self.dialect(), req, None).is_ok() {
            io.write_encoded();
        }
    }

    /// Closes the connection for good: no reconnect; requests in flight fail
    /// with `EDISCONNECTED`.
    pub fn close(&self, reason: &str) {
        #[cfg(feature = "redis")]
        if let Some(b) = &self.redis {
            b.close();
        }
        let mut io = lock(&self.io);
        if io.link == Link::Closed {
            return;
        }
        io.link = Link::Closed;
        io.closed_reason = reason.to_owned();
        if let Some(s) = io.stream.take() {
            // Wakes the reader, which fails what is in flight and exits.
            let _ = s.shutdown(Shutdown::Both);
        }
        let drained = std::mem::take(&mut *lock(&self.pending));
        self.notify_link();
        drop(io);
        fail_all(drained, reason);
    }
}

/// Fails every request of `drained` with `EDISCONNECTED` and `reason`.
fn fail_all(drained: HashMap<u64, Pending>, reason: &str) {
    for p in drained.into_values() {
        if let Pending::Waiter(slot) = p {
            slot.fill(Err(ClientError::disconnected(reason)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procmesh_proto::message::opt_u64;
    use procmesh_proto::{Frame, Kind};

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(&b[4..]).unwrap()
    }

    #[test]
    fn built_frames_have_counted_fields() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let value = crate::value::encode(codec, &1).unwrap();
            let set = Request::Set {
                key: "k".into(),
                value: procmesh_proto::Raw::new(codec, &value),
                ttl_ms: Some(5),
            };
            let b = frame(codec, &set, Some(7)).unwrap();
            let f = Frame::decode(codec, &b[4..]).unwrap();
            assert_eq!(f.kind(), Kind::Set);
            assert_eq!(f.id.unwrap().as_i64(), Some(7));
            assert_eq!(opt_u64(f.ttl, "ttl").unwrap(), Some(5));
        }
        assert_eq!(
            json(&frame(Codec::Json, &Request::Pong, None).unwrap()),
            serde_json::json!({"t":"pong"})
        );
    }
}
