//! Pub/sub: the [`Client`] methods `subscribe` and `publish`, delivery, and
//! the dispatch thread.
//!
//! Owns [`Message`], [`Subscription`] and the per-client dispatch thread that
//! runs subscription handlers and event callbacks in arrival order, off the I/O
//! threads (a slow handler delays later messages, never replies). Which
//! subscriptions a connection holds is owned by `conn` (its `subs` table); this
//! module adds and removes them there, sends `sub`/`unsub`/`pub`, and delivers.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use procmesh_proto::{topic, Acks, Codec, Raw, Request};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;
use crate::event::Event;
use crate::pending::lock;
use crate::Client;

/// A subscription handler.
pub(crate) type MsgHandler = Arc<dyn Fn(Message) + Send + Sync>;

/// An event callback.
pub(crate) type EventCallback = Arc<dyn Fn(&Event) + Send + Sync>;

/// One published message, as delivered to a subscription handler.
///
/// Cheap to clone. The payload stays encoded until [`Message::payload`]
/// decodes it, so one wildcard handler can read different types per channel.
#[derive(Clone)]
pub struct Message {
    inner: Arc<MessageInner>,
}

struct MessageInner {
    channel: String,
    payload: Vec<u8>,
    codec: Codec,
    offset: Option<u64>,
}

impl Message {
    pub(crate) fn new(
        channel: String,
        payload: Vec<u8>,
        codec: Codec,
        offset: Option<u64>,
    ) -> Self {
        Message {
            inner: Arc::new(MessageInner {
                channel,
                payload,
                codec,
                offset,
            }),
        }
    }

    /// The channel it was published on (not the pattern that matched).
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Decodes the payload.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T> {
        crate::value::decode(Raw::new(self.inner.codec, &self.inner.payload))
    }

    /// The payload's encoded bytes, in [`Message::codec`].
    pub fn raw_payload(&self) -> &[u8] {
        &self.inner.payload
    }

    /// The codec of [`Message::raw_payload`] (the client's codec).
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    /// The retention offset, when the broker retains the channel's messages.
    pub fn offset(&self) -> Option<u64> {
        self.inner.offset
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("channel", &self.inner.channel)
            .field("payload_len", &self.inner.payload.len())
            .field("offset", &self.inner.offset)
            .finish()
    }
}

/// The local handlers of one connection's subscriptions, by pattern.
#[derive(Default)]
pub(crate) struct Subs {
    by_pattern: HashMap<String, Vec<(u64, MsgHandler)>>,
}

impl Subs {
    /// Adds a handler; true when it is the first for `pattern` (so the broker
    /// must be told).
    pub fn add(&mut self, pattern: &str, id: u64, h: MsgHandler) -> bool {
        let v = self.by_pattern.entry(pattern.to_owned()).or_default();
        v.push((id, h));
        v.len() == 1
    }

    /// Removes a handler; true when it was the last for `pattern`.
    pub fn remove(&mut self, pattern: &str, id: u64) -> bool {
        let Some(v) = self.by_pattern.get_mut(pattern) else {
            return false;
        };
        let before = v.len();
        v.retain(|(i, _)| *i != id);
        if v.is_empty() && before > 0 {
            self.by_pattern.remove(pattern);
            return true;
        }
        false
    }

    /// Every handler whose pattern matches `channel` (a connection receives a
    /// message once however many of its subscriptions match).
    pub fn matching(&self, channel: &str) -> Vec<MsgHandler> {
        let mut out = Vec::new();
        for (p, hs) in &self.by_pattern {
            if procmesh_proto::topic::matches(p, channel) {
                out.extend(hs.iter().map(|(_, h)| h.clone()));
            }
        }
        out
    }

    /// The patterns to replay after a reconnect.
    pub fn patterns(&self) -> Vec<String> {
        self.by_pattern.keys().cloned().collect()
    }
}

enum Job {
    Event(Event),
    Msg(Vec<MsgHandler>, Message),
    Listen(Sender<Event>),
}

/// The sending side of the dispatch thread. The thread ends when every
/// `Dispatcher` (held by the client and its connections) is gone.
pub(crate) struct Dispatcher {
    tx: Sender<Job>,
}

impl Dispatcher {
    /// Starts the dispatch thread with the builder's event callbacks.
    pub fn start(callbacks: Vec<EventCallback>) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("procmesh-dispatch".into())
            .spawn(move || run(rx, callbacks))?;
        Ok(Dispatcher { tx })
    }

    /// Delivers an event to callbacks and listeners.
    pub fn event(&self, e: Event) {
        let _ = self.tx.send(Job::Event(e));
    }

    /// Runs `handlers` on `msg`.
    pub fn msg(&self, handlers: Vec<MsgHandler>, msg: Message) {
        let _ = self.tx.send(Job::Msg(handlers, msg));
    }

    /// A new receiver of every later event.
    pub fn listen(&self) -> Receiver<Event> {
        let (tx, rx) = channel();
        let _ = self.tx.send(Job::Listen(tx));
        rx
    }
}

fn run(rx: Receiver<Job>, callbacks: Vec<EventCallback>) {
    let mut listeners: Vec<Sender<Event>> = Vec::new();
    while let Ok(job) = rx.recv() {
        match job {
            Job::Event(e) => {
                for cb in &callbacks {
                    // A panicking callback must not take the dispatch thread down.
                    let _ = catch_unwind(AssertUnwindSafe(|| cb(&e)));
                }
                listeners.retain(|l| l.send(e.clone()).is_ok());
            }
            Job::Msg(handlers, msg) => {
                for h in handlers {
                    let m = msg.clone();
                    let _ = catch_unwind(AssertUnwindSafe(|| h(m)));
                }
            }
            Job::Listen(l) => listeners.push(l),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn matching_finds_exact_and_wildcard_handlers() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h: MsgHandler = {
            let hits = hits.clone();
            Arc::new(move |_m| {
                hits.fetch_add(1, Ordering::SeqCst);
            })
        };
        let mut s = Subs::default();
        assert!(s.add("orders.*", 1, h.clone()));
        assert!(!s.add("orders.*", 2, h.clone()));
        assert!(s.add("orders.new", 3, h.clone()));
        assert_eq!(s.matching("orders.new").len(), 3);
        assert_eq!(s.matching("orders.old").len(), 2);
        assert_eq!(s.matching("users").len(), 0);
        assert!(!s.remove("orders.*", 1));
        assert!(s.remove("orders.*", 2));
        assert!(!s.remove("orders.*", 2), "already gone");
        assert_eq!(s.patterns(), vec!["orders.new".to_owned()]);
    }

    #[test]
    fn dispatch_runs_in_order_and_survives_panics() {
        let d = Dispatcher::start(vec![Arc::new(|_e: &Event| panic!("callback bug"))]).unwrap();
        let events = d.listen();
        let (tx, rx) = channel();
        let tx = std::sync::Mutex::new(tx);
        let h: MsgHandler = Arc::new(move |m: Message| {
            let n: i32 = m.payload().unwrap();
            if n == 1 {
                panic!("handler bug");
            }
            tx.lock().unwrap().send(n).unwrap();
        });
        for n in 0..4 {
            let bytes = crate::value::encode(Codec::Json, &n).unwrap();
            d.msg(
                vec![h.clone()],
                Message::new("c".into(), bytes, Codec::Json, None),
            );
        }
        d.event(Event::Error {
            shard: crate::ShardId(0),
            message: "x".into(),
        });
        let got: Vec<i32> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(got, vec![0, 2, 3]);
        assert_eq!(events.recv().unwrap().shard(), crate::ShardId(0));
    }
}
