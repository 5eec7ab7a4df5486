//! Multi-process tests: separate OS processes (this binary re-executed, see
//! `child_entry`) sharing one mesh, and racing to auto-spawn its broker.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use procmesh::{Client, Codec};
use serde::{Deserialize, Serialize};

use crate::support::{
    broker_bin, brokers_serving, child, client_at, eventually, example_bin, reported, run_child,
    BrokerProc,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    from: u32,
    text: String,
}

/// What a child process does, by `PROCMESH_IT_ROLE`.
pub fn run_role(role: &str) {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    match role {
        // Reads the parent's write, then writes its own.
        "peer" => {
            let codec = if env("PEER_CODEC") == "json" {
                Codec::Json
            } else {
                Codec::MsgPack
            };
            let c = client_at(&PathBuf::from(env("PEER_SOCKET")), codec);
            let n: Note = c
                .get("from-parent")
                .unwrap()
                .expect("parent's value visible");
            assert_eq!(n.text, "hello child");
            assert_ne!(n.from, std::process::id());
            c.set(
                "from-child",
                &Note {
                    from: std::process::id(),
                    text: "hello parent".into(),
                },
            )
            .unwrap();
            assert_eq!(c.incr("shared-counter", 1).unwrap(), 2);
        }
        // Waits for the parent's go (a byte on stdin), then connects by name with
        // auto-spawn (TMPDIR points into the test's temp dir).
        "racer" => {
            let mut go = [0u8; 1];
            std::io::stdin().read_exact(&mut go).unwrap();
            let c = Client::builder()
                .name("race")
                .idle_timeout(Duration::from_secs(20))
                .connect()
                .unwrap();
            let n = c.incr("racers", 1).unwrap();
            let pid = c.stats().unwrap().raw["pid"].clone();
            println!("RACER_N={n}");
            println!("BROKER_PID={pid}");
        }
        "sharded-by-name" => crate::sharding::sharded_by_name_child(),
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn two_processes_see_each_others_writes() {
    for codec in ["msgpack", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.sock");
        let _broker = BrokerProc::start(&path, &[]);
        let c = client_at(&path, Codec::MsgPack);
        c.set(
            "from-parent",
            &Note {
                from: std::process::id(),
                text: "hello child".into(),
            },
        )
        .unwrap();
        c.incr("shared-counter", 1).unwrap();
        let mut cmd = child("peer");
        cmd.env("PEER_SOCKET", &path).env("PEER_CODEC", codec);
        run_child(cmd);
        let n: Note = c.get("from-child").unwrap().expect("child's value visible");
        assert_eq!(n.text, "hello parent");
        assert_ne!(n.from, std::process::id());
        assert_eq!(c.get::<i64>("shared-counter").unwrap(), Some(2));
    }
}

#[test]
fn auto_spawn_race_of_eight_processes_ends_with_one_broker() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("procmesh-race.sock");
    assert!(!socket.exists());
    let mut kids = Vec::new();
    for _ in 0..8 {
        let mut cmd = child("racer");
        cmd.env("TMPDIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        kids.push(cmd.spawn().unwrap());
    }
    // Start them all at once.
    for k in &mut kids {
        k.stdin.take().unwrap().write_all(b"g").unwrap();
    }
    let mut ns = Vec::new();
    let mut pids = Vec::new();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "racer failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns.extend(
            reported(&stdout, "RACER_N")
                .iter()
                .map(|s| s.parse::<i64>().unwrap()),
        );
        pids.extend(
            reported(&stdout, "BROKER_PID")
                .iter()
                .map(|s| s.to_string()),
        );
    }
    ns.sort();
    assert_eq!(
        ns,
        (1..=8).collect::<Vec<_>>(),
        "every racer counted once on one broker"
    );
    pids.dedup();
    assert_eq!(pids.len(), 1, "all racers talked to one broker: {pids:?}");
    // Losing brokers exit by themselves; exactly one keeps serving.
    eventually("losing brokers exit", || {
        brokers_serving(&socket).len() == 1
    });
    let c = client_at(&socket, Codec::MsgPack);
    assert_eq!(c.get::<i64>("racers").unwrap(), Some(8));
    c.shutdown_broker().unwrap();
    eventually("the broker exits", || brokers_serving(&socket).is_empty());
}

#[test]
fn quickstart_example_runs_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(example_bin("quickstart"));
    cmd.env("TMPDIR", dir.path())
        .env("PROCMESH_BROKER_BIN", broker_bin())
        .env_remove("PROCMESH_SOCKET")
        .env_remove("PROCMESH_BROKER_OPTS");
    let out = run_child(cmd);
    for want in [
        "config from the parent: Some(Config",
        "visits is now 1",
        "greet returned: hello child, from process",
        "wrote `report` holding the lock",
        "message on chat.general: hi from process",
        "visits counted by the child: Some(1)",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // It auto-spawned a broker for the mesh `quickstart` in our TMPDIR; stop it.
    let socket = dir.path().join("procmesh-quickstart.sock");
    client_at(&socket, Codec::MsgPack)
        .shutdown_broker()
        .unwrap();
    eventually("the quickstart broker exits", || {
        brokers_serving(&socket).is_empty()
    });
}

#[test]
fn auto_spawned_broker_forwards_options_and_is_respawned_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("spawned.sock");
    let c = Client::builder()
        .address(&socket)
        .broker_bin(broker_bin())
        .idle_timeout(Duration::from_secs(20))
        .max_keys(2)
        .default_ttl(Duration::from_millis(300))
        .connect()
        .unwrap();
    let events = c.events();
    // --max-keys: the least recently used entry goes.
    c.set("a", &1).unwrap();
    c.set("b", &2).unwrap();
    c.set("c", &3).unwrap();
    let mut keys = c.keys().unwrap();
    keys.sort();
    assert_eq!(keys, ["b", "c"]);
    // cache.ttl in PROCMESH_BROKER_OPTS: entries without a ttl expire.
    eventually("default ttl expires entries", || {
        c.keys().unwrap().is_empty()
    });

    let (tx, rx) = std::sync::mpsc::channel::<i32>();
    let tx = std::sync::Mutex::new(tx);
    let _sub = c
        .subscribe("after-crash", move |m| {
            tx.lock().unwrap().send(m.payload().unwrap()).unwrap()
        })
        .unwrap();
    let first_pid = c.stats().unwrap().raw["pid"]
        .as_i64()
        .expect("broker pid in stats");
    // SAFETY: kill(2) on a pid we just read; no memory effects.
    assert_eq!(unsafe { libc::kill(first_pid as i32, libc::SIGKILL) }, 0);
    crate::support::wait_event(&events, "reconnect", |e| {
        matches!(e, procmesh::Event::Reconnected { .. })
    });
    let second_pid = c.stats().unwrap().raw["pid"].as_i64().unwrap();
    assert_ne!(first_pid, second_pid, "a new broker was spawned");
    assert_eq!(c.publish("after-crash", &5).unwrap(), 1);
    assert_eq!(rx.recv_timeout(crate::support::WAIT).unwrap(), 5);
    c.shutdown_broker().unwrap();
    eventually("the broker exits", || brokers_serving(&socket).is_empty());
}
