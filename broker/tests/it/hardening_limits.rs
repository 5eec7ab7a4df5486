//! Issue 12 (exhaustion, items 5–8, 11, 15's heartbeat stall): no request or peer can
//! exhaust the broker. Each test names the bound it guards; all run the real broker.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{TestBroker, TestClient, BIN};

const MIB: usize = 1 << 20;

fn big(n: usize) -> String {
    "x".repeat(n)
}

// ------------------------------------------------------------ 5, 6: reply budget

#[test]
fn mget_of_one_big_key_many_times_is_refused_etoobig_and_the_connection_lives() {
    let b = TestBroker::start(&["--send-hard-limit", "4MiB"]);
    let mut c = b.client();
    c.ok(json!({"t": "set", "key": "big", "value": big(MIB)}));
    let keys: Vec<&str> = vec!["big"; 1000];
    let r = c.request(json!({"t": "mget", "keys": keys}));
    assert_eq!(
        r["t"],
        "err",
        "{}",
        &r.to_string()[..200.min(r.to_string().len())]
    );
    assert_eq!(r["code"], "ETOOBIG", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("reply limit"),
        "{r}"
    );
    // Answered exactly once and still served: a fitting mget works.
    let v = c.ok(json!({"t": "mget", "keys": ["big", "big"]}));
    assert_eq!(v["values"][1].as_str().map(str::len), Some(MIB));
    assert_eq!(c.ok(json!({"t": "has", "key": "big"})), json!(true));
}

#[test]
fn keys_reply_over_the_hard_limit_gets_an_error_frame_not_a_silent_close() {
    let b = TestBroker::start(&["--send-hard-limit", "1MiB"]);
    let mut c = b.client();
    let entries: Vec<Value> = (0..300)
        .map(|i| json!([format!("{i:05}{}", big(5000)), 1]))
        .collect();
    c.ok(json!({"t": "mset", "entries": entries}));
    assert_eq!(c.err_code(json!({"t": "keys"})), "ETOOBIG");
    assert_eq!(c.request(json!({"t": "ping"}))["t"], "pong");
}

#[test]
fn get_reply_over_the_hard_limit_gets_an_error_frame_not_a_silent_close() {
    let b = TestBroker::start(&["--send-hard-limit", "1MiB"]);
    let mut c = b.client();
    c.ok(json!({"t": "set", "key": "k", "value": big(2 * MIB)}));
    assert_eq!(c.err_code(json!({"t": "get", "key": "k"})), "ETOOBIG");
    assert_eq!(c.request(json!({"t": "ping"}))["t"], "pong");
}

// ------------------------------------------------------------ 7: pre-auth bounds

#[test]
fn preauth_frame_over_64k_is_refused_before_its_buffer_grows() {
    let b = TestBroker::start(&["--token", "s3cret"]);
    let mut c = b.client();
    // Announce a 32 MiB frame and send 100 KiB of it: refused at the header.
    let mut bytes = (32u32 << 20).to_be_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(b'{', 100 * 1024));
    let _ = c.send_raw(&bytes);
    let f = c.read_frame().expect("an error frame before the close");
    assert_eq!(f["code"], "ETOOBIG", "{f}");
    assert!(c.closed_within(Duration::from_secs(5)));
    // An authenticated client may still send frames over 64 KiB.
    let mut ok = TestClient::hello(&b.path, crate::support::Codec::Json, Some("s3cret"));
    ok.ok(json!({"t": "set", "key": "k", "value": big(200 * 1024)}));
}

/// The broker's peak resident memory (VmHWM), bytes.
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

#[test]
fn preauth_flood_of_tiny_frames_waits_in_the_socket_not_in_the_broker() {
    // Unauthenticated peers each send 4 MiB of 6-byte frames (answered with nothing:
    // no id) as fast as they can: far more per turn than the core's frame budget
    // handles. The read budget must leave the rest in their sockets: without it (the
    // io_uring driver's multishot receive before this fix), each connection's buffer
    // held most of its 4 MiB at once.
    const PEERS: usize = 4;
    const EACH: usize = 4 * MIB;
    let b = TestBroker::start(&["--token", "s3cret", "--handshake-timeout", "120000"]);
    let mut warm = TestClient::hello(&b.path, crate::support::Codec::Json, Some("s3cret"));
    assert_eq!(warm.request(json!({"t": "ping"}))["t"], "pong");
    let before = peak_rss(b.pid());
    let frame = [0, 0, 0, 2, b'{', b'}'];
    let flood: Vec<u8> = frame.iter().copied().cycle().take(EACH / 6 * 6).collect();
    let peers: Vec<_> = (0..PEERS)
        .map(|_| {
            let mut c = b.client();
            let flood = flood.clone();
            std::thread::spawn(move || {
                c.send_raw(&flood).expect("the broker takes the flood");
                // A ping after the flood: its pong says every frame before it was
                // handled.
                let pong = c.request(json!({"t": "ping"}));
                assert_eq!(pong["t"], "pong", "{pong}");
            })
        })
        .collect();
    for p in peers {
        p.join().expect("peer");
    }
    let grown = peak_rss(b.pid()).saturating_sub(before);
    assert!(
        grown < 10 * MIB,
        "{PEERS} unauthenticated floods of {EACH} bytes grew the broker's peak RSS by {grown} bytes"
    );
    assert_eq!(warm.request(json!({"t": "ping"}))["t"], "pong");
}

#[test]
fn handshake_deadline_closes_an_unauthenticated_trickler() {
    let b = TestBroker::start(&["--token", "s3cret", "--handshake-timeout", "1000"]);
    let mut c = b.client();
    // A frame of 60 000 bytes, trickled a byte every 100 ms: never complete in time.
    c.send_raw(&60_000u32.to_be_bytes()).unwrap();
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(100));
        if c.send_raw(b" ").is_err() {
            closed = true;
            break;
        }
        if c.closed_within(Duration::from_millis(1)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the trickler was still connected after 8 s");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed before the deadline"
    );
    // Authenticated clients are not subject to it.
    let mut ok = TestClient::hello(&b.path, crate::support::Codec::Json, Some("s3cret"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ok.request(json!({"t": "ping"}))["t"], "pong");
}

#[test]
fn connections_past_max_connections_are_refused_with_an_error() {
    let b = TestBroker::start(&["--max-connections", "3"]);
    let mut held: Vec<TestClient> = (0..3).map(|_| b.client()).collect();
    for c in &mut held {
        assert_eq!(c.request(json!({"t": "ping"}))["t"], "pong");
    }
    let mut extra = b.client();
    let f = extra.read_frame().expect("a refusal frame");
    assert_eq!(f["t"], "err", "{f}");
    assert_eq!(f["code"], "EBROKER", "{f}");
    assert!(
        f["message"].as_str().unwrap().contains("maxConnections"),
        "{f}"
    );
    assert!(extra.closed_within(Duration::from_secs(5)));
    drop(held.pop());
    crate::support::wait_until(Duration::from_secs(5), "a slot frees", || {
        let mut c = b.client();
        c.send(&json!({"t": "ping", "id": 1}));
        c.read_frame().is_some_and(|f| f["t"] == "pong")
    });
}

// ------------------------------------------------------------ 8: EMFILE

/// The broker under `RLIMIT_NOFILE = limit` (set in the child before exec).
fn serve_with_nofile(path: &std::path::Path, limit: u64) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--socket")
        .arg(path)
        .args(["--heartbeat", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("PROCMESH_BROKER_OPTS");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child here.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("serving at") => break,
            Some(Ok(_)) => continue,
            other => panic!("broker did not start: {other:?}"),
        }
    }
    child
}

#[test]
fn accept_resumes_after_emfile_and_the_backlog_never_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.sock");
    let mut child = serve_with_nofile(&path, 40);
    let mut served: Vec<UnixStream> = Vec::new();
    let mut refused = 0;
    // Far more connections than descriptors: each is served or told why, none hangs.
    for i in 0..60 {
        let mut c = TestClient::connect(&path, crate::support::Codec::Json);
        // A refused peer may be answered and closed before its ping is written (the
        // io_uring driver accepts at once): the write may then fail, the answer is
        // still there to read.
        let ping =
            crate::support::encode(crate::support::Codec::Json, &json!({"t": "ping", "id": i}));
        let _ = c.send_raw(&ping);
        let f = c
            .read_frame()
            .unwrap_or_else(|| panic!("connection {i}: closed without a word"));
        if f["t"] == "pong" {
            served.push(c.stream);
        } else {
            assert_eq!(f["code"], "EBROKER", "{f}");
            assert!(
                f["message"].as_str().unwrap().contains("descriptors"),
                "{f}"
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "the limit was never reached");
    assert!(!served.is_empty());
    // Free descriptors: new connections are served again (accepting was re-armed).
    served.clear();
    crate::support::wait_until(Duration::from_secs(10), "accepting resumes", || {
        let mut c = TestClient::connect(&path, crate::support::Codec::Json);
        c.send(&json!({"t": "ping", "id": 1}));
        c.read_frame().is_some_and(|f| f["t"] == "pong")
    });
    let _ = child.kill();
    let _ = child.wait();
}

// ------------------------------------------------------------ 11: per-connection caps

#[test]
fn subscriptions_per_connection_are_capped() {
    let b = TestBroker::start(&["--max-subscriptions", "3"]);
    let mut c = b.client();
    for ch in ["a", "b", "c*"] {
        c.ok(json!({"t": "sub", "channel": ch}));
    }
    let r = c.request(json!({"t": "sub", "channel": "d"}));
    assert_eq!(r["code"], "EBROKER", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("maxSubscriptions"),
        "{r}"
    );
    // Re-subscribing to a held channel is not a new subscription.
    c.ok(json!({"t": "sub", "channel": "a"}));
    // Another connection has its own budget.
    b.client().ok(json!({"t": "sub", "channel": "d"}));
}

#[test]
fn registrations_per_connection_are_capped() {
    let b = TestBroker::start(&["--max-registrations", "2"]);
    let mut w = b.client();
    w.ok(json!({"t": "reg", "name": "f"}));
    w.ok(json!({"t": "reg", "name": "g"}));
    let r = w.request(json!({"t": "reg", "name": "h"}));
    assert_eq!(r["code"], "EBROKER", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("maxRegistrations"),
        "{r}"
    );
}

#[test]
fn pending_calls_per_caller_are_capped_and_freed_when_the_caller_leaves() {
    let b = TestBroker::start(&["--max-pending-calls", "2"]);
    let mut w = b.client();
    w.ok(json!({"t": "reg", "name": "slow"}));
    let mut caller = b.client();
    caller.send_request(json!({"t": "call", "name": "slow", "args": [], "timeout": 60000}));
    caller.send_request(json!({"t": "call", "name": "slow", "args": [], "timeout": 60000}));
    let r = caller.request(json!({"t": "call", "name": "slow", "args": [], "timeout": 60000}));
    assert_eq!(r["code"], "EBROKER", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("maxPendingCalls"),
        "{r}"
    );
    assert_eq!(w.stats()["pendingCalls"], 2);
    drop(caller);
    crate::support::wait_until(Duration::from_secs(5), "the calls are freed", || {
        w.stats()["pendingCalls"] == 0
    });
}

#[test]
fn global_output_cap_drops_and_disconnects_instead_of_queuing_per_subscriber() {
    // 8 stalled subscribers, a 2 MiB publish each time: without the global cap
    // every subscriber would queue its own copy (up to the 64 MiB hard limit each).
    let b = TestBroker::start(&["--max-output-bytes", "8MiB"]);
    let mut subs: Vec<TestClient> = (0..8).map(|_| b.client()).collect();
    for s in &mut subs {
        s.ok(json!({"t": "sub", "channel": "big"}));
    }
    let mut p = b.client();
    let payload = big(2 * MIB);
    for _ in 0..4 {
        p.ok(json!({"t": "pub", "channel": "big", "payload": payload}));
    }
    let st = p.stats();
    assert!(st["dropped"].as_u64().unwrap() > 0, "{st}");
    // Acknowledged-by-all fan-out is never dropped: past the cap, the biggest
    // queues are disconnected instead.
    for _ in 0..4 {
        p.ok(json!({"t": "pub", "channel": "big", "payload": payload, "acks": "all"}));
    }
    let st = p.stats();
    assert!(st["slowClosed"].as_u64().unwrap() > 0, "{st}");
    let rss = st["memory"]["rss"].as_u64().unwrap();
    assert!(rss < 200 * MIB as u64, "rss {rss}");
}

// ------------------------------------------------------------ 15: heartbeat after a stall

#[test]
fn a_broker_stall_longer_than_three_heartbeats_does_not_reap_idle_clients() {
    let b = TestBroker::start(&["--heartbeat", "200"]);
    let mut c = b.client();
    assert_eq!(c.request(json!({"t": "ping"}))["t"], "pong");
    let pid = b.pid() as i32;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // The resumed broker pings the idle client (silence counts from its last turn)
    // rather than reaping it; a client that answers stays.
    let f = c.read_frame().expect("reaped after the broker's own stall");
    assert_eq!(f["t"], "ping", "{f}");
    c.send(&json!({"t": "pong"}));
    assert_eq!(c.request(json!({"t": "ping"}))["t"], "pong");
    assert_eq!(c.stats()["reaped"], 0);
}

#[test]
fn lock_waiters_per_connection_are_capped() {
    let b = TestBroker::start(&["--max-lock-waiters", "2"]);
    let mut holder = b.client();
    let v = holder.ok(json!({"t": "lock", "key": "a", "ttl": 60000}));
    assert!(v["token"].is_number(), "{v}");
    let mut w = b.client();
    w.send_request(json!({"t": "lock", "key": "a", "ttl": 1000, "wait": 60000}));
    w.send_request(json!({"t": "lock", "key": "a", "ttl": 1000, "wait": 60000}));
    let r = w.request(json!({"t": "lock", "key": "a", "ttl": 1000, "wait": 60000}));
    assert_eq!(r["code"], "EBROKER", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("maxLockWaiters"),
        "{r}"
    );
    // A request that does not wait is not a waiter.
    let v = w.ok(json!({"t": "lock", "key": "b"}));
    assert!(v["token"].is_number(), "{v}");
}
