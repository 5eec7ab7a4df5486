//! Requests in flight: one [`Slot`] per request, filled by the reader thread
//! and waited on by the calling thread (a condvar) or polled by an async task
//! (a waker), and the [`Reply`] it carries.
//!
//! Owns the hand-off of a reply between two threads; knows nothing about
//! sockets. The reader decodes a reply frame once and hands over only the
//! `value` field's bytes, so the caller never parses the envelope again.
//! Invariant: a slot is filled at most once (the first fill wins: a reply
//! racing a disconnect or a timeout never overwrites the other). A slot whose
//! waiter went away (a dropped future) is *abandoned*: its outcome, when it
//! comes, goes to the abandon handler (an unlock for a granted lock) or is
//! dropped, never to a waker of a task that is gone.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use procmesh_proto::{Codec, Raw};
use serde::de::DeserializeOwned;

use crate::error::Result;

/// Locks a mutex, ignoring poison: no user code runs under the client's
/// locks, so a poisoned lock can only mean a bug in this crate, whose state is
/// still consistent at every unlock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A reply to a request, already decoded by the reader: the `value` field's
/// bytes (validated, in the connection's codec), if the reply had one.
///
/// Only the value is copied out of the read buffer (a reply without one, such
/// as `set`'s, allocates nothing); fields are decoded on demand.
#[derive(Debug)]
pub(crate) struct Reply {
    codec: Codec,
    value: Option<Vec<u8>>,
}

impl Reply {
    /// Keeps `value` (borrowed from the reply frame) past the read buffer.
    pub fn new(codec: Codec, value: Option<Raw<'_>>) -> Reply {
        Reply {
            codec,
            value: value.map(|r| r.bytes.to_vec()),
        }
    }

    /// The codec of the value.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The `value` field, if present.
    pub fn raw_value(&self) -> Option<Raw<'_>> {
        self.value.as_deref().map(|b| Raw::new(self.codec, b))
    }

    /// The `value` field decoded; absent reads as null.
    pub fn value<T: DeserializeOwned>(&self) -> Result<T> {
        match self.raw_value() {
            Some(r) => crate::value::decode(r),
            None => crate::value::decode(crate::value::null(self.codec)),
        }
    }

    /// The `value` field decoded, `None` when absent.
    pub fn opt<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.raw_value().map(crate::value::decode).transpose()
    }
}

/// A reply (by default a [`Reply`]) or the error that replaced it.
pub(crate) type Outcome<T = Reply> = Result<T>;

/// Where one request's reply goes.
pub(crate) struct Slot<T = Reply> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// What an abandoned slot does with an outcome that arrives after its waiter left.
pub(crate) type OnAbandon<T = Reply> = Box<dyn FnOnce(Outcome<T>) + Send>;

struct State<T> {
    outcome: Option<Outcome<T>>,
    /// Set by the first fill, and never cleared: a later fill is ignored even
    /// after the waiter has taken the first.
    filled: bool,
    /// The task to wake at the fill (an async waiter), replaced at each poll.
    waker: Option<Waker>,
    /// The waiter is gone; a later outcome goes to `on_abandon` (if any).
    abandoned: bool,
    on_abandon: Option<OnAbandon<T>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            state: Mutex::new(State {
                outcome: None,
                filled: false,
                waker: None,
                abandoned: false,
                on_abandon: None,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> Slot<T> {
    /// Stores the outcome unless one is already there, and wakes the waiter
    /// (a thread or a task). An abandoned slot hands it to its handler instead,
    /// outside the slot's lock.
    pub fn fill(&self, o: Outcome<T>) {
        let mut g = lock(&self.state);
        if g.filled {
            return;
        }
        g.filled = true;
        if g.abandoned {
            let h = g.on_abandon.take();
            drop(g);
            if let Some(h) = h {
                h(o);
            }
            return;
        }
        g.outcome = Some(o);
        self.ready.notify_all();
        let w = g.waker.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Polls for the outcome from an async task: ready once filled, else the
    /// task's waker is kept and woken by the fill.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        let mut g = lock(&self.state);
        match g.outcome.take() {
            Some(o) => Poll::Ready(o),
            None => {
                if !g.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    g.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// The waiter is gone (its future was dropped): an outcome already here, or
    /// the one still to come, goes to `on_abandon` (or is dropped without one).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn abandon(&self, on_abandon: Option<OnAbandon<T>>) {
        let mut g = lock(&self.state);
        g.waker = None;
        if let Some(o) = g.outcome.take() {
            drop(g);
            if let Some(h) = on_abandon {
                h(o);
            }
            return;
        }
        if g.filled {
            // Taken already by the waiter; nothing is left to hand over.
            return;
        }
        g.abandoned = true;
        g.on_abandon = on_abandon;
    }

    /// Takes the outcome if it has arrived.
    pub fn take(&self) -> Option<Outcome<T>> {
        lock(&self.state).outcome.take()
    }

    /// Waits until the outcome arrives or `deadline` passes.
    pub fn wait_until(&self, deadline: Instant) -> Option<Outcome<T>> {
        let mut g = lock(&self.state);
        loop {
            if let Some(o) = g.outcome.take() {
                return Some(o);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .ready
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// What to do with the reply to request `id`.
pub(crate) enum Pending {
    /// A caller waits for it.
    Waiter(std::sync::Arc<Slot>),
    /// Nobody waits (an unlock on drop, a replayed subscription): an error reply
    /// becomes an `Event::Error` naming `what`.
    Background(&'static str),
    /// A `sub` replayed after a reconnect, of this pattern: its reply's high-water
    /// offset goes to the connection's subscription table; an error reply becomes
    /// an `Event::Error`.
    Resubscribe(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ClientError;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn first_fill_wins_and_wakes_the_waiter() {
        let s = Arc::new(Slot::default());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait_until(Instant::now() + Duration::from_secs(10)));
        s.fill(Ok(vec![1]));
        s.fill(Err(ClientError::disconnected("late")));
        let got = t.join().unwrap().unwrap().unwrap();
        assert_eq!(got, vec![1]);
        assert!(s.take().is_none());
    }

    #[test]
    fn a_reply_keeps_only_its_value() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let v = crate::value::encode(codec, &[1, 2]).unwrap();
            let r = Reply::new(codec, Some(Raw::new(codec, &v)));
            assert_eq!(r.raw_value().unwrap().bytes, &v[..]);
            assert_eq!(r.value::<Vec<i32>>().unwrap(), vec![1, 2]);
            assert_eq!(r.opt::<Vec<i32>>().unwrap(), Some(vec![1, 2]));
            // No value (a `set`'s `ok`): nothing kept, reads as null or `None`.
            let none = Reply::new(codec, None);
            assert!(none.value.is_none() && none.raw_value().is_none());
            assert_eq!(none.value::<Option<u64>>().unwrap(), None);
            assert_eq!(none.opt::<u64>().unwrap(), None);
        }
    }

    #[test]
    fn an_abandoned_slot_hands_its_outcome_to_the_handler() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let seen = Arc::new(AtomicU32::new(0));
        // Abandoned before the fill: the fill goes to the handler.
        let s: Slot<u32> = Slot::default();
        let s2 = seen.clone();
        s.abandon(Some(Box::new(move |o| {
            s2.fetch_add(o.unwrap(), Ordering::SeqCst);
        })));
        s.fill(Ok(5));
        assert_eq!(seen.load(Ordering::SeqCst), 5);
        assert!(s.take().is_none(), "an abandoned slot keeps nothing");
        // Filled, never taken, then abandoned: the handler gets it at once.
        let s: Slot<u32> = Slot::default();
        s.fill(Ok(7));
        let s2 = seen.clone();
        s.abandon(Some(Box::new(move |o| {
            s2.fetch_add(o.unwrap(), Ordering::SeqCst);
        })));
        assert_eq!(seen.load(Ordering::SeqCst), 12);
    }

    #[test]
    fn a_fill_wakes_the_polling_task() {
        use std::task::Wake;
        struct Flag(std::sync::atomic::AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(Default::default()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let s: Slot<u32> = Slot::default();
        assert!(s.poll(&mut cx).is_pending());
        s.fill(Ok(3));
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(matches!(s.poll(&mut cx), Poll::Ready(Ok(3))));
    }

    #[test]
    fn deadline_passes_without_a_fill() {
        let s: Slot = Slot::default();
        assert!(s.wait_until(Instant::now()).is_none());
    }
}
