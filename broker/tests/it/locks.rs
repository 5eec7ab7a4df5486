//! §7: locks and fencing over real sockets: lock/unlock with `wait` and `ttl`, FIFO
//! waiters, hand-off on unlock, expiry and disconnect, one monotonic token counter,
//! the per-key high mark, and fset/fcas/fdel with EFENCED.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{wait_until, Codec, TestBroker, TestClient};

/// `lock` answered at once; returns the token, or `None` when not acquired.
fn lock(c: &mut TestClient, key: &str, ttl: u64) -> Option<u64> {
    let r = c.ok(json!({"t":"lock","key":key,"ttl":ttl}));
    granted(&r)
}

fn granted(v: &Value) -> Option<u64> {
    match v["acquired"].as_bool() {
        Some(true) => Some(
            v["token"]
                .as_u64()
                .unwrap_or_else(|| panic!("no token in {v}")),
        ),
        Some(false) => {
            assert_eq!(v["token"], Value::Null, "{v}");
            None
        }
        None => panic!("not a lock reply: {v}"),
    }
}

/// Queues a `lock` with `wait` and returns its request id once the broker has read
/// it (a ping on the same connection is answered after it, and the lock reply has
/// not come: it is waiting).
fn queue_lock(c: &mut TestClient, key: &str, ttl: u64, wait: u64) -> u64 {
    let id = c.send_request(json!({"t":"lock","key":key,"ttl":ttl,"wait":wait}));
    assert_eq!(c.request(json!({"t":"ping"}))["t"], "pong");
    assert!(c.inbox.is_empty(), "lock answered at once: {:?}", c.inbox);
    id
}

fn lock_stats(c: &mut TestClient) -> (u64, u64) {
    let st = c.stats();
    (
        st["locks"].as_u64().expect("locks"),
        st["lockWaiters"].as_u64().expect("lockWaiters"),
    )
}

#[test]
fn lock_unlock_and_one_increasing_token_counter() {
    let b = TestBroker::start(&[]);
    let mut a = b.client();
    let mut o = b.client_with(Codec::MsgPack);
    let t1 = lock(&mut a, "k", 10_000).expect("free lock is granted");
    assert_eq!(lock(&mut o, "k", 10_000), None, "wait 0 fails at once");
    assert_eq!(
        o.ok(json!({"t":"lock","key":"k","wait":0})),
        json!({"acquired":false,"token":null})
    );
    assert_eq!(lock_stats(&mut o), (1, 0));
    assert_eq!(
        o.ok(json!({"t":"unlock","key":"k"})),
        json!(false),
        "not the holder"
    );
    assert_eq!(a.ok(json!({"t":"unlock","key":"nope"})), json!(false));
    assert_eq!(a.ok(json!({"t":"unlock","key":"k"})), json!(true));
    assert_eq!(
        a.ok(json!({"t":"unlock","key":"k"})),
        json!(false),
        "already released"
    );
    assert_eq!(lock_stats(&mut o), (0, 0));
    let t2 = lock(&mut o, "k", 10_000).expect("released lock is granted");
    let t3 = lock(&mut a, "other", 10_000).expect("another key");
    // Default TTL (no ttl field) still grants.
    let t4 = granted(&a.ok(json!({"t":"lock","key":"third"}))).expect("granted");
    assert!(t1 < t2 && t2 < t3 && t3 < t4, "{t1} {t2} {t3} {t4}");
    assert_eq!(lock_stats(&mut o), (3, 0));
    assert_eq!(
        a.err_code(json!({"t":"lock","ttl":100})),
        "EBROKER",
        "key is required"
    );
}

#[test]
fn waiters_are_served_fifo_on_unlock() {
    let b = TestBroker::start(&[]);
    let mut h = b.client();
    let t0 = lock(&mut h, "k", 10_000).expect("granted");
    let mut w: Vec<TestClient> = (0..3).map(|_| b.client()).collect();
    let ids: Vec<u64> = w
        .iter_mut()
        .map(|c| queue_lock(c, "k", 10_000, 5_000))
        .collect();
    assert_eq!(lock_stats(&mut h), (1, 3));
    // A waiter cannot unlock what it does not hold, and stays queued.
    assert_eq!(w[2].ok(json!({"t":"unlock","key":"k"})), json!(false));
    assert_eq!(lock_stats(&mut h), (1, 3));

    assert_eq!(h.ok(json!({"t":"unlock","key":"k"})), json!(true));
    let mut last = t0;
    for i in 0..3 {
        let t = granted(&w[i].reply_to(ids[i])["value"]).expect("granted in turn");
        assert!(t > last);
        last = t;
        // Nobody behind it was granted too.
        assert_eq!(lock_stats(&mut h), (1, 2 - i as u64));
        for later in w.iter_mut().skip(i + 1) {
            assert_eq!(later.request(json!({"t":"ping"}))["t"], "pong");
            assert!(later.inbox.is_empty(), "granted out of turn");
        }
        assert_eq!(w[i].ok(json!({"t":"unlock","key":"k"})), json!(true));
    }
    assert_eq!(lock_stats(&mut h), (0, 0));
}

#[test]
fn a_holder_that_disconnects_hands_the_lock_to_the_first_waiter() {
    let b = TestBroker::start(&[]);
    let mut h = b.client();
    let t0 = lock(&mut h, "k", 60_000).expect("granted");
    let mut w1 = b.client();
    let mut w2 = b.client_with(Codec::MsgPack);
    let id1 = queue_lock(&mut w1, "k", 60_000, 10_000);
    let id2 = queue_lock(&mut w2, "k", 60_000, 10_000);
    drop(h);
    let t1 = granted(&w1.reply_to(id1)["value"]).expect("first waiter granted");
    assert!(t1 > t0);
    assert_eq!(lock_stats(&mut w1), (1, 1));

    // A waiter that disconnects leaves the queue; the lock is then simply freed.
    drop(w2);
    wait_until(
        Duration::from_secs(5),
        "the closed waiter leaves the queue",
        || lock_stats(&mut w1) == (1, 0),
    );
    let _ = id2;
    assert_eq!(w1.ok(json!({"t":"unlock","key":"k"})), json!(true));
    assert_eq!(lock_stats(&mut w1), (0, 0));

    // Disconnecting releases every lock the connection held.
    let mut many = b.client();
    for k in ["a", "b", "c"] {
        lock(&mut many, k, 60_000).expect("granted");
    }
    assert_eq!(lock_stats(&mut w1), (3, 0));
    drop(many);
    wait_until(
        Duration::from_secs(5),
        "a closed holder's locks are released",
        || lock_stats(&mut w1) == (0, 0),
    );
    for k in ["a", "b", "c"] {
        lock(&mut w1, k, 60_000).expect("free again");
    }
}

#[test]
fn a_wait_that_runs_out_answers_not_acquired() {
    const WAIT_MS: u64 = 150;
    let b = TestBroker::start(&[]);
    let mut h = b.client();
    lock(&mut h, "k", 60_000).expect("granted");
    let mut w = b.client();
    let start = Instant::now();
    let r = w.ok(json!({"t":"lock","key":"k","wait":WAIT_MS}));
    let took = start.elapsed();
    assert_eq!(r, json!({"acquired":false,"token":null}));
    assert!(
        took >= Duration::from_millis(WAIT_MS - 5),
        "gave up after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "gave up only after {took:?}");
    assert_eq!(lock_stats(&mut w), (1, 0));
    // The timed-out waiter is not granted on a later release.
    assert_eq!(h.ok(json!({"t":"unlock","key":"k"})), json!(true));
    assert_eq!(w.request(json!({"t":"ping"}))["t"], "pong");
    assert!(w.inbox.is_empty(), "{:?}", w.inbox);
    assert_eq!(lock_stats(&mut w), (0, 0));
}

#[test]
fn an_expired_holder_is_fenced_while_the_new_holder_writes() {
    const TTL_MS: u64 = 150;
    let b = TestBroker::start(&[]);
    let mut old = b.client();
    let mut new = b.client_with(Codec::MsgPack);
    let t_old = lock(&mut old, "res", TTL_MS).expect("granted");
    assert_eq!(
        old.ok(json!({"t":"fset","key":"res","token":t_old,"k":"data","value":"old"})),
        json!(true)
    );
    let start = Instant::now();
    let id = new.send_request(json!({"t":"lock","key":"res","ttl":60_000,"wait":5_000}));
    let t_new = granted(&new.reply_to(id)["value"]).expect("granted on expiry");
    let took = start.elapsed();
    assert!(t_new > t_old);
    assert!(
        took >= Duration::from_millis(TTL_MS - 30),
        "granted after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "granted only after {took:?}");

    // The old holder's writes fail and change nothing.
    let stale = [
        json!({"t":"fset","key":"res","token":t_old,"k":"data","value":"stale"}),
        json!({"t":"fcas","key":"res","token":t_old,"k":"data","prev":"old","next":"stale"}),
        json!({"t":"fdel","key":"res","token":t_old,"k":"data"}),
        json!({"t":"fset","key":"res","k":"data","value":"no token"}),
    ];
    for req in stale {
        assert_eq!(old.err_code(req.clone()), "EFENCED", "{req}");
    }
    assert_eq!(old.ok(json!({"t":"get","key":"data"})), json!("old"));
    assert_eq!(
        old.ok(json!({"t":"unlock","key":"res"})),
        json!(false),
        "no longer the holder"
    );

    // The new holder's writes succeed.
    assert_eq!(
        new.ok(json!({"t":"fset","key":"res","token":t_new,"k":"data","value":"new"})),
        json!(true)
    );
    assert_eq!(old.ok(json!({"t":"get","key":"data"})), json!("new"));
    assert_eq!(
        new.ok(json!({"t":"fcas","key":"res","token":t_new,"k":"data","prev":"wrong","next":"x"})),
        json!(false)
    );
    assert_eq!(
        new.ok(
            json!({"t":"fcas","key":"res","token":t_new,"k":"data","prev":"new","next":"newer"})
        ),
        json!(true)
    );
    assert_eq!(
        new.ok(json!({"t":"fdel","key":"res","token":t_new,"k":"data"})),
        json!(true)
    );
    assert_eq!(
        new.ok(json!({"t":"fdel","key":"res","token":t_new,"k":"data"})),
        json!(false)
    );
    assert_eq!(lock_stats(&mut new), (1, 0));
}

#[test]
fn a_ttl_expiry_without_waiters_frees_the_lock_and_the_waiters_ttl_applies() {
    let b = TestBroker::start(&[]);
    let mut a = b.client();
    let mut w = b.client();
    let mut x = b.client();
    lock(&mut a, "k", 100).expect("granted");
    // w waits and, once granted, holds for its own (short) ttl; then x gets it.
    let wid = queue_lock(&mut w, "k", 100, 5_000);
    let xid = queue_lock(&mut x, "k", 60_000, 5_000);
    let tw = granted(&w.reply_to(wid)["value"]).expect("w granted");
    let tx = granted(&x.reply_to(xid)["value"]).expect("x granted after w's ttl");
    assert!(tw < tx);
    assert_eq!(lock_stats(&mut a), (1, 0));
    assert_eq!(x.ok(json!({"t":"unlock","key":"k"})), json!(true));

    lock(&mut a, "solo", 100).expect("granted");
    assert_eq!(lock_stats(&mut a), (1, 0));
    thread::sleep(Duration::from_millis(200)); // let the ttl pass
    assert_eq!(lock_stats(&mut a), (0, 0));
    assert!(
        lock(&mut w, "solo", 60_000).is_some(),
        "an expired lock is free"
    );
}

#[test]
fn the_high_mark_is_kept_per_key_and_never_lowered() {
    let b = TestBroker::start(&[]);
    let mut c = b.client();
    let t1 = lock(&mut c, "k", 60_000).expect("granted");
    c.ok(json!({"t":"unlock","key":"k"}));
    let t2 = lock(&mut c, "k", 60_000).expect("granted");
    c.ok(json!({"t":"unlock","key":"k"}));
    // The lock is free; its mark (t2, the last issued) remains.
    assert_eq!(
        c.err_code(json!({"t":"fset","key":"k","token":t1,"k":"v","value":1})),
        "EFENCED"
    );
    assert_eq!(
        c.ok(json!({"t":"fset","key":"k","token":t2,"k":"v","value":2})),
        json!(true)
    );
    // A higher issued token (here one granted on another key) is accepted and raises
    // the mark: t2 is now stale too. (Tokens never issued are refused: issue 12 #13.)
    let high = lock(&mut c, "elsewhere", 60_000).expect("granted");
    assert!(high > t2);
    assert_eq!(
        c.ok(json!({"t":"fset","key":"k","token":high,"k":"v","value":3})),
        json!(true)
    );
    assert_eq!(
        c.err_code(json!({"t":"fset","key":"k","token":t2,"k":"v","value":4})),
        "EFENCED"
    );
    // Marks are per key: a key never locked accepts any token.
    assert_eq!(
        c.ok(json!({"t":"fset","key":"fresh","token":1,"k":"w","value":1})),
        json!(true)
    );
    // A new grant raises the mark past every accepted token (one counter).
    let t3 = lock(&mut c, "k", 60_000).expect("granted");
    assert!(t3 > high);
    assert_eq!(
        c.err_code(json!({"t":"fset","key":"k","token":high,"k":"v","value":5})),
        "EFENCED",
        "the mark was lowered by a grant"
    );
    assert_eq!(c.ok(json!({"t":"get","key":"v"})), json!(3));
    assert_eq!(
        c.err_code(json!({"t":"fset","key":"k","token":"7","k":"v","value":5})),
        "EBROKER",
        "a token must be a number"
    );
}

#[test]
#[ignore = "timed: .ci/run runs it alone (`-- --ignored --test-threads=1 cheap costs_do_not_grow`)"]
fn one_connection_holding_many_locks_stays_cheap() {
    const KEYS: usize = 20_000;
    let b = TestBroker::start(&[]);
    let mut c = b.client();
    let mut o = b.client();
    // Without ids (no replies to read); a ping is answered after them.
    let batch = |t: &str| -> Vec<u8> {
        (0..KEYS)
            .flat_map(|i| {
                crate::support::encode(Codec::Json, &json!({"t":t,"key":format!("k{i}")}))
            })
            .collect()
    };
    let start = Instant::now();
    c.send_raw(&batch("lock")).expect("write locks");
    assert_eq!(c.request(json!({"t":"ping"}))["t"], "pong");
    assert_eq!(lock_stats(&mut o), (KEYS as u64, 0));
    c.send_raw(&batch("unlock")).expect("write unlocks");
    assert_eq!(c.request(json!({"t":"ping"}))["t"], "pong");
    assert_eq!(lock_stats(&mut o), (0, 0));
    c.send_raw(&batch("lock")).expect("write locks");
    assert_eq!(c.request(json!({"t":"ping"}))["t"], "pong");
    drop(c);
    wait_until(
        Duration::from_secs(5),
        "a closed holder's locks are released",
        || lock_stats(&mut o) == (0, 0),
    );
    // Quadratic bookkeeping per connection took ~6.5 s here in a debug build.
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "{KEYS} locks, unlocks and relocks took {took:?}"
    );
}
