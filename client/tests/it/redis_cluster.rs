//! The Redis backend on a three-node Redis Cluster on loopback ports (created
//! here, or the one named by `PROCMESH_REDIS_CLUSTER`, comma-separated seed
//! URLs, such as scripts/redis-cluster.sh starts): every multi-key script runs
//! because the mesh's keys share its hash tag, SCAN finds the mesh's slot owner,
//! and pub/sub, locks and RPC work across nodes.

use std::sync::mpsc::channel;
use std::sync::Mutex;
use std::time::Duration;

use procmesh::{Client, ErrorCode, LockOptions};

use crate::redis_support::RedisCluster;
use crate::support::WAIT;

fn seeds() -> Option<(Option<RedisCluster>, Vec<String>)> {
    if let Ok(s) = std::env::var("PROCMESH_REDIS_CLUSTER") {
        if !s.is_empty() {
            return Some((None, s.split(',').map(str::to_owned).collect()));
        }
    }
    let c = RedisCluster::start()?;
    let urls = c.urls();
    Some((Some(c), urls))
}

#[test]
fn cluster_safe_operations_work_on_a_three_node_cluster() {
    let Some((_cluster, urls)) = seeds() else {
        return;
    };
    // Two meshes: their slots (and so, likely, their nodes) differ.
    for mesh in ["orders", "users"] {
        let c = Client::builder()
            .name(mesh)
            .redis_cluster(urls.clone())
            .connect()
            .unwrap();
        let d = Client::builder()
            .name(mesh)
            .redis_cluster(urls.clone())
            .connect()
            .unwrap();
        c.clear().unwrap();
        c.set("a", &1).unwrap();
        c.set_with_ttl("b", &2, Duration::from_secs(60)).unwrap();
        c.mset(&[("c", 3), ("d", 4)]).unwrap();
        let got: Vec<Option<i32>> = d.mget(&["a", "b", "c", "x"]).unwrap();
        assert_eq!(got, vec![Some(1), Some(2), Some(3), None], "{mesh}");
        let mut keys = d.keys().unwrap();
        keys.sort();
        assert_eq!(keys, vec!["a", "b", "c", "d"], "{mesh}");
        assert_eq!(c.incr("b", 5).unwrap(), 7);
        assert!(c.cas("a", Some(&1), Some(&10)).unwrap());
        assert!(!c.cas("a", Some(&1), Some(&11)).unwrap());

        let g = c.lock("job", LockOptions::new()).unwrap().expect("free");
        assert!(d.lock("job", LockOptions::new()).unwrap().is_none());
        g.set("job:out", &"done").unwrap();
        let t1 = g.token();
        drop(g);
        let g2 = d
            .lock("job", LockOptions::new().wait(WAIT))
            .unwrap()
            .expect("released");
        let e = c.fenced_set("job", t1, "job:out", &"stale").unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Fenced), "{e}");
        assert!(g2.cas("job:out", Some(&"done"), Some(&"again")).unwrap());
        drop(g2);

        let (tx, rx) = channel();
        let tx = Mutex::new(tx);
        let _s = d
            .subscribe("ev.*", move |m| {
                let n: i32 = m.payload().unwrap();
                tx.lock()
                    .unwrap()
                    .send((m.channel().to_owned(), n))
                    .unwrap();
            })
            .unwrap();
        assert_eq!(c.publish("ev.x", &5).unwrap(), 1);
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("ev.x".to_owned(), 5));

        let _reg = d.register("mul", |(a, b): (i64, i64)| Ok(a * b)).unwrap();
        assert_eq!(c.call::<_, i64>("mul", &(6, 7), None).unwrap(), 42);
        let e = c.call::<_, i64>("nobody", &(), None).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NoHandler), "{e}");

        let s = c.stats().unwrap();
        assert_eq!(s.cache_size, 5, "{mesh}");
        c.clear().unwrap();
        assert!(d.keys().unwrap().is_empty());
    }
}
