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
//! - `pubsub`: [`Subscription`]; `subscribe` and `publish`.
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
mod pending;
mod pipeline;
mod pool;
mod pubsub;
mod rpc;
mod spawn;
mod stats;
mod stream;
mod value;

#[cfg(feature = "tokio")]
pub mod aio;

pub use builder::ClientBuilder;
pub use client::Client;
pub use dispatch::Message;
pub use error::{ClientError, HandlerError, Result};
pub use event::{Event, ShardId};
pub use lock::{FencingToken, LockGuard, LockOptions};
pub use pipeline::{FromPipeline, Pipeline, PipelineResult};
pub use procmesh_proto::{Codec, ErrorCode};
pub use pubsub::Subscription;
pub use rpc::Registration;
pub use stats::{ProcStats, Stats};
pub use stream::{Messages, DEFAULT_QUEUE_CAPACITY};

/// The FNV-1a hash that places keys on shards (over UTF-16 code units, as the
/// Node.js package computes it): a key lives on shard `fnv1a(key) % n`.
pub use procmesh_proto::hash::fnv1a;
