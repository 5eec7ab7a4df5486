//! Cache and atomics through the client, identical in both codecs, plus
//! interop between a JSON and a MessagePack client on one broker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use procmesh::{Codec, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::support::{eventually, InProc, CODECS};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    age: u32,
    score: f64,
    tags: Vec<String>,
    extra: Option<BTreeMap<String, i64>>,
}

fn profile() -> Profile {
    Profile {
        name: "Zoë 🦀".into(),
        age: 41,
        score: 2.5,
        tags: vec!["a".into(), "b".into()],
        extra: Some([("x".to_owned(), -3)].into()),
    }
}

#[test]
fn get_set_del_has_round_trip_any_serde_type() {
    for codec in CODECS {
        let b = InProc::start();
        let c = b.client(codec);
        assert_eq!(c.get::<String>("missing").unwrap(), None, "{codec:?}");
        c.set("user:1", &profile()).unwrap();
        assert_eq!(
            c.get::<Profile>("user:1").unwrap(),
            Some(profile()),
            "{codec:?}"
        );
        c.set("n", &42u64).unwrap();
        assert_eq!(c.get::<u64>("n").unwrap(), Some(42));
        c.set("null", &()).unwrap();
        assert_eq!(
            c.get::<serde_json::Value>("null").unwrap(),
            Some(serde_json::Value::Null)
        );
        assert!(c.has("user:1").unwrap());
        assert!(c.del("user:1").unwrap());
        assert!(!c.del("user:1").unwrap());
        assert!(!c.has("user:1").unwrap());
        // A type mismatch is a decode error, not a panic.
        let e = c.get::<Profile>("n").unwrap_err();
        assert!(matches!(e, procmesh::ClientError::Decode(_)), "{e:?}");
    }
}

#[test]
fn keys_clear_mget_mset() {
    for codec in CODECS {
        let b = InProc::start();
        let c = b.client(codec);
        c.mset(&[("a", 1), ("b", 2), ("c", 3)]).unwrap();
        let mut keys = c.keys().unwrap();
        keys.sort();
        assert_eq!(keys, ["a", "b", "c"], "{codec:?}");
        let got: Vec<Option<i32>> = c.mget(&["c", "zz", "a"]).unwrap();
        assert_eq!(got, vec![Some(3), None, Some(1)]);
        c.clear().unwrap();
        assert!(c.keys().unwrap().is_empty());
    }
}

#[test]
fn incr_decr_cas() {
    for codec in CODECS {
        let b = InProc::start();
        let c = b.client(codec);
        assert_eq!(c.incr("ctr", 1).unwrap(), 1, "{codec:?}");
        assert_eq!(c.incr("ctr", 10).unwrap(), 11);
        assert_eq!(c.decr("ctr", 5).unwrap(), 6);
        assert_eq!(c.incr_float("f", 0.5).unwrap(), 0.5);
        c.set("s", &"text").unwrap();
        let e = c.incr("s", 1).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotNumber), "{e}");

        // cas: absent prev matches a missing key; absent next deletes.
        assert!(c.cas("k", None, Some(&profile())).unwrap());
        assert!(!c.cas("k", None, Some(&profile())).unwrap());
        let mut p2 = profile();
        p2.age += 1;
        assert!(c.cas("k", Some(&profile()), Some(&p2)).unwrap());
        assert_eq!(c.get::<Profile>("k").unwrap(), Some(p2.clone()));
        assert!(c.cas("k", Some(&p2), None).unwrap());
        assert!(!c.has("k").unwrap());
        // Structural equality: 1 and 1.0 are equal.
        c.set("one", &1).unwrap();
        assert!(c
            .cas(
                "one",
                Some(&serde_json::json!(1.0)),
                Some(&serde_json::json!(2))
            )
            .unwrap());
    }
}

#[test]
fn ttl_expires_entries() {
    for codec in CODECS {
        let b = InProc::start();
        let c = b.client(codec);
        c.set_with_ttl("short", &1, Duration::from_millis(30))
            .unwrap();
        c.set_with_ttl("long", &1, Duration::from_secs(600))
            .unwrap();
        eventually("a 30 ms entry expires", || {
            c.get::<i32>("short").unwrap().is_none()
        });
        assert_eq!(c.get::<i32>("long").unwrap(), Some(1), "{codec:?}");
    }
}

#[test]
fn many_threads_pipeline_on_one_connection() {
    for codec in CODECS {
        let b = InProc::start();
        let c = b.client(codec);
        let threads = 8;
        let per = 300;
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        c.incr("total", 1).unwrap();
                        let k = format!("t{t}:{i}");
                        c.set(&k, &(t, i)).unwrap();
                        assert_eq!(c.get::<(i32, i32)>(&k).unwrap(), Some((t, i)));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(
            c.get::<i64>("total").unwrap(),
            Some(threads as i64 * per as i64)
        );
        // All of it went over one connection.
        assert_eq!(c.stats().unwrap().connections, 1, "{codec:?}");
    }
}

#[test]
fn json_and_msgpack_clients_share_values() {
    let b = InProc::start();
    let j = b.client(Codec::Json);
    let m = b.client(Codec::MsgPack);
    j.set("from-json", &profile()).unwrap();
    m.set("from-mp", &profile()).unwrap();
    assert_eq!(m.get::<Profile>("from-json").unwrap(), Some(profile()));
    assert_eq!(j.get::<Profile>("from-mp").unwrap(), Some(profile()));
    // cas across codecs compares structurally.
    let as_json = serde_json::to_value(profile()).unwrap();
    assert!(m
        .cas("from-json", Some(&as_json), Some(&serde_json::json!(1)))
        .unwrap());
    assert_eq!(j.incr("from-json", 1).unwrap(), 2);
    let vals: Vec<Option<serde_json::Value>> = j.mget(&["from-mp", "from-json"]).unwrap();
    assert_eq!(vals[1], Some(serde_json::json!(2)));
    assert_eq!(vals[0].as_ref().unwrap()["name"], "Zoë 🦀");
}

#[test]
fn stats_and_ping_and_shutdown() {
    let mut b = InProc::start();
    let c = b.client(Codec::MsgPack);
    c.set("a", &1).unwrap();
    assert!(c.ping().unwrap() < Duration::from_secs(5));
    let s = c.stats().unwrap();
    assert_eq!(s.cache_size, 1);
    assert!(s.ops.get("set").copied().unwrap_or(0) >= 1, "{:?}", s.ops);
    assert!(s.raw.get("uptimeMs").is_some(), "{:?}", s.raw);
    assert!(s.shards.is_empty());
    let c2 = c.clone();
    c.shutdown_broker().unwrap();
    b.handle.take().unwrap().join().unwrap();
    // The client is closed: it neither reconnects nor respawns.
    let e = c2.get::<i32>("a").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Disconnected), "{e}");
}

#[test]
fn close_fails_later_requests_at_once() {
    let b = InProc::start();
    let c = b.client(Codec::MsgPack);
    let other = Arc::new(c.clone());
    c.close();
    let e = other.set("x", &1).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Disconnected), "{e}");
}

#[test]
fn large_values_cross_many_reads() {
    for codec in CODECS {
        let b = InProc::start();
        let c = b.client(codec);
        let big: Vec<u32> = (0..300_000).collect();
        let text = "x".repeat(3 << 20);
        c.set("big", &big).unwrap();
        c.set("text", &text).unwrap();
        assert_eq!(
            c.get::<Vec<u32>>("big").unwrap().as_deref(),
            Some(&big[..]),
            "{codec:?}"
        );
        assert_eq!(
            c.get::<String>("text").unwrap().map(|t| t.len()),
            Some(text.len())
        );
    }
}

#[test]
fn client_and_errors_are_thread_safe_types() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<procmesh::Client>();
    assert_send_sync::<procmesh::ClientError>();
    assert_send_sync::<procmesh::Subscription>();
    assert_send_sync::<procmesh::Registration>();
    assert_send_sync::<procmesh::LockGuard>();
    assert_send_sync::<procmesh::Message>();
}
