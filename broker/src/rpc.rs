//! RPC worker pools (PROTOCOL.md §9).
//!
//! `rpc` owns registrations, per-worker in-flight counts and pending calls; it writes
//! no frames. Each call goes to the registered worker with the fewest calls in
//! flight, ties broken round-robin so idle workers share the load.
//!
//! Invariants: `busy[w]` equals the number of pending calls whose worker is `w`; a
//! pool with no workers is removed.

use ahash::RandomState;
use hashbrown::{HashMap, HashSet};

use crate::connection::ConnId;
use crate::timers::{TimerKind, Timers};

/// A call waiting for its worker's result.
#[derive(Debug)]
pub struct PendingCall {
    /// The caller's connection.
    pub caller: ConnId,
    /// The caller connection's serial (a reused slab key must not get the reply).
    pub caller_serial: u64,
    /// The caller's request id, raw in the caller's codec.
    pub reply_to: Option<Box<[u8]>>,
    /// The worker running it.
    pub worker: ConnId,
    /// The procedure.
    pub name: Box<str>,
}

#[derive(Default)]
struct Pool {
    workers: Vec<ConnId>,
    rr: usize,
}

/// All registrations and pending calls of a broker.
#[derive(Default)]
pub struct Rpc {
    pools: HashMap<Box<str>, Pool, RandomState>,
    /// Names each connection registered (a set: registering many names is not
    /// quadratic).
    regs: HashMap<ConnId, HashSet<Box<str>, RandomState>, RandomState>,
    busy: HashMap<ConnId, u32, RandomState>,
    /// Calls in flight per caller (bounded by `maxPendingCalls`).
    by_caller: HashMap<ConnId, u32, RandomState>,
    calls: HashMap<u64, PendingCall, RandomState>,
    next_id: u64,
}

impl Rpc {
    /// Empty tables.
    pub fn new() -> Rpc {
        Rpc::default()
    }

    /// Registers `conn` as a worker for `name`.
    pub fn register(&mut self, conn: ConnId, name: &str) {
        let regs = self.regs.entry(conn).or_default();
        if regs.contains(name) {
            return;
        }
        regs.insert(name.into());
        self.pools.entry_ref(name).or_default().workers.push(conn);
    }

    /// Removes `conn` from `name`'s pool; true if it was registered.
    pub fn unregister(&mut self, conn: ConnId, name: &str) -> bool {
        let Some(regs) = self.regs.get_mut(&conn) else {
            return false;
        };
        if !regs.remove(name) {
            return false;
        }
        if regs.is_empty() {
            self.regs.remove(&conn);
        }
        if let Some(pool) = self.pools.get_mut(name) {
            pool.workers.retain(|&w| w != conn);
            if pool.workers.is_empty() {
                self.pools.remove(name);
            }
        }
        true
    }

    /// `(name, worker count)` for every registered procedure.
    pub fn procs(&self) -> impl Iterator<Item = (&str, usize)> {
        self.pools.iter().map(|(n, p)| (&**n, p.workers.len()))
    }

    /// Calls in flight.
    pub fn pending(&self) -> usize {
        self.calls.len()
    }

    /// Names `conn` registered.
    pub fn registrations_of(&self, conn: ConnId) -> usize {
        self.regs.get(&conn).map_or(0, |r| r.len())
    }

    /// Calls in flight that `caller` made.
    pub fn calls_of(&self, caller: ConnId) -> u32 {
        self.by_caller.get(&caller).copied().unwrap_or(0)
    }

    /// Calls in flight on `worker`.
    pub fn in_flight(&self, worker: ConnId) -> u32 {
        self.busy.get(&worker).copied().unwrap_or(0)
    }

    /// Picks the least busy worker of `name`, round-robin among equals.
    fn pick(&mut self, name: &str) -> Option<ConnId> {
        let pool = self.pools.get_mut(name)?;
        let n = pool.workers.len();
        let mut best: Option<(u32, usize)> = None;
        for i in 0..n {
            let idx = (pool.rr + i) % n;
            let load = self.busy.get(&pool.workers[idx]).copied().unwrap_or(0);
            if best.is_none_or(|(b, _)| load < b) {
                best = Some((load, idx));
            }
        }
        let (_, idx) = best?;
        pool.rr = (idx + 1) % n;
        Some(pool.workers[idx])
    }

    /// Starts a call; returns its id and the chosen worker, or `None` when nobody
    /// serves `name` (ENOHANDLER).
    pub fn start(
        &mut self,
        name: &str,
        call: impl FnOnce(ConnId) -> PendingCall,
        deadline: u64,
        timers: &mut Timers,
    ) -> Option<(u64, ConnId)> {
        let worker = self.pick(name)?;
        self.next_id += 1;
        let id = self.next_id;
        let call = call(worker);
        *self.by_caller.entry(call.caller).or_default() += 1;
        self.calls.insert(id, call);
        *self.busy.entry(worker).or_default() += 1;
        timers.add(deadline, TimerKind::CallDeadline(id));
        Some((id, worker))
    }

    fn done(&mut self, id: u64) -> Option<PendingCall> {
        let call = self.calls.remove(&id)?;
        if let Some(b) = self.by_caller.get_mut(&call.caller) {
            *b -= 1;
            if *b == 0 {
                self.by_caller.remove(&call.caller);
            }
        }
        if let Some(b) = self.busy.get_mut(&call.worker) {
            *b -= 1;
            if *b == 0 {
                self.busy.remove(&call.worker);
            }
        }
        Some(call)
    }

    /// A `result` for call `id` from `from`. Late or foreign results give `None`.
    pub fn finish(&mut self, id: u64, from: ConnId) -> Option<PendingCall> {
        if self.calls.get(&id)?.worker != from {
            return None;
        }
        self.done(id)
    }

    /// A call's deadline passed: the call is removed (its worker's slot freed).
    pub fn expire(&mut self, id: u64) -> Option<PendingCall> {
        self.done(id)
    }

    /// Whether a timer still refers to a pending call.
    pub fn timer_alive(&self, t: TimerKind) -> bool {
        matches!(t, TimerKind::CallDeadline(id) if self.calls.contains_key(&id))
    }

    /// A connection closed: its registrations go, and the calls it was running are
    /// returned (to be failed with EHANDLERGONE).
    pub fn remove_conn(&mut self, conn: ConnId) -> Vec<PendingCall> {
        if let Some(names) = self.regs.remove(&conn) {
            for name in names.iter() {
                if let Some(pool) = self.pools.get_mut(&**name) {
                    pool.workers.retain(|&w| w != conn);
                    if pool.workers.is_empty() {
                        self.pools.remove(&**name);
                    }
                }
            }
        }
        if self.by_caller.contains_key(&conn) {
            // Nobody is left to answer: free the calls this connection made (the
            // worker's late result is then ignored; its slot is freed now).
            let ids: Vec<u64> = self
                .calls
                .iter()
                .filter(|(_, c)| c.caller == conn)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                self.done(id);
            }
        }
        if self.busy.contains_key(&conn) {
            let ids: Vec<u64> = self
                .calls
                .iter()
                .filter(|(_, c)| c.worker == conn)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| self.done(id)).collect()
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(caller: ConnId) -> impl FnOnce(ConnId) -> PendingCall {
        move |worker| PendingCall {
            caller,
            caller_serial: 0,
            reply_to: None,
            worker,
            name: "f".into(),
        }
    }

    #[test]
    fn idle_workers_share_and_busy_ones_are_avoided() {
        let mut r = Rpc::new();
        let mut t = Timers::default();
        r.register(ConnId(10), "f");
        r.register(ConnId(11), "f");
        let mut count = [0; 2];
        for _ in 0..100 {
            let (id, w) = r.start("f", call(ConnId(1)), 1000, &mut t).unwrap();
            count[w.0 - 10] += 1;
            assert!(r.finish(id, w).is_some());
        }
        assert_eq!(count, [50, 50]);
        let (_, w) = r.start("f", call(ConnId(1)), 1000, &mut t).unwrap();
        let (_, w2) = r.start("f", call(ConnId(1)), 1000, &mut t).unwrap();
        assert_ne!(w, w2);
        assert_eq!(r.pending(), 2);
    }

    #[test]
    fn worker_gone_fails_its_calls_and_late_results_are_ignored() {
        let mut r = Rpc::new();
        let mut t = Timers::default();
        r.register(ConnId(10), "f");
        assert!(r.start("g", call(ConnId(1)), 0, &mut t).is_none());
        let (id, _) = r.start("f", call(ConnId(1)), 0, &mut t).unwrap();
        assert!(
            r.finish(id, ConnId(99)).is_none(),
            "only the worker may answer"
        );
        let gone = r.remove_conn(ConnId(10));
        assert_eq!(gone.len(), 1);
        assert!(r.finish(id, ConnId(10)).is_none());
        assert_eq!(r.procs().count(), 0);
        assert_eq!(r.in_flight(ConnId(10)), 0);
    }
}
