//! Pub/sub: [`Subscription`] and the [`Client`] methods `subscribe`,
//! `publish` and `publish_nowait`.
//!
//! Owns the routing of a subscription (an exact channel to its shard, a
//! `prefix*` pattern to every shard) and its life: local handlers are entered in
//! the connection's `subs` table before `sub` is sent, and `unsub` is sent only
//! when a pattern's last local handler goes. Delivery itself is `dispatch`'s.

use std::sync::Arc;

use procmesh_proto::{topic, Acks, Raw, Request};
use serde::Serialize;

use crate::dispatch::{Message, MsgHandler};
use crate::error::Result;
use crate::pending::lock;
use crate::Client;

/// A live subscription. Dropping it unsubscribes (without waiting for the
/// broker); [`Subscription::unsubscribe`] does the same and waits.
///
/// It keeps its client alive: a handler keeps running as long as its
/// `Subscription` exists, even when every other clone of the client is gone.
#[must_use = "dropping a Subscription unsubscribes at once"]
pub struct Subscription {
    pub(crate) client: Client,
    pub(crate) pattern: String,
    pub(crate) id: u64,
    pub(crate) shards: Vec<usize>,
    pub(crate) active: bool,
}

impl Subscription {
    /// The channel or pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Unsubscribes and waits for the broker(s) to confirm.
    pub fn unsubscribe(mut self) -> Result<()> {
        self.active = false;
        self.client
            .unsubscribe_shards(&self.pattern, self.id, &self.shards, true)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active {
            let _ = self
                .client
                .unsubscribe_shards(&self.pattern, self.id, &self.shards, false);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .finish()
    }
}

impl Client {
    /// Subscribes `handler` to a channel, or to every channel starting with
    /// `prefix` when `pattern` is `"prefix*"`. Handlers run on the client's
    /// dispatch thread, in arrival order. Returns once the broker(s) confirmed.
    ///
    /// ```no_run
    /// # let client = procmesh::Client::connect()?;
    /// let sub = client.subscribe("orders.*", |msg| {
    ///     let order: serde_json::Value = msg.payload().unwrap();
    ///     println!("{}: {order}", msg.channel());
    /// })?;
    /// client.publish("orders.created", &serde_json::json!({"id": 1}))?;
    /// sub.unsubscribe()?;
    /// # Ok::<(), procmesh::ClientError>(())
    /// ```
    pub fn subscribe<F>(&self, pattern: &str, handler: F) -> Result<Subscription>
    where
        F: Fn(Message) + Send + Sync + 'static,
    {
        let shards: Vec<usize> = if topic::is_pattern(pattern) {
            (0..self.shard_count()).collect()
        } else {
            vec![self.shard_of(pattern).0]
        };
        let id = self.next_sub_id();
        let h: MsgHandler = Arc::new(handler);
        // Local handlers go in first, so that no message arriving right after the
        // broker's confirmation is missed.
        let mut tickets = Vec::new();
        let mut first_err = None;
        let req = Request::Sub {
            channel: pattern.into(),
            replay: None,
            since: None,
        };
        for &s in &shards {
            let c = &self.conn(s);
            if lock(&c.subs).add(pattern, id, h.clone()) {
                match c.start(&req, self.timeout()) {
                    Ok(t) => tickets.push(t),
                    Err(e) => {
                        first_err = Some(e);
                        break;
                    }
                }
            }
        }
        for t in tickets {
            if let Err(e) = t.wait() {
                first_err.get_or_insert(e);
            }
        }
        let sub = Subscription {
            client: self.clone(),
            pattern: pattern.to_owned(),
            id,
            shards,
            active: true,
        };
        match first_err {
            // Dropping the half-made subscription undoes it where it succeeded.
            Some(e) => Err(e),
            None => Ok(sub),
        }
    }

    pub(crate) fn unsubscribe_shards(
        &self,
        pattern: &str,
        id: u64,
        shards: &[usize],
        wait: bool,
    ) -> Result<()> {
        let mut tickets = Vec::new();
        let req = Request::Unsub {
            channel: pattern.into(),
        };
        for &s in shards {
            let c = &self.conn(s);
            let last = lock(&c.subs).remove(pattern, id);
            if !last {
                continue;
            }
            if wait {
                tickets.push(c.start(&req, self.timeout())?);
            } else {
                c.request_nowait(&req);
            }
        }
        for t in tickets {
            t.wait()?;
        }
        Ok(())
    }

    /// Publishes `payload` on `channel`; returns how many connections it was
    /// delivered to (0 for a deduplicated retry).
    pub fn publish<V: Serialize + ?Sized>(&self, channel: &str, payload: &V) -> Result<u64> {
        let p = self.enc(payload)?;
        let req = publish(channel, self.raw(&p), Acks::One);
        let n: Option<u64> = self.route(channel).request(&req, self.timeout())?.value()?;
        Ok(n.unwrap_or(0))
    }

    /// Publishes without asking for an acknowledgement (`acks: 0`): returns as
    /// soon as the frame is written, and errors on the broker's side are not
    /// reported. Fails only when there is no connection.
    pub fn publish_nowait<V: Serialize + ?Sized>(&self, channel: &str, payload: &V) -> Result<()> {
        let p = self.enc(payload)?;
        self.route(channel)
            .send_oneway(&publish(channel, self.raw(&p), Acks::None))
    }
}

/// A `pub` of `payload` on `channel`, acknowledged per `acks`.
fn publish<'a>(channel: &'a str, payload: Raw<'a>, acks: Acks) -> Request<'a> {
    Request::Pub {
        channel: channel.into(),
        payload: Some(payload),
        acks,
        pid: None,
        seq: None,
    }
}
