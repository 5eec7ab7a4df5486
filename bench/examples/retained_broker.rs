//! An embedded broker for the retained-publish benchmark (until `PROCMESH_BROKER_OPTS`
//! parses `pubsub`): `retained_broker <socket> <dir|-> <no|everysec|always> <retain:0|1>`.
//! Runs until killed.

use procmesh_broker::persistence::{FsyncMode, PersistConfig};
use procmesh_broker::retain::RetainConfig;
use procmesh_broker::Broker;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    assert!(
        a.len() == 5,
        "usage: retained_broker <socket> <dir|-> <fsync> <retain:0|1>"
    );
    let persist = (a[2] != "-").then(|| {
        let mut p = PersistConfig::new(&a[2]);
        p.fsync = FsyncMode::parse(&a[3]).expect("fsync mode");
        p
    });
    let h = Broker::builder()
        .socket(&a[1])
        .heartbeat(None)
        .persistence(persist)
        .pubsub(RetainConfig {
            persist: a[4] == "1",
            ..Default::default()
        })
        .start()
        .expect("start");
    println!("serving at {}", a[1]);
    h.join().expect("broker");
}
