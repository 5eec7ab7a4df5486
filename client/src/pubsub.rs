//! Pub/sub: [`Subscription`], the delivery options ([`PublishOptions`],
//! [`Acks`], [`Published`], [`SubscribeOptions`], [`Replay`]) and the [`Client`]
//! methods `subscribe`, `subscribe_with`, `publish`, `publish_with` and
//! `publish_nowait`.
//!
//! Owns the routing of a subscription (an exact channel to its shard, a
//! `prefix*` pattern to every shard) and its life: local handlers are entered in
//! the connection's `subs` table before `sub` is sent, and `unsub` is sent only
//! when a pattern's last local handler goes. Owns idempotent publishing too: the
//! frame carries the connection's producer id and the channel's next sequence
//! number (from `producer`), and an unacknowledged one is sent again, same
//! number, after a reconnect. Delivery itself, and the retention watermarks that
//! skip what a subscription already saw, are `dispatch`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use procmesh_proto::{topic, Acks as WireAcks, Raw, Request, REPLAY_ALL};
use serde::Serialize;

use crate::conn::{Conn, Reply};
use crate::dispatch::{Message, MsgHandler};
use crate::error::{ClientError, Result};
use crate::pending::lock;
use crate::Client;

/// How a publish is acknowledged (the wire's `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Acks {
    /// `acks: 0`: no reply (the frame has no id); returns once written. Errors on
    /// the broker's side are not reported, and frames to slow consumers may be
    /// dropped.
    None,
    /// `acks: 1` (the default; omitted on the wire): the broker replies with the
    /// number of connections it delivered to, once it has fanned the message
    /// out. Frames to slow consumers may be dropped.
    #[default]
    Leader,
    /// `acks: "all"`: as [`Acks::Leader`], and the fan-out is never dropped; on a
    /// retained channel of a broker with persistence, the reply waits until the
    /// message's log record is fsynced (`pubsub.durableAcks`).
    All,
}

impl Acks {
    fn wire(self) -> WireAcks {
        match self {
            Acks::None => WireAcks::None,
            Acks::Leader => WireAcks::One,
            Acks::All => WireAcks::All,
        }
    }
}

/// Options of [`Client::publish_with`].
///
/// ```no_run
/// use procmesh::{Acks, Client, PublishOptions};
/// # let client = Client::connect()?;
/// let sent = client.publish_with("orders", &"o-1", PublishOptions::new().acks(Acks::All).idempotent(true))?;
/// println!("delivered to {:?} connections", sent.delivered());
/// # Ok::<(), procmesh::ClientError>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "options do nothing until passed to `publish_with`"]
pub struct PublishOptions {
    acks: Acks,
    idempotent: Option<bool>,
    timeout: Option<Duration>,
}

impl PublishOptions {
    /// Acks [`Acks::Leader`], idempotent as the client ([`ClientBuilder::idempotent`]),
    /// the client's call timeout.
    ///
    /// [`ClientBuilder::idempotent`]: crate::ClientBuilder::idempotent
    pub fn new() -> Self {
        Self::default()
    }

    /// How the broker acknowledges it.
    pub fn acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// Carry the producer id and the channel's next sequence number, so that the
    /// broker delivers it at most once however often it is sent; an
    /// unacknowledged one is retried after a reconnect. Overrides
    /// [`ClientBuilder::idempotent`] for this call.
    ///
    /// [`ClientBuilder::idempotent`]: crate::ClientBuilder::idempotent
    pub fn idempotent(mut self, on: bool) -> Self {
        self.idempotent = Some(on);
        self
    }

    /// How long to wait for the acknowledgement, retries included (default: the
    /// client's call timeout).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
}

/// The outcome of [`Client::publish_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Delivered to this many connections.
    Delivered(u64),
    /// An idempotent publish whose sequence number the broker already had from
    /// this producer on this channel (a retry of a delivered message, or a
    /// number below the dedup window): delivered to nobody this time.
    Duplicate,
    /// Written with [`Acks::None`]: no acknowledgement asked for.
    Sent,
}

impl Published {
    /// The number of connections it was delivered to, when acknowledged and not a
    /// duplicate.
    pub fn delivered(&self) -> Option<u64> {
        match self {
            Published::Delivered(n) => Some(*n),
            _ => None,
        }
    }

    /// Whether the broker answered that it was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        *self == Published::Duplicate
    }
}

/// What a subscription replays of a retained channel's backlog before live
/// messages (the broker's `pubsub.persist`; see "Delivery guarantees" in the
/// crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Replay {
    /// Every retained message (`replay: true`).
    All,
    /// The most recent `n` (`replay: n`; 0 replays nothing).
    Last(u64),
}

/// Options of [`Client::subscribe_with`].
///
/// ```no_run
/// use procmesh::{Client, Replay, SubscribeOptions};
/// # let client = Client::connect()?;
/// let sub = client.subscribe_with("orders", SubscribeOptions::new().replay(Replay::Last(100)), |msg| {
///     println!("{:?}: {:?}", msg.offset(), msg.payload::<String>());
/// })?;
/// # Ok::<(), procmesh::ClientError>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "options do nothing until passed to `subscribe_with`"]
pub struct SubscribeOptions {
    replay: Option<Replay>,
    pub(crate) since: Option<u64>,
}

impl SubscribeOptions {
    /// No replay: live messages only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replay the retained backlog (oldest first) before live messages; the
    /// subscribe call returns after the backlog was handed to the dispatch thread.
    pub fn replay(mut self, r: Replay) -> Self {
        self.replay = Some(r);
        self
    }

    /// Replay the retained messages with an offset above `offset`, and never
    /// deliver one at or below it (wins over [`SubscribeOptions::replay`]):
    /// resume from the last [`Message::offset`] a previous run handled.
    pub fn since(mut self, offset: u64) -> Self {
        self.since = Some(offset);
        self
    }

    /// `replay` on the wire.
    pub(crate) fn wire_replay(&self) -> Option<u64> {
        match self.replay? {
            Replay::All => Some(REPLAY_ALL),
            Replay::Last(0) => None,
            Replay::Last(n) => Some(n),
        }
    }
}

/// The high-water offset in a `sub` reply (`{"ok":true,"offset":N}`); `None`
/// from a broker that sends none (procmesh-js 0.1.0 answers `true`).
pub(crate) fn sub_reply_offset(r: &Reply) -> Option<u64> {
    r.value::<serde_json::Value>().ok()?.get("offset")?.as_u64()
}

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
        self.subscribe_with(pattern, SubscribeOptions::new(), handler)
    }

    /// [`Client::subscribe`] with options: replay a retained channel's backlog
    /// ([`SubscribeOptions::replay`]) or resume after an offset
    /// ([`SubscribeOptions::since`]). The backlog reaches `handler` before the
    /// call returns and before any live message, none twice.
    ///
    /// Replay and `since` apply when `pattern` is new on this client; a second
    /// subscription to a pattern the client already has shares the first one's
    /// broker subscription and gets live messages only. After a reconnect every
    /// subscription resumes after the highest offset it saw.
    pub fn subscribe_with<F>(
        &self,
        pattern: &str,
        opts: SubscribeOptions,
        handler: F,
    ) -> Result<Subscription>
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
        let replay = opts.wire_replay();
        // Local handlers go in first, so that no message arriving right after the
        // broker's confirmation is missed (and a reconnect meanwhile subscribes too).
        let mut tickets = Vec::new();
        let mut first_err = None;
        let req = Request::Sub {
            channel: pattern.into(),
            replay,
            since: opts.since,
        };
        for &s in &shards {
            let c = self.conn(s);
            if lock(&c.subs).add(pattern, id, h.clone(), replay, opts.since) {
                match c.start(&req, self.timeout()) {
                    Ok(t) => tickets.push((c, t)),
                    Err(e) => {
                        first_err = Some(e);
                        break;
                    }
                }
            }
        }
        for (c, t) in tickets {
            match t.wait() {
                Ok(r) => lock(&c.subs).confirmed(pattern, sub_reply_offset(&r), false),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
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
    /// delivered to (0 for a deduplicated retry). Idempotent when the client is
    /// ([`ClientBuilder::idempotent`]).
    ///
    /// [`ClientBuilder::idempotent`]: crate::ClientBuilder::idempotent
    pub fn publish<V: Serialize + ?Sized>(&self, channel: &str, payload: &V) -> Result<u64> {
        if self.shared().settings.producer.idempotent {
            let p = self.publish_with(channel, payload, PublishOptions::new())?;
            return Ok(p.delivered().unwrap_or(0));
        }
        let p = self.enc(payload)?;
        let req = publish(channel, self.raw(&p), WireAcks::One, None, None);
        let n: Option<u64> = self.route(channel).request(&req, self.timeout())?.value()?;
        Ok(n.unwrap_or(0))
    }

    /// Publishes without asking for an acknowledgement (`acks: 0`): returns as
    /// soon as the frame is written, and errors on the broker's side are not
    /// reported. Fails only when there is no connection.
    pub fn publish_nowait<V: Serialize + ?Sized>(&self, channel: &str, payload: &V) -> Result<()> {
        if self.shared().settings.producer.idempotent {
            self.publish_with(channel, payload, PublishOptions::new().acks(Acks::None))?;
            return Ok(());
        }
        let p = self.enc(payload)?;
        self.route(channel)
            .send_oneway(&publish(channel, self.raw(&p), WireAcks::None, None, None))
    }

    /// Publishes `payload` on `channel` with options: how it is acknowledged
    /// ([`Acks`]) and whether it is idempotent.
    ///
    /// An idempotent publish takes the channel's next sequence number and carries
    /// the connection's producer id; the broker delivers a (producer, channel,
    /// sequence) at most once and answers a repeat with [`Published::Duplicate`].
    /// When one fails with `EDISCONNECTED` (the connection died before the
    /// answer), it is sent again with the same number after the reconnect, up to
    /// [`ClientBuilder::publish_retries`] times within the timeout: so a message
    /// whose first send did arrive is delivered once, not twice. With
    /// [`Acks::None`] nothing is retried.
    ///
    /// [`ClientBuilder::publish_retries`]: crate::ClientBuilder::publish_retries
    pub fn publish_with<V: Serialize + ?Sized>(
        &self,
        channel: &str,
        payload: &V,
        opts: PublishOptions,
    ) -> Result<Published> {
        let p = self.enc(payload)?;
        let payload = self.raw(&p);
        let conn = self.route(channel);
        let mut plan = PubPlan::new(self, channel, opts)?;
        loop {
            let pid = plan.pid(conn);
            let req = plan.request(channel, payload, pid.as_deref());
            if plan.oneway() {
                conn.send_oneway(&req)?;
                return Ok(Published::Sent);
            }
            match conn.request(&req, plan.left()?) {
                Ok(r) => return published(r),
                // The next send waits for the reconnect (until the deadline).
                Err(e) => plan.retry(e)?,
            }
        }
    }

    /// The last sequence number this client used for idempotent publishing on
    /// `channel` (0: none yet). A restarted producer passes it to
    /// [`ClientBuilder::sequences`] to continue.
    ///
    /// [`ClientBuilder::sequences`]: crate::ClientBuilder::sequences
    pub fn sequence(&self, channel: &str) -> u64 {
        self.shared().settings.producer.sequence(channel)
    }

    /// Makes `n` the last sequence number used on `channel`: the next idempotent
    /// publish there carries `n + 1`.
    pub fn set_sequence(&self, channel: &str, n: u64) -> Result<()> {
        self.shared().settings.producer.set_sequence(channel, n)
    }
}

/// A `publish_with` decided: the wire's acks, the sequence number of an
/// idempotent publish and its retry budget. The blocking and the async client
/// both drive one (they differ only in how they wait): build the request with
/// [`PubPlan::request`] at each send, and on an error ask [`PubPlan::retry`].
///
/// Only a disconnect of an idempotent publish is retried, up to `retries` times
/// before the deadline: on a live connection the frame cannot be lost, a
/// timeout has used up the whole budget, and a non-idempotent publish sent
/// again could be delivered twice.
pub(crate) struct PubPlan {
    acks: WireAcks,
    seq: Option<u64>,
    retries: u32,
    timeout: Duration,
    /// Set for an idempotent publish (the only one sent more than once).
    deadline: Option<Instant>,
}

impl PubPlan {
    /// Takes the channel's next sequence number when the publish is idempotent.
    pub(crate) fn new(client: &Client, channel: &str, opts: PublishOptions) -> Result<PubPlan> {
        let producer = &client.shared().settings.producer;
        let timeout = opts.timeout.unwrap_or(client.timeout());
        let idempotent = opts.idempotent.unwrap_or(producer.idempotent);
        let seq = idempotent.then(|| producer.next_seq(channel)).transpose()?;
        Ok(PubPlan {
            acks: opts.acks.wire(),
            seq,
            retries: if idempotent { producer.retries } else { 0 },
            timeout,
            deadline: idempotent.then(|| Instant::now() + timeout),
        })
    }

    /// Whether it is sent without a reply ([`Acks::None`]): never retried.
    pub(crate) fn oneway(&self) -> bool {
        self.acks == WireAcks::None
    }

    /// The producer id for a send on `conn` (idempotent only): read at each
    /// send, as it is the one the current link presented.
    pub(crate) fn pid(&self, conn: &Conn) -> Option<String> {
        self.seq.and_then(|_| conn.producer_id())
    }

    /// The `pub` frame of one send.
    pub(crate) fn request<'a>(
        &self,
        channel: &'a str,
        payload: Raw<'a>,
        pid: Option<&'a str>,
    ) -> Request<'a> {
        publish(channel, payload, self.acks, pid, self.seq)
    }

    /// The time left for the next send; `ETIMEOUT` once the deadline passed.
    pub(crate) fn left(&self) -> Result<Duration> {
        let Some(deadline) = self.deadline else {
            return Ok(self.timeout);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout {
                op: "pub",
                after: self.timeout,
            });
        }
        Ok(left)
    }

    /// A send failed with `e`: `Ok` to send again (a disconnect, retries left),
    /// else `e`, the publish's outcome.
    pub(crate) fn retry(&mut self, e: ClientError) -> Result<()> {
        match e {
            ClientError::Disconnected { .. } if self.retries > 0 => {
                self.retries -= 1;
                Ok(())
            }
            e => Err(e),
        }
    }
}

/// A `pub` reply: the delivered count, or null for a duplicate.
pub(crate) fn published(r: Reply) -> Result<Published> {
    Ok(match r.value::<Option<u64>>()? {
        Some(n) => Published::Delivered(n),
        None => Published::Duplicate,
    })
}

/// A `pub` of `payload` on `channel`, acknowledged per `acks`.
fn publish<'a>(
    channel: &'a str,
    payload: Raw<'a>,
    acks: WireAcks,
    pid: Option<&'a str>,
    seq: Option<u64>,
) -> Request<'a> {
    Request::Pub {
        channel: channel.into(),
        payload: Some(payload),
        acks,
        pid: pid.map(Into::into),
        seq,
    }
}
