//! One timer structure for the whole broker: call deadlines, lock TTLs and lock
//! waits (not one OS timer each).
//!
//! A binary heap ordered by deadline with lazy deletion: cancelling a timer just
//! forgets it at its owner (the owner checks, when the timer fires, whether the thing
//! it refers to still exists). When stale entries could make up most of the heap, the
//! owner rebuilds it with [`Timers::retain`], so memory stays proportional to the
//! live timers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What a timer is for. Ids refer to state in the module that set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// An RPC call's deadline (call id).
    CallDeadline(u64),
    /// A lock grant's TTL (fencing token of the grant).
    LockExpiry(u64),
    /// A lock waiter's `wait` limit (waiter id).
    LockWait(u64),
}

/// The broker's timers.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(u64, TimerKind)>>,
}

impl Timers {
    /// Schedules `kind` at `deadline` (ms on the broker clock).
    pub fn add(&mut self, deadline: u64, kind: TimerKind) {
        self.heap.push(Reverse((deadline, kind)));
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }

    /// Takes the next timer due at `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<TimerKind> {
        match self.heap.peek() {
            Some(Reverse((d, _))) if *d <= now => self.heap.pop().map(|Reverse((_, k))| k),
            _ => None,
        }
    }

    /// Number of scheduled timers, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Keeps only the timers for which `alive` is true.
    pub fn retain(&mut self, mut alive: impl FnMut(TimerKind) -> bool) {
        let v = std::mem::take(&mut self.heap).into_vec();
        self.heap = v.into_iter().filter(|Reverse((_, k))| alive(*k)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order() {
        let mut t = Timers::default();
        t.add(30, TimerKind::LockWait(1));
        t.add(10, TimerKind::CallDeadline(2));
        t.add(20, TimerKind::LockExpiry(3));
        assert_eq!(t.next_deadline(), Some(10));
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.pop_due(25), Some(TimerKind::CallDeadline(2)));
        assert_eq!(t.pop_due(25), Some(TimerKind::LockExpiry(3)));
        assert_eq!(t.pop_due(25), None);
        t.retain(|k| k != TimerKind::LockWait(1));
        assert!(t.is_empty());
    }
}
