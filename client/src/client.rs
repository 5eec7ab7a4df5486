//! [`Client`]: the public API, routing every operation to its shard.
//!
//! Owns the shard list and the routing rules of a sharded mesh: cache
//! operations and atomics by key, locks and fenced writes by lock key, RPC by
//! procedure name, publish and exact subscriptions by channel (FNV-1a over
//! UTF-16 code units, as the Node.js package); wildcard subscriptions go to
//! every shard, and `keys`/`clear`/`stats`/`shutdown_broker` fan out. Each
//! method builds a typed [`Request`] (proto encodes it) and decodes the reply's
//! value; sockets and threads belong to `conn`.
//!
//! One command family per file, beside the family's own types: this file has
//! the shards, routing, the cache, atomics and control (`stats`, `ping`,
//! `shutdown_broker`); locks and fenced writes are in `lock`, pub/sub in
//! `pubsub`, RPC in `rpc`; `Client::connect` and the other constructors are
//! in `builder`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use procmesh_proto::request::{EntryList, KeyList};
use procmesh_proto::{hash, Codec, Num, Raw, Request};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::conn::{Conn, Settings, Shared, Ticket};
use crate::dispatch::{Dispatcher, EventCallback};
use crate::error::{ClientError, Result};
use crate::event::{Event, ShardId};
use crate::near::{Cached, Lookup, NearCache, NearCacheStats};
use crate::stats::Stats;
use crate::value::encode;

/// A duration on the wire: whole milliseconds, rounded up so that a short
/// non-zero ttl never becomes 0 ("no expiry").
pub(crate) fn ms(d: Duration) -> u64 {
    let m = d.as_millis().min(u64::MAX as u128) as u64;
    if m == 0 && !d.is_zero() {
        1
    } else if Duration::from_millis(m) < d {
        m + 1
    } else {
        m
    }
}

/// A connection to a procmesh mesh: one broker, or several shards behind one API.
///
/// Cheap to clone; clones share the connections, and any number of threads may
/// use one client at once, each with requests in flight (replies are matched by
/// id). Everything is closed when the last clone, [`Subscription`],
/// [`Registration`] and [`LockGuard`] is dropped, or at [`Client::close`].
///
/// [`Subscription`]: crate::Subscription
/// [`Registration`]: crate::Registration
/// [`LockGuard`]: crate::LockGuard
///
/// ```no_run
/// use procmesh::Client;
///
/// let client = Client::connect()?;
/// client.set("greeting", &"hello")?;
/// let g: Option<String> = client.get("greeting")?;
/// assert_eq!(g.as_deref(), Some("hello"));
/// # Ok::<(), procmesh::ClientError>(())
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Vec<Arc<Conn>>,
    shared: Arc<Shared>,
    next_sub: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for c in &self.conns {
            c.close("the client was closed");
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "shards",
                &self
                    .inner
                    .conns
                    .iter()
                    .map(|c| c.path.clone())
                    .collect::<Vec<_>>(),
            )
            .field("codec", &self.codec())
            .finish()
    }
}

impl Client {
    pub(crate) fn open(
        settings: Settings,
        callbacks: Vec<EventCallback>,
        targets: Vec<(std::path::PathBuf, String)>,
    ) -> Result<Client> {
        let dispatch = Dispatcher::start(callbacks)
            .map_err(|e| ClientError::Config(format!("cannot start a thread: {e}")))?;
        let shared = Arc::new(Shared::new(settings, dispatch));
        let mut conns: Vec<Arc<Conn>> = Vec::with_capacity(targets.len());
        for (i, (path, name)) in targets.into_iter().enumerate() {
            match Conn::open(ShardId(i), path, name, shared.clone()) {
                Ok(c) => conns.push(c),
                Err(e) => {
                    for c in &conns {
                        c.close("another shard failed to connect");
                    }
                    return Err(e);
                }
            }
        }
        Ok(Client {
            inner: Arc::new(Inner {
                conns,
                shared,
                next_sub: AtomicU64::new(1),
            }),
        })
    }

    /// A client whose one connection is the Redis backend.
    #[cfg(feature = "redis")]
    pub(crate) fn open_redis(
        settings: Settings,
        callbacks: Vec<EventCallback>,
        target: crate::redis::RedisTarget,
        name: String,
    ) -> Result<Client> {
        let dispatch = Dispatcher::start(callbacks)
            .map_err(|e| ClientError::Config(format!("cannot start a thread: {e}")))?;
        let shared = Arc::new(Shared::new(settings, dispatch));
        // No invalidations reach this backend's connections (Redis's own CLIENT
        // TRACKING is not wired in): a near cache would serve stale values, so it
        // stays off and says so in `near_cache_stats`.
        if let Some(near) = &shared.near {
            near.disable();
        }
        let conn = Conn::open_redis(target, name, shared.clone())?;
        Ok(Client {
            inner: Arc::new(Inner {
                conns: vec![conn],
                shared,
                next_sub: AtomicU64::new(1),
            }),
        })
    }

    // ------------------------------------------------------------ routing

    /// The number of shards (1 for a plain client).
    pub fn shard_count(&self) -> usize {
        self.inner.conns.len()
    }

    /// The shard that owns `key` (also a lock key, a procedure name, or an exact
    /// channel): `fnv1a(key) % shard_count`.
    pub fn shard_of(&self, key: &str) -> ShardId {
        ShardId(hash::shard_index(key, self.inner.conns.len()))
    }

    /// The socket address of each shard, in shard order.
    pub fn addresses(&self) -> Vec<std::path::PathBuf> {
        self.inner.conns.iter().map(|c| c.path.clone()).collect()
    }

    /// The wire codec.
    pub fn codec(&self) -> Codec {
        self.inner.shared.settings.codec
    }

    /// The connection of the shard that owns `key`.
    pub(crate) fn route(&self, key: &str) -> &Conn {
        &self.inner.conns[hash::shard_index(key, self.inner.conns.len())]
    }

    /// The call timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.inner.shared.settings.call_timeout
    }

    /// `v` encoded in this client's codec.
    pub(crate) fn enc<V: Serialize + ?Sized>(&self, v: &V) -> Result<Vec<u8>> {
        encode(self.codec(), v)
    }

    /// Encoded bytes (from [`Client::enc`]) as a value of this client's codec.
    pub(crate) fn raw<'b>(&self, bytes: &'b [u8]) -> Raw<'b> {
        Raw::new(self.codec(), bytes)
    }

    /// The connection of shard `s`.
    pub(crate) fn conn(&self, s: usize) -> &Conn {
        &self.inner.conns[s]
    }

    /// The connection of shard `s`, to keep past a borrow (a handler run later).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn conn_arc(&self, s: usize) -> Arc<Conn> {
        self.inner.conns[s].clone()
    }

    /// What the connections share (settings, dispatch thread, handler pool).
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// A new id for a local subscription handler.
    pub(crate) fn next_sub_id(&self) -> u64 {
        self.inner.next_sub.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `req` to every shard at once, then collects the replies in shard order.
    fn fan_out<T>(
        &self,
        req: &Request<'_>,
        read: impl Fn(crate::conn::Reply) -> Result<T>,
    ) -> Result<Vec<T>> {
        let tickets: Vec<Ticket<'_>> = self
            .inner
            .conns
            .iter()
            .map(|c| c.start(req, self.timeout()))
            .collect::<Result<_>>()?;
        tickets
            .into_iter()
            .map(|tk| tk.wait().and_then(&read))
            .collect()
    }

    // ------------------------------------------------------------ events

    /// A receiver of every later connection event of every shard.
    pub fn events(&self) -> Receiver<Event> {
        self.inner.shared.dispatch.listen()
    }

    // ------------------------------------------------------------ cache

    /// The value of `key`, or `None` when it is missing or expired. With a near
    /// cache, answered locally when the key is cached.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let req = Request::Get { key: key.into() };
        let Some(near) = self.near() else {
            return self.route(key).request(&req, self.timeout())?.opt();
        };
        let token = match near.lookup(key) {
            Lookup::Hit(c) => return decode_cached(c),
            Lookup::Off => return self.route(key).request(&req, self.timeout())?.opt(),
            Lookup::Miss(t) => t,
        };
        match self.route(key).request(&req, self.timeout()) {
            Ok(r) => {
                near.fill(key, token, r.raw_value());
                r.opt()
            }
            Err(e) => {
                near.abandon(key, token);
                Err(e)
            }
        }
    }

    /// The near cache, when configured.
    pub(crate) fn near(&self) -> Option<&NearCache> {
        self.inner.shared.near.as_deref()
    }

    /// Runs a write of `key`, dropping its near-cache copy before it is sent and
    /// again once answered (read-your-writes; a read that crossed it is not kept).
    pub(crate) fn writing<R>(&self, key: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let Some(near) = self.near() else {
            return f();
        };
        near.invalidate(key);
        let r = f();
        near.invalidate(key);
        r
    }

    /// Near-cache counters (hits, misses, invalidations, size); `None` without a
    /// near cache ([`crate::ClientBuilder::near_cache`]).
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.near().map(NearCache::stats)
    }

    /// Stores `value` under `key` with no expiry of its own (the broker's
    /// default ttl, if configured, applies).
    pub fn set<V: Serialize + ?Sized>(&self, key: &str, value: &V) -> Result<()> {
        self.set_inner(key, value, None)
    }

    /// Stores `value` under `key`, expiring after `ttl`.
    pub fn set_with_ttl<V: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &V,
        ttl: Duration,
    ) -> Result<()> {
        self.set_inner(key, value, Some(ttl))
    }

    fn set_inner<V: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let v = self.enc(value)?;
        let req = Request::Set {
            key: key.into(),
            value: self.raw(&v),
            ttl_ms: ttl.map(ms),
        };
        self.writing(key, || self.route(key).request(&req, self.timeout()))?;
        Ok(())
    }

    /// Deletes `key`; true if it existed.
    pub fn del(&self, key: &str) -> Result<bool> {
        self.writing(key, || self.key_op(&Request::Del { key: key.into() }, key))?
            .value()
    }

    /// Whether `key` holds a live value (with a near cache, answered locally when
    /// the key's value is cached).
    pub fn has(&self, key: &str) -> Result<bool> {
        if let Some(near) = self.near() {
            match near.lookup(key) {
                Lookup::Hit(c) => return Ok(c.is_some()),
                // `has` carries no value to fill with; the broker still tracks the key.
                Lookup::Miss(t) => near.abandon(key, t),
                Lookup::Off => {}
            }
        }
        self.key_op(&Request::Has { key: key.into() }, key)?.value()
    }

    fn key_op(&self, req: &Request<'_>, key: &str) -> Result<crate::conn::Reply> {
        self.route(key).request(req, self.timeout())
    }

    /// Every live key (of every shard).
    pub fn keys(&self) -> Result<Vec<String>> {
        let per_shard = self.fan_out(&Request::Keys, |r| r.value::<Vec<String>>())?;
        Ok(per_shard.into_iter().flatten().collect())
    }

    /// Every live key starting with `prefix` (`""`: every key), of every shard in
    /// turn, fetched a page at a time with `scan` (ours; a Node.js broker answers
    /// it `EUNKNOWN`, use [`keys`](Client::keys) there). Unlike `keys`, no reply
    /// holds more than one page, so a store of millions of keys is listed without
    /// one giant frame.
    ///
    /// Every key present for the whole iteration is yielded; a key written or
    /// deleted meanwhile may or may not be, and may come twice. An error ends the
    /// iteration after it is yielded.
    ///
    /// ```no_run
    /// # fn main() -> procmesh::Result<()> {
    /// let client = procmesh::Client::connect()?;
    /// for key in client.scan("session:") {
    ///     println!("{}", key?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn scan(&self, prefix: &str) -> Scan<'_> {
        Scan {
            client: self,
            prefix: prefix.to_owned(),
            limit: None,
            shard: 0,
            cursor: None,
            page: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Every live key starting with `prefix`, of every shard: [`scan`](Client::scan)
    /// collected.
    pub fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        self.scan(prefix).collect()
    }

    /// Deletes every key (on every shard).
    pub fn clear(&self) -> Result<()> {
        if let Some(near) = self.near() {
            near.clear();
        }
        let r = self.fan_out(&Request::Clear, |_| Ok(()));
        if let Some(near) = self.near() {
            near.clear();
        }
        r?;
        Ok(())
    }

    /// The values of `keys`, in order (`None` for a missing key).
    pub fn mget<T: DeserializeOwned, K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<T>>> {
        let n = self.shard_count();
        let mut out: Vec<Option<T>> = (0..keys.len()).map(|_| None).collect();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); n];
        // With a near cache: cached keys are answered here, the others marked pending.
        let mut tokens: Vec<Option<u64>> = vec![None; keys.len()];
        for (i, k) in keys.iter().enumerate() {
            if let Some(near) = self.near() {
                match near.lookup(k.as_ref()) {
                    Lookup::Hit(c) => {
                        out[i] = decode_cached(c)?;
                        continue;
                    }
                    Lookup::Miss(t) => tokens[i] = Some(t),
                    Lookup::Off => {}
                }
            }
            groups[hash::shard_index(k.as_ref(), n)].push(i);
        }
        let abandon = |idx: &[usize]| {
            if let Some(near) = self.near() {
                for &i in idx {
                    if let Some(t) = tokens[i] {
                        near.abandon(keys[i].as_ref(), t);
                    }
                }
            }
        };
        let mut tickets = Vec::new();
        for (s, idx) in groups.iter().enumerate().filter(|(_, g)| !g.is_empty()) {
            let names: Vec<&str> = idx.iter().map(|&i| keys[i].as_ref()).collect();
            let req = Request::Mget {
                keys: KeyList::from_strs(&names),
            };
            match self.inner.conns[s].start(&req, self.timeout()) {
                Ok(tk) => tickets.push((idx, tk)),
                Err(e) => {
                    groups.iter().for_each(|g| abandon(g));
                    return Err(e);
                }
            }
        }
        for (idx, tk) in tickets {
            let reply = match tk.wait() {
                Ok(r) => r,
                Err(e) => {
                    // Fills already stored stay; every other mark goes.
                    groups.iter().for_each(|g| abandon(g));
                    return Err(e);
                }
            };
            let raw = reply
                .raw_value()
                .ok_or_else(|| ClientError::Decode("mget reply has no value".into()))?;
            let (values, found) = mget_parts(raw)?;
            if values.len() != idx.len() || found.len() != idx.len() {
                return Err(ClientError::Decode(
                    "mget reply does not match the keys asked".into(),
                ));
            }
            for ((&i, v), f) in idx.iter().zip(values).zip(found) {
                if let (Some(near), Some(t)) = (self.near(), tokens[i]) {
                    near.fill(keys[i].as_ref(), t, f.then_some(v));
                }
                if f {
                    out[i] = Some(crate::value::decode(v)?);
                }
            }
        }
        Ok(out)
    }

    /// Stores every `(key, value)` pair (one request per shard involved).
    pub fn mset<K: AsRef<str>, V: Serialize>(&self, entries: &[(K, V)]) -> Result<()> {
        self.mset_near(entries)
    }

    fn mset_inner<K: AsRef<str>, V: Serialize>(&self, entries: &[(K, V)]) -> Result<()> {
        let n = self.shard_count();
        let mut groups: Vec<Vec<(usize, Vec<u8>)>> = vec![Vec::new(); n];
        for (i, (k, v)) in entries.iter().enumerate() {
            groups[hash::shard_index(k.as_ref(), n)].push((i, self.enc(v)?));
        }
        let mut tickets = Vec::new();
        for (s, g) in groups.iter().enumerate().filter(|(_, g)| !g.is_empty()) {
            let pairs: Vec<(&str, Raw<'_>)> = g
                .iter()
                .map(|(i, v)| (entries[*i].0.as_ref(), self.raw(v)))
                .collect();
            let req = Request::Mset {
                entries: EntryList::from_pairs(&pairs),
            };
            tickets.push(self.inner.conns[s].start(&req, self.timeout())?);
        }
        for tk in tickets {
            tk.wait()?;
        }
        Ok(())
    }

    /// `mset` dropping each key's near-cache copy before and after.
    fn mset_near<K: AsRef<str>, V: Serialize>(&self, entries: &[(K, V)]) -> Result<()> {
        let Some(near) = self.near() else {
            return self.mset_inner(entries);
        };
        entries
            .iter()
            .for_each(|(k, _)| near.invalidate(k.as_ref()));
        let r = self.mset_inner(entries);
        entries
            .iter()
            .for_each(|(k, _)| near.invalidate(k.as_ref()));
        r
    }

    // ------------------------------------------------------------ atomics

    /// Adds `by` to the number at `key` (a missing key counts from 0) and
    /// returns the new value. Fails with `ENOTNUMBER` when the value is not a
    /// number, and with a decode error when the result is not an integer (use
    /// [`Client::incr_float`] for fractional counters).
    pub fn incr(&self, key: &str, by: i64) -> Result<i64> {
        self.add(key, Num::Int(by), false)
    }

    /// Subtracts `by` from the number at `key`; see [`Client::incr`].
    pub fn decr(&self, key: &str, by: i64) -> Result<i64> {
        self.add(key, Num::Int(by), true)
    }

    /// Adds a fractional `by` to the number at `key`.
    pub fn incr_float(&self, key: &str, by: f64) -> Result<f64> {
        self.add(key, Num::Float(by), false)
    }

    /// `incr` (or `decr`) `key` by `by`.
    fn add<N: DeserializeOwned>(&self, key: &str, by: Num, decr: bool) -> Result<N> {
        let c = self.route(key);
        let k = key.into();
        let req = if decr {
            Request::Decr { key: k, by }
        } else {
            Request::Incr { key: k, by }
        };
        self.writing(key, || c.request(&req, self.timeout()))?
            .value()
    }

    /// Compare-and-swap: if the value at `key` equals `prev` (`None`: the key is
    /// missing), stores `next` (`None`: deletes the key) and returns true.
    /// Equality is structural (map order and `1` vs `1.0` do not matter).
    /// To swap between values of different types, pass `serde_json::Value`s.
    pub fn cas<V: Serialize>(&self, key: &str, prev: Option<&V>, next: Option<&V>) -> Result<bool> {
        let p = prev.map(|v| self.enc(v)).transpose()?;
        let n = next.map(|v| self.enc(v)).transpose()?;
        let req = Request::Cas {
            key: key.into(),
            prev: p.as_deref().map(|b| self.raw(b)),
            next: n.as_deref().map(|b| self.raw(b)),
        };
        self.writing(key, || self.route(key).request(&req, self.timeout()))?
            .value()
    }

    // ------------------------------------------------------------ control

    /// Broker statistics; for a sharded client the sum, with each shard's in
    /// [`Stats::shards`].
    pub fn stats(&self) -> Result<Stats> {
        let mut per = self.fan_out(&Request::Stats, |r| {
            let mut s: Stats = r.value()?;
            s.raw = r.value()?;
            Ok(s)
        })?;
        if per.len() == 1 {
            return Ok(per.remove(0));
        }
        Ok(Stats::sum(per))
    }

    /// Round-trip time to the slowest shard.
    pub fn ping(&self) -> Result<Duration> {
        let t0 = Instant::now();
        self.fan_out(&Request::Ping, |_| Ok(()))?;
        Ok(t0.elapsed())
    }

    /// Asks every shard's broker to exit, then closes this client (it would
    /// otherwise reconnect, and with auto-spawn start a new broker).
    pub fn shutdown_broker(&self) -> Result<()> {
        let r = self.fan_out(&Request::Shutdown, |_| Ok(()));
        self.close();
        match r {
            // The broker may close before its reply gets out; it is going down.
            Err(ClientError::Disconnected { .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Closes every connection now, in every clone: requests in flight fail
    /// with `EDISCONNECTED` and later ones fail at once. The broker releases this
    /// client's locks, subscriptions and registrations.
    pub fn close(&self) {
        for c in &self.inner.conns {
            c.close("the client was closed");
        }
    }
}

/// A near-cache hit decoded (`None`: the key is known missing).
pub(crate) fn decode_cached<T: DeserializeOwned>(c: Cached) -> Result<Option<T>> {
    c.map(|(codec, b)| crate::value::decode(Raw::new(codec, &b)))
        .transpose()
}

/// Splits an `mget` reply `{"values":[...],"found":[...]}`.
pub(crate) fn mget_parts(raw: Raw<'_>) -> Result<(Vec<Raw<'_>>, Vec<bool>)> {
    let bad = || ClientError::Decode("mget reply is not {values, found}".into());
    let mut values = None;
    let mut found = None;
    for (k, v) in raw.map().ok_or_else(bad)? {
        match &*k {
            "values" => values = Some(v.array().ok_or_else(bad)?.collect::<Vec<_>>()),
            "found" => {
                found = Some(
                    v.array()
                        .ok_or_else(bad)?
                        .map(|b| b.as_bool().unwrap_or(false))
                        .collect(),
                )
            }
            _ => {}
        }
    }
    Ok((values.ok_or_else(bad)?, found.ok_or_else(bad)?))
}

/// The iterator of [`Client::scan`]: keys of shard 0, page by page, then shard 1, …
pub struct Scan<'c> {
    client: &'c Client,
    prefix: String,
    limit: Option<u64>,
    shard: usize,
    /// Where the current shard's scan resumes; `None` before its first page.
    cursor: Option<String>,
    page: std::vec::IntoIter<String>,
    done: bool,
}

impl Scan<'_> {
    /// Asks for pages of at most `n` keys (the broker caps it, at 10 000 for ours;
    /// default 1000).
    pub fn page_size(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Fetches the next page of the current shard, moving to the next shard when it
    /// is complete.
    fn fetch(&mut self) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Page {
            keys: Vec<String>,
            cursor: Option<String>,
        }
        let req = Request::Scan {
            prefix: (!self.prefix.is_empty()).then(|| self.prefix.as_str().into()),
            limit: self.limit,
            cursor: self.cursor.as_deref().map(Into::into),
        };
        let page: Page = self
            .client
            .conn(self.shard)
            .request(&req, self.client.timeout())?
            .value()?;
        self.page = page.keys.into_iter();
        match page.cursor {
            Some(c) => self.cursor = Some(c),
            None => {
                self.cursor = None;
                self.shard += 1;
                self.done = self.shard >= self.client.shard_count();
            }
        }
        Ok(())
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        loop {
            if let Some(k) = self.page.next() {
                return Some(Ok(k));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fetch() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_ms() {
        assert_eq!(ms(Duration::ZERO), 0);
        assert_eq!(ms(Duration::from_micros(1)), 1);
        assert_eq!(ms(Duration::from_millis(30)), 30);
        assert_eq!(ms(Duration::from_micros(30_500)), 31);
    }

    #[test]
    fn mget_reply_splits() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let v = encode(
                codec,
                &serde_json::json!({"values": [1, null], "found": [true, false]}),
            )
            .unwrap();
            let (vals, found) = mget_parts(Raw::new(codec, &v)).unwrap();
            assert_eq!(found, vec![true, false]);
            assert_eq!(crate::value::decode::<i32>(vals[0]).unwrap(), 1);
            assert!(vals[1].is_nil());
        }
    }
}
