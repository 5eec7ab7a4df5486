//! Our Rust client against a broker on a socket, in one codec (`default`: negotiated): PASS/FAIL per check.
use std::sync::mpsc::channel;
use std::time::Duration;

use procmesh::{Client, Codec, LockOptions};
use serde_json::{json, Value};

fn main() {
    let mut args = std::env::args().skip(1);
    let sock = args.next().expect("socket");
    let codec = match args.next().as_deref() {
        Some("json") => Some(Codec::Json),
        Some("msgpack") => Some(Codec::MsgPack),
        _ => None,
    };
    let tag = format!("[rust {}]", codec.map(|c| c.name()).unwrap_or("default"));
    let mk = || {
        let mut b = Client::builder()
            .address(&sock)
            .auto_spawn(false)
            .reconnect(false)
            .connect_timeout(Duration::from_secs(2))
            .call_timeout(Duration::from_secs(2));
        if let Some(c) = codec {
            b = b.codec(c);
        }
        b.connect()
    };
    let mut fails = 0;
    let mut report = |name: &str, r: Result<(), String>| match r {
        Ok(()) => println!("PASS {tag} {name}"),
        Err(e) => {
            fails += 1;
            println!("FAIL {tag} {name}: {e}")
        }
    };
    let a = match mk() {
        Ok(c) => c,
        Err(e) => {
            report("connect", Err(format!("{e} ({e:?})")));
            std::process::exit(1);
        }
    };
    report("connect", Ok(()));
    let b = mk().expect("second client");
    println!("     codec in use: {:?}", a.codec());
    let e = |x: procmesh::ClientError| format!("{x} ({x:?})");
    let nested = json!({"user": {"id": 7, "roles": ["a", "b"]}, "rows": [{"x": 1}, {"x": 2}], "big": 1099511627776u64, "n": 100});
    report("set/get nested", (|| {
        a.set("rp:nested", &nested).map_err(e)?;
        let got: Option<Value> = b.get("rp:nested").map_err(e)?;
        if got.as_ref() != Some(&nested) { return Err(format!("got {got:?}")); }
        Ok(())
    })());
    report("get miss", (|| {
        let got: Option<Value> = b.get("rp:missing").map_err(e)?;
        if got.is_some() { return Err(format!("got {got:?}")); }
        Ok(())
    })());
    report("set_with_ttl/has/del", (|| {
        a.set_with_ttl("rp:t", &1, Duration::from_secs(60)).map_err(e)?;
        if !b.has("rp:t").map_err(e)? { return Err("has false".into()); }
        if !b.del("rp:t").map_err(e)? { return Err("del false".into()); }
        Ok(())
    })());
    report("mset/mget", (|| {
        a.mset(&[("rp:m1", json!({"n": 1})), ("rp:m2", json!([1, 2]))]).map_err(e)?;
        let got: Vec<Option<Value>> = b.mget(&["rp:m1", "rp:none", "rp:m2"]).map_err(e)?;
        if got != vec![Some(json!({"n": 1})), None, Some(json!([1, 2]))] { return Err(format!("got {got:?}")); }
        Ok(())
    })());
    report("incr/decr", (|| {
        let _ = a.del("rp:n");
        let n = a.incr("rp:n", 1).map_err(e)?;
        let m = b.decr("rp:n", 3).map_err(e)?;
        if (n, m) != (1, -2) { return Err(format!("got {n}, {m}")); }
        a.set("rp:big", &(1u64 << 40)).map_err(e)?;
        let big = a.incr("rp:big", 1).map_err(e)?;
        if big != (1i64 << 40) + 1 { return Err(format!("big incr {big}")); }
        Ok(())
    })());
    report("cas", (|| {
        let _ = a.del("rp:c");
        if !a.cas("rp:c", None, Some(&json!({"v": 1}))).map_err(e)? { return Err("cas absent".into()); }
        if a.cas("rp:c", Some(&json!({"v": 2})), Some(&json!({"v": 3}))).map_err(e)? { return Err("cas mismatch true".into()); }
        if !a.cas("rp:c", Some(&json!({"v": 1})), None).map_err(e)? { return Err("cas delete".into()); }
        Ok(())
    })());
    report("pub/sub", (|| {
        let (tx, rx) = channel();
        let tx = std::sync::Mutex::new(tx);
        let sub = b.subscribe("rp.ch.*", move |m| { let _ = tx.lock().unwrap().send(format!("{m:?}")); }).map_err(e)?;
        let n = a.publish("rp.ch.x", &json!({"hello": 1})).map_err(e)?;
        if n != 1 { return Err(format!("delivered {n}")); }
        let got = rx.recv_timeout(Duration::from_secs(2)).map_err(|x| format!("no message: {x}"))?;
        println!("     message: {got}");
        sub.unsubscribe().map_err(e)?;
        Ok(())
    })());
    report("rpc", (|| {
        let reg = b.register("rp.add", |(x, y): (i64, i64)| Ok(x + y)).map_err(e)?;
        let s: i64 = a.call("rp.add", &(2, 40), None).map_err(e)?;
        if s != 42 { return Err(format!("sum {s}")); }
        drop(reg);
        match a.call::<_, i64>("rp.none", &(1,), None) {
            Err(x) => println!("     no handler: {x}"),
            Ok(v) => return Err(format!("call to nothing returned {v}")),
        }
        Ok(())
    })());
    report("locks + fencing", (|| {
        let g = a.lock("rp:L", LockOptions::default()).map_err(e)?.ok_or("not acquired")?;
        if b.lock("rp:L", LockOptions::default()).map_err(e)?.is_some() { return Err("second lock granted".into()); }
        let tok = g.token();
        a.fenced_set("rp:L", tok, "rp:g", &1).map_err(e)?;
        drop(g);
        Ok(())
    })());
    report("stats", (|| {
        let s = a.stats().map_err(e)?;
        println!("     stats: connections={} cache_size={} duplicates={} dedup_size={}", s.connections, s.cache_size, s.duplicates, s.dedup_size);
        Ok(())
    })());
    std::process::exit(if fails > 0 { 1 } else { 0 });
}
