//! `procmesh::aio`: the async client for tokio (cargo feature `tokio`).
//!
//! [`Client`] has the operations of the blocking [`crate::Client`] as `async
//! fn`s, on the very same connections: it wraps a blocking client (the shards
//! of `Conn`, their reader threads, routing, replay and the dispatch thread)
//! and only replaces the waiting. A request is encoded and written by the
//! calling task under the connection's `io` lock (one small write into the
//! socket buffer), entered in `pending` with a slot, and the task awaits the
//! slot, which the reader thread fills and wakes; so any number of tasks share
//! one connection per shard, with their requests in flight at once. While a
//! shard is reconnecting a task waits for the link asynchronously (no thread is
//! parked); the call timeout runs on tokio's timer.
//!
//! # Cancel safety
//! Every future may be dropped at any await point:
//! - a request's reply, if it still comes, is discarded by id; the connection
//!   is never left half-written (a frame is written whole, before the first
//!   await that could be cancelled after it);
//! - a dropped `lock` future that the broker grants later releases the lock
//!   at once (the grant goes to an abandon handler that sends `unlock`);
//! - a dropped `subscribe` or `register` future undoes what it already did
//!   (the local handler is removed, `unsub`/`unreg` is sent after the `sub`/`reg`);
//! - with a near cache, a dropped read abandons its pending mark (nothing is
//!   filled from it) and a dropped write drops the key's cached copy, as an
//!   answered one does;
//! - a dropped `publish_with` gives up its sequence number (the next
//!   idempotent publish on the channel takes the one after);
//! - a `with_lock` dropped while its closure runs releases the lock at once.
//!
//! # Same semantics as the blocking client
//! The near cache ([`ClientBuilder::near_cache`]) is the client's own, shared
//! with the blocking face: `get`, `mget` and `has` are answered from it when
//! the key is cached and fill it from the broker's answer otherwise; every
//! write (`set`, `del`, `incr`, `cas`, `mset`, the fenced writes) drops the
//! key's copy before it is sent and again once answered. `publish_with` runs
//! the blocking client's publish plan (`Acks`, idempotent sequences, resending
//! after a disconnect up to `publish_retries`, `Published::Duplicate`), only
//! awaiting where that one blocks; `publish` and `publish_nowait` are
//! idempotent when the client is. `with_lock` takes a closure returning a
//! boxed future that borrows the guard ([`LockFuture`]).
//!
//! # Blocking
//! The write of a request happens on the task's thread. It is a copy into the
//! kernel's socket buffer; only when that buffer is full (the broker does not
//! read) does it block, for at most the write timeout (the call timeout), after
//! which the link is dropped and reconnected. Connecting (and auto-spawning a
//! broker) runs on tokio's blocking pool. RPC handlers run on the client's
//! handler threads, as for the blocking client, never on the runtime.
//!
//! Futures use `tokio::time`, so they must run inside a tokio runtime with the
//! time driver on (as `#[tokio::main]` sets up).
//!
//! # Layout
//! - this file: [`Client`], its constructors, the request futures, the cache
//!   (through the near cache), atomics, control and pipelines;
//! - `lock`: [`LockGuard`], `lock`, `with_lock` and the fenced writes;
//! - `pubsub`: [`Subscription`] (a `Stream` of messages), [`Events`],
//!   `publish`, `publish_with`;
//! - `rpc`: [`Registration`], `register` and `call`.
//!
//! ```no_run
//! # async fn run() -> procmesh::Result<()> {
//! use futures_util::StreamExt;
//!
//! let client = procmesh::aio::Client::connect().await?;
//! client.set("greeting", &"hello").await?;
//! let g: Option<String> = client.get("greeting").await?;
//! assert_eq!(g.as_deref(), Some("hello"));
//!
//! let mut sub = client.subscribe("news.*").await?;
//! client.publish("news.rust", &"procmesh").await?;
//! let msg = sub.next().await.expect("a message");
//! assert_eq!(msg.payload::<String>()?, "procmesh");
//! # Ok(())
//! # }
//! ```

mod lock;
mod pubsub;
mod rpc;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use procmesh_proto::request::{EntryList, KeyList};
use procmesh_proto::{hash, Num, Request};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::ClientBuilder;
use crate::client::{decode_cached, ms};
use crate::conn::{Conn, Reply};
use crate::error::{ClientError, Result};
use crate::event::ShardId;
use crate::near::{Lookup, NearCache, NearCacheStats};
use crate::pending::{OnAbandon, Slot};
use crate::pipeline::{FromPipeline, Pipeline, PipelineResult};
use crate::stats::Stats;
use crate::Codec;

pub use lock::{LockFuture, LockGuard};
pub use pubsub::{Events, Subscription};
pub use rpc::Registration;

/// An async connection to a procmesh mesh, for tokio.
///
/// Cheap to clone (`Clone + Send + Sync`); clones share the connections. Every
/// method is cancel-safe (see the [module docs](self)). Built from the same
/// [`ClientBuilder`] as the blocking client, with
/// [`ClientBuilder::connect_async`], or with [`Client::connect`].
#[derive(Clone, Debug)]
pub struct Client {
    inner: crate::Client,
}

impl From<crate::Client> for Client {
    /// The async face of a blocking client: both use the same connections.
    fn from(inner: crate::Client) -> Self {
        Client { inner }
    }
}

impl ClientBuilder {
    /// Connects like [`ClientBuilder::connect`] (on tokio's blocking pool, as
    /// connecting and auto-spawn wait) and returns the async client.
    pub async fn connect_async(self) -> Result<Client> {
        tokio::task::spawn_blocking(move || self.connect())
            .await
            .map_err(|e| ClientError::Config(format!("the connect task failed: {e}")))?
            .map(Client::from)
    }
}

/// One request in flight from a task: ready when the reader fills its slot.
/// Dropped before that, it forgets the request (the reply is discarded by id),
/// or hands a late reply to its abandon handler.
struct InFlight<'c> {
    conn: &'c Conn,
    id: u64,
    slot: Arc<Slot>,
    done: bool,
    on_abandon: Option<OnAbandon>,
}

impl Future for InFlight<'_> {
    type Output = Result<Reply>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Reply>> {
        let r = self.slot.poll(cx);
        if r.is_ready() {
            self.done = true;
        }
        r
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match self.on_abandon.take() {
            // The reply must still reach the slot, to run the handler.
            Some(h) => self.slot.abandon(Some(h)),
            None => {
                self.conn.forget(self.id);
                self.slot.abandon(None);
            }
        }
    }
}

/// Writes `reqs` to `conn` in one write, waiting (asynchronously) for the link
/// while it reconnects; the futures of their replies, in order.
async fn send<'c>(conn: &'c Conn, reqs: &[Request<'_>]) -> Result<Vec<InFlight<'c>>> {
    let slots: Vec<Arc<Slot>> = reqs.iter().map(|_| Arc::default()).collect();
    loop {
        if let Some(ids) = conn.try_start_batch(reqs, &slots)? {
            return Ok(ids
                .into_iter()
                .zip(slots)
                .map(|(id, slot)| InFlight {
                    conn,
                    id,
                    slot,
                    done: false,
                    on_abandon: None,
                })
                .collect());
        }
        poll_fn(|cx| conn.poll_link(cx)).await;
    }
}

/// Writes `req` to `conn`, waiting (asynchronously) for the link while it
/// reconnects; the future of its reply. (One request: no batch bookkeeping.)
async fn send_one<'c>(conn: &'c Conn, req: &Request<'_>) -> Result<InFlight<'c>> {
    let slot = Arc::new(Slot::default());
    loop {
        if let Some(id) = conn.try_start(req, &slot)? {
            return Ok(InFlight {
                conn,
                id,
                slot,
                done: false,
                on_abandon: None,
            });
        }
        poll_fn(|cx| conn.poll_link(cx)).await;
    }
}

/// `f` bounded by `timeout`; `ETIMEOUT` for `op` when it passes.
async fn within<T>(
    op: &'static str,
    timeout: Duration,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { op, after: timeout }),
    }
}

/// Sends `req` on `conn` and awaits its reply, up to `timeout` in all
/// (waiting for a reconnect included).
async fn request(conn: &Conn, req: &Request<'_>, timeout: Duration) -> Result<Reply> {
    within(req.kind().tag(), timeout, async {
        send_one(conn, req).await?.await
    })
    .await
}

/// A near-cache pending mark of a read in flight: filled with the broker's
/// answer, or abandoned when dropped first (the read failed or was cancelled).
struct Mark<'a> {
    near: &'a NearCache,
    key: &'a str,
    token: Option<u64>,
}

impl<'a> Mark<'a> {
    /// Looks `key` up in `near`: `Err` with the cached answer on a hit, the
    /// pending mark on a miss, `Ok(None)` when the near cache is off.
    fn lookup(
        near: Option<&'a NearCache>,
        key: &'a str,
    ) -> std::result::Result<Option<Mark<'a>>, crate::near::Cached> {
        let Some(near) = near else {
            return Ok(None);
        };
        match near.lookup(key) {
            Lookup::Hit(c) => Err(c),
            Lookup::Miss(t) => Ok(Some(Mark {
                near,
                key,
                token: Some(t),
            })),
            Lookup::Off => Ok(None),
        }
    }

    fn fill(mut self, value: Option<procmesh_proto::Raw<'_>>) {
        if let Some(t) = self.token.take() {
            self.near.fill(self.key, t, value);
        }
    }
}

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            self.near.abandon(self.key, t);
        }
    }
}

/// Drops the near-cache copies of the keys a write touches when dropped: once
/// the write is answered, failed or was cancelled (a read that crossed it is
/// not kept; the first invalidation is made before the write is sent).
struct Invalidate<'a, K: AsRef<str>> {
    near: Option<&'a NearCache>,
    keys: &'a [K],
}

impl<'a, K: AsRef<str>> Invalidate<'a, K> {
    fn before(near: Option<&'a NearCache>, keys: &'a [K]) -> Self {
        let g = Invalidate { near, keys };
        g.now();
        g
    }

    fn now(&self) {
        if let Some(near) = self.near {
            self.keys.iter().for_each(|k| near.invalidate(k.as_ref()));
        }
    }
}

impl<K: AsRef<str>> Drop for Invalidate<'_, K> {
    fn drop(&mut self) {
        self.now();
    }
}

impl Client {
    /// Connects to the mesh `"default"` with default options, starting a broker
    /// if none is running.
    pub async fn connect() -> Result<Client> {
        ClientBuilder::default().connect_async().await
    }

    /// Connects to the default mesh sharded over `n` brokers.
    pub async fn sharded(n: usize) -> Result<Client> {
        ClientBuilder::default().shards(n).connect_async().await
    }

    /// A builder for every option; finish with [`ClientBuilder::connect_async`].
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The blocking client on the same connections (for code that runs on a
    /// thread of its own, or in `spawn_blocking`).
    pub fn blocking(&self) -> &crate::Client {
        &self.inner
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.inner.shard_count()
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &str) -> ShardId {
        self.inner.shard_of(key)
    }

    /// The socket address of each shard.
    pub fn addresses(&self) -> Vec<std::path::PathBuf> {
        self.inner.addresses()
    }

    /// The wire codec of values.
    pub fn codec(&self) -> Codec {
        self.inner.codec()
    }

    /// A receiver of every later connection event, as a bounded `Stream`.
    pub fn events(&self) -> Events {
        Events::new(&self.inner)
    }

    fn timeout(&self) -> Duration {
        self.inner.timeout()
    }

    fn route(&self, key: &str) -> &Conn {
        self.inner.route(key)
    }

    /// Runs the write `f` of `key` the way [`crate::Client`] does: its
    /// near-cache copy is dropped before the write is sent and again once it
    /// is answered (or the future is dropped).
    pub(crate) async fn writing<R>(
        &self,
        key: &str,
        f: impl Future<Output = Result<R>>,
    ) -> Result<R> {
        let keys = [key];
        let _after = Invalidate::before(self.inner.near(), &keys);
        f.await
    }

    /// Near-cache counters; `None` without a near cache (see
    /// [`crate::Client::near_cache_stats`]).
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.inner.near_cache_stats()
    }

    /// Sends `req` to the shard of `key` and awaits the reply.
    async fn keyed(&self, key: &str, req: &Request<'_>) -> Result<Reply> {
        request(self.route(key), req, self.timeout()).await
    }

    /// Sends `req` to every shard at once; the replies in shard order.
    async fn fan_out(&self, req: &Request<'_>) -> Result<Vec<Reply>> {
        within(req.kind().tag(), self.timeout(), async {
            let mut all = Vec::with_capacity(self.shard_count());
            for s in 0..self.shard_count() {
                all.push(send_one(self.inner.conn(s), req).await?);
            }
            let mut out = Vec::with_capacity(all.len());
            for f in all {
                out.push(f.await?);
            }
            Ok(out)
        })
        .await
    }

    // ------------------------------------------------------------ cache

    /// The value of `key`, or `None` when it is missing or expired. With a near
    /// cache, answered locally when the key is cached.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let mark = match Mark::lookup(self.inner.near(), key) {
            Err(hit) => return decode_cached(hit),
            Ok(m) => m,
        };
        // On an error or a cancel, `mark` is dropped here and abandons.
        let r = self.keyed(key, &Request::Get { key: key.into() }).await?;
        if let Some(m) = mark {
            m.fill(r.raw_value());
        }
        r.opt()
    }

    /// Stores `value` under `key`.
    pub async fn set<V: Serialize + ?Sized>(&self, key: &str, value: &V) -> Result<()> {
        self.set_inner(key, value, None).await
    }

    /// Stores `value` under `key`, expiring after `ttl`.
    pub async fn set_with_ttl<V: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &V,
        ttl: Duration,
    ) -> Result<()> {
        self.set_inner(key, value, Some(ttl)).await
    }

    async fn set_inner<V: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let v = self.inner.enc(value)?;
        let req = Request::Set {
            key: key.into(),
            value: self.inner.raw(&v),
            ttl_ms: ttl.map(ms),
        };
        self.writing(key, self.keyed(key, &req)).await?;
        Ok(())
    }

    /// Deletes `key`; true if it existed.
    pub async fn del(&self, key: &str) -> Result<bool> {
        let req = Request::Del { key: key.into() };
        self.writing(key, self.keyed(key, &req)).await?.value()
    }

    /// Whether `key` holds a live value (with a near cache, answered locally
    /// when the key's value is cached).
    pub async fn has(&self, key: &str) -> Result<bool> {
        match Mark::lookup(self.inner.near(), key) {
            Err(hit) => return Ok(hit.is_some()),
            // `has` carries no value to fill with: the mark is dropped (abandoned).
            Ok(m) => drop(m),
        }
        self.keyed(key, &Request::Has { key: key.into() })
            .await?
            .value()
    }

    /// Every live key (of every shard).
    pub async fn keys(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for r in self.fan_out(&Request::Keys).await? {
            out.extend(r.value::<Vec<String>>()?);
        }
        Ok(out)
    }

    /// Deletes every key (on every shard).
    pub async fn clear(&self) -> Result<()> {
        let near = self.inner.near();
        near.inspect(|n| n.clear());
        let r = self.fan_out(&Request::Clear).await;
        near.inspect(|n| n.clear());
        r?;
        Ok(())
    }

    /// The values of `keys`, in order (`None` for a missing key); one request
    /// per shard involved. With a near cache, cached keys are answered locally
    /// and only the others are asked.
    pub async fn mget<T: DeserializeOwned, K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<T>>> {
        let n = self.shard_count();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut out: Vec<Option<T>> = (0..keys.len()).map(|_| None).collect();
        // Pending marks of the keys asked: filled from the replies; on an error
        // or a cancel the rest are dropped, which abandons them.
        let mut marks: Vec<Option<Mark<'_>>> = (0..keys.len()).map(|_| None).collect();
        for (i, k) in keys.iter().enumerate() {
            match Mark::lookup(self.inner.near(), k.as_ref()) {
                Err(hit) => {
                    out[i] = decode_cached(hit)?;
                    continue;
                }
                Ok(m) => marks[i] = m,
            }
            groups[hash::shard_index(k.as_ref(), n)].push(i);
        }
        within("mget", self.timeout(), async {
            let mut flights = Vec::new();
            for (s, idx) in groups.iter().enumerate().filter(|(_, g)| !g.is_empty()) {
                let names: Vec<&str> = idx.iter().map(|&i| keys[i].as_ref()).collect();
                let req = Request::Mget {
                    keys: KeyList::from_strs(&names),
                };
                flights.push((idx, send_one(self.inner.conn(s), &req).await?));
            }
            for (idx, f) in flights {
                let reply = f.await?;
                let raw = reply
                    .raw_value()
                    .ok_or_else(|| ClientError::Decode("mget reply has no value".into()))?;
                let (values, found) = crate::client::mget_parts(raw)?;
                if values.len() != idx.len() || found.len() != idx.len() {
                    return Err(ClientError::Decode(
                        "mget reply does not match the keys asked".into(),
                    ));
                }
                for ((&i, v), f) in idx.iter().zip(values).zip(found) {
                    if let Some(m) = marks[i].take() {
                        m.fill(f.then_some(v));
                    }
                    if f {
                        out[i] = Some(crate::value::decode(v)?);
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Stores every `(key, value)` pair (one request per shard involved).
    pub async fn mset<K: AsRef<str>, V: Serialize>(&self, entries: &[(K, V)]) -> Result<()> {
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        let _after = Invalidate::before(self.inner.near(), &keys);
        let n = self.shard_count();
        let mut groups: Vec<Vec<(usize, Vec<u8>)>> = vec![Vec::new(); n];
        for (i, (k, v)) in entries.iter().enumerate() {
            groups[hash::shard_index(k.as_ref(), n)].push((i, self.inner.enc(v)?));
        }
        within("mset", self.timeout(), async {
            let mut flights = Vec::new();
            for (s, g) in groups.iter().enumerate().filter(|(_, g)| !g.is_empty()) {
                let pairs: Vec<(&str, procmesh_proto::Raw<'_>)> = g
                    .iter()
                    .map(|(i, v)| (entries[*i].0.as_ref(), self.inner.raw(v)))
                    .collect();
                let req = Request::Mset {
                    entries: EntryList::from_pairs(&pairs),
                };
                flights.push(send_one(self.inner.conn(s), &req).await?);
            }
            for f in flights {
                f.await?;
            }
            Ok(())
        })
        .await
    }

    // ------------------------------------------------------------ atomics

    /// Adds `by` to the number at `key` (a missing key counts from 0); the new value.
    pub async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        self.add(key, Num::Int(by), false).await
    }

    /// Subtracts `by` from the number at `key`.
    pub async fn decr(&self, key: &str, by: i64) -> Result<i64> {
        self.add(key, Num::Int(by), true).await
    }

    /// Adds a fractional `by` to the number at `key`.
    pub async fn incr_float(&self, key: &str, by: f64) -> Result<f64> {
        self.add(key, Num::Float(by), false).await
    }

    async fn add<N: DeserializeOwned>(&self, key: &str, by: Num, decr: bool) -> Result<N> {
        let k = key.into();
        let req = if decr {
            Request::Decr { key: k, by }
        } else {
            Request::Incr { key: k, by }
        };
        self.writing(key, self.keyed(key, &req)).await?.value()
    }

    /// Compare-and-swap (see [`crate::Client::cas`]).
    pub async fn cas<V: Serialize>(
        &self,
        key: &str,
        prev: Option<&V>,
        next: Option<&V>,
    ) -> Result<bool> {
        let p = prev.map(|v| self.inner.enc(v)).transpose()?;
        let n = next.map(|v| self.inner.enc(v)).transpose()?;
        let req = Request::Cas {
            key: key.into(),
            prev: p.as_deref().map(|b| self.inner.raw(b)),
            next: n.as_deref().map(|b| self.inner.raw(b)),
        };
        self.writing(key, self.keyed(key, &req)).await?.value()
    }

    // ------------------------------------------------------------ control

    /// Broker statistics; for a sharded client the sum over shards.
    pub async fn stats(&self) -> Result<Stats> {
        let mut per = Vec::new();
        for r in self.fan_out(&Request::Stats).await? {
            let mut s: Stats = r.value()?;
            s.raw = r.value()?;
            per.push(s);
        }
        if per.len() == 1 {
            return Ok(per.remove(0));
        }
        Ok(Stats::sum(per))
    }

    /// Round-trip time to the slowest shard.
    pub async fn ping(&self) -> Result<Duration> {
        let t0 = Instant::now();
        self.fan_out(&Request::Ping).await?;
        Ok(t0.elapsed())
    }

    /// Asks every shard's broker to exit, then closes this client.
    pub async fn shutdown_broker(&self) -> Result<()> {
        let r = self.fan_out(&Request::Shutdown).await;
        self.close();
        match r {
            Err(ClientError::Disconnected { .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Closes every connection now, in every clone (and in the blocking client
    /// this one came from).
    pub fn close(&self) {
        self.inner.close();
    }

    // ------------------------------------------------------------ pipelines

    /// A new, empty [`Pipeline`]; run it with `.run().await` or `.query().await`.
    pub fn pipeline(&self) -> Pipeline<Client> {
        Pipeline::new(self.clone(), self.codec())
    }
}

impl Pipeline<Client> {
    /// Sends the commands (one write per shard) and awaits every result, in
    /// order; see [`Pipeline::run`](crate::Pipeline::run) of the blocking client.
    pub async fn run(&self) -> Result<Vec<PipelineResult>> {
        let c = &self.client.inner;
        // Read-your-writes: the written keys' near-cache copies go before the send and
        // again when answered, or when this future is dropped.
        let written = self.written_keys();
        let _after = Invalidate::before(c.near(), &written);
        let groups = self.groups(c.shard_count());
        let mut got: Vec<Option<Result<Reply>>> = (0..self.len()).map(|_| None).collect();
        let mut flights = Vec::new();
        for (s, idx) in &groups {
            let reqs = self.requests(idx);
            let f = within("pipeline", c.timeout(), send(c.conn(*s), &reqs)).await?;
            flights.push((idx, f));
        }
        let deadline = tokio::time::Instant::now() + c.timeout();
        for (idx, fs) in flights {
            for (&i, f) in idx.iter().zip(fs) {
                got[i] = Some(match tokio::time::timeout_at(deadline, f).await {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::Timeout {
                        op: "pipeline",
                        after: c.timeout(),
                    }),
                });
            }
        }
        Ok(self.results(got))
    }

    /// Runs the pipeline and converts the results into `T`; see
    /// [`Pipeline::query`](crate::Pipeline::query).
    pub async fn query<T: FromPipeline>(&self) -> Result<T> {
        let r = self.run().await?;
        self.typed(r)
    }
}
