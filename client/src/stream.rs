//! Subscriptions as queues: [`Messages`] (the blocking client's receiver and
//! iterator) and the bounded [`Queue`] behind it and behind the async client's
//! `Stream`s.
//!
//! Owns the bound: a queue holds at most its capacity; a message arriving at a
//! full queue is dropped (the newest one: what is queued stays in order) and
//! counted, so a consumer slower than its publishers costs a fixed amount of
//! memory, never a growing one. Delivery into the queue is the dispatch
//! thread's (a subscription handler that pushes); taking out is the
//! consumer's, blocking (`recv`) or polled by an async task. Knows nothing
//! about sockets or requests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::dispatch::Message;
use crate::error::Result;
use crate::pending::lock;
use crate::pubsub::Subscription;
use crate::Client;

/// Messages a subscription queue holds by default before it drops new ones.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// A bounded FIFO between one producer side (the dispatch thread) and one
/// consumer (a thread or a task).
pub(crate) struct Queue<T> {
    state: Mutex<QueueState<T>>,
    ready: Condvar,
    capacity: usize,
    dropped: AtomicU64,
}

struct QueueState<T> {
    items: VecDeque<T>,
    waker: Option<Waker>,
    closed: bool,
}

impl<T> Queue<T> {
    /// An empty queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                waker: None,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `t`, or drops and counts it when the queue is full; false when dropped.
    pub fn push(&self, t: T) -> bool {
        let mut g = lock(&self.state);
        if g.closed {
            return false;
        }
        if g.items.len() >= self.capacity {
            drop(g);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        g.items.push_back(t);
        self.ready.notify_one();
        let w = g.waker.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
        true
    }

    /// No more items will come: a waiting consumer sees the end once the queue drains.
    pub fn close(&self) {
        let mut g = lock(&self.state);
        g.closed = true;
        self.ready.notify_all();
        let w = g.waker.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Items dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        lock(&self.state).items.len()
    }

    /// The next item, waiting until `deadline` (forever when `None`); `None`
    /// at the deadline or once closed and drained.
    pub fn pop_until(&self, deadline: Option<Instant>) -> Option<T> {
        let mut g = lock(&self.state);
        loop {
            if let Some(t) = g.items.pop_front() {
                return Some(t);
            }
            if g.closed {
                return None;
            }
            match deadline {
                None => g = self.ready.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    g = self
                        .ready
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// The next item if one is queued.
    pub fn try_pop(&self) -> Option<T> {
        lock(&self.state).items.pop_front()
    }

    /// Polls for the next item from an async task: `Ready(None)` once closed
    /// and drained.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut g = lock(&self.state);
        if let Some(t) = g.items.pop_front() {
            return Poll::Ready(Some(t));
        }
        if g.closed {
            return Poll::Ready(None);
        }
        if !g.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            g.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A subscription read as a queue: [`Client::subscribe_iter`]'s receiver.
///
/// Messages wait in a bounded queue (capacity [`DEFAULT_QUEUE_CAPACITY`] unless
/// given): when it is full, newer messages are dropped and counted in
/// [`Messages::dropped`], so a slow reader never grows the client's memory.
/// Iterating blocks for each next message and does not end while subscribed;
/// use [`Messages::recv_timeout`] to wait with a bound. Dropping it unsubscribes.
#[must_use = "dropping Messages unsubscribes at once"]
pub struct Messages {
    queue: Arc<Queue<Message>>,
    sub: Option<Subscription>,
}

impl Messages {
    /// The channel or pattern subscribed to.
    pub fn pattern(&self) -> &str {
        self.sub.as_ref().map_or("", |s| s.pattern())
    }

    /// Waits for the next message.
    pub fn recv(&self) -> Option<Message> {
        self.queue.pop_until(None)
    }

    /// Waits up to `timeout` for the next message.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Message> {
        self.queue.pop_until(Some(Instant::now() + timeout))
    }

    /// The next message if one is queued.
    pub fn try_recv(&self) -> Option<Message> {
        self.queue.try_pop()
    }

    /// Messages queued and not yet taken.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Messages dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Unsubscribes and waits for the broker(s) to confirm; queued messages are lost.
    pub fn unsubscribe(mut self) -> Result<()> {
        self.queue.close();
        match self.sub.take() {
            Some(s) => s.unsubscribe(),
            None => Ok(()),
        }
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl Iterator for Messages {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        self.recv()
    }
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("pattern", &self.pattern())
            .field("queued", &self.queued())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Client {
    /// Subscribes like [`Client::subscribe`], delivering into a bounded queue
    /// read with [`Messages::recv`] (or as an iterator) instead of a callback.
    ///
    /// ```no_run
    /// # let client = procmesh::Client::connect()?;
    /// use std::time::Duration;
    /// let msgs = client.subscribe_iter("orders.*")?;
    /// client.publish("orders.created", &1)?;
    /// let m = msgs.recv_timeout(Duration::from_secs(1)).expect("a message");
    /// assert_eq!(m.payload::<i32>()?, 1);
    /// # Ok::<(), procmesh::ClientError>(())
    /// ```
    pub fn subscribe_iter(&self, pattern: &str) -> Result<Messages> {
        self.subscribe_iter_with_capacity(pattern, DEFAULT_QUEUE_CAPACITY)
    }

    /// [`Client::subscribe_iter`] holding at most `capacity` messages.
    pub fn subscribe_iter_with_capacity(&self, pattern: &str, capacity: usize) -> Result<Messages> {
        let queue = Arc::new(Queue::new(capacity));
        let q = queue.clone();
        let sub = self.subscribe(pattern, move |m| {
            q.push(m);
        })?;
        Ok(Messages {
            queue,
            sub: Some(sub),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_the_newest() {
        let q = Queue::new(2);
        assert!(q.push(1) && q.push(2));
        assert!(!q.push(3));
        assert_eq!((q.len(), q.dropped()), (2, 1));
        assert_eq!(q.try_pop(), Some(1));
        assert!(q.push(4));
        assert_eq!(q.pop_until(Some(Instant::now())), Some(2));
        assert_eq!(q.pop_until(Some(Instant::now())), Some(4));
        assert_eq!(q.pop_until(Some(Instant::now())), None);
        q.close();
        assert_eq!(q.pop_until(None), None, "closed and drained ends the wait");
        assert!(!q.push(5));
    }
}
