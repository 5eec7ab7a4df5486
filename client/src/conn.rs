//! One connection to one broker (one shard): sending requests, matching
//! replies, the reader thread, liveness pings and reconnect.
//!
//! Owns the socket, the requests in flight (`pending`), and this connection's
//! subscription and registration tables (replayed after a reconnect). It does
//! not know about shards or serde types: `client` builds the frames and
//! decodes the replies.
//!
//! # Threads
//! Any number of caller threads send requests; one reader thread per
//! connection reads every frame (replies, `msg`, `invoke`, broker `ping`) and,
//! when the socket dies, fails what is in flight and reconnects. Subscription
//! handlers run on the dispatch thread, RPC handlers on the pool.
//!
//! # Lock order
//! `io` → `pending`, `io` → `subs`, `io` → `regs`. `pending`, `subs`, `regs`
//! and the pool's queue are leaves: nothing else is locked while one is held,
//! and no user code ever runs under any of them. A request is entered into
//! `pending` only while `io` is held and the link is up, and a disconnect marks
//! the link down and drains `pending` under `io` too; so every request in
//! flight is either answered or failed with `EDISCONNECTED`, never lost.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use procmesh_proto::message::{opt_str, opt_u64, FrameWriter};
use procmesh_proto::{frame, Codec, Frame, Kind, Raw, Writer};
use serde::de::DeserializeOwned;

use crate::error::{ClientError, Result};
use crate::event::{Event, ShardId};
use crate::pending::{lock, Pending, Slot};
use crate::pubsub::{Dispatcher, Message, Subs};
use crate::rpc::{Pool, RpcHandler};
use crate::spawn::{self, Backoff, SpawnConfig};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// First and largest delay between reconnect attempts (jittered).
const RECONNECT_BASE: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Delays between connect attempts while a freshly spawned broker starts.
const SPAWN_POLL_BASE: Duration = Duration::from_millis(5);
const SPAWN_POLL_MAX: Duration = Duration::from_millis(200);

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
    pub codec: Codec,
    pub token: Option<String>,
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    pub ping_interval: Option<Duration>,
    pub reconnect: bool,
    pub spawn: Option<SpawnSettings>,
    pub handler_threads: usize,
}

/// What the connections of one client share.
pub(crate) struct Shared {
    pub settings: Settings,
    pub dispatch: Dispatcher,
    pool: Mutex<Option<Arc<Pool>>>,
}

impl Shared {
    pub fn new(settings: Settings, dispatch: Dispatcher) -> Self {
        Shared {
            settings,
            dispatch,
            pool: Mutex::new(None),
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
}

/// A reply frame to a request, kept whole; fields are decoded on demand.
pub(crate) struct Reply {
    payload: Vec<u8>,
    codec: Codec,
}

impl Reply {
    fn frame(&self) -> Result<Frame<'_>> {
        Frame::decode(self.codec, &self.payload)
            .map_err(|e| ClientError::Decode(e.message().to_owned()))
    }

    /// The `value` field, if present.
    pub fn raw_value(&self) -> Result<Option<Raw<'_>>> {
        Ok(self.frame()?.value)
    }

    /// The `value` field decoded; absent reads as null.
    pub fn value<T: DeserializeOwned>(&self) -> Result<T> {
        match self.raw_value()? {
            Some(r) => crate::value::decode(r),
            None => crate::value::decode(null(self.codec)),
        }
    }

    /// The `value` field decoded, `None` when absent.
    pub fn opt<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.raw_value()?.map(crate::value::decode).transpose()
    }
}

/// Encoded null in `codec`.
pub(crate) fn null(codec: Codec) -> Raw<'static> {
    match codec {
        Codec::Json => Raw::new(Codec::Json, b"null"),
        Codec::MsgPack => Raw::new(Codec::MsgPack, &[0xc0]),
    }
}

/// Builds one frame: `t`, then `id` when given, then `fields` more entries
/// written by `body` (exactly that many: MessagePack maps are counted).
pub(crate) fn build(
    codec: Codec,
    t: &str,
    id: Option<u64>,
    fields: usize,
    body: impl FnOnce(&mut Writer<'_>),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut f = FrameWriter::begin(codec, &mut out, 1 + id.is_some() as usize + fields, t);
    if let Some(id) = id {
        f.w().key("id");
        f.w().uint(id);
    }
    body(f.w());
    f.finish();
    out
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
        let outcome = match self.slot.wait_until(self.deadline) {
            Some(o) => o,
            None => {
                lock(&self.conn.pending).remove(&self.id);
                // The reply may have landed between the timeout and the removal.
                match self.slot.take() {
                    Some(o) => o,
                    None => {
                        return Err(ClientError::Timeout {
                            op: self.op,
                            after: self.timeout,
                        })
                    }
                }
            }
        };
        outcome.map(|payload| Reply {
            payload,
            codec: self.conn.codec(),
        })
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
    pending: Mutex<HashMap<u64, Pending>>,
    /// This connection's subscriptions (local handlers by pattern).
    pub subs: Mutex<Subs>,
    /// This connection's registered procedures.
    pub regs: Mutex<HashMap<String, RpcHandler>>,
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
                pid: None,
                closed_reason: String::new(),
            }),
            link_changed: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            subs: Mutex::new(Subs::default()),
            regs: Mutex::new(HashMap::new()),
        });
        let (stream, leftover) = conn.establish()?;
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
            .spawn(move || reader_main(c, stream, leftover))
            .map_err(|e| ClientError::Config(format!("cannot start the I/O thread: {e}")))?;
        Ok(conn)
    }

    pub fn codec(&self) -> Codec {
        self.shared.settings.codec
    }

    fn emit(&self, e: Event) {
        self.shared.dispatch.event(e);
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends request `t` and waits up to `timeout` for its reply.
    pub fn request(
        &self,
        t: &'static str,
        timeout: Duration,
        fields: usize,
        body: impl FnOnce(&mut Writer<'_>),
    ) -> Result<Reply> {
        self.start(t, timeout, fields, body)?.wait()
    }

    /// Sends request `t`; the reply is waited for with [`Ticket::wait`], so a
    /// caller can have requests to several shards in flight at once.
    pub fn start(
        &self,
        t: &'static str,
        timeout: Duration,
        fields: usize,
        body: impl FnOnce(&mut Writer<'_>),
    ) -> Result<Ticket<'_>> {
        let id = self.next_id();
        let bytes = build(self.codec(), t, Some(id), fields, body);
        let deadline = Instant::now() + timeout;
        let slot = Arc::new(Slot::default());
        self.send(id, &bytes, Pending::Waiter(slot.clone()), deadline)?;
        Ok(Ticket {
            conn: self,
            id,
            slot,
            deadline,
            op: t,
            timeout,
        })
    }

    /// Sends request `t` without waiting; an error reply becomes an
    /// `Event::Error`. Does nothing while the link is down (what it would undo,
    /// such as a lock or a subscription, died with the old connection).
    pub fn request_nowait(
        &self,
        t: &'static str,
        fields: usize,
        body: impl FnOnce(&mut Writer<'_>),
    ) {
        let id = self.next_id();
        let bytes = build(self.codec(), t, Some(id), fields, body);
        let mut io = lock(&self.io);
        if io.link == Link::Up {
            self.write_locked(&mut io, id, &bytes, Pending::Background(t));
        }
    }

    /// Sends a frame without an id, which the broker never answers. Waits for a
    /// reconnect like a request would.
    pub fn send_oneway(
        &self,
        t: &'static str,
        fields: usize,
        body: impl FnOnce(&mut Writer<'_>),
    ) -> Result<()> {
        let bytes = build(self.codec(), t, None, fields, body);
        let deadline = Instant::now() + self.shared.settings.call_timeout;
        let mut io = self.wait_up(deadline)?;
        if let Some(s) = io.stream.as_mut() {
            if s.write_all(&bytes).is_err() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
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

    /// Enters `pending` and writes, waiting (until `deadline`) for a reconnect
    /// when the link is being re-established.
    fn send(&self, id: u64, bytes: &[u8], p: Pending, deadline: Instant) -> Result<()> {
        let mut io = self.wait_up(deadline)?;
        self.write_locked(&mut io, id, bytes, p);
        Ok(())
    }

    /// Writes one frame with the link up. On a write error the socket is shut
    /// down: the reader then sees it die and fails `pending`, this request
    /// included.
    fn write_locked(&self, io: &mut Io, id: u64, bytes: &[u8], p: Pending) {
        lock(&self.pending).insert(id, p);
        if let Some(s) = io.stream.as_mut() {
            if s.write_all(bytes).is_err() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Writes a frame that expects no reply (a `pong`, a `result`) if the link
    /// is up and still the connection of `generation` (any, when `None`).
    fn write_oneway(&self, bytes: &[u8], generation: Option<u64>) {
        let mut io = lock(&self.io);
        if io.link != Link::Up || generation.is_some_and(|g| g != io.generation) {
            return;
        }
        if let Some(s) = io.stream.as_mut() {
            if s.write_all(bytes).is_err() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Closes the connection for good: no reconnect; requests in flight fail
    /// with `EDISCONNECTED`.
    pub fn close(&self, reason: &str) {
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
        self.link_changed.notify_all();
        drop(io);
        fail_all(drained, reason);
    }

    // ------------------------------------------------------------ connecting

    /// Connects (spawning if allowed) and completes the hello exchange.
    fn establish(&self) -> Result<(UnixStream, Vec<u8>)> {
        let s = self.connect_or_spawn()?;
        self.handshake(s)
    }

    fn connect_or_spawn(&self) -> Result<UnixStream> {
        let first = match UnixStream::connect(&self.path) {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let nobody_listens = matches!(
            first.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        );
        let Some(sp) = self
            .shared
            .settings
            .spawn
            .as_ref()
            .filter(|_| nobody_listens)
        else {
            return Err(ClientError::Connect {
                path: self.path.clone(),
                source: first,
            });
        };
        let program = match &sp.program {
            Some(p) => p.clone(),
            None => spawn::locate_broker()?,
        };
        spawn::spawn_broker(
            &program,
            &SpawnConfig {
                name: self.name.clone(),
                socket: self.path.clone(),
                idle_timeout: sp.idle_timeout,
                token: self.shared.settings.token.clone(),
                max_keys: sp.max_keys,
                opts: sp.opts.clone(),
            },
        )?;
        self.emit(Event::Spawned {
            shard: self.shard,
            path: self.path.clone(),
            program,
        });
        // Whichever broker wins a spawn race owns the socket; poll until it is there.
        let deadline = Instant::now() + self.shared.settings.connect_timeout;
        let mut backoff = Backoff::new(SPAWN_POLL_BASE, SPAWN_POLL_MAX);
        loop {
            std::thread::sleep(backoff.next_delay());
            match UnixStream::connect(&self.path) {
                Ok(s) => return Ok(s),
                Err(source) if Instant::now() >= deadline => {
                    return Err(ClientError::Connect {
                        path: self.path.clone(),
                        source,
                    })
                }
                Err(_) => {}
            }
        }
    }

    /// Sends `hello` and reads until `welcome` (answering pings meanwhile).
    /// Returns the socket and any bytes read past the welcome.
    fn handshake(&self, mut s: UnixStream) -> Result<(UnixStream, Vec<u8>)> {
        let io_err = |source: std::io::Error| ClientError::Connect {
            path: self.path.clone(),
            source,
        };
        let timeout = self.shared.settings.connect_timeout;
        s.set_read_timeout(Some(timeout)).map_err(io_err)?;
        let id = self.next_id();
        let pid = lock(&self.io).pid.clone();
        let token = self.shared.settings.token.as_deref();
        let fields = 1 + token.is_some() as usize + pid.is_some() as usize;
        let codec = self.codec();
        // {"t":"hello","id":ID,"name":NAME,"token"?:T,"pid"?:P}
        let hello = build(codec, "hello", Some(id), fields, |w| {
            w.key("name");
            w.str(&self.name);
            if let Some(t) = token {
                w.key("token");
                w.str(t);
            }
            if let Some(p) = &pid {
                w.key("pid");
                w.str(p);
            }
        });
        s.write_all(&hello).map_err(io_err)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some((a, b)) = frame::try_decode(&buf, frame::MAX_FRAME_LEN)
                .map_err(|e| ClientError::Decode(e.to_string()))?
            {
                let f = Frame::decode(codec, &buf[a..b])
                    .map_err(|e| ClientError::Decode(e.message().to_owned()))?;
                let is_ours = f.id.and_then(|r| r.as_i64()) == Some(id as i64);
                match f.kind() {
                    Kind::Welcome | Kind::Ok if is_ours => {
                        if let Ok(Some(p)) = opt_str(f.pid, "pid") {
                            lock(&self.io).pid = Some(p.into_owned());
                        }
                        // A broker that accepts no bytes for a whole call timeout is
                        // treated as dead (the write fails and the socket is shut down),
                        // so a writer never blocks forever holding `io`.
                        s.set_write_timeout(Some(
                            self.shared
                                .settings
                                .call_timeout
                                .max(Duration::from_secs(1)),
                        ))
                        .map_err(io_err)?;
                        let rest = buf[b..].to_vec();
                        return Ok((s, rest));
                    }
                    Kind::Err if is_ours => return Err(remote_error(&f)),
                    Kind::Ping => {
                        let pong = build(codec, "pong", None, 0, |_| {});
                        s.write_all(&pong).map_err(io_err)?;
                    }
                    _ => {}
                }
                buf.drain(..b);
            }
            match s.read(&mut chunk) {
                Ok(0) => {
                    return Err(ClientError::disconnected(format!(
                        "the broker at {} closed the connection during hello",
                        self.path.display()
                    )))
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout {
                        op: "hello",
                        after: timeout,
                    })
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }

    // ------------------------------------------------------------ reading

    /// Reads and handles frames until the connection dies; returns why.
    fn read_loop(
        self: &Arc<Self>,
        s: &mut UnixStream,
        buf: &mut Vec<u8>,
        generation: u64,
    ) -> String {
        let interval = self.shared.settings.ping_interval.filter(|d| !d.is_zero());
        let _ = s.set_read_timeout(interval.map(|d| (d / 2).max(Duration::from_millis(1))));
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut last_inbound = Instant::now();
        let mut ping_sent = false;
        loop {
            let mut start = 0;
            loop {
                match frame::try_decode(&buf[start..], frame::MAX_FRAME_LEN) {
                    Ok(Some((a, b))) => {
                        self.handle(&buf[start + a..start + b], generation);
                        start += b;
                    }
                    Ok(None) => break,
                    Err(e) => return format!("bad frame from the broker: {e}"),
                }
            }
            buf.drain(..start);
            match s.read(&mut chunk) {
                Ok(0) => return "the broker closed the connection".into(),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    last_inbound = Instant::now();
                    ping_sent = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let Some(iv) = interval else { continue };
                    let idle = last_inbound.elapsed();
                    if idle >= iv * 2 {
                        return format!("no answer from the broker for {} ms", idle.as_millis());
                    }
                    if idle >= iv && !ping_sent {
                        // Any inbound frame proves liveness; the pong itself is ignored.
                        self.request_nowait("ping", 0, |_| {});
                        ping_sent = true;
                    }
                }
                Err(e) => return format!("read error: {e}"),
            }
        }
    }

    /// Handles one inbound frame.
    fn handle(self: &Arc<Self>, payload: &[u8], generation: u64) {
        let codec = self.codec();
        let f = match Frame::decode(codec, payload) {
            Ok(f) => f,
            Err(e) => {
                self.emit(Event::Error {
                    shard: self.shard,
                    message: format!("undecodable frame: {e}"),
                });
                return;
            }
        };
        match f.kind() {
            Kind::Ok | Kind::Err | Kind::Pong | Kind::Welcome => {
                let Some(id) = f.id.and_then(|r| opt_u64(Some(r), "id").ok().flatten()) else {
                    if f.kind() == Kind::Err {
                        self.emit(Event::Error {
                            shard: self.shard,
                            message: remote_error(&f).to_string(),
                        });
                    }
                    return;
                };
                let p = lock(&self.pending).remove(&id);
                match p {
                    Some(Pending::Waiter(slot)) => slot.fill(if f.kind() == Kind::Err {
                        Err(remote_error(&f))
                    } else {
                        Ok(payload.to_vec())
                    }),
                    Some(Pending::Background(what)) if f.kind() == Kind::Err => {
                        self.emit(Event::Error {
                            shard: self.shard,
                            message: format!("{what}: {}", remote_error(&f)),
                        })
                    }
                    _ => {}
                }
            }
            Kind::Ping => {
                let pong = build(codec, "pong", None, 0, |_| {});
                self.write_oneway(&pong, None);
            }
            Kind::Msg => self.on_msg(&f),
            Kind::Invoke => self.on_invoke(&f, generation),
            _ => {}
        }
    }

    fn on_msg(&self, f: &Frame<'_>) {
        let Ok(Some(channel)) = opt_str(f.channel, "channel") else {
            return;
        };
        let handlers = lock(&self.subs).matching(&channel);
        if handlers.is_empty() {
            return;
        }
        let payload = f.payload.unwrap_or(null(self.codec())).bytes.to_vec();
        let offset = opt_u64(f.offset, "offset").ok().flatten();
        self.shared.dispatch.msg(
            handlers,
            Message::new(channel.into_owned(), payload, self.codec(), offset),
        );
    }

    fn on_invoke(self: &Arc<Self>, f: &Frame<'_>, generation: u64) {
        let codec = self.codec();
        let Some(id) = f.id else { return };
        let id = id.bytes.to_vec();
        let name = match opt_str(f.name, "name") {
            Ok(Some(n)) => n.into_owned(),
            _ => return,
        };
        let args = f.args.map(|a| a.bytes.to_vec());
        let handler = lock(&self.regs).get(&name).cloned();
        let (Some(handler), Some(pool)) = (handler, self.shared.pool_if_started()) else {
            let e =
                crate::error::HandlerError::new(format!("no handler for `{name}` on this client"))
                    .with_code(procmesh_proto::ErrorCode::NoHandler.as_str());
            self.write_oneway(&result_frame(codec, &id, Err(e)), Some(generation));
            return;
        };
        let conn = self.clone();
        pool.submit(Box::new(move || {
            let empty: &[u8] = match codec {
                Codec::Json => b"[]",
                Codec::MsgPack => &[0x90],
            };
            let args = Raw::new(codec, args.as_deref().unwrap_or(empty));
            let r = crate::rpc::run_handler(&handler, args);
            conn.write_oneway(&result_frame(codec, &id, r), Some(generation));
        }));
    }

    // ------------------------------------------------------------ reconnecting

    /// After the reader saw the socket die: fail what was in flight, tell
    /// observers, and reconnect (unless closed or reconnect is off). Returns the
    /// new socket for the reader, or `None` when the reader should exit.
    fn after_disconnect(&self, reason: String) -> Option<(UnixStream, Vec<u8>)> {
        let mut io = lock(&self.io);
        if let Some(s) = io.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        io.generation += 1;
        let was_closed = io.link == Link::Closed;
        if !was_closed {
            if self.shared.settings.reconnect {
                io.link = Link::Reconnecting;
            } else {
                io.link = Link::Closed;
                io.closed_reason = format!(
                    "disconnected from {} ({reason}); reconnect is off",
                    self.path.display()
                );
            }
        }
        let drained = std::mem::take(&mut *lock(&self.pending));
        self.link_changed.notify_all();
        let closed = io.link == Link::Closed;
        drop(io);
        fail_all(
            drained,
            &format!(
                "connection to the broker at {} lost: {reason}",
                self.path.display()
            ),
        );
        if was_closed {
            return None;
        }
        self.emit(Event::Disconnected {
            shard: self.shard,
            path: self.path.clone(),
            reason,
        });
        if closed {
            return None;
        }
        self.reconnect()
    }

    fn reconnect(&self) -> Option<(UnixStream, Vec<u8>)> {
        let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_MAX);
        let mut attempts = 0u32;
        loop {
            // Sleep for the backoff, but wake at once when the client is closed.
            {
                let deadline = Instant::now() + backoff.next_delay();
                let mut io = lock(&self.io);
                loop {
                    if io.link == Link::Closed {
                        return None;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    io = self
                        .link_changed
                        .wait_timeout(io, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            attempts += 1;
            let (stream, rest) = match self.establish() {
                Ok(x) => x,
                Err(e) => {
                    self.emit(Event::Error {
                        shard: self.shard,
                        message: format!("reconnect attempt {attempts} failed: {e}"),
                    });
                    continue;
                }
            };
            let Ok(writer) = stream.try_clone() else {
                continue;
            };
            let mut io = lock(&self.io);
            if io.link == Link::Closed {
                let _ = stream.shutdown(Shutdown::Both);
                return None;
            }
            io.stream = Some(writer);
            io.link = Link::Up;
            // Replay before anyone else may write, so a subscription is back before
            // requests that rely on it.
            let patterns = lock(&self.subs).patterns();
            let names: Vec<String> = lock(&self.regs).keys().cloned().collect();
            let codec = self.codec();
            for p in patterns {
                let id = self.next_id();
                let bytes = build(codec, "sub", Some(id), 1, |w| {
                    w.key("channel");
                    w.str(&p);
                });
                self.write_locked(&mut io, id, &bytes, Pending::Background("resubscribe"));
            }
            for n in names {
                let id = self.next_id();
                let bytes = build(codec, "reg", Some(id), 1, |w| {
                    w.key("name");
                    w.str(&n);
                });
                self.write_locked(&mut io, id, &bytes, Pending::Background("re-register"));
            }
            self.link_changed.notify_all();
            drop(io);
            self.emit(Event::Reconnected {
                shard: self.shard,
                path: self.path.clone(),
                attempts,
            });
            return Some((stream, rest));
        }
    }
}

fn reader_main(conn: Arc<Conn>, mut stream: UnixStream, mut buf: Vec<u8>) {
    loop {
        let generation = lock(&conn.io).generation;
        let reason = conn.read_loop(&mut stream, &mut buf, generation);
        let _ = stream.shutdown(Shutdown::Both);
        match conn.after_disconnect(reason) {
            Some((s, b)) => {
                stream = s;
                buf = b;
            }
            None => return,
        }
    }
}

fn fail_all(drained: HashMap<u64, Pending>, reason: &str) {
    for p in drained.into_values() {
        if let Pending::Waiter(slot) = p {
            slot.fill(Err(ClientError::disconnected(reason)));
        }
    }
}

/// The error carried by an `err` frame.
fn remote_error(f: &Frame<'_>) -> ClientError {
    let code = opt_str(f.code, "code")
        .ok()
        .flatten()
        .map(|c| c.into_owned());
    let message = opt_str(f.message, "message")
        .ok()
        .flatten()
        .map(|m| m.into_owned());
    ClientError::Remote {
        code: code.unwrap_or_else(|| procmesh_proto::ErrorCode::Broker.as_str().to_owned()),
        message: message.unwrap_or_default(),
    }
}

/// `{"t":"result","id":ID,"result":R}` or
/// `{"t":"result","id":ID,"error":{"message":M,"code":C}}`.
fn result_frame(
    codec: Codec,
    id: &[u8],
    r: Result<Vec<u8>, crate::error::HandlerError>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut f = FrameWriter::begin(codec, &mut out, 3, "result");
    f.w().key("id");
    f.w().raw_same(id);
    match r {
        Ok(bytes) => {
            f.w().key("result");
            f.w().raw_same(&bytes);
        }
        Err(e) => {
            f.w().key("error");
            f.w().begin_map(2);
            f.w().key("message");
            f.w().str(e.message());
            f.w().key("code");
            f.w().str(e.code());
            f.w().end_map();
        }
    }
    f.finish();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(&b[4..]).unwrap()
    }

    #[test]
    fn built_frames_have_counted_fields() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let b = build(codec, "set", Some(7), 2, |w| {
                w.key("key");
                w.str("k");
                w.key("ttl");
                w.uint(5);
            });
            let f = Frame::decode(codec, &b[4..]).unwrap();
            assert_eq!(f.kind(), Kind::Set);
            assert_eq!(f.id.unwrap().as_i64(), Some(7));
            assert_eq!(opt_u64(f.ttl, "ttl").unwrap(), Some(5));
        }
        assert_eq!(
            json(&build(Codec::Json, "pong", None, 0, |_| {})),
            serde_json::json!({"t":"pong"})
        );
    }

    #[test]
    fn result_frames_match_the_protocol() {
        let ok = result_frame(Codec::Json, b"12", Ok(b"[1,2]".to_vec()));
        assert_eq!(
            json(&ok),
            serde_json::json!({"t":"result","id":12,"result":[1,2]})
        );
        let e = crate::error::HandlerError::new("nope").with_code("EINVAL");
        let err = result_frame(Codec::Json, b"3", Err(e));
        assert_eq!(
            json(&err),
            serde_json::json!({"t":"result","id":3,"error":{"message":"nope","code":"EINVAL"}})
        );
        let mp = result_frame(Codec::MsgPack, &[0x05], Ok(vec![0xc3]));
        let v: serde_json::Value = rmp_serde::from_slice(&mp[4..]).unwrap();
        assert_eq!(v, serde_json::json!({"t":"result","id":5,"result":true}));
    }

    #[test]
    fn err_frames_become_remote_errors() {
        let f = Frame::decode(
            Codec::Json,
            br#"{"t":"err","id":1,"message":"stale","code":"EFENCED"}"#,
        )
        .unwrap();
        let e = remote_error(&f);
        assert_eq!(e.code(), Some(procmesh_proto::ErrorCode::Fenced));
        assert_eq!(e.to_string(), "EFENCED: stale");
    }
}
