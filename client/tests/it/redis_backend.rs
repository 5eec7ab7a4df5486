//! What only the Redis backend has: the mesh's namespace in a shared server,
//! the stored bytes, a crashed worker process (heartbeat expiry), a lost
//! server, and the documented differences from the broker.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use procmesh::{Client, Codec, ErrorCode, LockOptions};

use crate::redis_support::RedisServer;
use crate::support::WAIT;

fn client(r: &RedisServer, mesh: &str) -> Client {
    Client::builder()
        .name(mesh)
        .redis(&r.url)
        .connect()
        .expect("connect to redis")
}

/// `redis-cli` on the server's socket, stdout as bytes.
fn cli(r: &RedisServer, args: &[&str]) -> Vec<u8> {
    let sock = r.url.strip_prefix("redis+unix://").expect("unix url");
    let out = Command::new("redis-cli")
        .args(["-s", sock, "--raw"])
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}");
    out.stdout
}

#[test]
fn meshes_share_a_server_without_seeing_each_other() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    let a = client(&r, "alpha");
    let b = client(&r, "beta");
    a.set("k", &1).unwrap();
    b.set("k", &2).unwrap();
    b.set("only-b", &3).unwrap();
    // Something else in the same database.
    cli(&r, &["SET", "foreign", "x"]);
    assert_eq!(a.get::<i32>("k").unwrap(), Some(1));
    assert_eq!(a.keys().unwrap(), vec!["k"]);
    a.clear().unwrap();
    assert!(a.keys().unwrap().is_empty());
    let mut bk = b.keys().unwrap();
    bk.sort();
    assert_eq!(bk, vec!["k", "only-b"], "clear is per mesh");
    assert_eq!(cli(&r, &["GET", "foreign"]), b"x\n", "never FLUSHDB");
}

#[test]
fn values_are_stored_as_messagepack_whatever_the_codec() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    let j = Client::builder()
        .name("m")
        .codec(Codec::Json)
        .redis(&r.url)
        .connect()
        .unwrap();
    let v = serde_json::json!({"a": [1, 2], "b": "x"});
    j.set("doc", &v).unwrap();
    let stored = cli(&r, &["GET", "{m}:k:doc"]);
    let stored = &stored[..stored.len() - 1]; // redis-cli's newline
    let decoded: serde_json::Value = rmp_serde::from_slice(stored).unwrap();
    assert_eq!(decoded, v);
    // Keys carry the mesh's hash tag, and the TTL is Redis's own.
    j.set_with_ttl("t", &1, Duration::from_secs(100)).unwrap();
    let ttl: i64 = String::from_utf8(cli(&r, &["PTTL", "{m}:k:t"]))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 90_000 && ttl <= 100_000, "{ttl}");
    j.incr("t", 1).unwrap();
    let ttl: i64 = String::from_utf8(cli(&r, &["PTTL", "{m}:k:t"]))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0, "incr keeps the ttl: {ttl}");
}

#[test]
fn delivered_count_is_per_matching_subscription() {
    // Documented difference: the broker counts connections, Redis subscriptions.
    let Some(r) = RedisServer::start() else {
        return;
    };
    let c = client(&r, "m");
    let (tx, rx) = channel::<String>();
    let tx1 = Mutex::new(tx.clone());
    let tx2 = Mutex::new(tx);
    let _s1 = c
        .subscribe("a.b", move |m| {
            tx1.lock()
                .unwrap()
                .send(format!("exact {}", m.channel()))
                .unwrap()
        })
        .unwrap();
    let _s2 = c
        .subscribe("a.*", move |m| {
            tx2.lock()
                .unwrap()
                .send(format!("prefix {}", m.channel()))
                .unwrap()
        })
        .unwrap();
    assert_eq!(c.publish("a.b", &1).unwrap(), 2);
    let mut got: Vec<String> = (0..2).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    got.sort();
    // Each handler still sees the message once.
    assert_eq!(got, vec!["exact a.b", "prefix a.b"]);
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
}

#[test]
fn close_releases_held_locks() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    let a = client(&r, "m");
    let b = client(&r, "m");
    // The guard is still alive: close, not its drop, releases the lock.
    let _g = a.lock("l", LockOptions::new()).unwrap().expect("free");
    a.close();
    assert!(b.lock("l", LockOptions::new()).unwrap().is_some());
}

#[test]
fn a_lost_server_fails_requests_with_edisconnected() {
    let Some(mut r) = RedisServer::start() else {
        return;
    };
    let c = client(&r, "m");
    c.set("k", &1).unwrap();
    r.kill();
    let e = c.get::<i32>("k").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Disconnected), "{e}");
}

#[test]
fn a_killed_worker_process_is_handler_gone_once_its_heartbeat_expires() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "redis_backend::redis_child_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROCMESH_REDIS_ROLE", "hang-worker")
        .env("PROCMESH_REDIS_URL", &r.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let wait_line = |lines: &mut std::io::Lines<_>, want: &str| loop {
        let l: String = lines
            .next()
            .expect("child output")
            .expect("child output line");
        // The harness's "test … ... " may precede the child's first line.
        if l.trim_end().ends_with(want) {
            break;
        }
    };
    wait_line(&mut lines, "REGISTERED");
    let caller = client(&r, "m");
    let call = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = caller.call::<_, ()>("hang", &(), Some(WAIT * 2));
        (r, t0.elapsed())
    });
    wait_line(&mut lines, "TAKEN");
    child.kill().unwrap();
    child.wait().unwrap();
    let (r, took) = call.join().unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::HandlerGone), "{e}");
    assert!(took < WAIT * 2, "before the call's timeout: {took:?}");
}

/// Entry point of the child process of the crash test.
#[test]
#[ignore = "child-process entry, run by a_killed_worker_process_is_handler_gone…"]
fn redis_child_entry() {
    let role = std::env::var("PROCMESH_REDIS_ROLE").expect("PROCMESH_REDIS_ROLE");
    let url = std::env::var("PROCMESH_REDIS_URL").expect("PROCMESH_REDIS_URL");
    assert_eq!(role, "hang-worker");
    let c = Client::builder().name("m").redis(url).connect().unwrap();
    let _reg = c
        .register("hang", |(): ()| {
            println!("TAKEN");
            loop {
                std::thread::park();
            }
            #[allow(unreachable_code)]
            Ok(())
        })
        .unwrap();
    println!("REGISTERED");
    loop {
        std::thread::park();
    }
}

#[test]
fn a_dropped_subscriber_connection_resubscribes() {
    // What Redis does to a slow subscriber (client-output-buffer-limit pubsub):
    // it closes the connection. The client reconnects and subscribes again.
    let Some(r) = RedisServer::start() else {
        return;
    };
    let c = client(&r, "m");
    let events = c.events();
    let (tx, rx) = channel::<i32>();
    let tx = Mutex::new(tx);
    let _s = c
        .subscribe("feed.*", move |m| {
            tx.lock().unwrap().send(m.payload().unwrap()).unwrap();
        })
        .unwrap();
    assert_eq!(c.publish("feed.a", &1).unwrap(), 1);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), 1);
    let killed = String::from_utf8(cli(&r, &["CLIENT", "KILL", "TYPE", "pubsub"])).unwrap();
    assert_eq!(killed.trim(), "1", "one subscriber connection");
    let t0 = Instant::now();
    loop {
        match events.recv_timeout(WAIT).expect("an event") {
            procmesh::Event::Reconnected { .. } => break,
            _ => assert!(t0.elapsed() < WAIT, "no Reconnected event"),
        }
    }
    assert_eq!(c.publish("feed.b", &2).unwrap(), 1, "subscribed again");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), 2);
}

#[test]
fn after_a_server_restart_one_request_fails_then_everything_works_again() {
    let Some(mut r) = RedisServer::start() else {
        return;
    };
    let c = client(&r, "m");
    let (tx, rx) = channel::<i32>();
    let tx = Mutex::new(tx);
    let _s = c
        .subscribe("after", move |m| {
            tx.lock().unwrap().send(m.payload().unwrap()).unwrap();
        })
        .unwrap();
    // Several pooled connections.
    std::thread::scope(|s| {
        for i in 0..4 {
            let c = &c;
            s.spawn(move || c.set(&format!("k{i}"), &i).unwrap());
        }
    });
    r.restart();
    // The first request finds its connection dead (EDISCONNECTED); the pool is
    // dropped with it, so the next one opens a fresh connection.
    let first = c.set("k", &1);
    if let Err(e) = &first {
        assert_eq!(e.code(), Some(ErrorCode::Disconnected), "{e}");
    }
    c.set("k", &2).unwrap();
    assert_eq!(c.get::<i32>("k").unwrap(), Some(2));
    // The subscriber came back too (the restart dropped its connection).
    let t0 = Instant::now();
    loop {
        if c.publish("after", &7).unwrap() == 1 {
            break;
        }
        assert!(t0.elapsed() < WAIT, "the subscriber did not come back");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), 7);
}

#[test]
fn replay_is_refused_with_a_clear_error() {
    // Retention is a broker feature; asking Redis for it must not silently do nothing.
    let Some(r) = RedisServer::start() else {
        return;
    };
    let c = client(&r, "m");
    let e = c
        .subscribe_with(
            "orders",
            procmesh::SubscribeOptions::new().replay(procmesh::Replay::All),
            |_| {},
        )
        .unwrap_err();
    assert!(e.to_string().contains("no retention"), "{e}");
    // A plain subscription to the same channel still works.
    let _s = c.subscribe("orders", |_| {}).unwrap();
    assert_eq!(c.publish("orders", &1).unwrap(), 1);
}

#[test]
fn registrations_sharing_one_handler_thread_each_get_their_calls() {
    let Some(r) = RedisServer::start() else {
        return;
    };
    // One handler thread for three procedures: a worker whose wait for a call runs out
    // queues behind the others for the thread, so no procedure starves.
    let worker = Client::builder()
        .name("m")
        .redis(&r.url)
        .handler_threads(1)
        .connect()
        .expect("connect to redis");
    let caller = client(&r, "m");
    let regs: Vec<_> = ["p0", "p1", "p2"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            worker
                .register(name, move |x: i64| Ok(x + i as i64))
                .unwrap()
        })
        .collect();
    for round in 0..3 {
        for (i, name) in ["p0", "p1", "p2"].iter().enumerate() {
            let got: i64 = caller
                .call(name, &round, Some(Duration::from_secs(10)))
                .unwrap_or_else(|e| panic!("{name} in round {round}: {e}"));
            assert_eq!(got, round + i as i64);
        }
    }
    drop(regs);
}
