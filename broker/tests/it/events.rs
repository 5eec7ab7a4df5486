//! Issue 11 item 8: broker events of an embedded broker (`BrokerBuilder::events`), and
//! `persist-error` as `procmesh serve --log debug` logs it.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use procmesh_broker::events::ConnSerial;
use procmesh_broker::{Broker, BrokerEvent, BrokerHandle};
use serde_json::json;

use crate::support::{Codec, TestClient, BIN};

fn embedded(
    b: procmesh_broker::BrokerBuilder,
) -> (tempfile::TempDir, BrokerHandle, Receiver<BrokerEvent>) {
    let dir = tempfile::tempdir().unwrap();
    let mut h = b
        .socket(dir.path().join("mesh.sock"))
        .events(1024)
        .start()
        .expect("start");
    let rx = h.events().expect("events were asked for");
    assert!(h.events().is_none(), "the receiver is handed out once");
    (dir, h, rx)
}

/// The next event `pick` accepts, skipping others, within 5 s.
fn next<T>(rx: &Receiver<BrokerEvent>, mut pick: impl FnMut(&BrokerEvent) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = rx.recv_timeout(left).expect("the event within 5 s");
        if let Some(t) = pick(&ev) {
            return t;
        }
    }
}

#[test]
fn connect_and_disconnect_events_name_the_same_connection() {
    let (_d, h, rx) = embedded(Broker::builder().heartbeat(None));
    let c = TestClient::hello(h.path(), Codec::Json, None);
    let id = next(&rx, |e| match e {
        BrokerEvent::Connect(c) => Some(*c),
        _ => None,
    });
    let other = TestClient::hello(h.path(), Codec::MsgPack, None);
    let id2 = next(&rx, |e| match e {
        BrokerEvent::Connect(c) => Some(*c),
        _ => None,
    });
    assert_ne!(id, id2);
    drop(c);
    let gone = next(&rx, |e| match e {
        BrokerEvent::Disconnect(c) => Some(*c),
        _ => None,
    });
    assert_eq!(gone, id);
    drop(other);
    assert_eq!(
        next(&rx, |e| match e {
            BrokerEvent::Disconnect(c) => Some(*c),
            _ => None,
        }),
        id2
    );
    assert_eq!(h.events_dropped(), 0);
}

#[test]
fn reap_event_for_a_silent_connection() {
    let (_d, h, rx) = embedded(Broker::builder().heartbeat(Some(Duration::from_millis(50))));
    let mut silent = TestClient::connect(h.path(), Codec::Json);
    let id = next(&rx, |e| match e {
        BrokerEvent::Connect(c) => Some(*c),
        _ => None,
    });
    let reaped = next(&rx, |e| match e {
        BrokerEvent::Reap(c) => Some(*c),
        _ => None,
    });
    assert_eq!(reaped, id);
    let gone: ConnSerial = next(&rx, |e| match e {
        BrokerEvent::Disconnect(c) => Some(*c),
        _ => None,
    });
    assert_eq!(gone, id, "a reaped connection is also disconnected");
    assert!(silent.closed_within(Duration::from_secs(5)));
}

#[test]
fn drop_event_names_channel_and_slow_consumer() {
    let (_d, h, rx) = embedded(
        Broker::builder()
            .heartbeat(None)
            .send_hwm(64 * 1024)
            .send_hard_limit(1 << 30),
    );
    let mut stalled = TestClient::hello(h.path(), Codec::Json, None);
    let slow = next(&rx, |e| match e {
        BrokerEvent::Connect(c) => Some(*c),
        _ => None,
    });
    stalled.ok(json!({"t":"sub","channel":"flood"}));
    let mut p = TestClient::hello(h.path(), Codec::Json, None);
    let big = "x".repeat(16 * 1024);
    let mut delivered = 0;
    for _ in 0..400 {
        delivered += p
            .ok(json!({"t":"pub","channel":"flood","payload":big}))
            .as_u64()
            .unwrap();
    }
    assert!(delivered < 400, "some messages were dropped");
    let (channel, conn) = next(&rx, |e| match e {
        BrokerEvent::Drop { channel, conn } => Some((channel.clone(), *conn)),
        _ => None,
    });
    assert_eq!((channel.as_str(), conn), ("flood", slow));
    let drops = 1 + rx
        .try_iter()
        .filter(|e| matches!(e, BrokerEvent::Drop { .. }))
        .count() as u64;
    assert_eq!(
        drops + h.events_dropped(),
        p.stats()["dropped"].as_u64().unwrap(),
        "one drop event per dropped message (or counted as a lost event)"
    );
}

#[test]
fn stats_events_arrive_every_stats_interval() {
    let (_d, h, rx) = embedded(
        Broker::builder()
            .heartbeat(None)
            .stats_interval(Some(Duration::from_millis(50))),
    );
    let mut c = TestClient::hello(h.path(), Codec::Json, None);
    c.ok(json!({"t":"set","key":"k","value":1}));
    let start = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(next(&rx, |e| match e {
            // Skip a snapshot taken before the write above.
            BrokerEvent::Stats(s) if s.cache_size == 1 => {
                Some((s.connections, s.cache_size, Instant::now()))
            }
            _ => None,
        }));
    }
    assert!(
        seen.iter().all(|&(conns, size, _)| conns == 1 && size == 1),
        "{seen:?}"
    );
    assert!(
        seen[2].2.duration_since(start) >= Duration::from_millis(50),
        "spaced by the interval: {seen:?}"
    );
    // Without the option no stats event comes.
    let (_d2, h2, rx2) = embedded(Broker::builder().heartbeat(None));
    let _c2 = TestClient::hello(h2.path(), Codec::Json, None);
    let mut names = Vec::new();
    while let Ok(e) = rx2.recv_timeout(Duration::from_millis(300)) {
        names.push(e.name());
    }
    assert_eq!(names, ["connect"]);
}

#[test]
fn a_lagging_receiver_loses_events_not_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Broker::builder()
        .socket(dir.path().join("mesh.sock"))
        .heartbeat(None)
        .events(2)
        .start()
        .unwrap();
    let rx = h.events().unwrap();
    let clients: Vec<TestClient> = (0..6)
        .map(|_| TestClient::hello(h.path(), Codec::Json, None))
        .collect();
    // The broker kept serving although nobody read its events.
    let mut c = TestClient::hello(h.path(), Codec::Json, None);
    assert_eq!(c.stats()["connections"], 7);
    assert_eq!(rx.try_iter().count(), 2);
    assert_eq!(h.events_dropped(), 5, "7 connects, 2 delivered");
    drop(clients);
}

#[test]
fn persist_error_event_is_logged_by_serve() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mesh.sock");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--heartbeat", "0", "--log", "debug", "--socket"])
        .arg(&sock)
        .env(
            "PROCMESH_BROKER_OPTS",
            json!({"persist":{"dir": dir.path().join("data"), "mode":"always"}}).to_string(),
        )
        .env_remove("PROCMESH_PERSIST_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec (setrlimit, signal):
    // a file-size limit that makes log writes fail with EFBIG, like a full disk.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no line with {what}"));
            if l.contains(what) {
                return l;
            }
        }
    };
    wait_for("serving at");
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    wait_for("debug: connect");
    let pad = "x".repeat(100);
    for i in 0..1000 {
        let r = c.request(json!({"t":"set","key":format!("k{i}"),"value":pad}));
        if r["t"] == "err" {
            break;
        }
    }
    let l = wait_for("debug: persist-error");
    assert!(l.len() > "procmesh: debug: persist-error ".len(), "{l}");
    let _ = child.kill();
    let _ = child.wait();
}
