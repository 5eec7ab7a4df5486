//! `scan` (ours, issue 16 item 2): a large keyspace listed page by page with a
//! cursor, complete under concurrent writes, each page bounded in keys, slots
//! visited and bytes; bad input gets a clear error; plain `keys` is unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Keys every page-by-page scan below must find.
const STABLE: usize = 200_000;

/// One page: its keys and the next cursor (`None`: the scan is complete).
fn page(c: &mut TestClient, req: Value) -> (Vec<String>, Option<String>) {
    let v = c.ok(req);
    let keys = v["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("scan reply without keys: {v}"))
        .iter()
        .map(|k| k.as_str().expect("keys are strings").to_owned())
        .collect();
    let cursor = match &v["cursor"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("cursor is a string or null, got {other}"),
    };
    (keys, cursor)
}

/// Scans everything with `prefix` in pages of `limit`; every page holds at most
/// `limit` keys. Returns each key with the number of times it came.
fn scan_all(c: &mut TestClient, prefix: &str, limit: u64) -> HashMap<String, u32> {
    let mut seen = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut req = json!({"t": "scan", "prefix": prefix, "limit": limit});
        if let Some(cur) = &cursor {
            req["cursor"] = json!(cur);
        }
        let (keys, next) = page(c, req);
        assert!(
            keys.len() as u64 <= limit,
            "a page of {} > {limit}",
            keys.len()
        );
        for k in keys {
            assert!(k.starts_with(prefix), "{k} does not start with {prefix}");
            *seen.entry(k).or_insert(0) += 1;
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return seen,
        }
    }
}

fn mset_range(c: &mut TestClient, name: impl Fn(usize) -> String, range: std::ops::Range<usize>) {
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(2000) {
        let entries: Vec<Value> = chunk.iter().map(|&i| json!([name(i), i])).collect();
        c.ok(json!({"t": "mset", "entries": entries}));
    }
}

#[test]
fn scan_returns_every_key_of_a_200k_keyspace_exactly_once_under_concurrent_writes() {
    let b = TestBroker::start(&["--max-keys", "0"]);
    let mut c = b.client();
    mset_range(&mut c, |i| format!("stable:{i}"), 0..STABLE);
    // Keys that are deleted while the scan runs, so slots free up behind and ahead.
    mset_range(&mut c, |i| format!("churn:{i}"), 0..20_000);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let path = b.path.clone();
        std::thread::spawn(move || {
            let mut w = TestClient::connect(&path, Codec::Json);
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) || n < 20_000 {
                // Inserts reuse the slots the deletes free, before and after the cursor.
                w.ok(json!({"t": "del", "key": format!("churn:{}", n % 20_000)}));
                w.ok(json!({"t": "set", "key": format!("new:{n}"), "value": n}));
                n += 1;
            }
            n
        })
    };
    // Scan with the writer running (it runs until told to stop, and at least 20 000
    // rounds).
    let seen = scan_all(&mut c, "", 1000);
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written >= 20_000);
    for i in 0..STABLE {
        let k = format!("stable:{i}");
        assert_eq!(seen.get(&k), Some(&1), "{k} seen {:?} times", seen.get(&k));
    }
    // Nothing that never existed: every key is stable:*, churn:* or new:*.
    assert!(seen
        .keys()
        .all(|k| k.starts_with("stable:") || k.starts_with("churn:") || k.starts_with("new:")));
    // Quiet now: a scan by prefix finds exactly what `keys` says is there.
    let by_prefix = scan_all(&mut c, "new:", 10_000);
    let keys = c.ok(json!({"t": "keys"}));
    let want: HashSet<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .filter(|k| k.starts_with("new:"))
        .collect();
    assert_eq!(by_prefix.len(), written, "every new:* key once");
    assert!(by_prefix.values().all(|&n| n == 1));
    assert_eq!(
        by_prefix.keys().map(String::as_str).collect::<HashSet<_>>(),
        want
    );
}

#[test]
fn a_limit_over_the_cap_is_capped_and_a_limit_of_zero_or_a_bad_cursor_is_refused() {
    let b = TestBroker::start(&["--max-keys", "0"]);
    let mut c = b.client();
    mset_range(&mut c, |i| format!("k{i}"), 0..25_000);
    let (keys, cursor) = page(&mut c, json!({"t": "scan", "limit": 1_000_000}));
    assert_eq!(keys.len(), 10_000, "capped at 10 000 per page");
    assert!(cursor.is_some());
    let (keys, _) = page(&mut c, json!({"t": "scan"}));
    assert_eq!(keys.len(), 1000, "the default page");
    let r = c.request(json!({"t": "scan", "limit": 0}));
    assert_eq!(
        (r["t"].as_str(), r["code"].as_str()),
        (Some("err"), Some("EBROKER")),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().contains("limit"), "{r}");
    let r = c.request(json!({"t": "scan", "cursor": "not-a-cursor"}));
    assert_eq!(r["code"], "EBROKER", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("not-a-cursor"),
        "{r}"
    );
    let r = c.request(json!({"t": "scan", "prefix": 7}));
    assert_eq!(r["code"], "EBROKER", "{r}");
    // A cursor past the end is a finished scan, not an error.
    let (keys, cursor) = page(&mut c, json!({"t": "scan", "cursor": "999999999"}));
    assert!(keys.is_empty() && cursor.is_none());
    // Still serving.
    assert_eq!(c.request(json!({"t": "ping"}))["t"], "pong");
}

#[test]
fn a_narrow_prefix_gets_short_pages_with_a_cursor_instead_of_one_long_turn() {
    let b = TestBroker::start(&["--max-keys", "0"]);
    let mut c = b.client();
    mset_range(&mut c, |i| format!("other:{i}"), 0..50_000);
    c.ok(json!({"t": "set", "key": "needle", "value": 1}));
    // A page visits at most 10 × limit slots: 100 of 50 001 here.
    let (keys, cursor) = page(
        &mut c,
        json!({"t": "scan", "prefix": "needle", "limit": 10}),
    );
    assert!(keys.is_empty(), "{keys:?}");
    assert!(cursor.is_some(), "more to visit");
    let all = scan_all(&mut c, "needle", 10);
    assert_eq!(
        all.into_iter().collect::<Vec<_>>(),
        [("needle".to_string(), 1)]
    );
}

#[test]
fn scan_pages_stay_under_the_reply_limit_where_keys_gets_etoobig() {
    let b = TestBroker::start(&["--send-hard-limit", "1MiB", "--max-keys", "0"]);
    let mut c = b.client();
    let big = "x".repeat(5000);
    let entries: Vec<Value> = (0..300)
        .map(|i| json!([format!("{i:05}{big}"), 1]))
        .collect();
    c.ok(json!({"t": "mset", "entries": entries}));
    // The one giant frame is refused with a clear error, the connection stays…
    assert_eq!(c.err_code(json!({"t": "keys"})), "ETOOBIG");
    // …and scan lists the same keys in pages that fit.
    let mut cursor: Option<String> = None;
    let mut n = 0;
    let mut pages = 0;
    loop {
        let mut req = json!({"t": "scan", "limit": 10_000});
        if let Some(cur) = &cursor {
            req["cursor"] = json!(cur);
        }
        let r = c.request(req);
        assert_eq!(
            r["t"],
            "ok",
            "{}",
            &r.to_string()[..200.min(r.to_string().len())]
        );
        let bytes = r.to_string().len();
        assert!(
            bytes < 1 << 20,
            "a page of {bytes} bytes passes the 1 MiB limit"
        );
        n += r["value"]["keys"].as_array().unwrap().len();
        pages += 1;
        match r["value"]["cursor"].as_str() {
            Some(cur) => cursor = Some(cur.to_string()),
            None => break,
        }
    }
    assert_eq!(n, 300);
    assert!(pages >= 2, "the bytes bound split the keys over pages");
}

#[test]
fn scan_skips_expired_keys_and_answers_in_msgpack_too() {
    let b = TestBroker::start(&["--max-keys", "0"]);
    let mut c = b.client_with(Codec::MsgPack);
    c.ok(json!({"t": "set", "key": "a:live", "value": 1}));
    c.ok(json!({"t": "set", "key": "a:gone", "value": 1, "ttl": 1}));
    std::thread::sleep(Duration::from_millis(20)); // the TTL is the thing tested
    let (keys, cursor) = page(&mut c, json!({"t": "scan", "prefix": "a:"}));
    assert_eq!(keys, ["a:live"]);
    assert!(cursor.is_none());
}

#[test]
fn client_scan_lists_a_sharded_keyspace_under_concurrent_writes() {
    let shards = [
        TestBroker::start(&["--max-keys", "0"]),
        TestBroker::start(&["--max-keys", "0"]),
    ];
    let connect = || {
        procmesh::Client::builder()
            .addresses(shards.iter().map(|b| b.path.clone()))
            .auto_spawn(false)
            .connect()
            .expect("sharded client")
    };
    let client = connect();
    let keys: Vec<(String, usize)> = (0..STABLE).map(|i| (format!("s:{i}"), i)).collect();
    for chunk in keys.chunks(5000) {
        client.mset(chunk).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let w = connect();
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                w.set(&format!("w:{n}"), &n).unwrap();
                if n >= 10 {
                    w.del(&format!("w:{}", n - 10)).unwrap();
                }
                n += 1;
            }
        })
    };
    let mut seen: HashMap<String, u32> = HashMap::new();
    for k in client.scan("").page_size(5000) {
        *seen.entry(k.unwrap()).or_insert(0) += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    for (k, _) in &keys {
        assert_eq!(seen.get(k), Some(&1), "{k}");
    }
    // By prefix, on both shards.
    let mut some = client.keys_with_prefix("s:1999").unwrap();
    some.sort();
    let mut want: Vec<String> = (0..STABLE)
        .map(|i| format!("s:{i}"))
        .filter(|k| k.starts_with("s:1999"))
        .collect();
    want.sort();
    assert_eq!(some, want);
    let homes: HashSet<u32> = want.iter().map(|k| procmesh::fnv1a(k) % 2).collect();
    assert_eq!(homes.len(), 2, "the prefix spans both shards");
}
