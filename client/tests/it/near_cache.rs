//! The near cache against real brokers: repeated reads served locally (the broker's
//! op counters do not move), and invalidated by writes from another process — this
//! test binary re-run as a child (`near-writer`) — for each mutation kind, by expiry
//! and eviction, across shards; a reconnect empties it.
//!
//! Ordering used: the child exits after its write was acknowledged, by which time
//! the broker has queued our `inv` (same loop turn as the write's reply); a `ping`
//! of ours is answered after it, and our reader applies frames in order, so once
//! `ping` returns the invalidation has been applied.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use procmesh::{Client, Codec, Event, LockOptions};

use crate::support::{child, run_child, BrokerProc, InProc, WAIT};

fn near_client(paths: &[&Path]) -> Client {
    Client::builder()
        .addresses(paths.iter().map(|p| p.to_path_buf()))
        .codec(Codec::MsgPack)
        .auto_spawn(false)
        .near_cache(1000)
        .connect()
        .expect("connect")
}

/// Runs `op` on `key` from another process, against the same shards.
fn write_from_child(paths: &[&Path], op: &str, key: &str) {
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let mut cmd = child("near-writer");
    cmd.env("NEAR_SOCKETS", list.join(":"))
        .env("NEAR_OP", op)
        .env("NEAR_KEY", key);
    run_child(cmd);
}

/// The child's side: one write of kind `NEAR_OP` (values are integers).
pub fn run_role(role: &str) {
    assert_eq!(role, "near-writer");
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let paths: Vec<PathBuf> = env("NEAR_SOCKETS").split(':').map(PathBuf::from).collect();
    let c = Client::builder()
        .addresses(paths)
        .codec(Codec::Json)
        .auto_spawn(false)
        .connect()
        .expect("connect");
    let key = env("NEAR_KEY");
    match env("NEAR_OP").as_str() {
        "set" => c.set(&key, &100).unwrap(),
        "del" => assert!(c.del(&key).unwrap()),
        "incr" => {
            c.incr(&key, 5).unwrap();
        }
        "cas" => {
            let cur: i64 = c.get(&key).unwrap().expect("a value to swap");
            assert!(c.cas(&key, Some(&cur), Some(&(cur + 1000))).unwrap());
        }
        "fset" => {
            let lock_key = format!("lock-{key}");
            let g = c
                .lock(&lock_key, LockOptions::new())
                .unwrap()
                .expect("a free lock");
            c.fenced_set(&lock_key, g.token(), &key, &77).unwrap();
        }
        "mset" => c.mset(&[(key.as_str(), 55)]).unwrap(),
        "clear" => c.clear().unwrap(),
        "fill" => {
            // Writes other keys (eviction by the broker's maxKeys).
            for i in 0..4 {
                c.set(&format!("filler-{i}"), &i).unwrap();
            }
        }
        other => panic!("unknown op {other}"),
    }
}

fn ops(c: &Client, kind: &str) -> u64 {
    c.stats().unwrap().raw["ops"][kind].as_u64().unwrap_or(0)
}

#[test]
fn repeated_reads_are_served_locally_without_broker_ops() {
    let b = InProc::start();
    let c = near_client(&[&b.path]);
    c.set("k", &41).unwrap();
    assert_eq!(c.get::<i64>("k").unwrap(), Some(41));
    assert_eq!(c.get::<i64>("missing").unwrap(), None);
    let gets = ops(&c, "get");
    let before = c.near_cache_stats().unwrap();
    for _ in 0..100 {
        assert_eq!(c.get::<i64>("k").unwrap(), Some(41));
        assert_eq!(
            c.get::<i64>("missing").unwrap(),
            None,
            "a miss is cached too"
        );
        assert!(c.has("k").unwrap());
        let v: Vec<Option<i64>> = c.mget(&["k", "missing"]).unwrap();
        assert_eq!(v, vec![Some(41), None]);
    }
    assert_eq!(ops(&c, "get"), gets, "no get reached the broker");
    assert_eq!(ops(&c, "mget"), 0);
    let after = c.near_cache_stats().unwrap();
    assert_eq!(after.hits - before.hits, 500);
    assert_eq!(after.misses, before.misses);
    assert!(after.enabled);
    // Read-your-writes: this client's own write is visible at once.
    c.set("k", &42).unwrap();
    assert_eq!(c.get::<i64>("k").unwrap(), Some(42));
    assert_eq!(c.incr("k", 1).unwrap(), 43);
    assert_eq!(c.get::<i64>("k").unwrap(), Some(43));
    assert!(c.del("k").unwrap());
    assert_eq!(c.get::<i64>("k").unwrap(), None);
}

#[test]
fn writes_from_another_process_invalidate_for_each_mutation_kind() {
    let b = InProc::start();
    let c = near_client(&[&b.path]);
    for op in ["set", "incr", "cas", "fset", "mset", "del", "clear"] {
        let key = format!("key-{op}");
        c.set(&key, &1).unwrap();
        assert_eq!(c.get::<i64>(&key).unwrap(), Some(1));
        assert_eq!(c.get::<i64>(&key).unwrap(), Some(1), "cached");
        let inv = c.near_cache_stats().unwrap().invalidations;
        write_from_child(&[&b.path], op, &key);
        c.ping().unwrap();
        assert!(
            c.near_cache_stats().unwrap().invalidations > inv,
            "{op}: invalidation applied"
        );
        let want = match op {
            "set" => Some(100),
            "incr" => Some(6),
            "cas" => Some(1001),
            "fset" => Some(77),
            "mset" => Some(55),
            _ => None,
        };
        assert_eq!(c.get::<i64>(&key).unwrap(), want, "after {op}");
    }
}

#[test]
fn expiry_and_eviction_invalidate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.sock");
    let _b = BrokerProc::start(&path, &["--max-keys", "3"]);
    let c = near_client(&[&path]);
    // Eviction: the broker's LRU drops our key when another process writes more.
    c.set("mine", &1).unwrap();
    assert_eq!(c.get::<i64>("mine").unwrap(), Some(1));
    write_from_child(&[&path], "fill", "unused");
    c.ping().unwrap();
    assert_eq!(c.get::<i64>("mine").unwrap(), None, "evicted, and we know");
    // Expiry: nobody writes; the broker's sweep removes the key and tells us.
    c.set_with_ttl("short", &1, Duration::from_millis(200))
        .unwrap();
    assert_eq!(c.get::<i64>("short").unwrap(), Some(1));
    let inv = c.near_cache_stats().unwrap().invalidations;
    // No frame of ours signals the sweep: poll the counter the push moves.
    let deadline = std::time::Instant::now() + WAIT;
    while c.near_cache_stats().unwrap().invalidations == inv {
        assert!(
            std::time::Instant::now() < deadline,
            "no expiry invalidation"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(c.get::<i64>("short").unwrap(), None);
}

#[test]
fn shards_each_invalidate_their_keys() {
    let a = InProc::start();
    let b = InProc::start();
    let paths = [a.path.as_path(), b.path.as_path()];
    let c = near_client(&paths);
    // One key on each shard.
    let mut keys = Vec::new();
    for s in 0..2 {
        let k = (0..)
            .map(|i| format!("s{i}"))
            .find(|k| c.shard_of(k).0 == s)
            .unwrap();
        keys.push(k);
    }
    for k in &keys {
        c.set(k, &1).unwrap();
        assert_eq!(c.get::<i64>(k).unwrap(), Some(1));
    }
    for k in &keys {
        write_from_child(&paths, "set", k);
    }
    c.ping().unwrap();
    for k in &keys {
        assert_eq!(c.get::<i64>(k).unwrap(), Some(100), "{k}");
    }
    let v: Vec<Option<i64>> = c.mget(&keys).unwrap();
    assert_eq!(v, vec![Some(100), Some(100)]);
    write_from_child(&paths, "clear", "unused");
    c.ping().unwrap();
    let v: Vec<Option<i64>> = c.mget(&keys).unwrap();
    assert_eq!(v, vec![None, None]);
}

#[test]
fn a_reconnect_flushes_the_near_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.sock");
    let mut b = BrokerProc::start(&path, &[]);
    let c = near_client(&[&path]);
    let events = c.events();
    c.set("k", &1).unwrap();
    assert_eq!(c.get::<i64>("k").unwrap(), Some(1));
    assert_eq!(c.near_cache_stats().unwrap().entries, 1);
    b.kill();
    let _b2 = BrokerProc::start(&path, &[]);
    // The new broker holds another value; no invalidation can come for the old one.
    let other = crate::support::client_at(&path, Codec::Json);
    other.set("k", &2).unwrap();
    loop {
        match events.recv_timeout(WAIT).expect("reconnected") {
            Event::Reconnected { .. } => break,
            _ => continue,
        }
    }
    let s = c.near_cache_stats().unwrap();
    assert!(s.flushes >= 1);
    assert_eq!(c.get::<i64>("k").unwrap(), Some(2), "not the stale copy");
    // Tracking is back on: the next change is announced again.
    other.set("k", &3).unwrap();
    c.ping().unwrap();
    assert_eq!(c.get::<i64>("k").unwrap(), Some(3));
}

/// Against the real Node.js broker (procmesh-js 0.1.1 in `PROCMESH_JS`, see
/// scripts/node-interop; skipped without it): `track` is refused with `EUNKNOWN`, the
/// near cache turns itself off, and every read goes to the broker.
#[test]
fn a_nodejs_broker_turns_the_near_cache_off() {
    let Some(js) = std::env::var_os("PROCMESH_JS").filter(|p| !p.is_empty()) else {
        eprintln!("PROCMESH_JS not set: skipping the Node.js broker check");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sock");
    let opts = serde_json::json!({ "address": path }).to_string();
    struct Node(std::process::Child);
    impl Drop for Node {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _node = Node(
        std::process::Command::new("node")
            .arg(PathBuf::from(js).join("src/broker-bin.js"))
            .env("PROCMESH_BROKER_OPTS", opts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the Node.js broker"),
    );
    let deadline = std::time::Instant::now() + WAIT;
    while std::os::unix::net::UnixStream::connect(&path).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "Node.js broker did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Codec negotiated: the Node.js broker speaks JSON by default.
    let c = Client::builder()
        .address(&path)
        .auto_spawn(false)
        .near_cache(1000)
        .connect()
        .expect("connect");
    let other = crate::support::client_at(&path, Codec::Json);
    c.set("k", &1).unwrap();
    assert_eq!(c.get::<i64>("k").unwrap(), Some(1));
    assert_eq!(c.get::<i64>("k").unwrap(), Some(1));
    other.set("k", &2).unwrap();
    assert_eq!(c.get::<i64>("k").unwrap(), Some(2), "never served stale");
    let s = c.near_cache_stats().unwrap();
    assert!(!s.enabled);
    assert_eq!((s.hits, s.entries), (0, 0));
}

#[test]
fn a_pipelines_writes_are_read_back_at_once_not_from_the_near_cache() {
    let b = InProc::start();
    let c = near_client(&[&b.path]);
    for (i, k) in ["a", "b", "n", "gone"].iter().enumerate() {
        c.set(k, &(i as i64)).unwrap();
        assert_eq!(c.get::<i64>(k).unwrap(), Some(i as i64), "{k} now cached");
    }
    assert!(c.near_cache_stats().unwrap().entries >= 4);
    c.pipeline()
        .set("a", &10)
        .cas("b", Some(&1), Some(&11))
        .incr("n", 5)
        .del("gone")
        .run()
        .unwrap();
    // Read-your-writes within the client: no wait for the broker's invalidation.
    assert_eq!(c.get::<i64>("a").unwrap(), Some(10));
    assert_eq!(c.get::<i64>("b").unwrap(), Some(11));
    assert_eq!(c.get::<i64>("n").unwrap(), Some(7));
    assert_eq!(c.get::<i64>("gone").unwrap(), None);
}
