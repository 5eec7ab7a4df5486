//! Delivery: [`Message`], the subscription table of a connection, and the
//! per-client dispatch thread.
//!
//! Owns the dispatch thread that runs subscription handlers and event
//! callbacks in arrival order, off the I/O threads (a slow handler delays later
//! messages, never replies), and [`Subs`], the local handlers by pattern that a
//! connection keeps (and replays after a reconnect). A panicking handler or
//! callback is caught and the thread goes on. Knows nothing about sockets or
//! requests: `conn`'s reader hands it messages, `pubsub` adds and removes
//! handlers.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use procmesh_proto::{Codec, Raw};
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::event::Event;

/// A subscription handler.
pub(crate) type MsgHandler = Arc<dyn Fn(Message) + Send + Sync>;

/// An event callback.
pub(crate) type EventCallback = Arc<dyn Fn(&Event) + Send + Sync>;

/// An event listener added after the start (the async client's event stream):
/// returns false once it is gone, and is then removed.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) type EventSink = Box<dyn FnMut(&Event) -> bool + Send>;

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

/// The local handlers of one connection's subscriptions, by pattern, and each
/// pattern's retention watermark.
///
/// Bounded by the subscriptions the application holds: one entry per pattern,
/// removed with its last handler (which drops the watermark).
#[derive(Default)]
pub(crate) struct Subs {
    by_pattern: HashMap<String, SubEntry>,
}

/// One pattern of a connection.
struct SubEntry {
    handlers: Vec<(u64, MsgHandler)>,
    /// The highest retention offset seen (or the `sub` reply's high-water
    /// baseline): a message at or below it was already delivered and is skipped,
    /// and a resubscription asks for `since` it.
    watermark: Option<u64>,
    /// The `replay` asked for when the pattern was new, until a broker confirmed
    /// the `sub` (a subscription made while disconnected replays once connected).
    replay: Option<u64>,
}

/// What a reconnect sends for one pattern.
pub(crate) struct Resub {
    /// The channel or pattern.
    pub pattern: String,
    /// `replay`, when nothing was confirmed yet.
    pub replay: Option<u64>,
    /// `since`: the watermark, when there is one (wins over `replay`).
    pub since: Option<u64>,
}

impl Subs {
    /// Adds a handler; true when it is the first for `pattern` (so the broker
    /// must be told). `replay` and `since` apply only to a new pattern: `since`
    /// becomes its watermark (nothing at or below it is delivered).
    pub fn add(
        &mut self,
        pattern: &str,
        id: u64,
        h: MsgHandler,
        replay: Option<u64>,
        since: Option<u64>,
    ) -> bool {
        let e = self
            .by_pattern
            .entry(pattern.to_owned())
            .or_insert_with(|| SubEntry {
                handlers: Vec::new(),
                watermark: since,
                replay,
            });
        e.handlers.push((id, h));
        e.handlers.len() == 1
    }

    /// Removes a handler; true when it was the last for `pattern` (its
    /// watermark goes with it).
    pub fn remove(&mut self, pattern: &str, id: u64) -> bool {
        let Some(e) = self.by_pattern.get_mut(pattern) else {
            return false;
        };
        let before = e.handlers.len();
        e.handlers.retain(|(i, _)| *i != id);
        if e.handlers.is_empty() && before > 0 {
            self.by_pattern.remove(pattern);
            return true;
        }
        false
    }

    /// A broker confirmed the `sub` of `pattern` with high-water `offset` (the
    /// last offset it issued): the pending replay is done, and without a
    /// watermark yet, `offset` becomes it (so a reconnect resumes from there).
    /// On a resubscription (`resumed`), an `offset` below the watermark means
    /// the broker's offsets started again (a restarted broker without
    /// persistence): the watermark follows it down, or every new message up to
    /// the old watermark would be skipped.
    pub fn confirmed(&mut self, pattern: &str, offset: Option<u64>, resumed: bool) {
        let Some(e) = self.by_pattern.get_mut(pattern) else {
            return;
        };
        e.replay = None;
        if let Some(h) = offset {
            e.watermark = Some(match e.watermark {
                None => h,
                Some(w) if resumed => w.min(h),
                Some(w) => w,
            });
        }
    }

    /// The handlers to run for a message on `channel` with retention `offset`:
    /// those of every matching pattern whose watermark is below `offset` (each
    /// such watermark moves up to it). A connection receives a message once
    /// however many of its subscriptions match.
    pub fn deliver(&mut self, channel: &str, offset: Option<u64>) -> Vec<MsgHandler> {
        let mut out = Vec::new();
        for (p, e) in &mut self.by_pattern {
            if !procmesh_proto::topic::matches(p, channel) {
                continue;
            }
            if let Some(o) = offset {
                if e.watermark.is_some_and(|w| o <= w) {
                    continue;
                }
                e.watermark = Some(o);
            }
            out.extend(e.handlers.iter().map(|(_, h)| h.clone()));
        }
        out
    }

    /// The handlers of exactly `pattern` (the Redis backend delivers per
    /// subscription matched, not per connection).
    #[cfg(feature = "redis")]
    pub fn handlers(&self, pattern: &str) -> Vec<MsgHandler> {
        self.by_pattern
            .get(pattern)
            .map(|e| e.handlers.iter().map(|(_, h)| h.clone()).collect())
            .unwrap_or_default()
    }

    /// The patterns to subscribe again after a reconnect, each resuming after
    /// its watermark (or with its pending replay).
    pub fn resubscriptions(&self) -> Vec<Resub> {
        self.by_pattern
            .iter()
            .map(|(p, e)| Resub {
                pattern: p.clone(),
                replay: e.replay.filter(|_| e.watermark.is_none()),
                since: e.watermark,
            })
            .collect()
    }

    /// The watermark of `pattern` (tests).
    #[cfg(test)]
    fn watermark(&self, pattern: &str) -> Option<u64> {
        self.by_pattern.get(pattern).and_then(|e| e.watermark)
    }
}

enum Job {
    Event(Event),
    Msg(Vec<MsgHandler>, Message),
    Listen(Sender<Event>),
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    Sink(EventSink),
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

    /// Adds `sink` as a listener of every later event.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn listen_with(&self, sink: EventSink) {
        let _ = self.tx.send(Job::Sink(sink));
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
    let mut sinks: Vec<EventSink> = Vec::new();
    while let Ok(job) = rx.recv() {
        match job {
            Job::Event(e) => {
                for cb in &callbacks {
                    // A panicking callback must not take the dispatch thread down.
                    let _ = catch_unwind(AssertUnwindSafe(|| cb(&e)));
                }
                listeners.retain(|l| l.send(e.clone()).is_ok());
                sinks.retain_mut(|s| s(&e));
            }
            Job::Msg(handlers, msg) => {
                for h in handlers {
                    let m = msg.clone();
                    let _ = catch_unwind(AssertUnwindSafe(|| h(m)));
                }
            }
            Job::Listen(l) => listeners.push(l),
            Job::Sink(s) => sinks.push(s),
        }
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
        assert!(s.add("orders.*", 1, h.clone(), None, None));
        assert!(!s.add("orders.*", 2, h.clone(), None, None));
        assert!(s.add("orders.new", 3, h.clone(), None, None));
        assert_eq!(s.deliver("orders.new", None).len(), 3);
        assert_eq!(s.deliver("orders.old", None).len(), 2);
        assert_eq!(s.deliver("users", None).len(), 0);
        assert!(!s.remove("orders.*", 1));
        assert!(s.remove("orders.*", 2));
        assert!(!s.remove("orders.*", 2), "already gone");
        let rs = s.resubscriptions();
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].pattern, "orders.new");
    }

    #[test]
    fn watermark_skips_seen_offsets_per_pattern_and_goes_with_unsubscribe() {
        let h: MsgHandler = Arc::new(|_m| {});
        let mut s = Subs::default();
        s.add("a.*", 1, h.clone(), Some(u64::MAX), None);
        s.add("a.x", 2, h.clone(), None, Some(5));
        // Pending replay until confirmed; `since` is the watermark from the start.
        let rs = s.resubscriptions();
        let wild = rs.iter().find(|r| r.pattern == "a.*").unwrap();
        assert_eq!((wild.replay, wild.since), (Some(u64::MAX), None));
        let exact = rs.iter().find(|r| r.pattern == "a.x").unwrap();
        assert_eq!((exact.replay, exact.since), (None, Some(5)));
        // Offset 3: new to `a.*`, at or below `a.x`'s watermark.
        assert_eq!(s.deliver("a.x", Some(3)).len(), 1);
        assert_eq!(s.deliver("a.x", Some(3)).len(), 0, "a duplicate is skipped");
        assert_eq!(s.deliver("a.x", Some(6)).len(), 2);
        assert_eq!(s.watermark("a.*"), Some(6));
        // A confirmed sub keeps a higher watermark; a lower high-water (a broker
        // that started its offsets again) brings it down.
        s.confirmed("a.*", Some(9), true);
        assert_eq!(s.watermark("a.*"), Some(6));
        assert!(s.resubscriptions().iter().all(|r| r.replay.is_none()));
        s.confirmed("a.x", Some(2), false);
        assert_eq!(s.watermark("a.x"), Some(6), "a first sub keeps its `since`");
        s.confirmed("a.*", Some(2), true);
        assert_eq!(s.watermark("a.*"), Some(2));
        // Unsubscribing drops the watermark: a new subscription starts fresh.
        assert!(s.remove("a.*", 1));
        s.add("a.*", 3, h, None, None);
        assert_eq!(s.watermark("a.*"), None);
        s.confirmed("a.*", Some(4), false);
        assert_eq!(s.watermark("a.*"), Some(4));
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
