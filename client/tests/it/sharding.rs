//! Sharded clients: placement by FNV-1a (checked through per-shard plain
//! clients), agreement with the Node.js package's hash, fan-out, pub/sub and
//! RPC routing, and `shards(n)` by name with auto-spawn.

use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::sync::Mutex;

use procmesh::{fnv1a, Client, Codec, ShardId};

use crate::support::{child, client_at, run_child, BrokerProc, InProc, WAIT};

/// Keys with their FNV-1a hash as the Node.js package computes it
/// (`h ^= s.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0` from 0x811c9dc5),
/// worked out independently of this crate.
const REFERENCE: &[(&str, u32)] = &[
    ("", 0x811c9dc5),
    ("a", 0xe40c292c),
    ("user:42", 0x2f6b7b82),
    ("session:abc", 0x24740259),
    ("é", 0x6c0b6c44),
    ("café", 0x3308be7c),
    ("日本語", 0x5406374e),
    ("ключ", 0x33a28ab9),
    ("a😀", 0x1c8ecbf9),
    ("🔑key", 0x8a92e082),
];

#[test]
fn hash_agrees_with_the_nodejs_package() {
    for (k, h) in REFERENCE {
        assert_eq!(fnv1a(k), *h, "fnv1a({k:?})");
    }
}

fn keys() -> Vec<String> {
    let mut ks: Vec<String> = REFERENCE
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| !k.is_empty())
        .collect();
    ks.extend((0..60).map(|i| format!("key:{i}")));
    ks.extend((0..10).map(|i| format!("ключ-{i}-日本")));
    ks
}

#[test]
fn sharded_client_places_each_key_on_its_shard_only() {
    for codec in [Codec::MsgPack, Codec::Json] {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| dir.path().join(format!("s{i}.sock")))
            .collect();
        let _brokers: Vec<BrokerProc> = paths.iter().map(|p| BrokerProc::start(p, &[])).collect();
        let sharded = Client::builder()
            .addresses(&paths)
            .codec(codec)
            .auto_spawn(false)
            .connect()
            .unwrap();
        assert_eq!(sharded.shard_count(), 3);
        let plain: Vec<Client> = paths.iter().map(|p| client_at(p, Codec::Json)).collect();
        let ks = keys();
        for k in &ks {
            sharded.set(k, &format!("v-{k}")).unwrap();
        }
        for k in &ks {
            let want = (fnv1a(k) % 3) as usize;
            assert_eq!(sharded.shard_of(k), ShardId(want));
            for (i, p) in plain.iter().enumerate() {
                let v: Option<String> = p.get(k).unwrap();
                if i == want {
                    assert_eq!(v, Some(format!("v-{k}")), "{k:?} on its shard {i}");
                } else {
                    assert_eq!(
                        v, None,
                        "{k:?} must not be on shard {i} (its shard is {want})"
                    );
                }
            }
            assert_eq!(sharded.get::<String>(k).unwrap(), Some(format!("v-{k}")));
        }
        // Fan-out: keys and stats cover every shard; mget/mset split and reassemble.
        let mut all = sharded.keys().unwrap();
        all.sort();
        let mut want = ks.clone();
        want.sort();
        assert_eq!(all, want);
        let stats = sharded.stats().unwrap();
        assert_eq!(stats.cache_size as usize, ks.len());
        assert_eq!(stats.shards.len(), 3);
        assert_eq!(
            stats.shards.iter().map(|s| s.cache_size).sum::<u64>(),
            stats.cache_size
        );
        let entries: Vec<(String, usize)> =
            ks.iter().enumerate().map(|(i, k)| (k.clone(), i)).collect();
        sharded.mset(&entries).unwrap();
        let got: Vec<Option<usize>> = sharded.mget(&ks).unwrap();
        assert_eq!(got, (0..ks.len()).map(Some).collect::<Vec<_>>());
        for (k, i) in &entries {
            let on = &plain[(fnv1a(k) % 3) as usize];
            assert_eq!(on.get::<usize>(k).unwrap(), Some(*i));
        }
        // Atomics and locks route by key too.
        sharded.incr("ctr", 5).unwrap();
        assert_eq!(
            plain[(fnv1a("ctr") % 3) as usize]
                .get::<i64>("ctr")
                .unwrap(),
            Some(5)
        );
        let g = sharded
            .lock("lk", procmesh::LockOptions::new())
            .unwrap()
            .unwrap();
        let lock_shard = &plain[(fnv1a("lk") % 3) as usize];
        assert!(lock_shard
            .lock("lk", procmesh::LockOptions::new())
            .unwrap()
            .is_none());
        drop(g);
        sharded.clear().unwrap();
        assert!(sharded.keys().unwrap().is_empty());
    }
}

#[test]
fn sharded_pubsub_and_rpc_route_by_name() {
    let brokers: Vec<InProc> = (0..3).map(|_| InProc::start()).collect();
    let paths: Vec<PathBuf> = brokers.iter().map(|b| b.path.clone()).collect();
    let connected = std::sync::Arc::new(Mutex::new(Vec::new()));
    let a = Client::builder()
        .addresses(&paths)
        .auto_spawn(false)
        .on_event({
            let connected = connected.clone();
            move |e| {
                if let procmesh::Event::Connected { shard, path } = e {
                    connected.lock().unwrap().push((*shard, path.clone()));
                }
            }
        })
        .connect()
        .unwrap();
    let b = Client::builder()
        .addresses(&paths)
        .codec(Codec::Json)
        .auto_spawn(false)
        .connect()
        .unwrap();
    let (tx, rx) = channel::<String>();
    let tx = Mutex::new(tx);
    // A wildcard subscription is on every shard: it sees channels of all shards.
    let _wild = a
        .subscribe("ch.*", move |m| {
            tx.lock().unwrap().send(m.channel().to_owned()).unwrap()
        })
        .unwrap();
    let channels: Vec<String> = (0..12).map(|i| format!("ch.{i}")).collect();
    let shards_hit: std::collections::BTreeSet<usize> =
        channels.iter().map(|c| (fnv1a(c) % 3) as usize).collect();
    assert_eq!(shards_hit.len(), 3, "the channels cover every shard");
    for ch in &channels {
        assert_eq!(b.publish(ch, &1).unwrap(), 1, "{ch}");
    }
    let mut got: Vec<String> = (0..channels.len())
        .map(|_| rx.recv_timeout(WAIT).unwrap())
        .collect();
    got.sort();
    let mut want = channels.clone();
    want.sort();
    assert_eq!(got, want);
    // An exact channel lives on its shard only.
    let (etx, erx) = channel::<i32>();
    let etx = Mutex::new(etx);
    let _exact = a
        .subscribe("exact", move |m| {
            etx.lock().unwrap().send(m.payload().unwrap()).unwrap()
        })
        .unwrap();
    b.publish("exact", &9).unwrap();
    assert_eq!(erx.recv_timeout(WAIT).unwrap(), 9);
    let home = client_at(&paths[(fnv1a("exact") % 3) as usize], Codec::MsgPack);
    assert_eq!(home.publish("exact", &10).unwrap(), 1);
    assert_eq!(erx.recv_timeout(WAIT).unwrap(), 10);
    // RPC by procedure name.
    let _reg = a
        .register("sum", |v: Vec<i64>| Ok(v.iter().sum::<i64>()))
        .unwrap();
    assert_eq!(b.call::<_, i64>("sum", &(1, 2, 3), None).unwrap(), 6);
    // One connect event per shard, each naming its shard and address (events
    // are delivered in order, so the ping's reply comes after them).
    a.ping().unwrap();
    let mut seen = connected.lock().unwrap().clone();
    seen.sort();
    let want: Vec<(ShardId, PathBuf)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (ShardId(i), p.clone()))
        .collect();
    let stats = b.stats().unwrap();
    assert_eq!(
        stats
            .procs
            .iter()
            .find(|p| p.name == "sum")
            .map(|p| p.workers),
        Some(1)
    );
    assert_eq!(stats.shards[(fnv1a("sum") % 3) as usize].procs.len(), 1);
    assert_eq!(seen, want);
}

#[test]
fn shards_by_name_auto_spawn_and_place_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = child("sharded-by-name");
    cmd.env("TMPDIR", dir.path());
    run_child(cmd);
}

/// Child side of `shards_by_name_auto_spawn_and_place_keys`: `TMPDIR` is a
/// fresh temp dir, so `shards(3)` spawns three brokers named `sh#0..2` there.
pub fn sharded_by_name_child() {
    let c = Client::builder().name("sh").shards(3).connect().unwrap();
    let tmp = PathBuf::from(std::env::var("TMPDIR").unwrap());
    let want: Vec<PathBuf> = (0..3)
        .map(|i| tmp.join(format!("procmesh-sh#{i}.sock")))
        .collect();
    assert_eq!(c.addresses(), want);
    for k in keys() {
        c.set(&k, &1).unwrap();
    }
    for (i, p) in want.iter().enumerate() {
        let plain = client_at(p, Codec::MsgPack);
        let mut on: Vec<String> = plain.keys().unwrap();
        on.sort();
        let mut expect: Vec<String> = keys()
            .into_iter()
            .filter(|k| (fnv1a(k) % 3) as usize == i)
            .collect();
        expect.sort();
        assert_eq!(on, expect, "keys on shard {i}");
        let name = plain.stats().unwrap().raw["name"].clone();
        assert_eq!(
            name,
            format!("sh#{i}"),
            "broker of shard {i} is named after it"
        );
    }
    c.shutdown_broker().unwrap();
}
