//! Requests in flight: one [`Slot`] per request, filled by the reader thread
//! and waited on by the calling thread, and the [`Reply`] it carries.
//!
//! Owns the hand-off of a reply between two threads; knows nothing about
//! sockets. The reader decodes a reply frame once and hands over only the
//! `value` field's bytes, so the caller never parses the envelope again.
//! Invariant: a slot is filled at most once (the first fill wins: a reply
//! racing a disconnect or a timeout never overwrites the other).

use std::sync::{Condvar, Mutex, MutexGuard};
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

struct State<T> {
    outcome: Option<Outcome<T>>,
    /// Set by the first fill, and never cleared: a later fill is ignored even
    /// after the waiter has taken the first.
    filled: bool,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            state: Mutex::new(State {
                outcome: None,
                filled: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> Slot<T> {
    /// Stores the outcome unless one is already there, and wakes the waiter.
    pub fn fill(&self, o: Outcome<T>) {
        let mut g = lock(&self.state);
        if !g.filled {
            g.filled = true;
            g.outcome = Some(o);
            self.ready.notify_all();
        }
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
    fn deadline_passes_without_a_fill() {
        let s: Slot = Slot::default();
        assert!(s.wait_until(Instant::now()).is_none());
    }
}
