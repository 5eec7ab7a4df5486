//! Async pub/sub: [`Subscription`] (a `Stream` of [`Message`]s), [`Events`]
//! (a `Stream` of connection events), and `subscribe`/`publish` of the async
//! [`Client`].
//!
//! A subscription is the blocking client's (same routing, same table of local
//! handlers, same replay after a reconnect) with a handler that pushes into a
//! bounded [`Queue`]; the stream reads that queue. A full queue drops the newest
//! message and counts it ([`Subscription::dropped`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use procmesh_proto::{topic, Request};
use serde::Serialize;

use super::{request, send_one, within, Client};
use crate::dispatch::{Message, MsgHandler};
use crate::error::Result;
use crate::event::Event;
use crate::pending::lock;
use crate::pubsub::{
    published, sub_reply_offset, PubPlan, PublishOptions, Published, SubscribeOptions,
};
use crate::stream::{Queue, DEFAULT_QUEUE_CAPACITY};

/// A live subscription of the async client, read as a `Stream` of messages.
///
/// Bounded: at most its capacity of messages wait (default
/// [`DEFAULT_QUEUE_CAPACITY`]); newer ones are dropped and counted in
/// [`Subscription::dropped`]. The stream does not end while subscribed.
/// Dropping it unsubscribes (without waiting).
#[must_use = "dropping a Subscription unsubscribes at once"]
pub struct Subscription {
    queue: Arc<Queue<Message>>,
    sub: Option<crate::Subscription>,
}

impl Subscription {
    /// The channel or pattern subscribed to.
    pub fn pattern(&self) -> &str {
        self.sub.as_ref().map_or("", |s| s.pattern())
    }

    /// Messages dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Messages waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The next message (the same as `StreamExt::next`).
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.queue.poll_pop(cx)).await
    }

    /// Unsubscribes and awaits the broker(s); queued messages are lost.
    pub async fn unsubscribe(mut self) -> Result<()> {
        self.queue.close();
        let Some(mut sub) = self.sub.take() else {
            return Ok(());
        };
        // `sub` stays active until every shard is done: dropped half-way (or
        // failing), its own drop unsubscribes the shards still subscribed.
        let req = Request::Unsub {
            channel: sub.pattern.as_str().into(),
        };
        let c = &sub.client;
        // Dropped while waiting for a reconnect, nothing is lost: the handler is
        // out of the table, so the new connection does not subscribe again.
        within("unsub", c.timeout(), async {
            let mut flights = Vec::new();
            for &s in &sub.shards {
                let conn = c.conn(s);
                if lock(&conn.subs).remove(&sub.pattern, sub.id) {
                    flights.push(send_one(conn, &req).await?);
                }
            }
            for f in flights {
                f.await?;
            }
            Ok(())
        })
        .await?;
        sub.active = false;
        Ok(())
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.queue.poll_pop(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Connection events of every shard as a bounded `Stream` (from
/// [`Client::events`]): at most [`DEFAULT_QUEUE_CAPACITY`] wait, newer ones are
/// dropped and counted. Ends when the client is gone.
pub struct Events {
    queue: Arc<Queue<Event>>,
}

impl Events {
    pub(crate) fn new(client: &crate::Client) -> Self {
        let queue = Arc::new(Queue::new(DEFAULT_QUEUE_CAPACITY));
        let q = queue.clone();
        client.shared().dispatch.listen_with(Box::new(move |e| {
            // Only this sink left holding the queue: the stream is gone.
            if Arc::strong_count(&q) == 1 {
                return false;
            }
            q.push(e.clone());
            true
        }));
        Events { queue }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// The next event.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.queue.poll_pop(cx)).await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.queue.poll_pop(cx)
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Client {
    /// Subscribes to a channel, or to every channel starting with `prefix` when
    /// `pattern` is `"prefix*"`; returns once the broker(s) confirmed. Read the
    /// messages from the returned stream.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        self.subscribe_with_capacity(pattern, DEFAULT_QUEUE_CAPACITY)
            .await
    }

    /// [`Client::subscribe`] holding at most `capacity` messages.
    pub async fn subscribe_with_capacity(
        &self,
        pattern: &str,
        capacity: usize,
    ) -> Result<Subscription> {
        self.subscribe_opts(pattern, SubscribeOptions::new(), capacity)
            .await
    }

    /// [`Client::subscribe`] with delivery options (replay of a retained
    /// channel's backlog, or resume after an offset), as the blocking
    /// [`crate::Client::subscribe_with`]; the backlog comes first on the stream.
    pub async fn subscribe_with(
        &self,
        pattern: &str,
        opts: SubscribeOptions,
    ) -> Result<Subscription> {
        self.subscribe_opts(pattern, opts, DEFAULT_QUEUE_CAPACITY)
            .await
    }

    async fn subscribe_opts(
        &self,
        pattern: &str,
        opts: SubscribeOptions,
        capacity: usize,
    ) -> Result<Subscription> {
        let b = &self.inner;
        let shards: Vec<usize> = if topic::is_pattern(pattern) {
            (0..b.shard_count()).collect()
        } else {
            vec![b.shard_of(pattern).0]
        };
        let queue = Arc::new(Queue::new(capacity));
        let q = queue.clone();
        let h: MsgHandler = Arc::new(move |m| {
            q.push(m);
        });
        let id = b.next_sub_id();
        // The guard exists before the first await: dropping this future (or an
        // error) undoes every shard where the handler went in.
        let out = Subscription {
            queue,
            sub: Some(crate::Subscription {
                client: b.clone(),
                pattern: pattern.to_owned(),
                id,
                shards: shards.clone(),
                active: true,
            }),
        };
        let replay = opts.wire_replay();
        let req = Request::Sub {
            channel: pattern.into(),
            replay,
            since: opts.since,
        };
        within("sub", self.timeout(), async {
            let mut flights = Vec::new();
            for &s in &shards {
                let c = b.conn(s);
                // Local handler first, so that no message right after the
                // broker's confirmation is missed.
                if lock(&c.subs).add(pattern, id, h.clone(), replay, opts.since) {
                    flights.push((c, send_one(c, &req).await?));
                }
            }
            for (c, f) in flights {
                let r = f.await?;
                lock(&c.subs).confirmed(pattern, sub_reply_offset(&r), false);
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Publishes `payload` on `channel`; how many connections it reached (0
    /// for a deduplicated retry). Idempotent when the client is
    /// ([`ClientBuilder::idempotent`](crate::ClientBuilder::idempotent)).
    pub async fn publish<V: Serialize + ?Sized>(&self, channel: &str, payload: &V) -> Result<u64> {
        let p = self
            .publish_with(channel, payload, PublishOptions::new())
            .await?;
        Ok(p.delivered().unwrap_or(0))
    }

    /// Publishes without an acknowledgement (`acks: 0`): done once the frame
    /// is written (waiting for a reconnect like any request); errors on the
    /// broker's side are not reported.
    pub async fn publish_nowait<V: Serialize + ?Sized>(
        &self,
        channel: &str,
        payload: &V,
    ) -> Result<()> {
        let opts = PublishOptions::new().acks(crate::Acks::None);
        self.publish_with(channel, payload, opts).await?;
        Ok(())
    }

    /// Publishes `payload` on `channel` with options, as
    /// [`crate::Client::publish_with`] does: how it is acknowledged
    /// ([`Acks`](crate::Acks)) and whether it is idempotent. An idempotent
    /// publish that fails with `EDISCONNECTED` is sent again with the same
    /// sequence number once the link is back (awaited, no thread parked), up to
    /// the client's `publish_retries` within the timeout; a repeat the broker
    /// already had is [`Published::Duplicate`]. Dropping the future gives up
    /// its sequence number (the next publish takes the one after).
    pub async fn publish_with<V: Serialize + ?Sized>(
        &self,
        channel: &str,
        payload: &V,
        opts: PublishOptions,
    ) -> Result<Published> {
        let p = self.inner.enc(payload)?;
        let payload = self.inner.raw(&p);
        let conn = self.route(channel);
        let mut plan = PubPlan::new(&self.inner, channel, opts)?;
        loop {
            let pid = plan.pid(conn);
            let req = plan.request(channel, payload, pid.as_deref());
            if plan.oneway() {
                within("pub", plan.left()?, async {
                    while !conn.try_send_oneway(&req)? {
                        std::future::poll_fn(|cx| conn.poll_link(cx)).await;
                    }
                    Ok(())
                })
                .await?;
                return Ok(Published::Sent);
            }
            match request(conn, &req, plan.left()?).await {
                Ok(r) => return published(r),
                // The next send waits for the reconnect (until the deadline).
                Err(e) => plan.retry(e)?,
            }
        }
    }
}
