//! `procmesh`: a shared in-memory cache, atomics, pub/sub, RPC and locks for
//! the processes of one machine, served by a `procmesh` broker over a Unix
//! domain socket.
//!
//! [`Client::connect`] reaches the mesh `"default"`; when no broker listens it
//! starts one (the `procmesh` binary of the `procmesh-broker` package, found
//! through `PROCMESH_BROKER_BIN`, next to the current executable, or on
//! `PATH`), which exits by itself after a minute without clients. A
//! [`Client`] is `Clone + Send + Sync`: threads share one connection and keep
//! many requests in flight on it. Values are any `serde` type, sent as
//! MessagePack (or JSON, see [`ClientBuilder::codec`]); Node.js processes
//! using the `procmesh-js` package share the same mesh.
//!
//! # Codec negotiation
//! Unless [`ClientBuilder::codec`] fixes the wire codec, every connect negotiates it
//! (docs/protocol.md §3): `hello` goes out in JSON; a `welcome` listing `msgpack` in its
//! `codecs` field (our broker) switches the link to MessagePack from the next frame, with
//! no round trip beyond the hello; a `welcome` without the list (a Node.js `procmesh-js`
//! broker in its default JSON codec) keeps JSON; a broker that closes the connection on
//! the JSON hello (a Node.js broker with `codec: 'msgpack'`) is connected again and greeted
//! with a msgpackr record hello, and the link reads and writes msgpackr records from then
//! on. Inbound frames are read in whichever of the three forms each arrives. Values are
//! encoded in MessagePack either way and transcoded on a JSON link.
//!
//! The client reconnects with backoff when the broker goes away, replaying its
//! subscriptions and registrations; [`Client::sharded`] spreads keys over
//! several brokers behind the same API.
//!
//! # Near cache
//! [`ClientBuilder::near_cache`] keeps copies of the values this client read (`get`,
//! `mget`, and `has` of a cached key are then answered locally) and asks each broker
//! to track the keys it reads (`track`, ours: docs/protocol.md "Near-cache tracking",
//! after Redis client-side caching). The broker pushes an invalidation when such a key
//! changes by any path — a write from any client, atomics, `cas`, fenced writes,
//! expiry, LRU eviction, `clear` — and each connection's reader thread applies it. What
//! it guarantees:
//! - **read-your-writes within a client:** its own `set`, `mset`, `del`, `incr`/`decr`,
//!   `cas`, fenced writes and `clear` drop the keys locally before they are sent and
//!   again once answered; a later read of this client goes to the broker;
//! - **another client's acknowledged write is invisible for at most the invalidation's
//!   delivery time:** the broker queues the invalidation in the same loop turn as that
//!   write's reply, and a read answered before it arrived is never cached after it (a
//!   read in flight when an invalidation for its key arrives is not stored);
//! - **after a reconnect the cache is empty:** losing any shard's connection flushes
//!   everything (invalidations may have been lost), and reads in flight are not stored;
//! - against a broker without tracking (a Node.js broker) nothing is served locally.
//!
//! Counters: [`Client::near_cache_stats`]. Bounds: entries (and optionally value bytes,
//! [`ClientBuilder::near_cache_bytes`]), least recently used evicted first; the broker
//! bounds its side (`maxTrackedKeys`).
//!
//! # Delivery guarantees
//! Against a broker with retained pub/sub (`pubsub.persist`, `procmesh serve
//! --pubsub-persist`), and ideally persistence, the client gives at-most-once
//! publishing and gap-free, duplicate-free delivery across reconnects
//! (docs/protocol.md §8; the same wire fields as procmesh-js 0.1.1):
//!
//! - **Acknowledgements**: [`Client::publish_with`] with [`PublishOptions::acks`]:
//!   [`Acks::None`] (`acks: 0`, no reply, like [`Client::publish_nowait`]),
//!   [`Acks::Leader`] (the default, the delivered count) or [`Acks::All`] (never
//!   dropped for slow consumers; on a retained channel of a persisting broker,
//!   answered only after the message's log record is fsynced). It returns a
//!   [`Published`]: `Delivered(n)`, `Duplicate` or `Sent` (acks 0).
//! - **Idempotent producer**: [`ClientBuilder::idempotent`] (or
//!   [`PublishOptions::idempotent`] per call) numbers each channel's publishes; the
//!   broker delivers a (producer, channel, sequence) once and answers a repeat with
//!   [`Published::Duplicate`]. The producer id is minted by the broker at the first
//!   connect and presented again after every reconnect, or fixed across processes
//!   with [`ClientBuilder::producer_id`]; a restarted producer continues its
//!   numbering with [`ClientBuilder::sequences`] (read them with
//!   [`Client::sequence`]). An idempotent publish that got no answer (the broker
//!   went away) is sent again, same number, once reconnected
//!   ([`ClientBuilder::publish_retries`], within the call timeout): delivered once
//!   whether or not the first send arrived. With persistence on the broker the
//!   dedup state survives its restart. Sequences are kept per channel, never
//!   forgotten (at most 2^20 channels per client).
//! - **Replay**: [`Client::subscribe_with`] with [`SubscribeOptions::replay`]
//!   ([`Replay::All`], [`Replay::Last`]) delivers the retained backlog, oldest
//!   first, before live messages and before the call returns;
//!   [`SubscribeOptions::since`] only what follows an offset. [`Message::offset`]
//!   is the broker's offset of a retained message.
//! - **Catch-up**: each subscription keeps the highest offset it has seen (or the
//!   `sub` reply's high-water mark) and skips any message at or below it; after a
//!   reconnect it subscribes again with `since` that offset, so the retained
//!   messages published meanwhile arrive, none missing, none twice (as long as the
//!   channel retained them: `pubsub.retention`, `retentionMs`). A subscription made
//!   while disconnected replays once connected; unsubscribing forgets the offset.
//!   Offsets are per broker: on a sharded client each shard's subscription keeps
//!   its own. A broker without persistence starts its offsets again after a
//!   restart; the client notices (the high-water mark is below its offset) and
//!   follows, but what was published on the restarted broker before the
//!   resubscription is not replayed then.
//!
//! ```no_run
//! use procmesh::{Acks, Client, PublishOptions, Replay, SubscribeOptions};
//!
//! let producer = Client::builder().producer_id("billing-1").connect()?;
//! producer.publish_with("invoices", &"inv-7", PublishOptions::new().acks(Acks::All))?;
//!
//! let consumer = Client::connect()?;
//! let _sub = consumer.subscribe_with("invoices", SubscribeOptions::new().replay(Replay::All), |msg| {
//!     println!("#{:?}: {:?}", msg.offset(), msg.payload::<String>());
//! })?;
//! # Ok::<(), procmesh::ClientError>(())
//! ```
//!
//! # Layout
//! One file per command family, the family's types and its [`Client`] methods
//! side by side; every request is a typed `procmesh_proto::Request`, encoded by
//! proto (no message shapes are written by hand here). No two files import
//! each other.
//! - `client`: [`Client`]: the shards, routing, the cache, atomics and control
//!   (`stats`, `ping`, `shutdown_broker`).
//! - `builder`: [`ClientBuilder`], every option and its default, and the
//!   constructors (`Client::connect`, `sharded`, `builder`).
//! - `lock`: [`LockGuard`], [`LockOptions`], [`FencingToken`]; `lock`,
//!   `with_lock` and the fenced writes.
//! - `pubsub`: [`Subscription`] and the delivery options; `subscribe`,
//!   `subscribe_with`, `publish`, `publish_with` (and the idempotent retries).
//! - `producer`: the idempotent producer's settings and per-channel sequences.
//! - `stream`: [`Messages`] (`subscribe_iter`) and the bounded queue behind it
//!   and behind the async streams.
//! - `pipeline`: [`Pipeline`], [`PipelineResult`], [`FromPipeline`]: many
//!   commands in one write per shard, results in order.
//! - `address`: address strings (`procmesh://NAME?shards=N&token=T`,
//!   `unix:/path`) for [`ClientBuilder::from_address`] and [`Client::from_env`].
//! - `aio` (feature `tokio`): the async client on the same connections.
//! - `rpc`: [`Registration`]; `register` and `call`.
//! - `conn`: one connection: pipelined requests and the state shared with its
//!   reader thread (documents the lock order and a request's path).
//!   - `conn::link`: connect or spawn, the hello handshake, reconnect and replay.
//!   - `conn::reader`: the reader thread: decodes each frame once and routes
//!     replies, messages, invokes and pings; liveness pings.
//!   - `conn::buf`: the read buffer, consumed by offset, shared with the handshake.
//! - `near`: the near cache ([`ClientBuilder::near_cache`]): entries, LRU, the
//!   pending-fill protocol against crossing invalidations, counters.
//! - `pending`: hand-off of replies (the decoded value) between the reader and
//!   callers.
//! - `dispatch`: [`Message`], a connection's subscription table and the
//!   dispatch thread that runs handlers and event callbacks.
//! - `pool`: the RPC handler pool and the wrapping of typed handlers.
//! - `value`: serde values to and from the wire codecs.
//! - `spawn`: finding and starting the broker binary; backoff with jitter.
//! - `stats`: [`Stats`] and its sum over shards.
//! - `event`: [`Event`] and [`ShardId`].
//! - `error`: [`ClientError`], [`HandlerError`] and their stable codes.
//! - `redis` (feature `redis`): the Redis backend behind `conn`: every request
//!   mapped to Redis commands and Lua scripts, its subscriber thread and RPC
//!   workers (`redis::pubsub`, `redis::rpc`, `redis::scripts`).
//!
//! # Past one machine: Redis
//! With the cargo feature `redis`, `ClientBuilder::redis("redis://host:6379/")` (or
//! `redis_cluster([...seeds])`) connects the same [`Client`] API to Redis instead of a
//! broker, so moving from one box to a Redis deployment is a configuration change.
//! The mesh's keys live under `{name}:` (one Cluster hash slot per mesh, so every
//! multi-key script runs on Cluster); values are stored as MessagePack, so clients in
//! either codec read the same bytes. What differs from the broker (the README's
//! section of the same name has the details):
//! - lock waiters poll with backoff (up to 50 ms) instead of queueing FIFO, and a
//!   crashed holder's lock lasts until its TTL;
//! - a publish's delivered count is one per matching subscription, not per
//!   connection; Redis disconnects slow subscribers (the client resubscribes; messages
//!   meanwhile are lost); retention and replay are broker-only (refused with an
//!   error), idempotent publishing works (a Lua script keeps the dedup window);
//! - a call fails with `ECALLTIMEOUT` at its timeout (no grace), `EHANDLERGONE` once a
//!   crashed worker's heartbeat expires (about 3 s);
//! - counters are exact up to 2^53 (Redis's Lua numbers);
//! - `stats` combines this client's counters with `INFO`; `shutdown_broker` only
//!   closes the client.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use procmesh::{Client, LockOptions};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct User {
//!     name: String,
//!     visits: u32,
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // This doc test runs against a broker in a temp dir, not the user's mesh.
//! # let dir = tempfile::tempdir()?;
//! # let broker = procmesh_broker::Broker::builder().socket(dir.path().join("doc.sock")).start()?;
//! # std::env::set_var("PROCMESH_SOCKET", broker.path());
//! let client = Client::connect()?;
//!
//! // Cache and atomics: values are any serde type.
//! client.set("user:1", &User { name: "ann".into(), visits: 1 })?;
//! let u: Option<User> = client.get("user:1")?;
//! assert_eq!(u.unwrap().name, "ann");
//! client.set_with_ttl("session:9", &"token", Duration::from_secs(60))?;
//! assert_eq!(client.incr("hits", 1)?, 1);
//!
//! // Pub/sub: the handler runs on the client's dispatch thread.
//! let (tx, rx) = std::sync::mpsc::channel();
//! let tx = std::sync::Mutex::new(tx);
//! let sub = client.subscribe("news.*", move |msg| {
//!     let text: String = msg.payload().unwrap();
//!     tx.lock().unwrap().send((msg.channel().to_owned(), text)).unwrap();
//! })?;
//! client.publish("news.rust", &"procmesh 0.1")?;
//! assert_eq!(rx.recv()?, ("news.rust".to_owned(), "procmesh 0.1".to_owned()));
//!
//! // RPC: any process may serve `add`, any may call it.
//! let reg = client.register("add", |(a, b): (i64, i64)| Ok(a + b))?;
//! let sum: i64 = client.call("add", &(2, 3), None)?;
//! assert_eq!(sum, 5);
//!
//! // Locks with fencing tokens: writes through the guard are refused once a
//! // newer holder exists.
//! if let Some(guard) = client.lock("report", LockOptions::new().wait(Duration::from_secs(1)))? {
//!     guard.set("report:owner", &std::process::id())?;
//! }
//!
//! drop((sub, reg));
//! # Ok(())
//! # }
//! ```
//!
//! # Async
//! With the cargo feature `tokio`, `procmesh::aio::Client` offers every operation
//! as a cancel-safe `async fn` on the same connections, subscriptions as bounded
//! `Stream`s, and async pipelines; see the `aio` module.
//!
//! # Errors
//! Every call returns [`ClientError`]; [`ClientError::code`] gives the stable
//! wire code (`EFENCED`, `ETIMEOUT`, `EDISCONNECTED`, …) as an [`ErrorCode`].
#![deny(missing_docs)]

mod address;
mod builder;
mod client;
mod conn;
mod dispatch;
mod error;
mod event;
mod lock;
mod near;
mod pending;
mod pipeline;
mod pool;
mod producer;
mod pubsub;
#[cfg(feature = "redis")]
mod redis;
mod rpc;
mod spawn;
mod stats;
mod stream;
mod value;

#[cfg(feature = "tokio")]
pub mod aio;

pub use builder::ClientBuilder;
pub use client::{Client, Scan};
pub use dispatch::Message;
pub use error::{ClientError, HandlerError, Result};
pub use event::{Event, ShardId};
pub use lock::{FencingToken, LockGuard, LockOptions};
pub use near::NearCacheStats;
pub use pipeline::{FromPipeline, Pipeline, PipelineResult};
pub use procmesh_proto::{Codec, ErrorCode};
pub use pubsub::{Acks, PublishOptions, Published, Replay, SubscribeOptions, Subscription};
pub use rpc::Registration;
pub use stats::{ProcStats, Stats};
pub use stream::{Messages, DEFAULT_QUEUE_CAPACITY};

/// The FNV-1a hash that places keys on shards (over UTF-16 code units, as the
/// Node.js package computes it): a key lives on shard `fnv1a(key) % n`.
pub use procmesh_proto::hash::fnv1a;
