//! Issue 11 item 2: the idempotent producer. `hello` returns the presented producer
//! id or mints one; a `pub` with `pid`+`seq` is delivered at most once per (pid,
//! channel) with a window for gap fills; the state is bounded, counted in stats, and
//! kept across a restart with persistence on.

use procmesh_broker::dedup::DedupConfig;
use procmesh_broker::persistence::FsyncMode;
use procmesh_broker::retain::RetainConfig;
use serde_json::{json, Value};

use crate::retained::{drain_msgs, retained, sub_replay, Embedded, CODECS};
use crate::support::TestClient;

fn ipub(c: &mut TestClient, channel: &str, pid: &str, seq: u64) -> Value {
    c.ok(json!({"t":"pub","channel":channel,"payload":seq,"pid":pid,"seq":seq}))
}

fn window(w: u64) -> DedupConfig {
    DedupConfig {
        window: w,
        ..Default::default()
    }
}

#[test]
fn hello_returns_the_presented_producer_id_or_mints_a_unique_one() {
    for codec in CODECS {
        let b = Embedded::new(DedupConfig::default(), RetainConfig::default(), None);
        let mut c = crate::support::TestClient::connect(&b.sock, codec);
        let w = c.request(json!({"t":"hello","pid":"p-fixed"}));
        assert_eq!(w["pid"], json!("p-fixed"));
        let mut pids = std::collections::HashSet::new();
        for _ in 0..3 {
            let mut c = crate::support::TestClient::connect(&b.sock, codec);
            let w = c.request(json!({"t":"hello","pid":null}));
            assert!(pids.insert(w["pid"].as_str().unwrap().to_string()));
        }
    }
}

#[test]
fn retried_seq_is_delivered_once_and_answered_null() {
    for codec in CODECS {
        let b = Embedded::new(DedupConfig::default(), RetainConfig::default(), None);
        let mut s = b.client(codec);
        sub_replay(&mut s, "c", json!({}));
        let mut p = b.client(codec);
        assert_eq!(ipub(&mut p, "c", "p1", 1), json!(1));
        assert_eq!(ipub(&mut p, "c", "p1", 1), Value::Null);
        // Another channel or producer is another sequence.
        assert_eq!(ipub(&mut p, "d", "p1", 1), json!(0));
        assert_eq!(ipub(&mut p, "c", "p2", 1), json!(1));
        assert_eq!(drain_msgs(&mut s).len(), 2);
        let st = p.stats();
        assert_eq!(st["duplicates"], json!(1));
        assert_eq!(st["dedupSize"], json!(3));
        // acks 0: dropped silently (no reply expected).
        p.send(&json!({"t":"pub","channel":"c","payload":1,"pid":"p1","seq":1,"acks":0}));
        assert!(drain_msgs(&mut s).is_empty());
        assert_eq!(p.stats()["duplicates"], json!(2));
    }
}

#[test]
fn gap_seq_inside_the_window_is_delivered_not_a_duplicate() {
    for codec in CODECS {
        let b = Embedded::new(window(4), RetainConfig::default(), None);
        let mut s = b.client(codec);
        sub_replay(&mut s, "c", json!({}));
        let mut p = b.client(codec);
        assert_eq!(ipub(&mut p, "c", "p", 1), json!(1));
        assert_eq!(ipub(&mut p, "c", "p", 3), json!(1));
        assert_eq!(ipub(&mut p, "c", "p", 2), json!(1), "gap fill");
        assert_eq!(ipub(&mut p, "c", "p", 2), Value::Null);
        assert_eq!(ipub(&mut p, "c", "p", 10), json!(1));
        assert_eq!(ipub(&mut p, "c", "p", 6), Value::Null, "below the window");
        assert_eq!(ipub(&mut p, "c", "p", 7), json!(1), "inside the window");
        let got: Vec<Value> = drain_msgs(&mut s)
            .iter()
            .map(|m| m["payload"].clone())
            .collect();
        assert_eq!(got, [json!(1), json!(3), json!(2), json!(10), json!(7)]);
    }
}

#[test]
fn dedup_disabled_delivers_retries() {
    let cfg = DedupConfig {
        enabled: false,
        ..Default::default()
    };
    let b = Embedded::new(cfg, RetainConfig::default(), None);
    let mut p = b.client(CODECS[0]);
    let mut s = b.client(CODECS[1]);
    sub_replay(&mut s, "c", json!({}));
    assert_eq!(ipub(&mut p, "c", "p", 1), json!(1));
    assert_eq!(ipub(&mut p, "c", "p", 1), json!(1));
    assert_eq!(drain_msgs(&mut s).len(), 2);
    assert_eq!(p.stats()["dedupSize"], json!(0));
}

#[test]
fn dedup_entries_are_bounded_by_max_lru() {
    let cfg = DedupConfig {
        max: 2,
        ..Default::default()
    };
    let b = Embedded::new(cfg, RetainConfig::default(), None);
    let mut p = b.client(CODECS[1]);
    ipub(&mut p, "c", "a", 1);
    ipub(&mut p, "c", "b", 1);
    ipub(&mut p, "c", "x", 1); // evicts a
    assert_eq!(p.stats()["dedupSize"], json!(2));
    assert_eq!(ipub(&mut p, "c", "b", 1), Value::Null);
    assert_eq!(ipub(&mut p, "c", "a", 1), json!(0), "a was forgotten");
}

#[test]
fn dedup_idle_ttl_forgets_a_producer() {
    let cfg = DedupConfig {
        ttl_ms: 100,
        ..Default::default()
    };
    let b = Embedded::new(cfg, RetainConfig::default(), None);
    let mut p = b.client(CODECS[0]);
    ipub(&mut p, "c", "a", 1);
    assert_eq!(ipub(&mut p, "c", "a", 1), Value::Null);
    // The bound is an idle time: let it pass.
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(ipub(&mut p, "c", "a", 1), json!(0));
}

#[test]
fn dedup_holds_across_a_restart_with_persistence() {
    for codec in CODECS {
        for pubsub in [RetainConfig::default(), retained(100)] {
            let mut b = Embedded::new(DedupConfig::default(), pubsub, Some(FsyncMode::EverySec));
            let mut p = b.client(codec);
            for seq in [1, 2, 3, 5] {
                assert_eq!(ipub(&mut p, "c", "stable", seq), json!(0));
            }
            drop(p);
            b.restart();
            let mut s = b.client(codec);
            sub_replay(&mut s, "c", json!({}));
            let mut p = b.client(codec);
            assert_eq!(ipub(&mut p, "c", "stable", 3), Value::Null);
            assert_eq!(ipub(&mut p, "c", "stable", 5), Value::Null);
            assert_eq!(ipub(&mut p, "c", "stable", 4), json!(1), "gap fill");
            assert_eq!(ipub(&mut p, "c", "stable", 6), json!(1));
            let got: Vec<Value> = drain_msgs(&mut s)
                .iter()
                .map(|m| m["payload"].clone())
                .collect();
            assert_eq!(got, [json!(4), json!(6)]);
        }
    }
}
