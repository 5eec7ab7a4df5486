//! Issue 11 item 1: every procmesh-js 0.1.1 broker option in `PROCMESH_BROKER_OPTS`,
//! one test per option name, against the real `procmesh serve` binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{wait_until, Codec, TestClient, BIN};

/// `procmesh serve` started with `PROCMESH_BROKER_OPTS` only (plus `args`), its
/// stderr lines forwarded to a channel; killed on drop.
struct Served {
    child: Child,
    dir: tempfile::TempDir,
    path: PathBuf,
    /// Lines before "serving at" that contain "warning".
    warnings: Vec<String>,
    lines: Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a start that failed ended: exit code and everything it wrote to stderr.
#[derive(Debug)]
struct Failed {
    code: Option<i32>,
    stderr: String,
}

fn command(dir: &Path, opts: &Value, args: &[&str]) -> Command {
    let mut opts = opts.clone();
    // Heartbeats off unless the test sets them (a flag would win over the option).
    if opts.get("heartbeatInterval").is_none() {
        opts["heartbeatInterval"] = json!(0);
    }
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .env("PROCMESH_BROKER_OPTS", opts.to_string())
        .env("TMPDIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for v in [
        "PROCMESH_SOCKET",
        "PROCMESH_PERSIST_DIR",
        "PROCMESH_TOKEN",
        "PROCMESH_TOKEN_FILE",
        "PROCMESH_LOG",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// Starts the broker in a fresh temp dir; `opts` without an address gets
/// `<dir>/mesh.sock`.
fn start(opts: Value, args: &[&str]) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = opts;
    if opts.get("address").is_none() && opts.get("name").is_none() {
        opts["address"] = json!(dir.path().join("mesh.sock"));
    }
    start_in(dir, opts, args, &[]).expect("the broker starts")
}

fn start_in(
    dir: tempfile::TempDir,
    opts: Value,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Result<Served, Failed> {
    let mut cmd = command(dir.path(), &opts, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn procmesh serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut warnings = Vec::new();
    let mut all = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let serving = loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                all.push_str(&l);
                all.push('\n');
                if let Some(rest) = l.split("serving at ").nth(1) {
                    break PathBuf::from(rest.split(" (pid").next().expect("a path"));
                }
                if l.contains("warning") {
                    warnings.push(l);
                }
            }
            Err(_) => {
                let _ = child.kill();
                let code = child.wait().ok().and_then(|s| s.code());
                return Err(Failed { code, stderr: all });
            }
        }
    };
    Ok(Served {
        child,
        dir,
        path: serving,
        warnings,
        lines,
    })
}

impl Served {
    fn client(&self) -> TestClient {
        TestClient::hello(&self.path, Codec::Json, None)
    }

    /// The next stderr line containing `what`, within `limit`.
    fn line_with(&self, what: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if l.contains(what) => return Some(l),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

/// A start that must fail.
fn refused(opts: Value) -> Failed {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = opts;
    opts["address"] = json!(dir.path().join("mesh.sock"));
    match start_in(dir, opts, &[], &[]) {
        Ok(s) => panic!("the broker started at {}", s.path.display()),
        Err(f) => f,
    }
}

#[test]
fn option_name_is_announced_and_derives_the_socket() {
    let b = start(json!({"name":"optmesh"}), &[]);
    assert_eq!(b.path, b.dir.path().join("procmesh-optmesh.sock"));
    let w = TestClient::connect(&b.path, Codec::Json).request(json!({"t":"hello"}));
    assert_eq!(w["broker"], "optmesh");
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
}

#[test]
fn option_address_wins_over_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("elsewhere.sock");
    let b = start_in(dir, json!({"address": at, "name":"named"}), &[], &[]).unwrap();
    assert_eq!(b.path, at);
    assert_eq!(b.client().stats()["name"], "named");
}

#[test]
fn option_codec_is_checked_and_every_codec_is_served() {
    for codec in ["json", "msgpack", "msgpackr"] {
        let b = start(json!({"codec": codec}), &[]);
        assert!(b.warnings.is_empty(), "{codec}: {:?}", b.warnings);
        for c in [Codec::Json, Codec::MsgPack] {
            let mut cl = TestClient::hello(&b.path, c, None);
            assert_eq!(
                cl.request(json!({"t":"ping"}))["t"],
                "pong",
                "{codec} {c:?}"
            );
        }
    }
    let f = refused(json!({"codec":"xml"}));
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stderr.contains("`codec` = \"xml\""), "{f:?}");
}

#[test]
fn option_token_is_required_and_null_means_none() {
    let b = start(json!({"token":"s3"}), &[]);
    let mut no = TestClient::connect(&b.path, Codec::Json);
    assert_eq!(no.err_code(json!({"t":"hello","token":null})), "EAUTH");
    let mut yes = TestClient::hello(&b.path, Codec::Json, Some("s3"));
    assert_eq!(yes.request(json!({"t":"ping"}))["t"], "pong");
    let open = start(json!({"token":null}), &[]);
    assert!(open.warnings.is_empty(), "{:?}", open.warnings);
    assert_eq!(open.client().request(json!({"t":"ping"}))["t"], "pong");
    // A token of the wrong type must not silently turn authentication off.
    let f = refused(json!({"token":5}));
    assert_eq!(f.code, Some(1));
    assert!(f.stderr.contains("`token` = 5"), "{f:?}");
}

#[test]
fn option_cache_max_bounds_the_entries() {
    let b = start(json!({"cache":{"max":2}}), &[]);
    let mut c = b.client();
    for k in ["a", "b", "c"] {
        c.ok(json!({"t":"set","key":k,"value":1}));
    }
    assert_eq!(c.stats()["cacheSize"], 2);
}

#[test]
fn option_cache_ttl_expires_writes_without_one() {
    let b = start(json!({"cache":{"ttl":100}}), &[]);
    let mut c = b.client();
    c.ok(json!({"t":"set","key":"k","value":1}));
    c.ok(json!({"t":"set","key":"keep","value":1,"ttl":600_000}));
    wait_until(Duration::from_secs(5), "k expires", || {
        c.ok(json!({"t":"has","key":"k"})) == json!(false)
    });
    assert_eq!(c.ok(json!({"t":"has","key":"keep"})), json!(true));
}

#[test]
fn option_cache_max_size_bounds_the_value_bytes() {
    let b = start(json!({"cache":{"maxSize":1000}}), &[]);
    let mut c = b.client();
    for i in 0..50 {
        c.ok(json!({"t":"set","key":format!("k{i}"),"value":"x".repeat(100)}));
    }
    let st = c.stats();
    assert!(st["cacheBytes"].as_u64().unwrap() <= 1000, "{st}");
    assert!(st["evicted"].as_u64().unwrap() > 0, "{st}");
}

/// Sends a call without a timeout (the broker's `callTimeout` applies) to a worker
/// that never answers; returns how long until the caller got ECALLTIMEOUT.
fn hung_call(b: &Served) -> Duration {
    let mut worker = b.client();
    worker.ok(json!({"t":"reg","name":"hang"}));
    let mut c = b.client();
    let start = Instant::now();
    let id = c.send_request(json!({"t":"call","name":"hang","args":[]}));
    assert_eq!(worker.next_event().expect("invoke")["t"], "invoke");
    let r = c.reply_to(id);
    assert_eq!(r["code"], "ECALLTIMEOUT", "{r}");
    start.elapsed()
}

#[test]
fn option_call_timeout_applies_to_calls_without_one() {
    let b = start(json!({"callTimeout":300,"callTimeoutGrace":0}), &[]);
    let took = hung_call(&b);
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert!(
        took < Duration::from_secs(3),
        "not the 30 s default: {took:?}"
    );
}

#[test]
fn option_call_timeout_grace_changes_when_a_hung_call_is_reaped() {
    let quick = start(json!({"callTimeout":100,"callTimeoutGrace":0}), &[]);
    let slow = start(json!({"callTimeout":100,"callTimeoutGrace":1500}), &[]);
    let (q, s) = (hung_call(&quick), hung_call(&slow));
    assert!(
        q < Duration::from_millis(1200),
        "grace 0: reaped after {q:?}"
    );
    assert!(
        s >= Duration::from_millis(1590),
        "grace 1500: reaped after {s:?}, before timeout + grace"
    );
}

#[test]
fn option_heartbeat_interval_pings_and_reaps_the_silent() {
    let b = start(json!({"heartbeatInterval":100}), &[]);
    let mut c = TestClient::connect(&b.path, Codec::Json);
    let ping = c.next_event().expect("a ping");
    assert_eq!(ping["t"], "ping");
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "a client that never answers is reaped"
    );
    assert!(b.client().stats()["reaped"].as_u64().unwrap() >= 1);
    // null means the default (30 s), not an error.
    let d = start(json!({"heartbeatInterval":null}), &[]);
    assert!(d.warnings.is_empty());
}

/// A subscriber that never reads and a publisher flooding it with `acks`.
fn flood(b: &Served, acks: Value, n: usize) -> Value {
    let mut stalled = b.client();
    stalled.ok(json!({"t":"sub","channel":"flood"}));
    let mut p = b.client();
    let big = "x".repeat(16 * 1024);
    for _ in 0..n {
        let r = p.request(json!({"t":"pub","channel":"flood","payload":big,"acks":acks}));
        assert_eq!(r["t"], "ok", "{r}");
    }
    let st = p.stats();
    drop(stalled);
    st
}

#[test]
fn option_send_high_water_mark_drops_for_a_slow_consumer() {
    let b = start(
        json!({"sendHighWaterMark":65536,"sendHardLimit":1 << 30}),
        &[],
    );
    let st = flood(&b, json!(1), 400);
    assert!(st["dropped"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["slowClosed"], 0, "{st}");
}

#[test]
fn option_send_hard_limit_disconnects_a_slow_consumer() {
    let b = start(
        json!({"sendHighWaterMark":65536,"sendHardLimit":1 << 20}),
        &[],
    );
    let st = flood(&b, json!("all"), 400);
    assert_eq!(st["slowClosed"], 1, "{st}");
    assert_eq!(st["dropped"], 0, "{st}");
}

#[test]
fn option_idle_timeout_exits_without_connections() {
    let mut b = start(json!({"idleTimeout":200}), &[]);
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
    let mut never = start(json!({"idleTimeout":0}), &[]);
    assert_eq!(never.wait_exit(Duration::from_millis(500)), None);
}

#[test]
fn option_stats_interval_emits_stats_events() {
    let b = start(json!({"statsInterval":100}), &["--log", "debug"]);
    let _c = b.client();
    for _ in 0..2 {
        let l = b
            .line_with("debug: stats", Duration::from_secs(5))
            .expect("a stats event line");
        assert!(l.contains("connections="), "{l}");
    }
}

fn persisted_key(opts: Value, env: &[(&str, &Path)], dir: &tempfile::TempDir) -> Option<Value> {
    let sock = dir.path().join("p.sock");
    let mut opts = opts;
    opts["address"] = json!(sock);
    let tmp = || tempfile::tempdir().unwrap();
    let mut b = start_in(tmp(), opts.clone(), &[], env).unwrap();
    let mut c = b.client();
    c.ok(json!({"t":"set","key":"k","value":"kept"}));
    let st = c.stats();
    // SIGKILL: only what the fsync mode made durable survives.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    drop(b);
    let b = start_in(tmp(), opts, &[], env).unwrap();
    let got = b.client().ok(json!({"t":"get","key":"k"}));
    Some(json!({"value": got, "persistence": st["persistence"]}))
}

#[test]
fn option_persist_dir_and_mode_really_persist() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let r = persisted_key(json!({"persist":{"dir": data, "mode":"always"}}), &[], &dir).unwrap();
    assert_eq!(r["value"], "kept", "a restart keeps the key: {r}");
    assert_eq!(r["persistence"]["fsync"], "always", "{r}");
    assert!(data.join("procmesh.aof").exists() || data.read_dir().unwrap().count() > 0);
    for (mode, name) in [("no", "no"), ("everysec", "everysec")] {
        let dir = tempfile::tempdir().unwrap();
        let b = start(
            json!({"persist":{"dir": dir.path().join("d"), "mode": mode}}),
            &[],
        );
        assert_eq!(b.client().stats()["persistence"]["fsync"], name);
    }
    // `persist: true` uses <tmpdir>/procmesh-<name>; mode "off" and false do not persist.
    let b = start(json!({"name":"pt","persist":true}), &[]);
    assert!(b.client().stats()["persistence"].is_object());
    assert!(b.dir.path().join("procmesh-pt").is_dir());
    for off in [json!({"persist":{"mode":"off"}}), json!({"persist":false})] {
        let b = start(off.clone(), &[]);
        assert!(b.client().stats()["persistence"].is_null(), "{off}");
    }
}

#[test]
fn option_persist_dir_env_turns_persistence_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("envdata");
    let r = persisted_key(
        json!({"persist":false}),
        &[("PROCMESH_PERSIST_DIR", &data)],
        &dir,
    )
    .unwrap();
    assert_eq!(r["value"], "kept", "{r}");
    assert!(data.is_dir());
}

#[test]
fn option_dedup_and_pubsub_keys_are_known() {
    let b = start(
        json!({
            "dedup":{"enabled":true,"max":10,"ttl":1000,"window":64},
            "pubsub":{"persist":true,"retention":5,"retentionMs":1000,"durableAcks":"all",
                      "maxChannels":3,
                      // The Node.js client's producer-side keys.
                      "acks":"all","idempotent":true,"retries":2,"retryBackoff":10,
                      "retryMaxDelay":100,"producerId":"p-1","sequences":{"a":3}}
        }),
        &[],
    );
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    assert_eq!(b.client().request(json!({"t":"ping"}))["t"], "pong");
    for (o, key) in [
        (json!({"dedup":{"enabled":"yes"}}), "`dedup.enabled`"),
        (json!({"dedup":{"max":-1}}), "`dedup.max`"),
        (json!({"dedup":{"ttl":"1s"}}), "`dedup.ttl`"),
        (json!({"dedup":{"window":1.5}}), "`dedup.window`"),
        (json!({"pubsub":{"persist":1}}), "`pubsub.persist`"),
        (json!({"pubsub":{"retention":"all"}}), "`pubsub.retention`"),
        (json!({"pubsub":{"retentionMs":[]}}), "`pubsub.retentionMs`"),
        (json!({"pubsub":{"durableAcks":2}}), "`pubsub.durableAcks`"),
        (json!({"pubsub":{"maxChannels":{}}}), "`pubsub.maxChannels`"),
    ] {
        let f = refused(o.clone());
        assert_eq!(f.code, Some(1), "{o}");
        assert!(f.stderr.contains(key), "{o}: {f:?}");
    }
}

#[test]
fn an_unknown_key_gives_one_warning_line_naming_it() {
    let b = start(json!({"bogus":1,"cache":{"max":5,"foo":2}}), &[]);
    assert_eq!(b.warnings.len(), 1, "{:?}", b.warnings);
    assert!(
        b.warnings[0].contains("unknown options `bogus`, `cache.foo`"),
        "{:?}",
        b.warnings
    );
    // The known key next to it still applies.
    let mut c = b.client();
    for i in 0..7 {
        c.ok(json!({"t":"set","key":format!("k{i}"),"value":1}));
    }
    assert_eq!(c.stats()["cacheSize"], 5);
}

#[test]
fn a_known_key_of_the_wrong_type_is_a_startup_error_naming_key_and_value() {
    let f = refused(json!({"cache":{"max":"lots"}}));
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stderr.contains("`cache.max` = \"lots\""), "{f:?}");
    let f = refused(json!({"idleTimeout":"soon"}));
    assert!(f.stderr.contains("`idleTimeout` = \"soon\""), "{f:?}");
}

#[test]
fn what_a_node_client_passes_when_it_spawns_a_broker_gives_no_warning() {
    let b = start(
        json!({"name":"default","codec":"json","token":null,"idleTimeout":60000}),
        &[],
    );
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
}

/// Publishes `seq` of producer `pid` on `ch`; the reply's value (`null` = duplicate).
fn pub_seq(c: &mut TestClient, ch: &str, pid: &str, seq: u64) -> Value {
    c.ok(json!({"t":"pub","channel":ch,"payload":seq,"pid":pid,"seq":seq}))
}

#[test]
fn option_dedup_enabled_false_delivers_retries() {
    let on = start(json!({}), &[]);
    let mut c = on.client();
    assert_eq!(pub_seq(&mut c, "d", "p", 1), json!(0));
    assert_eq!(
        pub_seq(&mut c, "d", "p", 1),
        Value::Null,
        "dedup is on by default"
    );
    let off = start(json!({"dedup":{"enabled":false}}), &[]);
    let mut c = off.client();
    assert_eq!(pub_seq(&mut c, "d", "p", 1), json!(0));
    assert_eq!(
        pub_seq(&mut c, "d", "p", 1),
        json!(0),
        "a retry is not dropped"
    );
}

#[test]
fn option_dedup_window_bounds_gap_filling() {
    let wide = start(json!({}), &[]);
    let mut c = wide.client();
    pub_seq(&mut c, "d", "p", 10);
    assert_eq!(
        pub_seq(&mut c, "d", "p", 5),
        json!(0),
        "a gap inside 1024 is filled"
    );
    let narrow = start(json!({"dedup":{"window":4}}), &[]);
    let mut c = narrow.client();
    pub_seq(&mut c, "d", "p", 10);
    assert_eq!(
        pub_seq(&mut c, "d", "p", 5),
        Value::Null,
        "below the window"
    );
}

#[test]
fn option_dedup_max_bounds_the_producers_remembered() {
    let b = start(json!({"dedup":{"max":1}}), &[]);
    let mut c = b.client();
    pub_seq(&mut c, "d", "p1", 1);
    pub_seq(&mut c, "d", "p2", 1);
    assert!(c.stats()["dedupSize"].as_u64().unwrap() <= 1);
    assert_eq!(
        pub_seq(&mut c, "d", "p1", 1),
        json!(0),
        "p1 was evicted by p2: its retry is no longer recognised"
    );
}

/// Subscribes to `ch` with `replay: true`; the offsets of the backlog delivered.
fn replayed(b: &Served, ch: &str) -> Vec<u64> {
    let mut s = b.client();
    let r = s.request(json!({"t":"sub","channel":ch,"replay":true}));
    assert_eq!(r["t"], "ok", "{r}");
    s.inbox
        .iter()
        .filter(|f| f["t"] == "msg")
        .map(|f| f["offset"].as_u64().expect("an offset"))
        .collect()
}

#[test]
fn option_pubsub_persist_and_retention_bound_the_backlog() {
    let b = start(json!({"pubsub":{"persist":true,"retention":2}}), &[]);
    let mut p = b.client();
    for i in 0..3 {
        p.ok(json!({"t":"pub","channel":"r","payload":i}));
    }
    let got = replayed(&b, "r");
    assert_eq!(got.len(), 2, "retention 2: {got:?}");
    assert!(got[0] < got[1]);
    let none = start(json!({"pubsub":{"persist":true,"retention":0}}), &[]);
    let mut p = none.client();
    p.ok(json!({"t":"pub","channel":"r","payload":1}));
    assert!(
        replayed(&none, "r").is_empty(),
        "retention 0 retains nothing"
    );
    let off = start(json!({}), &[]);
    let mut p = off.client();
    p.ok(json!({"t":"pub","channel":"r","payload":1}));
    assert!(
        replayed(&off, "r").is_empty(),
        "pubsub.persist is off by default"
    );
}

#[test]
fn option_pubsub_max_channels_bounds_the_retained_channels() {
    let b = start(json!({"pubsub":{"persist":true,"maxChannels":1}}), &[]);
    let mut p = b.client();
    p.ok(json!({"t":"pub","channel":"a","payload":1}));
    p.ok(json!({"t":"pub","channel":"b","payload":2}));
    assert!(replayed(&b, "a").is_empty(), "a was evicted by b");
    assert_eq!(replayed(&b, "b").len(), 1);
}
