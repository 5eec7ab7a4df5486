//! Requests in flight: one [`Slot`] per request, filled by the reader thread
//! and waited on by the calling thread.
//!
//! Owns the hand-off of a reply between two threads; knows nothing about
//! sockets. Invariant: a slot is filled at most once (the first fill wins: a
//! reply racing a disconnect or a timeout never overwrites the other).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::error::Result;

/// Locks a mutex, ignoring poison: no user code runs under the client's
/// locks, so a poisoned lock can only mean a bug in this crate, whose state is
/// still consistent at every unlock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A reply payload (the whole frame's bytes) or the error that replaced it.
pub(crate) type Outcome = Result<Vec<u8>>;

/// Where one request's reply goes.
#[derive(Default)]
pub(crate) struct Slot {
    outcome: Mutex<Option<Outcome>>,
    ready: Condvar,
}

impl Slot {
    /// Stores the outcome unless one is already there, and wakes the waiter.
    pub fn fill(&self, o: Outcome) {
        let mut g = lock(&self.outcome);
        if g.is_none() {
            *g = Some(o);
            self.ready.notify_all();
        }
    }

    /// Takes the outcome if it has arrived.
    pub fn take(&self) -> Option<Outcome> {
        lock(&self.outcome).take()
    }

    /// Waits until the outcome arrives or `deadline` passes.
    pub fn wait_until(&self, deadline: Instant) -> Option<Outcome> {
        let mut g = lock(&self.outcome);
        loop {
            if let Some(o) = g.take() {
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
    fn deadline_passes_without_a_fill() {
        let s = Slot::default();
        assert!(s.wait_until(Instant::now()).is_none());
    }
}
