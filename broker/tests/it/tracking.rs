//! Near-cache tracking (ours, docs/protocol.md "Near-cache tracking"): a connection
//! that sent `track` gets one `inv` push per key it read when that key changes, by
//! any path and from any connection; others never see one.
//!
//! Ordering used throughout: an `inv` is queued in the turn that changed the key and
//! flushed with that turn's replies, so once the writer has its reply the reader's
//! `inv` is already in the reader's socket; a `ping` the reader sends afterwards is
//! answered after it. "No `inv` before the `pong`" therefore means none was sent.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Codec, TestBroker, TestClient};

fn tracker(b: &TestBroker, codec: Codec) -> TestClient {
    let mut c = TestClient::hello(&b.path, codec, None);
    assert_eq!(c.ok(json!({"t":"track"})), json!(true));
    c
}

/// The frames that arrive before the answer to a fresh `ping`.
fn before_pong(c: &mut TestClient) -> Vec<Value> {
    let id = c.send_request(json!({"t":"ping"}));
    c.reply_to(id);
    c.inbox.drain(..).collect()
}

/// The next `inv` push (failing on anything else), with its keys (`None`: all).
fn next_inv(c: &mut TestClient) -> Option<Vec<String>> {
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let f = c.next_event().expect("connection open");
    assert_eq!(f["t"], "inv", "expected an inv push, got {f}");
    match &f["keys"] {
        Value::Null => None,
        Value::Array(a) => Some(
            a.iter()
                .map(|k| k.as_str().expect("key").to_string())
                .collect(),
        ),
        other => panic!("inv keys must be an array or null: {other}"),
    }
}

#[test]
fn every_mutation_kind_from_another_connection_invalidates_once_per_read() {
    let b = TestBroker::start(&[]);
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut r = tracker(&b, codec);
        let mut w = TestClient::hello(&b.path, Codec::Json, None);
        w.ok(json!({"t":"clear"}));
        assert_eq!(next_inv(&mut r), None, "clear invalidates everything");
        let token = w.ok(json!({"t":"lock","key":"res","ttl":60_000}))["token"].clone();
        let writes = [
            json!({"t":"set","key":"k","value":1}),
            json!({"t":"incr","key":"k","by":2}),
            json!({"t":"decr","key":"k"}),
            json!({"t":"cas","key":"k","prev":0,"next":5}),
            json!({"t":"mset","entries":[["k",6],["other",1]]}),
            json!({"t":"fset","key":"res","token":token,"k":"k","value":7}),
            json!({"t":"fcas","key":"res","token":token,"k":"k","prev":0,"next":8}),
            json!({"t":"fdel","key":"res","token":token,"k":"k"}),
            json!({"t":"set","key":"k","value":9}),
            json!({"t":"del","key":"k"}),
        ];
        for (i, write) in writes.iter().enumerate() {
            // Reads of each kind register the key.
            let read = match i % 3 {
                0 => json!({"t":"get","key":"k"}),
                1 => json!({"t":"has","key":"k"}),
                _ => json!({"t":"mget","keys":["k"]}),
            };
            r.ok(read.clone());
            r.ok(read);
            assert_eq!(w.request(write.clone())["t"], "ok", "{write}");
            assert_eq!(
                next_inv(&mut r),
                Some(vec!["k".to_string()]),
                "after {write} ({codec:?})"
            );
            // Not read again: a second change sends nothing.
            w.request(json!({"t":"set","key":"k","value":0}));
            assert_eq!(before_pong(&mut r), Vec::<Value>::new(), "after {write}");
        }
    }
}

#[test]
fn connections_that_did_not_ask_never_see_an_inv() {
    let b = TestBroker::start(&[]);
    let mut plain = TestClient::hello(&b.path, Codec::MsgPack, None);
    let mut t = tracker(&b, Codec::Json);
    let mut w = b.client();
    plain.ok(json!({"t":"get","key":"k"}));
    t.ok(json!({"t":"get","key":"k"}));
    w.request(json!({"t":"set","key":"k","value":1}));
    w.request(json!({"t":"clear"}));
    assert_eq!(before_pong(&mut plain), Vec::<Value>::new());
    assert_eq!(next_inv(&mut t), Some(vec!["k".into()]));
    assert_eq!(next_inv(&mut t), None);
}

#[test]
fn expiry_and_lru_eviction_invalidate() {
    let b = TestBroker::start(&["--max-keys", "2"]);
    let mut r = tracker(&b, Codec::Json);
    let mut w = b.client();
    // Eviction: `a` is the least recently used when `c` arrives.
    w.ok(json!({"t":"set","key":"a","value":1}));
    w.ok(json!({"t":"set","key":"b","value":2}));
    r.ok(json!({"t":"get","key":"a"}));
    w.ok(json!({"t":"get","key":"b"}));
    w.ok(json!({"t":"set","key":"c","value":3}));
    assert_eq!(next_inv(&mut r), Some(vec!["a".into()]), "evicted");
    assert_eq!(w.ok(json!({"t":"has","key":"a"})), json!(false));
    // Expiry: nobody touches the key; the broker's sweep removes it and says so.
    w.ok(json!({"t":"set","key":"t","value":1,"ttl":300}));
    assert_eq!(r.ok(json!({"t":"get","key":"t"})), json!(1));
    assert_eq!(next_inv(&mut r), Some(vec!["t".into()]), "expired");
}

#[test]
fn the_tracking_table_stays_within_its_bound() {
    let b = TestBroker::start(&["--max-tracked-keys", "3"]);
    let mut r = tracker(&b, Codec::Json);
    let mut w = b.client();
    for i in 0..10 {
        r.request(json!({"t":"get","key":format!("k{i}")}));
    }
    // Past the bound the oldest tracked keys are invalidated, as they are evicted.
    let mut evicted = Vec::new();
    while evicted.len() < 7 {
        evicted.extend(next_inv(&mut r).expect("keys"));
    }
    let want: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
    assert_eq!(evicted, want);
    // Only the three still tracked are announced when everything changes.
    for i in 0..10 {
        w.ok(json!({"t":"set","key":format!("k{i}"),"value":i}));
    }
    let mut rest = Vec::new();
    while rest.len() < 3 {
        rest.extend(next_inv(&mut r).expect("keys"));
    }
    assert_eq!(rest, ["k7", "k8", "k9"]);
    assert_eq!(before_pong(&mut r), Vec::<Value>::new());
}

#[test]
fn a_closed_trackers_state_goes_with_it() {
    let b = TestBroker::start(&[]);
    let mut w = b.client();
    {
        let mut r = tracker(&b, Codec::Json);
        r.ok(json!({"t":"get","key":"k"}));
    }
    // The next connection takes the closed one's slot; it never asked for tracking.
    let mut plain = b.client();
    plain.request(json!({"t":"ping"}));
    w.ok(json!({"t":"set","key":"k","value":1}));
    assert_eq!(before_pong(&mut plain), Vec::<Value>::new());
    let mut again = tracker(&b, Codec::Json);
    w.ok(json!({"t":"set","key":"k","value":2}));
    assert_eq!(
        before_pong(&mut again),
        Vec::<Value>::new(),
        "not inherited"
    );
}
