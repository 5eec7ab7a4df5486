//! Our Rust client against a broker on a socket, in one codec (`default`: negotiated): PASS/FAIL per check.
use std::sync::mpsc::channel;
use std::time::Duration;

use procmesh::{Acks, Client, Codec, LockOptions, PublishOptions, Published, Replay, SubscribeOptions};
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
    // Delivery guarantees (issue 11 item 7): the broker runs with pubsub.persist (retained channels).
    let collect = || {
        let (tx, rx) = channel::<(Option<u64>, i64)>();
        let tx = std::sync::Mutex::new(tx);
        (move |m: procmesh::Message| { let _ = tx.lock().unwrap().send((m.offset(), m.payload().unwrap())); }, rx)
    };
    // Everything up to the marker -1 (published last on the channel).
    let until_end = |rx: &std::sync::mpsc::Receiver<(Option<u64>, i64)>| -> Result<Vec<(Option<u64>, i64)>, String> {
        let mut out = Vec::new();
        loop {
            let (o, n) = rx.recv_timeout(Duration::from_secs(2)).map_err(|x| format!("no end marker after {out:?}: {x}"))?;
            if n == -1 { return Ok(out); }
            out.push((o, n));
        }
    };
    let vals = |v: &[(Option<u64>, i64)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
    report("acks 0/1/all", (|| {
        let (h, rx) = collect();
        let sub = b.subscribe("rp.acks", h).map_err(e)?;
        let r0 = a.publish_with("rp.acks", &1, PublishOptions::new().acks(Acks::None)).map_err(e)?;
        let r1 = a.publish_with("rp.acks", &2, PublishOptions::new().acks(Acks::Leader)).map_err(e)?;
        let r2 = a.publish_with("rp.acks", &3, PublishOptions::new().acks(Acks::All)).map_err(e)?;
        if (r0, r1, r2) != (Published::Sent, Published::Delivered(1), Published::Delivered(1)) { return Err(format!("got {r0:?} {r1:?} {r2:?}")); }
        a.publish("rp.acks", &-1).map_err(e)?;
        let got = until_end(&rx)?;
        if vals(&got) != [1, 2, 3] || got.iter().any(|x| x.0.is_none()) { return Err(format!("received {got:?}")); }
        println!("     offsets: {:?}", got.iter().map(|x| x.0.unwrap()).collect::<Vec<_>>());
        sub.unsubscribe().map_err(e)
    })());
    report("idempotent publish: retry deduplicated, gap filled", (|| {
        let (h, rx) = collect();
        let sub = b.subscribe("rp.idem", h).map_err(e)?;
        let idem = || PublishOptions::new().idempotent(true);
        let first = a.publish_with("rp.idem", &1, idem()).map_err(e)?;
        a.set_sequence("rp.idem", 0).map_err(e)?;
        let retry = a.publish_with("rp.idem", &1, idem()).map_err(e)?;
        a.set_sequence("rp.idem", 2).map_err(e)?;
        let three = a.publish_with("rp.idem", &3, idem()).map_err(e)?;
        a.set_sequence("rp.idem", 1).map_err(e)?;
        let gap = a.publish_with("rp.idem", &2, idem()).map_err(e)?;
        if (first, retry, three, gap) != (Published::Delivered(1), Published::Duplicate, Published::Delivered(1), Published::Delivered(1)) {
            return Err(format!("got {first:?} {retry:?} {three:?} {gap:?}"));
        }
        a.publish_with("rp.idem", &-1, PublishOptions::new().idempotent(false)).map_err(e)?;
        let got = vals(&until_end(&rx)?);
        if got != [1, 3, 2] { return Err(format!("received {got:?}")); }
        sub.unsubscribe().map_err(e)
    })());
    report("replay all / last / since", (|| {
        for n in 1..=4 { a.publish("rp.rep", &n).map_err(e)?; }
        let (h, rx) = collect();
        let all = b.subscribe_with("rp.rep", SubscribeOptions::new().replay(Replay::All), h).map_err(e)?;
        let (h, last_rx) = collect();
        let c = mk().map_err(e)?;
        let last = c.subscribe_with("rp.rep", SubscribeOptions::new().replay(Replay::Last(2)), h).map_err(e)?;
        a.publish("rp.rep", &-1).map_err(e)?;
        let got = until_end(&rx)?;
        if vals(&got) != [1, 2, 3, 4] { return Err(format!("replay all: {got:?}")); }
        let l = vals(&until_end(&last_rx)?);
        if l != [3, 4] { return Err(format!("replay last 2: {l:?}")); }
        let since = got[1].0.ok_or("no offset")?;
        let (h, since_rx) = collect();
        let d = mk().map_err(e)?;
        let s = d.subscribe_with("rp.rep", SubscribeOptions::new().since(since), h).map_err(e)?;
        a.publish("rp.rep", &5).map_err(e)?;
        a.publish("rp.rep", &-1).map_err(e)?;
        // The backlog above `since`: 3, 4, the first marker; then 5 and the second marker.
        let s1 = vals(&until_end(&since_rx)?);
        let s2 = vals(&until_end(&since_rx)?);
        if (s1.as_slice(), s2.as_slice()) != (&[3, 4][..], &[5][..]) { return Err(format!("since {since}: {s1:?} then {s2:?}")); }
        all.unsubscribe().map_err(e)?;
        last.unsubscribe().map_err(e)?;
        s.unsubscribe().map_err(e)
    })());
    report("stats", (|| {
        let s = a.stats().map_err(e)?;
        println!("     stats: connections={} cache_size={} duplicates={} dedup_size={}", s.connections, s.cache_size, s.duplicates, s.dedup_size);
        Ok(())
    })());
    std::process::exit(if fails > 0 { 1 } else { 0 });
}
