//! Subscriptions and the match index (PROTOCOL.md §8).
//!
//! `pubsub` owns who is subscribed to what; it does not write frames (the dispatcher
//! fans out, encoding each message once per codec). Exact channels are one hash
//! lookup. Wildcard patterns (`prefix*`) are indexed by prefix, and a publish looks up
//! only the channel's prefixes whose length some pattern has: the cost grows with
//! the channel's length and the matches, never with the number of patterns.
//!
//! Invariants: `by_conn[c]` holds exactly the subscriptions naming `c` in `exact` and
//! `prefixes` (a set, so a connection with many subscriptions does not make each
//! subscribe linear); no empty subscriber list is kept; `lens[n]` counts the
//! prefixes of byte length `n` present in `prefixes`.

use std::collections::BTreeMap;

use ahash::RandomState;
use hashbrown::{HashMap, HashSet};

use crate::connection::ConnId;

/// The subscription tables.
#[derive(Default)]
pub struct PubSub {
    exact: HashMap<Box<str>, Vec<ConnId>, RandomState>,
    prefixes: HashMap<Box<str>, Vec<ConnId>, RandomState>,
    lens: BTreeMap<usize, usize>,
    by_conn: HashMap<ConnId, HashSet<Box<str>, RandomState>, RandomState>,
    count: usize,
    // Per-publish dedup: the epoch at which a connection was last matched.
    marks: Vec<u64>,
    epoch: u64,
}

impl PubSub {
    /// Empty tables.
    pub fn new() -> PubSub {
        PubSub::default()
    }

    /// Total subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nobody is subscribed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Subscriptions `conn` holds.
    pub fn subscriptions_of(&self, conn: ConnId) -> usize {
        self.by_conn.get(&conn).map_or(0, |s| s.len())
    }

    /// Whether `conn` holds `sub`.
    pub fn has_subscription(&self, conn: ConnId, sub: &str) -> bool {
        self.by_conn.get(&conn).is_some_and(|s| s.contains(sub))
    }

    /// Subscribes `conn` to `sub` (an exact channel or a `prefix*` pattern). Returns
    /// false when it already was.
    pub fn subscribe(&mut self, conn: ConnId, sub: &str) -> bool {
        let mine = self.by_conn.entry(conn).or_default();
        if mine.contains(sub) {
            return false;
        }
        mine.insert(sub.into());
        let (table, prefix) = match sub.strip_suffix('*') {
            Some(p) => (&mut self.prefixes, p),
            None => (&mut self.exact, sub),
        };
        let list = table.entry_ref(prefix).or_default();
        if list.is_empty() && sub.ends_with('*') {
            *self.lens.entry(prefix.len()).or_default() += 1;
        }
        list.push(conn);
        self.count += 1;
        true
    }

    /// Unsubscribes `conn` from `sub`. Returns false when it was not subscribed.
    pub fn unsubscribe(&mut self, conn: ConnId, sub: &str) -> bool {
        let Some(mine) = self.by_conn.get_mut(&conn) else {
            return false;
        };
        if !mine.remove(sub) {
            return false;
        }
        if mine.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.remove_from_index(conn, sub);
        true
    }

    fn remove_from_index(&mut self, conn: ConnId, sub: &str) {
        let (table, prefix, is_pattern) = match sub.strip_suffix('*') {
            Some(p) => (&mut self.prefixes, p, true),
            None => (&mut self.exact, sub, false),
        };
        if let Some(list) = table.get_mut(prefix) {
            if let Some(i) = list.iter().position(|&c| c == conn) {
                list.swap_remove(i);
                self.count -= 1;
            }
            if list.is_empty() {
                table.remove(prefix);
                if is_pattern {
                    if let Some(n) = self.lens.get_mut(&prefix.len()) {
                        *n -= 1;
                        if *n == 0 {
                            self.lens.remove(&prefix.len());
                        }
                    }
                }
            }
        }
    }

    /// Drops every subscription of a closing connection.
    pub fn remove_conn(&mut self, conn: ConnId) {
        if let Some(subs) = self.by_conn.remove(&conn) {
            for s in subs.iter() {
                self.remove_from_index(conn, s);
            }
        }
    }

    /// Calls `f` once per connection matching `channel`, however many of its
    /// subscriptions match.
    pub fn for_each_match(&mut self, channel: &str, mut f: impl FnMut(ConnId)) {
        self.epoch += 1;
        let epoch = self.epoch;
        let marks = &mut self.marks;
        let mut visit = |list: &Vec<ConnId>| {
            for &c in list {
                let i = c.index();
                if i >= marks.len() {
                    marks.resize(i + 1, 0);
                }
                if marks[i] != epoch {
                    marks[i] = epoch;
                    f(c);
                }
            }
        };
        if let Some(list) = self.exact.get(channel) {
            visit(list);
        }
        for (&n, _) in self.lens.range(..=channel.len()) {
            // A prefix that splits a UTF-8 character matches no (valid UTF-8) pattern.
            if let Some(prefix) = channel.get(..n) {
                if let Some(list) = self.prefixes.get(prefix) {
                    visit(list);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procmesh_proto::topic;
    use proptest::prelude::*;

    fn matches(ps: &mut PubSub, ch: &str) -> Vec<usize> {
        let mut v = Vec::new();
        ps.for_each_match(ch, |c| v.push(c.index()));
        v.sort();
        v
    }

    #[test]
    fn exact_prefix_and_dedup() {
        let mut ps = PubSub::new();
        assert!(ps.subscribe(ConnId::new(1), "orders.created"));
        assert!(ps.subscribe(ConnId::new(1), "orders.*"));
        assert!(!ps.subscribe(ConnId::new(1), "orders.*"));
        assert!(ps.subscribe(ConnId::new(2), "*"));
        assert!(ps.subscribe(ConnId::new(3), "users.*"));
        assert_eq!(matches(&mut ps, "orders.created"), vec![1, 2]);
        assert_eq!(matches(&mut ps, "users.x"), vec![2, 3]);
        assert_eq!(ps.len(), 4);
        ps.remove_conn(ConnId::new(1));
        assert_eq!(matches(&mut ps, "orders.created"), vec![2]);
        assert!(ps.unsubscribe(ConnId::new(2), "*"));
        assert!(!ps.unsubscribe(ConnId::new(2), "*"));
        assert_eq!(matches(&mut ps, "orders.created"), Vec::<usize>::new());
        assert_eq!(ps.len(), 1);
        assert!(ps.lens.len() == 1);
    }

    proptest! {
        // Model test: the index answers like matching every subscription by hand.
        #[test]
        fn index_matches_linear_scan(
            subs in prop::collection::vec((0usize..6, "[ab]{0,3}\\*?"), 0..40),
            unsubs in prop::collection::vec(0usize..40, 0..10),
            channels in prop::collection::vec("[ab]{0,4}", 1..10),
        ) {
            let mut ps = PubSub::new();
            let mut model: Vec<(usize, String)> = Vec::new();
            for (c, s) in &subs {
                if ps.subscribe(ConnId::new(*c), s) {
                    model.push((*c, s.clone()));
                }
            }
            for i in unsubs {
                if i < model.len() {
                    let (c, s) = model.remove(i);
                    prop_assert!(ps.unsubscribe(ConnId::new(c), &s));
                }
            }
            prop_assert_eq!(ps.len(), model.len());
            for ch in channels {
                let mut want: Vec<usize> = model.iter().filter(|(_, s)| topic::matches(s, &ch)).map(|(c, _)| *c).collect();
                want.sort();
                want.dedup();
                prop_assert_eq!(matches(&mut ps, &ch), want);
            }
        }
    }
}
