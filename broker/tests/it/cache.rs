//! §6: cache and atomic semantics over both codecs.

use std::time::Duration;

use serde_json::json;

use crate::support::{Codec, TestBroker, TestClient};

fn both(b: &TestBroker) -> [TestClient; 2] {
    [
        TestClient::hello(&b.path, Codec::Json, None),
        TestClient::hello(&b.path, Codec::MsgPack, None),
    ]
}

#[test]
fn get_set_del_has_keys_clear_in_both_codecs() {
    let b = TestBroker::start(&[]);
    for mut c in both(&b) {
        assert_eq!(c.ok(json!({"t":"clear"})), json!(true));
        assert_eq!(
            c.ok(json!({"t":"set","key":"a","value":{"n":[1,"x",null,true]}})),
            json!(true)
        );
        assert_eq!(
            c.ok(json!({"t":"get","key":"a"})),
            json!({"n":[1,"x",null,true]})
        );
        let missing = c.request(json!({"t":"get","key":"nope"}));
        assert_eq!(missing["t"], "ok");
        assert!(
            missing.get("value").is_none(),
            "absent value is omitted: {missing}"
        );
        assert_eq!(c.ok(json!({"t":"has","key":"a"})), json!(true));
        assert_eq!(c.ok(json!({"t":"has","key":"nope"})), json!(false));
        c.ok(json!({"t":"set","key":"b","value":2}));
        let mut keys: Vec<String> = serde_json::from_value(c.ok(json!({"t":"keys"}))).unwrap();
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(c.ok(json!({"t":"del","key":"a"})), json!(true));
        assert_eq!(c.ok(json!({"t":"del","key":"a"})), json!(false));
        assert_eq!(c.ok(json!({"t":"clear"})), json!(true));
        assert_eq!(c.ok(json!({"t":"keys"})), json!([]));
    }
}

#[test]
fn values_cross_codecs_unchanged() {
    let b = TestBroker::start(&[]);
    let [mut j, mut m] = both(&b);
    let v = json!({"s":"héllo \"q\" \n","i":-42,"big":9007199254740993u64,"f":1.5,"a":[[],{}],"n":null,"t":true});
    j.ok(json!({"t":"set","key":"from-json","value":v}));
    assert_eq!(m.ok(json!({"t":"get","key":"from-json"})), v);
    m.ok(json!({"t":"set","key":"from-mp","value":v}));
    assert_eq!(j.ok(json!({"t":"get","key":"from-mp"})), v);
    // And back: msgpack reads its own write, JSON reads JSON's, through mget too.
    let got = j.ok(json!({"t":"mget","keys":["from-json","from-mp","none"]}));
    assert_eq!(
        got,
        json!({"values":[v, v, null], "found":[true, true, false]})
    );
}

#[test]
fn ttl_expires_and_default_ttl_applies() {
    let b = TestBroker::start(&["--default-ttl", "150"]);
    let mut c = TestClient::hello(&b.path, Codec::MsgPack, None);
    c.ok(json!({"t":"set","key":"short","value":1,"ttl":100}));
    c.ok(json!({"t":"set","key":"default","value":1}));
    c.ok(json!({"t":"set","key":"long","value":1,"ttl":60000}));
    assert_eq!(c.ok(json!({"t":"has","key":"short"})), json!(true));
    std::thread::sleep(Duration::from_millis(250)); // let both TTLs pass
    assert!(c
        .request(json!({"t":"get","key":"short"}))
        .get("value")
        .is_none());
    assert_eq!(c.ok(json!({"t":"has","key":"default"})), json!(false));
    assert_eq!(c.ok(json!({"t":"get","key":"long"})), json!(1));
    assert_eq!(c.ok(json!({"t":"keys"})), json!(["long"]));
}

#[test]
fn lru_evicts_least_recently_used_first() {
    let b = TestBroker::start(&["--max-keys", "3"]);
    let mut c = TestClient::hello(&b.path, Codec::Json, None);
    for k in ["a", "b", "c"] {
        c.ok(json!({"t":"set","key":k,"value":k}));
    }
    c.ok(json!({"t":"get","key":"a"})); // a is now most recent; b is the LRU
    c.ok(json!({"t":"set","key":"d","value":"d"}));
    assert_eq!(c.ok(json!({"t":"has","key":"b"})), json!(false));
    for k in ["a", "c", "d"] {
        assert_eq!(c.ok(json!({"t":"has","key":k})), json!(true), "{k}");
    }
    assert_eq!(c.stats()["cacheSize"], 3);
}

#[test]
fn max_bytes_bounds_total_value_size() {
    let b = TestBroker::start(&["--max-bytes", "100"]);
    let mut c = TestClient::hello(&b.path, Codec::Json, None);
    let v = "x".repeat(38); // 40 bytes encoded as a JSON string
    for k in ["a", "b"] {
        c.ok(json!({"t":"set","key":k,"value":v}));
    }
    assert_eq!(c.stats()["cacheSize"], 2);
    c.ok(json!({"t":"set","key":"c","value":v}));
    let st = c.stats();
    assert_eq!(st["cacheSize"], 2, "{st}");
    assert!(st["cacheBytes"].as_u64().unwrap() <= 100);
    assert_eq!(c.ok(json!({"t":"has","key":"a"})), json!(false));
}

#[test]
fn incr_decr_count_from_zero_keep_integers_and_ttl() {
    let b = TestBroker::start(&[]);
    for mut c in both(&b) {
        c.ok(json!({"t":"del","key":"n"}));
        assert_eq!(c.ok(json!({"t":"incr","key":"n"})), json!(1));
        assert_eq!(c.ok(json!({"t":"incr","key":"n","by":10})), json!(11));
        assert_eq!(c.ok(json!({"t":"decr","key":"n","by":2})), json!(9));
        assert_eq!(c.ok(json!({"t":"decr","key":"n"})), json!(8));
        assert_eq!(c.ok(json!({"t":"incr","key":"n","by":0.5})), json!(8.5));
        c.ok(json!({"t":"set","key":"s","value":"text"}));
        assert_eq!(c.err_code(json!({"t":"incr","key":"s"})), "ENOTNUMBER");
        assert_eq!(
            c.ok(json!({"t":"get","key":"s"})),
            json!("text"),
            "a failed incr changes nothing"
        );
    }
    // A counter with an expiry does not become immortal.
    let mut c = TestClient::hello(&b.path, Codec::Json, None);
    c.ok(json!({"t":"set","key":"ttl-counter","value":5,"ttl":150}));
    assert_eq!(c.ok(json!({"t":"incr","key":"ttl-counter"})), json!(6));
    c.ok(json!({"t":"set","key":"ttl-cas","value":{"v":1},"ttl":150}));
    assert_eq!(
        c.ok(json!({"t":"cas","key":"ttl-cas","prev":{"v":1},"next":{"v":2}})),
        json!(true)
    );
    std::thread::sleep(Duration::from_millis(250)); // let the TTLs pass
    assert_eq!(c.ok(json!({"t":"has","key":"ttl-counter"})), json!(false));
    assert_eq!(c.ok(json!({"t":"has","key":"ttl-cas"})), json!(false));
}

#[test]
fn cas_is_structural_and_handles_absent() {
    let b = TestBroker::start(&[]);
    let [mut j, mut m] = both(&b);
    // Absent prev matches a missing key.
    assert_eq!(
        j.ok(json!({"t":"cas","key":"k","next":{"a":1,"b":[1,2]}})),
        json!(true)
    );
    assert_eq!(j.ok(json!({"t":"cas","key":"k","next":1})), json!(false));
    // Key order and 1 vs 1.0 do not matter, across codecs too.
    assert_eq!(
        m.ok(json!({"t":"cas","key":"k","prev":{"b":[1.0,2],"a":1},"next":"v2"})),
        json!(true)
    );
    assert_eq!(j.ok(json!({"t":"get","key":"k"})), json!("v2"));
    assert_eq!(
        j.ok(json!({"t":"cas","key":"k","prev":"other","next":"v3"})),
        json!(false)
    );
    // Absent next deletes.
    assert_eq!(j.ok(json!({"t":"cas","key":"k","prev":"v2"})), json!(true));
    assert_eq!(j.ok(json!({"t":"has","key":"k"})), json!(false));
}

#[test]
fn mget_and_mset() {
    let b = TestBroker::start(&[]);
    for mut c in both(&b) {
        assert_eq!(
            c.ok(json!({"t":"mset","entries":[["x",1],["y",{"z":null}],["n",null]]})),
            json!(true)
        );
        assert_eq!(
            c.ok(json!({"t":"mget","keys":["x","missing","y","n"]})),
            json!({"values":[1,null,{"z":null},null],"found":[true,false,true,true]})
        );
        assert_eq!(
            c.err_code(json!({"t":"mset","entries":[["ok",1],[2,3]]})),
            "EBROKER"
        );
        assert_eq!(
            c.ok(json!({"t":"has","key":"ok"})),
            json!(false),
            "a bad mset writes nothing"
        );
        assert_eq!(c.err_code(json!({"t":"mget","keys":"x"})), "EBROKER");
    }
}

#[test]
fn expired_keys_are_reclaimed_without_reads() {
    let b = TestBroker::start(&["--max-keys", "0"]);
    let mut c = TestClient::hello(&b.path, Codec::MsgPack, None);
    const N: usize = 200_000;
    // Pipeline the writes in batches, then wait for every reply.
    let mut batch = Vec::new();
    for chunk in 0..N / 1000 {
        batch.clear();
        for i in 0..1000 {
            let k = chunk * 1000 + i;
            batch.extend(crate::support::encode(
                Codec::MsgPack,
                &json!({"t":"set","id":k + 1000,"key":format!("k{k}"),"value":k,"ttl":100}),
            ));
        }
        c.send_raw(&batch).unwrap();
        for i in 0..1000 {
            let r = c.read_frame().expect("reply");
            assert_eq!(r["id"], chunk * 1000 + i + 1000);
        }
    }
    std::thread::sleep(Duration::from_millis(1000)); // nobody reads; only active expiry runs
    let st = c.stats();
    assert!(
        st["cacheSize"].as_u64().unwrap() < (N / 100) as u64,
        "expired keys piled up: {st}"
    );
    assert!(st["expired"].as_u64().unwrap() >= (N - N / 100) as u64);
    assert_eq!(st["evicted"], 0);
}

#[test]
fn stats_count_cache_hits_and_misses_of_get_mget_and_has() {
    let b = TestBroker::start(&[]);
    let mut c = TestClient::hello(&b.path, Codec::Json, None);
    c.ok(json!({"t":"set","key":"a","value":1}));
    c.ok(json!({"t":"set","key":"b","value":2}));
    let st = c.stats();
    assert_eq!((&st["hits"], &st["misses"]), (&json!(0), &json!(0)), "{st}");
    c.ok(json!({"t":"get","key":"a"})); // hit
    c.request(json!({"t":"get","key":"zz"})); // miss
    c.ok(json!({"t":"mget","keys":["a","b","zz"]})); // 2 hits, 1 miss
    c.ok(json!({"t":"has","key":"b"})); // hit
    c.ok(json!({"t":"has","key":"zz"})); // miss
                                         // Writes, deletes and atomics are not reads.
    c.ok(json!({"t":"incr","key":"n"}));
    c.ok(json!({"t":"del","key":"b"}));
    c.ok(json!({"t":"cas","key":"a","prev":1,"next":3}));
    c.request(json!({"t":"get","key":"b"})); // miss: deleted
    let st = c.stats();
    assert_eq!(st["hits"], 4, "{st}");
    assert_eq!(st["misses"], 4, "{st}");
}
