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
