//! The Redis backend (cargo feature `redis`): the same [`Client`](crate::Client)
//! API on a Redis server or a Redis Cluster, chosen with
//! [`ClientBuilder::redis`](crate::ClientBuilder::redis).
//!
//! Owns the mapping of every typed `procmesh_proto::Request` onto Redis commands
//! and Lua scripts ([`Backend::execute`]), the pool of Redis connections, the
//! subscriber thread (`pubsub`) and the RPC worker and reply threads (`rpc`).
//! It does not own the subscription and registration tables (the [`Conn`]'s,
//! shared with the broker backend) nor the API (`client`, `lock`, `pubsub`,
//! `rpc`): a request is built exactly as for a broker, and the reply is a
//! [`Reply`] holding the same value the broker would send, in MessagePack.
//!
//! # Keyspace
//! Every key of the mesh `name` starts with `{name}:` (a Redis Cluster hash tag,
//! so one mesh lives in one slot and every multi-key script runs on Cluster;
//! several meshes spread over the cluster):
//! - `{name}:k:<key>`: a cache entry (the value's MessagePack bytes, TTL as `PX`);
//! - `{name}:l:<lock>`: a held lock (`<owner>:<token>`, TTL as `PX`);
//!   `{name}:f:<lock>` its fencing high mark; `{name}:fence` the token counter;
//! - `{name}:q:<proc>` an RPC call queue, `{name}:w:<proc>` its workers,
//!   `{name}:hb:<client>` a worker's heartbeat, `{name}:i:<client>` the calls a
//!   worker took, `{name}:o:<call>` which worker took a call, `{name}:r:<client>`
//!   a caller's replies;
//! - channels are `{name}:c:<channel>`; the subscriber's wake-up channel is
//!   `{name}:wake:<client>`.
//!
//! `keys` and `clear` SCAN `{name}:k:*` (never `KEYS`, never `FLUSHDB`); on a
//! Cluster the SCAN goes to the primary owning the mesh's slot.
//!
//! # Invariants
//! Values are stored as MessagePack whatever the client's codec (a JSON client
//! transcodes), so every client reads the same bytes. Connections in the pool are
//! bounded by [`POOL_IDLE_MAX`]; blocking commands (the subscriber, RPC workers,
//! the reply reader) each have their own connection and thread.

mod pubsub;
mod rpc;
mod scripts;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procmesh_proto::stats::StatsReport;
use procmesh_proto::{Codec, Num, Raw, Request, Writer};
use redis::{ConnectionLike, RedisError, RedisResult};

use crate::conn::{Conn, Reply};
use crate::error::{ClientError, Result};
use crate::pending::lock;

use scripts::scripts;

/// Idle connections kept in the pool; more are opened under load and closed
/// when returned past this.
pub(crate) const POOL_IDLE_MAX: usize = 16;

/// The shortest answer timeout of a connection: above the blocking commands'
/// own waits (1 s), which share the connection type.
const BLOCKING_MARGIN: Duration = Duration::from_secs(5);

/// Idempotent publishing: how far below the highest sequence number a gap may
/// still be filled, and how long an idle (producer, channel) entry is kept (the
/// broker's defaults, `dedup.window` and `dedup.ttl`).
const DEDUP_WINDOW: u64 = 1024;
const DEDUP_TTL_MS: u64 = 600_000;

/// Keys per SCAN round.
const SCAN_COUNT: usize = 1000;

/// Lock wait polling: first and longest pause between attempts.
const LOCK_POLL_MIN: Duration = Duration::from_millis(1);
const LOCK_POLL_MAX: Duration = Duration::from_millis(50);

/// Where the backend connects: one server or the nodes of a Cluster.
#[derive(Debug, Clone)]
pub(crate) struct RedisTarget {
    /// `redis://…`, `rediss://…` or `redis+unix://…` URLs (several: a Cluster).
    pub urls: Vec<String>,
    /// Connect as a Cluster client (also with one seed URL).
    pub cluster: bool,
}

/// One Redis connection: to a server, or a Cluster client routing by slot.
enum Link {
    One(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Link {
    fn con(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Link::One(c) => c,
            Link::Cluster(c) => &mut **c,
        }
    }
}

/// The Redis side of one client (one [`Conn`]).
pub(crate) struct Backend {
    target: RedisTarget,
    one: Option<redis::Client>,
    cluster: Option<redis::cluster::ClusterClient>,
    /// `{name}:`.
    ns: String,
    /// How long a pooled connection waits for an answer.
    call_timeout: Duration,
    /// The mesh's slot, for routing SCAN on a Cluster.
    slot: Option<u16>,
    /// The URL of the node owning the mesh's slot (on a Cluster), where the
    /// subscriber listens and PUBLISH goes, so delivered counts cover the mesh.
    slot_url: Option<String>,
    /// This client's id: lock owner, RPC worker and caller id.
    id: String,
    pool: Mutex<Vec<Link>>,
    conn: OnceLock<Weak<Conn>>,
    /// This backend itself, for the threads it starts.
    me: OnceLock<Weak<Backend>>,
    closed: AtomicBool,
    /// Locks this client holds (released at close; a crashed client's locks
    /// expire with their TTL).
    held: Mutex<HashSet<String>>,
    ops: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    started: Instant,
    sub: pubsub::Subscriber,
    rpc: rpc::Rpc,
    call_seq: AtomicU64,
}

impl Backend {
    /// Connects (one round trip: PING) and prepares the namespace of mesh `name`.
    /// Pooled connections wait at most `call_timeout` for an answer (`ETIMEOUT`);
    /// blocking commands have their own connections and shorter waits.
    pub fn connect(
        target: RedisTarget,
        name: &str,
        timeout: Duration,
        call_timeout: Duration,
    ) -> Result<Backend> {
        if target.urls.is_empty() {
            return Err(ClientError::Config("no Redis URL".into()));
        }
        let bad = |e: RedisError| ClientError::Config(format!("bad Redis URL: {e}"));
        let (one, cluster) = if target.cluster {
            let c = redis::cluster::ClusterClientBuilder::new(target.urls.clone())
                .connection_timeout(timeout)
                .response_timeout(call_timeout.max(BLOCKING_MARGIN))
                .build()
                .map_err(bad)?;
            (None, Some(c))
        } else {
            (
                Some(redis::Client::open(target.urls[0].as_str()).map_err(bad)?),
                None,
            )
        };
        let ns = format!("{{{name}}}:");
        let mut b = Backend {
            target,
            one,
            cluster,
            ns,
            call_timeout: call_timeout.max(BLOCKING_MARGIN),
            slot: None,
            slot_url: None,
            id: unique_id(),
            pool: Mutex::new(Vec::new()),
            conn: OnceLock::new(),
            me: OnceLock::new(),
            closed: AtomicBool::new(false),
            held: Mutex::new(HashSet::new()),
            ops: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            sub: pubsub::Subscriber::default(),
            rpc: rpc::Rpc::default(),
            call_seq: AtomicU64::new(1),
        };
        let mut link = b.open_link()?;
        let _: () = redis::cmd("PING")
            .query(link.con())
            .map_err(|e| b.unreachable(e))?;
        if b.cluster.is_some() {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&b.ns)
                .query(link.con())
                .map_err(|e| b.unreachable(e))?;
            b.slot = Some(slot);
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(link.con())
                .map_err(|e| b.unreachable(e))?;
            b.slot_url = slot_owner(&nodes, slot).map(|addr| format!("redis://{addr}/"));
        }
        b.put(link);
        Ok(b)
    }

    /// Ties the backend to its connection (for the subscription and
    /// registration tables) and starts the subscriber thread.
    pub fn attach(self: &Arc<Self>, conn: Weak<Conn>) -> Result<()> {
        let _ = self.conn.set(conn);
        let _ = self.me.set(Arc::downgrade(self));
        pubsub::start(self)
    }

    /// This client's id (lock owner, RPC worker and caller, producer).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The first URL, shown as the connection's address.
    pub fn display_url(&self) -> &str {
        &self.target.urls[0]
    }

    fn unreachable(&self, e: RedisError) -> ClientError {
        ClientError::disconnected(format!(
            "cannot reach Redis at {}: {e}",
            self.target.urls.join(",")
        ))
    }

    fn open_link(&self) -> Result<Link> {
        if let Some(c) = &self.cluster {
            return c
                .get_connection()
                .map(|c| Link::Cluster(Box::new(c)))
                .map_err(|e| self.unreachable(e));
        }
        let c = self
            .one
            .as_ref()
            .expect("invariant: one client or the other");
        let c = c.get_connection().map_err(|e| self.unreachable(e))?;
        c.set_read_timeout(Some(self.call_timeout))
            .and_then(|()| c.set_write_timeout(Some(self.call_timeout)))
            .map_err(|e| self.unreachable(e))?;
        Ok(Link::One(c))
    }

    /// A plain connection to the first node (the subscriber's: PUBLISH reaches
    /// every node of a Cluster).
    fn open_plain(&self) -> Result<redis::Connection> {
        let url = self.slot_url.as_deref().unwrap_or(&self.target.urls[0]);
        redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .map_err(|e| self.unreachable(e))
    }

    fn take(&self) -> Result<Link> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ClientError::disconnected("the client was closed"));
        }
        if let Some(l) = lock(&self.pool).pop() {
            return Ok(l);
        }
        self.open_link()
    }

    fn put(&self, l: Link) {
        let mut p = lock(&self.pool);
        if p.len() < POOL_IDLE_MAX && !self.closed.load(Ordering::Acquire) {
            p.push(l);
        }
    }

    /// Runs `f` on a pooled connection; a connection that failed with an I/O
    /// error is dropped, not returned.
    fn with<T>(&self, f: impl FnOnce(&mut dyn ConnectionLike) -> RedisResult<T>) -> Result<T> {
        let mut l = self.take()?;
        match f(l.con()) {
            Ok(v) => {
                self.put(l);
                Ok(v)
            }
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    // The server went away or restarted: the idle connections are
                    // as dead as this one, and would each fail one more request.
                    lock(&self.pool).clear();
                } else {
                    self.put(l);
                }
                Err(self.error(e))
            }
        }
    }

    /// A Redis error as the client's: our scripts' codes (`EFENCED`, …) stay
    /// as they are, a lost connection is `EDISCONNECTED`, the rest `EBROKER`.
    fn error(&self, e: RedisError) -> ClientError {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            return self.unreachable(e);
        }
        if e.is_timeout() {
            return ClientError::Timeout {
                op: "redis",
                after: self.call_timeout,
            };
        }
        if let Some(code) = e.code() {
            if code.len() > 1
                && code.starts_with('E')
                && code.chars().all(|c| c.is_ascii_uppercase())
            {
                return ClientError::Remote {
                    code: code.to_owned(),
                    message: e.detail().unwrap_or_default().to_owned(),
                };
            }
        }
        ClientError::Remote {
            code: procmesh_proto::ErrorCode::Broker.as_str().to_owned(),
            message: format!("redis: {e}"),
        }
    }

    fn key(&self, k: &str) -> String {
        let mut s = String::with_capacity(self.ns.len() + 2 + k.len());
        s.push_str(&self.ns);
        s.push_str("k:");
        s.push_str(k);
        s
    }

    fn nkey(&self, kind: &str, k: &str) -> String {
        let mut s = String::with_capacity(self.ns.len() + kind.len() + 1 + k.len());
        s.push_str(&self.ns);
        s.push_str(kind);
        s.push(':');
        s.push_str(k);
        s
    }

    fn conn(&self) -> Option<Arc<Conn>> {
        self.conn.get().and_then(Weak::upgrade)
    }

    fn count(&self, op: &'static str) {
        *lock(&self.ops).entry(op).or_insert(0) += 1;
    }

    /// Executes one request; the reply carries the value the broker would send.
    pub fn execute(&self, conn: &Conn, req: &Request<'_>, timeout: Duration) -> Result<Reply> {
        let op = req.kind().tag();
        self.count(op);
        let r = self.run(conn, req, timeout);
        if let Err(e) = &r {
            if let Some(c) = e.code_str() {
                *lock(&self.errors).entry(c.to_owned()).or_insert(0) += 1;
            }
        }
        r
    }

    fn run(&self, conn: &Conn, req: &Request<'_>, timeout: Duration) -> Result<Reply> {
        let s = scripts();
        match req {
            Request::Ping => {
                self.with(|c| redis::cmd("PING").query::<()>(c))?;
                Ok(none())
            }
            Request::Get { key } => {
                let v: Option<Vec<u8>> =
                    self.with(|c| redis::cmd("GET").arg(self.key(key)).query(c))?;
                Ok(Reply::new(Codec::MsgPack, v.as_deref().map(mp)))
            }
            Request::Set { key, value, ttl_ms } => {
                let v = to_store(*value)?;
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.key(key)).arg(v);
                if let Some(t) = ttl_ms.filter(|t| *t > 0) {
                    cmd.arg("PX").arg(t);
                }
                self.with(|c| cmd.query::<()>(c))?;
                Ok(none())
            }
            Request::Del { key } => {
                let n: u64 = self.with(|c| redis::cmd("DEL").arg(self.key(key)).query(c))?;
                value(&(n > 0))
            }
            Request::Has { key } => {
                let n: u64 = self.with(|c| redis::cmd("EXISTS").arg(self.key(key)).query(c))?;
                value(&(n > 0))
            }
            Request::Keys => {
                let names = self.scan_data()?;
                let p = self.ns.len() + 2;
                let keys: Vec<String> = names
                    .iter()
                    .map(|k| String::from_utf8_lossy(&k[p.min(k.len())..]).into_owned())
                    .collect();
                value(&keys)
            }
            Request::Clear => {
                let names = self.scan_data()?;
                for chunk in names.chunks(SCAN_COUNT) {
                    self.with(|c| redis::cmd("UNLINK").arg(chunk).query::<()>(c))?;
                }
                Ok(none())
            }
            Request::Mget { keys } => {
                let names: Vec<String> = keys.iter().map(|k| self.key(&k)).collect();
                let vals: Vec<Option<Vec<u8>>> = if names.is_empty() {
                    Vec::new()
                } else {
                    self.with(|c| redis::cmd("MGET").arg(&names).query(c))?
                };
                let mut out =
                    Vec::with_capacity(16 + vals.iter().flatten().map(Vec::len).sum::<usize>());
                let mut w = Writer::new(Codec::MsgPack, &mut out);
                w.begin_map(2);
                w.key("values");
                w.begin_array(vals.len());
                for v in &vals {
                    match v {
                        Some(b) => w.raw_same(b),
                        None => w.nil(),
                    }
                }
                w.end_array();
                w.key("found");
                w.begin_array(vals.len());
                for v in &vals {
                    w.bool(v.is_some());
                }
                w.end_array();
                w.end_map();
                Ok(Reply::new(Codec::MsgPack, Some(mp(&out))))
            }
            Request::Mset { entries } => {
                let mut cmd = redis::cmd("MSET");
                let mut any = false;
                for (k, v) in entries.iter() {
                    cmd.arg(self.key(&k)).arg(to_store(v)?);
                    any = true;
                }
                if any {
                    self.with(|c| cmd.query::<()>(c))?;
                }
                Ok(none())
            }
            Request::Incr { key, by } | Request::Decr { key, by } => {
                let by = match (req, *by) {
                    (Request::Decr { .. }, n) => neg(n),
                    (_, n) => n,
                };
                let packed: Vec<u8> = self.with(|c| {
                    s.incr
                        .key(self.key(key))
                        .arg(num_arg(by))
                        .arg(key.as_ref())
                        .invoke(c)
                })?;
                Ok(Reply::new(Codec::MsgPack, Some(mp(&packed))))
            }
            Request::Cas { key, prev, next } => {
                let (p, n) = (
                    prev.map(to_store).transpose()?,
                    next.map(to_store).transpose()?,
                );
                let k = self.key(key);
                let mut inv = s.cas.key(k);
                cas_args(&mut inv, p.as_deref(), n.as_deref());
                let r: u64 = self.with(|c| inv.invoke(c))?;
                value(&(r == 1))
            }
            Request::Lock {
                key,
                ttl_ms,
                wait_ms,
            } => self.lock(key, ttl_ms.unwrap_or(30_000).max(1), wait_ms.unwrap_or(0)),
            Request::Unlock { key } => {
                lock(&self.held).remove(key.as_ref());
                let r: u64 =
                    self.with(|c| s.unlock.key(self.nkey("l", key)).arg(&self.id).invoke(c))?;
                value(&(r == 1))
            }
            Request::Fset {
                key,
                token,
                k,
                value: v,
                ttl_ms,
            } => {
                let v = to_store(*v)?;
                let mut inv = self.fenced(key, *token, k, "set");
                inv.arg(v)
                    .arg(ttl_ms.unwrap_or(0))
                    .arg("")
                    .arg("")
                    .arg(key.as_ref());
                let _: u64 = self.with(|c| inv.invoke(c))?;
                Ok(none())
            }
            Request::Fcas {
                key,
                token,
                k,
                prev,
                next,
            } => {
                let (p, n) = (
                    prev.map(to_store).transpose()?,
                    next.map(to_store).transpose()?,
                );
                let mut inv = self.fenced(key, *token, k, "cas");
                cas_args(&mut inv, p.as_deref(), n.as_deref());
                inv.arg(key.as_ref());
                let r: u64 = self.with(|c| inv.invoke(c))?;
                value(&(r == 1))
            }
            Request::Fdel { key, token, k } => {
                let mut inv = self.fenced(key, *token, k, "del");
                inv.arg("").arg("").arg("").arg("").arg(key.as_ref());
                let r: u64 = self.with(|c| inv.invoke(c))?;
                value(&(r > 0))
            }
            Request::Pub {
                channel,
                payload,
                pid,
                seq,
                ..
            } => {
                let p = match payload {
                    Some(p) => to_store(*p)?,
                    None => vec![0xc0],
                };
                if let (Some(pid), Some(seq)) = (pid, seq) {
                    let n: Option<u64> = self.with(|c| {
                        s.pub_idempotent
                            .key(self.nkey("dd", &format!("{pid}:{channel}")))
                            .arg(*seq)
                            .arg(self.nkey("c", channel))
                            .arg(&p)
                            .arg(DEDUP_WINDOW)
                            .arg(DEDUP_TTL_MS)
                            .invoke(c)
                    })?;
                    return value(&n);
                }
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(self.nkey("c", channel)).arg(p);
                let n: u64 = self.query_slot(&cmd)?;
                value(&n)
            }
            Request::Sub {
                channel,
                replay,
                since,
            } => {
                if replay.is_some_and(|n| n > 0) || since.is_some() {
                    return Err(ClientError::Config(format!(
                        "`{channel}`: retained messages (replay, since) are a broker feature; \
                         the Redis backend has no retention"
                    )));
                }
                pubsub::subscribe(self, channel, true, timeout)?;
                Ok(none())
            }
            Request::Unsub { channel } => {
                pubsub::subscribe(self, channel, false, timeout)?;
                Ok(none())
            }
            Request::Reg { name } => {
                rpc::register(self, conn, name)?;
                Ok(none())
            }
            Request::Unreg { name } => {
                rpc::unregister(self, name)?;
                Ok(none())
            }
            Request::Call {
                name,
                args,
                timeout_ms,
            } => {
                let t = timeout_ms.map_or(timeout, Duration::from_millis);
                let a = match args {
                    Some(a) => to_store(*a)?,
                    None => vec![0x90],
                };
                rpc::call(self, name, &a, t)
            }
            Request::Stats => self.stats(),
            // Never SHUTDOWN a shared Redis server: the client closes only.
            Request::Shutdown => Ok(none()),
            other => Err(ClientError::Config(format!(
                "`{}` is not a request of the Redis backend",
                other.kind().tag()
            ))),
        }
    }

    fn fenced(
        &self,
        lock_key: &str,
        token: Option<u64>,
        k: &str,
        op: &str,
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = scripts().fenced.prepare_invoke();
        inv.key(self.nkey("f", lock_key))
            .key(format!("{}fence", self.ns))
            .key(self.key(k))
            .arg(token.map_or_else(|| "none".to_owned(), |t| t.to_string()))
            .arg(op);
        inv
    }

    fn lock(&self, key: &str, ttl_ms: u64, wait_ms: u64) -> Result<Reply> {
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let mut pause = LOCK_POLL_MIN;
        loop {
            let t: Option<u64> = self.with(|c| {
                scripts()
                    .lock
                    .key(self.nkey("l", key))
                    .key(format!("{}fence", self.ns))
                    .key(self.nkey("f", key))
                    .arg(&self.id)
                    .arg(ttl_ms)
                    .invoke(c)
            })?;
            if let Some(t) = t {
                lock(&self.held).insert(key.to_owned());
                return lock_reply(Some(t));
            }
            let now = Instant::now();
            if now >= deadline {
                return lock_reply(None);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }

    /// Every data key of the namespace (full Redis names).
    fn scan_data(&self) -> Result<Vec<Vec<u8>>> {
        let pattern = format!("{}*", glob_escape(&format!("{}k:", self.ns)));
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, batch): (u64, Vec<Vec<u8>>) = self.scan_round(&cmd)?;
            out.extend(batch);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    fn scan_round(&self, cmd: &redis::Cmd) -> Result<(u64, Vec<Vec<u8>>)> {
        self.query_slot(cmd)
    }

    /// Runs `cmd` on the node owning the mesh's slot (any node's answer for a
    /// single server).
    fn query_slot<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut l = self.take()?;
        let r = match (&mut l, self.slot) {
            (Link::Cluster(c), Some(slot)) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                        slot,
                        SlotAddr::Master,
                    ))),
                )
                .and_then(|v| redis::from_redis_value(v).map_err(Into::into))
            }
            (l, _) => cmd.query(l.con()),
        };
        match r {
            Ok(v) => {
                self.put(l);
                Ok(v)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    fn stats(&self) -> Result<Reply> {
        let info: String = self.query_slot(&redis::cmd("INFO"))?;
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let keys = self.scan_data()?.len() as u64;
        let mut r = StatsReport {
            name: self.ns.trim_end_matches(':').to_owned(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            connections: field("connected_clients"),
            cache_size: keys,
            evicted: field("evicted_keys"),
            expired: field("expired_keys"),
            ops: lock(&self.ops)
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            errors: lock(&self.errors).clone(),
            locks: lock(&self.held).len() as u64,
            subscriptions: self.sub.count() as u64,
            io_backend: "redis".into(),
            ..StatsReport::default()
        };
        r.memory.insert("usedMemory".into(), field("used_memory"));
        r.memory
            .insert("usedMemoryPeak".into(), field("used_memory_peak"));
        r.memory
            .insert("redisUptimeMs".into(), field("uptime_in_seconds") * 1000);
        let mut out = Vec::with_capacity(512);
        r.encode_into(&mut Writer::new(Codec::MsgPack, &mut out));
        Ok(Reply::new(Codec::MsgPack, Some(mp(&out))))
    }

    /// Closes the backend: releases held locks, stops the threads, fails calls
    /// in flight. Idempotent.
    pub fn close(&self) {
        let held: Vec<String> = lock(&self.held).drain().collect();
        for k in held {
            let _ = self.with(|c| {
                scripts()
                    .unlock
                    .key(self.nkey("l", &k))
                    .arg(&self.id)
                    .invoke::<u64>(c)
            });
        }
        rpc::close(self);
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        pubsub::close(self);
        lock(&self.pool).clear();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The `host:port` of the primary owning `slot`, from `CLUSTER NODES` output
/// (`<id> <host:port@bus> <flags> <primary> <ping> <pong> <epoch> <link> <slots>…`).
fn slot_owner(nodes: &str, slot: u16) -> Option<String> {
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") {
            continue;
        }
        let owns = f[8..].iter().any(|r| {
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
        });
        if owns {
            let addr = f[1].split('@').next()?;
            return Some(addr.to_owned());
        }
    }
    None
}

/// Appends the `cas` script's arguments: has-prev, prev, has-next, next.
fn cas_args(inv: &mut redis::ScriptInvocation<'_>, p: Option<&[u8]>, n: Option<&[u8]>) {
    inv.arg(if p.is_some() { "1" } else { "0" })
        .arg(p.unwrap_or_default())
        .arg(if n.is_some() { "1" } else { "0" })
        .arg(n.unwrap_or_default());
}

fn lock_reply(token: Option<u64>) -> Result<Reply> {
    #[derive(serde::Serialize)]
    struct LockReply {
        acquired: bool,
        token: Option<u64>,
    }
    value(&LockReply {
        acquired: token.is_some(),
        token,
    })
}

fn neg(n: Num) -> Num {
    match n {
        Num::Int(i) => Num::Int(i.wrapping_neg()),
        Num::UInt(u) => Num::Float(-(u as f64)),
        Num::Float(f) => Num::Float(-f),
    }
}

/// A number as a Lua `tonumber` argument.
fn num_arg(n: Num) -> String {
    match n {
        Num::Int(i) => i.to_string(),
        Num::UInt(u) => u.to_string(),
        Num::Float(f) => format!("{f:e}"),
    }
}

/// MessagePack bytes as a `Raw`.
fn mp(b: &[u8]) -> Raw<'_> {
    Raw::new(Codec::MsgPack, b)
}

/// A reply without a value (`set`'s `ok`).
fn none() -> Reply {
    Reply::new(Codec::MsgPack, None)
}

/// A reply whose value is `v`.
fn value<T: serde::Serialize + ?Sized>(v: &T) -> Result<Reply> {
    let b = crate::value::encode(Codec::MsgPack, v)?;
    Ok(Reply::new(Codec::MsgPack, Some(mp(&b))))
}

/// A value as stored in Redis: its MessagePack bytes (a JSON value is transcoded).
fn to_store(v: Raw<'_>) -> Result<Vec<u8>> {
    if v.codec == Codec::MsgPack {
        return Ok(v.bytes.to_vec());
    }
    let mut out = Vec::with_capacity(v.bytes.len());
    procmesh_proto::transcode::transcode(v, Codec::MsgPack, &mut out)
        .map_err(|e| ClientError::Encode(e.message().to_owned()))?;
    Ok(out)
}

/// Stored MessagePack bytes in the client's codec.
fn from_store(codec: Codec, b: Vec<u8>) -> Result<Vec<u8>> {
    if codec == Codec::MsgPack {
        return Ok(b);
    }
    let mut out = Vec::with_capacity(b.len());
    procmesh_proto::transcode::transcode(mp(&b), codec, &mut out)
        .map_err(|e| ClientError::Decode(e.message().to_owned()))?;
    Ok(out)
}

/// `s` with the glob characters of Redis patterns (`* ? [ ] \`) escaped.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A client id unique across processes and machines (time, pid, a counter and
/// the std hasher's random keys).
fn unique_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}{:x}", h.finish(), std::process::id())
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\d"), "a\\*b\\?\\[c\\]\\\\d");
        assert_eq!(glob_escape("{m}:c:orders."), "{m}:c:orders.");
    }

    #[test]
    fn the_slot_owner_is_found_in_cluster_nodes() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 12000\n\
                     c3 127.0.0.1:7002@17002 slave b2 0 0 2 connected\n";
        assert_eq!(slot_owner(nodes, 0).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(slot_owner(nodes, 6000).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(slot_owner(nodes, 12000).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(slot_owner(nodes, 11000), None);
    }

    #[test]
    fn ids_differ() {
        assert_ne!(unique_id(), unique_id());
    }

    #[test]
    fn decr_negates_every_kind_of_number() {
        assert_eq!(neg(Num::Int(3)), Num::Int(-3));
        assert_eq!(num_arg(neg(Num::Float(0.5))), "-5e-1");
        assert_eq!(num_arg(Num::Int(7)), "7");
    }
}
