//! The shared behaviour suite: one body per behaviour of the client API, run
//! against both backends, the broker (`behaviour::broker::*`, an in-process
//! broker on a temp socket) and Redis (`behaviour::redis::*`, with the `redis`
//! feature: a `redis-server` on a temp socket). A body asserts only what both
//! backends promise; documented differences are tested in `redis_backend`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procmesh::{Client, ClientBuilder, Codec, ErrorCode, HandlerError, LockOptions};
use serde::{Deserialize, Serialize};

use crate::support::{InProc, WAIT};

/// A running backend the tests connect clients to.
pub enum Mesh {
    Broker(InProc),
    #[cfg(feature = "redis")]
    Redis(crate::redis_support::RedisServer),
}

impl Mesh {
    /// An in-process broker, with no grace after a call's timeout (the default
    /// 5 s grace is the broker's own; the Redis backend fails a call at its
    /// timeout, README "Past one machine: Redis").
    pub fn broker() -> Mesh {
        Mesh::Broker(InProc::start_with(|b| b.call_grace(Duration::ZERO)))
    }

    #[cfg(feature = "redis")]
    pub fn redis() -> Option<Mesh> {
        crate::redis_support::RedisServer::start().map(Mesh::Redis)
    }

    /// A builder for a client of this mesh (no auto-spawn: a test never talks to
    /// a backend it did not start).
    pub fn builder(&self) -> ClientBuilder {
        match self {
            Mesh::Broker(b) => Client::builder().address(&b.path).auto_spawn(false),
            #[cfg(feature = "redis")]
            Mesh::Redis(r) => Client::builder().name("behaviour").redis(&r.url),
        }
    }

    pub fn client(&self) -> Client {
        self.client_in(Codec::MsgPack)
    }

    pub fn client_in(&self, codec: Codec) -> Client {
        self.builder().codec(codec).connect().expect("connect")
    }
}

/// Declares each behaviour as a test per backend.
macro_rules! behaviours {
    ($($name:ident),* $(,)?) => {
        mod broker {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::Mesh::broker());
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[test]
                fn $name() {
                    if let Some(m) = super::Mesh::redis() {
                        super::$name(&m);
                    }
                }
            )*
        }
    };
}

behaviours!(
    cache_round_trips_any_serde_type,
    ttl_expires_entries,
    keys_clear_mget_mset,
    incr_decr_count_from_zero_and_refuse_non_numbers,
    incr_keeps_the_ttl,
    cas_compares_structurally,
    json_and_msgpack_clients_share_values,
    pubsub_exact_and_prefix_subscriptions,
    pubsub_prefix_is_literal_not_a_glob,
    unsubscribe_stops_delivery,
    idempotent_publish_delivers_each_sequence_once,
    locks_grant_tokens_and_fence_stale_writes,
    lock_wait_gets_the_lock_when_the_holder_drops_it,
    lock_ttl_expires_and_fences_the_old_holder,
    with_lock_times_out_when_held,
    rpc_round_trip_errors_and_timeouts,
    rpc_workers_compete_for_calls,
    rpc_worker_closing_mid_call_is_handler_gone,
    stats_count_operations_and_keys,
    many_threads_share_one_client,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    visits: u32,
    tags: Vec<String>,
}

/// Polls `f` until it is true or [`WAIT`] passes.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn cache_round_trips_any_serde_type(m: &Mesh) {
    let c = m.client();
    let u = User {
        name: "ann".into(),
        visits: 3,
        tags: vec!["a".into(), "b".into()],
    };
    c.set("user:1", &u).unwrap();
    assert_eq!(c.get::<User>("user:1").unwrap(), Some(u));
    assert!(c.has("user:1").unwrap());
    assert_eq!(c.get::<User>("missing").unwrap(), None);
    assert!(!c.has("missing").unwrap());
    c.set("n", &1.5f64).unwrap();
    assert_eq!(c.get::<f64>("n").unwrap(), Some(1.5));
    c.set("unicode ключ", &"значение").unwrap();
    assert_eq!(
        c.get::<String>("unicode ключ").unwrap().as_deref(),
        Some("значение")
    );
    assert!(c.del("user:1").unwrap());
    assert!(!c.del("user:1").unwrap());
    assert_eq!(c.get::<User>("user:1").unwrap(), None);
}

fn ttl_expires_entries(m: &Mesh) {
    let c = m.client();
    c.set_with_ttl("short", &1, Duration::from_millis(50))
        .unwrap();
    c.set_with_ttl("long", &2, Duration::from_secs(60)).unwrap();
    eventually("the short entry to expire", || {
        c.get::<i32>("short").unwrap().is_none()
    });
    assert_eq!(c.get::<i32>("long").unwrap(), Some(2));
}

fn keys_clear_mget_mset(m: &Mesh) {
    let c = m.client();
    c.mset(&[("a", 1), ("b", 2), ("c", 3)]).unwrap();
    let mut k = c.keys().unwrap();
    k.sort();
    assert_eq!(k, vec!["a", "b", "c"]);
    let got: Vec<Option<i32>> = c.mget(&["c", "x", "a"]).unwrap();
    assert_eq!(got, vec![Some(3), None, Some(1)]);
    let none: Vec<Option<i32>> = c.mget::<i32, &str>(&[]).unwrap();
    assert!(none.is_empty());
    c.clear().unwrap();
    assert!(c.keys().unwrap().is_empty());
    assert_eq!(c.get::<i32>("a").unwrap(), None);
}

fn incr_decr_count_from_zero_and_refuse_non_numbers(m: &Mesh) {
    let c = m.client();
    assert_eq!(c.incr("n", 1).unwrap(), 1);
    assert_eq!(c.incr("n", 41).unwrap(), 42);
    assert_eq!(c.decr("n", 2).unwrap(), 40);
    assert_eq!(c.get::<i64>("n").unwrap(), Some(40));
    assert_eq!(c.incr("neg", -5).unwrap(), -5);
    assert_eq!(c.incr_float("f", 0.5).unwrap(), 0.5);
    assert_eq!(c.incr_float("f", 0.25).unwrap(), 0.75);
    c.set("s", &"text").unwrap();
    let e = c.incr("s", 1).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotNumber), "{e}");
    assert_eq!(c.get::<String>("s").unwrap().as_deref(), Some("text"));
    // Many threads, no lost update.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    c.incr("race", 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.get::<i64>("race").unwrap(), Some(200));
}

fn incr_keeps_the_ttl(m: &Mesh) {
    let c = m.client();
    c.set_with_ttl("t", &5, Duration::from_millis(300)).unwrap();
    assert_eq!(c.incr("t", 1).unwrap(), 6);
    assert_eq!(c.get::<i64>("t").unwrap(), Some(6));
    eventually("the incremented entry to expire with its ttl", || {
        c.get::<i64>("t").unwrap().is_none()
    });
}

#[derive(Serialize)]
struct AB {
    a: i32,
    b: i32,
}

#[derive(Serialize)]
struct BA {
    b: i32,
    a: i32,
}

fn cas_compares_structurally(m: &Mesh) {
    let c = m.client();
    // Missing key: prev None.
    assert!(c.cas::<i32>("k", None, Some(&1)).unwrap());
    assert!(!c.cas::<i32>("k", None, Some(&2)).unwrap());
    assert!(!c.cas("k", Some(&5), Some(&6)).unwrap());
    assert!(c.cas("k", Some(&1), Some(&2)).unwrap());
    assert_eq!(c.get::<i32>("k").unwrap(), Some(2));
    // Map order does not matter.
    c.set("m", &AB { a: 1, b: 2 }).unwrap();
    let prev = serde_json::to_value(BA { b: 2, a: 1 }).unwrap();
    assert!(c
        .cas("m", Some(&prev), Some(&serde_json::json!({"a": 9})))
        .unwrap());
    assert_eq!(
        c.get::<serde_json::Value>("m").unwrap(),
        Some(serde_json::json!({"a": 9}))
    );
    // 1 and 1.0 are equal.
    c.set("num", &1).unwrap();
    assert!(c
        .cas(
            "num",
            Some(&serde_json::json!(1.0)),
            Some(&serde_json::json!(3))
        )
        .unwrap());
    // next None deletes.
    assert!(c.cas::<i32>("num", Some(&3), None).unwrap());
    assert!(!c.has("num").unwrap());
}

fn json_and_msgpack_clients_share_values(m: &Mesh) {
    let j = m.client_in(Codec::Json);
    let p = m.client_in(Codec::MsgPack);
    let u = User {
        name: "bo".into(),
        visits: 1,
        tags: vec![],
    };
    j.set("from-json", &u).unwrap();
    assert_eq!(p.get::<User>("from-json").unwrap(), Some(u.clone()));
    p.set("from-msgpack", &u).unwrap();
    assert_eq!(j.get::<User>("from-msgpack").unwrap(), Some(u));
    assert_eq!(j.incr("ctr", 2).unwrap(), 2);
    assert_eq!(p.incr("ctr", 2).unwrap(), 4);
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let _s = j
        .subscribe("x", move |msg| {
            let v: User = msg.payload().unwrap();
            tx.lock().unwrap().send(v).unwrap();
        })
        .unwrap();
    let u2 = User {
        name: "cy".into(),
        visits: 2,
        tags: vec!["t".into()],
    };
    assert_eq!(p.publish("x", &u2).unwrap(), 1);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), u2);
}

fn pubsub_exact_and_prefix_subscriptions(m: &Mesh) {
    let a = m.client();
    let b = m.client();
    let publisher = m.client();
    let (tx, rx) = channel::<(&'static str, String, i32)>();
    let tx_a = Mutex::new(tx.clone());
    let tx_b = Mutex::new(tx);
    let _sa = a
        .subscribe("orders.new", move |msg| {
            let n: i32 = msg.payload().unwrap();
            tx_a.lock()
                .unwrap()
                .send(("exact", msg.channel().to_owned(), n))
                .unwrap();
        })
        .unwrap();
    let _sb = b
        .subscribe("orders.*", move |msg| {
            let n: i32 = msg.payload().unwrap();
            tx_b.lock()
                .unwrap()
                .send(("prefix", msg.channel().to_owned(), n))
                .unwrap();
        })
        .unwrap();
    assert_eq!(publisher.publish("orders.new", &1).unwrap(), 2);
    assert_eq!(publisher.publish("orders.old", &2).unwrap(), 1);
    assert_eq!(publisher.publish("users.new", &3).unwrap(), 0);
    let mut got: Vec<_> = (0..3).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("exact", "orders.new".to_owned(), 1),
            ("prefix", "orders.new".to_owned(), 1),
            ("prefix", "orders.old".to_owned(), 2),
        ]
    );
    // Nothing else arrives (users.new matched nobody).
    publisher.publish("orders.new", &4).unwrap();
    let mut last: Vec<_> = (0..2).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    last.sort();
    assert_eq!(last[0].2, 4);
    assert_eq!(last[1].2, 4);
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
}

fn pubsub_prefix_is_literal_not_a_glob(m: &Mesh) {
    let c = m.client();
    let publisher = m.client();
    let (tx, rx) = channel::<String>();
    let tx = Mutex::new(tx);
    let _s = c
        .subscribe("we?rd[1]\\*", move |msg| {
            tx.lock().unwrap().send(msg.channel().to_owned()).unwrap();
        })
        .unwrap();
    // Glob characters of the prefix match only themselves.
    assert_eq!(publisher.publish("weXrd1\\x", &0).unwrap(), 0);
    assert_eq!(publisher.publish("we?rd[1]x", &0).unwrap(), 0);
    assert_eq!(publisher.publish("we?rd[1]\\tail", &0).unwrap(), 1);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "we?rd[1]\\tail");
}

fn unsubscribe_stops_delivery(m: &Mesh) {
    let c = m.client();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let s = c
        .subscribe("ch.*", move |_| {
            h.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    assert_eq!(c.publish("ch.1", &1).unwrap(), 1);
    eventually("the first message", || hits.load(Ordering::SeqCst) == 1);
    s.unsubscribe().unwrap();
    assert_eq!(c.publish("ch.1", &2).unwrap(), 0);
}

fn locks_grant_tokens_and_fence_stale_writes(m: &Mesh) {
    let a = m.client();
    let b = m.client();
    let g1 = a
        .lock("job", LockOptions::new())
        .unwrap()
        .expect("free lock");
    assert!(b.lock("job", LockOptions::new()).unwrap().is_none(), "held");
    g1.set("job:out", &"a").unwrap();
    assert!(g1.cas("job:out", Some(&"a"), Some(&"a2")).unwrap());
    let t1 = g1.token();
    assert!(g1.unlock().unwrap());
    let g2 = b
        .lock("job", LockOptions::new())
        .unwrap()
        .expect("released");
    assert!(
        g2.token() > t1,
        "tokens increase: {} then {}",
        t1,
        g2.token()
    );
    let e = a.fenced_set("job", t1, "job:out", &"stale").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Fenced), "{e}");
    let e = a.fenced_del("job", t1, "job:out").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Fenced), "{e}");
    assert_eq!(b.get::<String>("job:out").unwrap().as_deref(), Some("a2"));
    assert!(g2.del("job:out").unwrap());
    drop(g2);
    // A token never issued is refused too.
    let e = a
        .fenced_set("job", procmesh::FencingToken(u64::MAX / 2), "job:out", &1)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Fenced), "{e}");
}

fn lock_wait_gets_the_lock_when_the_holder_drops_it(m: &Mesh) {
    let a = m.client();
    let b = m.client();
    let g = a.lock("w", LockOptions::new()).unwrap().expect("free");
    let (tx, rx) = channel();
    let waiter = std::thread::spawn(move || {
        tx.send(()).unwrap();
        b.lock("w", LockOptions::new().wait(WAIT))
            .unwrap()
            .map(|g| g.token())
    });
    rx.recv().unwrap();
    let t1 = g.token();
    drop(g);
    let t2 = waiter.join().unwrap().expect("acquired after the drop");
    assert!(t2 > t1);
}

fn lock_ttl_expires_and_fences_the_old_holder(m: &Mesh) {
    let a = m.client();
    let b = m.client();
    let g = a
        .lock("ttl", LockOptions::new().ttl(Duration::from_millis(100)))
        .unwrap()
        .expect("free");
    let g2 = b
        .lock("ttl", LockOptions::new().wait(WAIT))
        .unwrap()
        .expect("acquired after the ttl");
    assert!(g2.token() > g.token());
    let e = g.set("ttl:data", &1).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Fenced), "{e}");
    g2.set("ttl:data", &2).unwrap();
    // The expired holder's unlock does not free the new holder's lock.
    assert!(!g.unlock().unwrap());
    assert!(a.lock("ttl", LockOptions::new()).unwrap().is_none());
}

fn with_lock_times_out_when_held(m: &Mesh) {
    let a = m.client();
    let b = m.client();
    let _g = a.lock("busy", LockOptions::new()).unwrap().expect("free");
    let e = b
        .with_lock(
            "busy",
            LockOptions::new().wait(Duration::from_millis(50)),
            |_| Ok::<_, procmesh::ClientError>(()),
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LockTimeout), "{e}");
}

fn rpc_round_trip_errors_and_timeouts(m: &Mesh) {
    let worker = m.client();
    let caller = m.client_in(Codec::Json);
    let _add = worker
        .register("add", |(a, b): (i64, i64)| Ok(a + b))
        .unwrap();
    let _fail = worker
        .register("fail", |s: String| -> Result<(), HandlerError> {
            Err(HandlerError::new(format!("bad {s}")).with_code("EINVAL"))
        })
        .unwrap();
    let _slow = worker
        .register("slow", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        })
        .unwrap();
    assert_eq!(caller.call::<_, i64>("add", &(2, 3), None).unwrap(), 5);
    let e = caller.call::<_, ()>("fail", &"input", None).unwrap_err();
    assert_eq!(e.code_str(), Some("EINVAL"), "{e}");
    assert!(e.to_string().contains("bad input"), "{e}");
    let e = caller.call::<_, i64>("nobody", &(), None).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoHandler), "{e}");
    let e = caller
        .call::<_, u64>("slow", &2000u64, Some(Duration::from_millis(100)))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::CallTimeout), "{e}");
    // The worker is still there for the next call.
    assert_eq!(caller.call::<_, i64>("add", &(1, 1), None).unwrap(), 2);
}

fn rpc_workers_compete_for_calls(m: &Mesh) {
    let served = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<Client> = (0..2).map(|_| m.builder().connect().unwrap()).collect();
    let regs: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let s = served.clone();
            w.register("who", move |(): ()| {
                s.lock().unwrap().push(i);
                Ok(i)
            })
            .unwrap()
        })
        .collect();
    let caller = m.client();
    for _ in 0..20 {
        caller.call::<_, usize>("who", &(), None).unwrap();
    }
    let s = served.lock().unwrap();
    assert_eq!(s.len(), 20);
    assert!(
        s.contains(&0) && s.contains(&1),
        "both workers serve: {s:?}"
    );
    drop(regs);
}

fn rpc_worker_closing_mid_call_is_handler_gone(m: &Mesh) {
    let worker = m.client();
    let (started_tx, started_rx) = channel();
    let started_tx = Mutex::new(started_tx);
    let (_release_tx, release_rx) = channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let _reg = worker
        .register("hang", move |(): ()| {
            started_tx.lock().unwrap().send(()).unwrap();
            let _ = release_rx.lock().unwrap().recv_timeout(WAIT * 3);
            Ok(())
        })
        .unwrap();
    let caller = m.client();
    let call = std::thread::spawn(move || caller.call::<_, ()>("hang", &(), Some(WAIT * 2)));
    started_rx.recv_timeout(WAIT).unwrap();
    worker.close();
    let e = call.join().unwrap().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::HandlerGone), "{e}");
}

fn stats_count_operations_and_keys(m: &Mesh) {
    let c = m.client();
    c.set("a", &1).unwrap();
    c.set("b", &2).unwrap();
    let _ = c.get::<i32>("a").unwrap();
    let s = c.stats().unwrap();
    assert_eq!(s.cache_size, 2);
    assert!(s.ops.get("get").copied().unwrap_or(0) >= 1, "{:?}", s.ops);
    assert!(s.ops.get("set").copied().unwrap_or(0) >= 2, "{:?}", s.ops);
    assert!(s.connections >= 1);
    c.ping().unwrap();
}

fn many_threads_share_one_client(m: &Mesh) {
    let c = m.client();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let k = format!("t{t}:{i}");
                    c.set(&k, &(t * 1000 + i)).unwrap();
                    assert_eq!(c.get::<i32>(&k).unwrap(), Some(t * 1000 + i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.keys().unwrap().len(), 400);
}

fn idempotent_publish_delivers_each_sequence_once(m: &Mesh) {
    let sub = m.client();
    let (tx, rx) = channel::<i32>();
    let tx = Mutex::new(tx);
    let _s = sub
        .subscribe("idem", move |msg| {
            tx.lock().unwrap().send(msg.payload().unwrap()).unwrap();
        })
        .unwrap();
    let p = m.builder().producer_id("producer-1").connect().unwrap();
    let first = p
        .publish_with("idem", &1, procmesh::PublishOptions::new())
        .unwrap();
    assert_eq!(first.delivered(), Some(1));
    assert_eq!(p.sequence("idem"), 1);
    // A restarted producer with the same id repeating sequence 1: a duplicate.
    let again = m
        .builder()
        .producer_id("producer-1")
        .sequences([("idem", 0u64)])
        .connect()
        .unwrap();
    let dup = again
        .publish_with("idem", &1, procmesh::PublishOptions::new())
        .unwrap();
    assert!(dup.is_duplicate(), "{dup:?}");
    // The next number goes through.
    let next = again
        .publish_with("idem", &2, procmesh::PublishOptions::new())
        .unwrap();
    assert_eq!(next.delivered(), Some(1));
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), 1);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), 2);
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
}
