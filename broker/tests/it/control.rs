//! §5: connection control, auth, heartbeat, idle exit, socket ownership, the CLI.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::{spawn_serve, Codec, TestBroker, TestClient, BIN};

#[test]
fn hello_ping_unknown_and_stats_fields() {
    let b = TestBroker::start(&["--name", "meshy"]);
    let mut c = TestClient::connect(&b.path, Codec::Json);
    let w = c.request(json!({"t":"hello","name":"t","pid":"producer-7"}));
    assert_eq!(w["t"], "welcome");
    assert_eq!(w["version"], 4);
    assert_eq!(w["broker"], "meshy");
    assert_eq!(w["pid"], "producer-7");
    let w2 = TestClient::connect(&b.path, Codec::MsgPack).request(json!({"t":"hello"}));
    assert!(
        w2["pid"].as_str().is_some_and(|p| !p.is_empty()),
        "a pid is minted: {w2}"
    );
    assert_eq!(c.request(json!({"t":"ping"}))["t"], "pong");
    let r = c.request(json!({"t":"frobnicate"}));
    assert_eq!(r["code"], "EUNKNOWN");
    assert!(r["message"].as_str().unwrap().contains("frobnicate"));
    // Many distinct unknown types create no per-type state.
    for i in 0..50 {
        c.request(json!({"t": format!("junk{i}")}));
    }
    let st = c.stats();
    for f in [
        "uptimeMs",
        "connections",
        "cacheSize",
        "dropped",
        "duplicates",
        "dedupSize",
        "reaped",
        "locks",
        "lockWaiters",
        "pendingCalls",
        "subscriptions",
        "cpuCoreFraction",
    ] {
        assert!(st[f].is_number(), "stats.{f} missing: {st}");
    }
    assert!(st["ops"].is_object() && st["procs"].is_array());
    assert!(st["memory"]["rss"].as_u64().unwrap() > 0);
    assert_eq!(st["connections"], 1);
    assert_eq!(
        st["ops"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("junk"))
            .count(),
        0
    );
    assert_eq!(st["errors"]["EUNKNOWN"], 51);
}

#[test]
fn token_auth() {
    let b = TestBroker::start(&["--token", "s3cret"]);
    // Before hello: ping is allowed, anything else is EAUTH.
    let mut c = TestClient::connect(&b.path, Codec::Json);
    assert_eq!(c.request(json!({"t":"ping"}))["t"], "pong");
    assert_eq!(c.err_code(json!({"t":"get","key":"a"})), "EAUTH");
    assert_eq!(c.err_code(json!({"t":"set","key":"a","value":1})), "EAUTH");
    // Right token: everything works.
    let w = c.request(json!({"t":"hello","token":"s3cret"}));
    assert_eq!(w["t"], "welcome");
    assert_eq!(c.ok(json!({"t":"set","key":"a","value":1})), json!(true));
    // Wrong token: EAUTH, then the broker closes the connection.
    let mut bad = TestClient::connect(&b.path, Codec::MsgPack);
    assert_eq!(bad.err_code(json!({"t":"hello","token":"s3creT"})), "EAUTH");
    assert!(bad.closed_within(Duration::from_secs(5)));
    // Missing token too.
    let mut none = TestClient::connect(&b.path, Codec::Json);
    assert_eq!(none.err_code(json!({"t":"hello"})), "EAUTH");
    assert!(none.closed_within(Duration::from_secs(5)));
    // The broker kept serving the good client.
    assert_eq!(c.ok(json!({"t":"get","key":"a"})), json!(1));
}

#[test]
fn heartbeat_pings_idle_and_reaps_silent_connections() {
    let b = TestBroker::start(&["--heartbeat", "100"]);
    let mut silent = TestClient::hello(&b.path, Codec::Json, None);
    let mut talker = TestClient::hello(&b.path, Codec::MsgPack, None);
    let silent_side = std::thread::spawn(move || {
        // The silent client is pinged first...
        let ping = silent.next_event().expect("a heartbeat ping");
        assert_eq!(ping, json!({"t":"ping"}));
        // ...and, never answering, closed after three intervals.
        assert!(silent.closed_within(Duration::from_secs(3)));
    });
    // A client that keeps talking survives meanwhile.
    while !silent_side.is_finished() {
        assert_eq!(talker.request(json!({"t":"ping"}))["t"], "pong");
        std::thread::sleep(Duration::from_millis(20));
    }
    silent_side.join().unwrap();
    let st = talker.stats();
    assert_eq!(st["reaped"], 1, "{st}");
    assert_eq!(st["connections"], 1);
}

#[test]
fn idle_timeout_exits_cleanly_and_removes_the_socket() {
    let mut b = TestBroker::start(&["--idle-timeout", "200"]);
    {
        let mut c = TestClient::hello(&b.path, Codec::Json, None);
        c.ok(json!({"t":"set","key":"a","value":1}));
    }
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(!b.path.exists());
}

#[test]
fn shutdown_request_stops_the_broker() {
    let mut b = TestBroker::start(&[]);
    let mut c = TestClient::hello(&b.path, Codec::Json, None);
    let mut other = TestClient::hello(&b.path, Codec::Json, None);
    assert_eq!(c.ok(json!({"t":"shutdown"})), json!(true));
    assert!(other.closed_within(Duration::from_secs(5)));
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(!b.path.exists());
}

#[test]
fn socket_is_owner_only() {
    let b = TestBroker::start(&[]);
    let mode = std::fs::metadata(&b.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.sock");
    // A socket file nobody listens on (its listener is gone).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut child = spawn_serve(&path, &[]);
    let mut c = TestClient::hello(&path, Codec::Json, None);
    assert_eq!(c.ok(json!({"t":"set","key":"a","value":1})), json!(true));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn second_broker_exits_zero_naming_the_owner() {
    let b = TestBroker::start(&[]);
    let out = Command::new(BIN)
        .args(["serve", "--heartbeat", "0", "--socket"])
        .arg(&b.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("already serves") && text.contains(&*b.path.to_string_lossy()),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1);
    // The first broker is unaffected.
    let mut c = TestClient::hello(&b.path, Codec::Json, None);
    assert_eq!(c.ok(json!({"t":"has","key":"x"})), json!(false));
}

#[test]
fn cli_status_stats_stop_and_exit_codes() {
    let mut b = TestBroker::start(&["--name", "clitest"]);
    let path = b.path.clone();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--socket")
            .arg(&path)
            .output()
            .unwrap()
    };
    let st = run(&["status"]);
    assert_eq!(st.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&st.stdout).contains("clitest"));
    let js = run(&["stats", "--json"]);
    assert_eq!(js.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&js.stdout).unwrap();
    assert_eq!(v["name"], "clitest");
    let table = run(&["stats"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("cache entries"));
    let stop = run(&["stop"]);
    assert_eq!(
        stop.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
    for cmd in ["status", "stop", "stats"] {
        let out = run(&[cmd]);
        assert_eq!(out.status.code(), Some(3), "{cmd} with no broker");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no broker is running"));
    }
}

#[test]
fn broker_opts_env_uses_node_option_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.sock");
    let mut child = Command::new(BIN)
        .args(["serve", "--socket"])
        .arg(&path)
        .env(
            "PROCMESH_BROKER_OPTS",
            r#"{"cache":{"max":2},"heartbeatInterval":0,"token":"tok"}"#,
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let mut c = TestClient::hello(&path, Codec::Json, Some("tok"));
    for k in ["a", "b", "c"] {
        c.ok(json!({"t":"set","key":k,"value":1}));
    }
    assert_eq!(c.stats()["cacheSize"], 2);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sigterm_stops_cleanly() {
    let mut b = TestBroker::start(&[]);
    let _c = TestClient::hello(&b.path, Codec::Json, None);
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(b.pid() as i32, libc::SIGTERM) };
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(!b.path.exists());
}

/// What the Node.js client passes to a broker it auto-spawns: the address and name
/// come from `PROCMESH_BROKER_OPTS` alone (no flags).
#[test]
fn node_style_spawn_options_choose_the_address_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sock");
    let opts = serde_json::json!({
        "address": path, "name": "nodemesh", "codec": "json", "token": null, "idleTimeout": 60000
    });
    let mut child = Command::new(BIN)
        .args(["serve", "--heartbeat", "0"])
        .env("PROCMESH_BROKER_OPTS", opts.to_string())
        .env_remove("PROCMESH_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let welcome = TestClient::connect(&path, Codec::Json)
        .request(json!({"t":"hello","name":"n","token":null}));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains(&*path.to_string_lossy()), "{line}");
    assert_eq!(welcome["broker"], "nodemesh");
}

#[test]
fn io_backend_is_chosen_by_flag_and_reported_in_stats() {
    for io in ["epoll", "uring"] {
        let b = TestBroker::start(&["--io", io]);
        let mut c = b.client();
        assert_eq!(c.stats()["ioBackend"], io);
    }
    // `auto` runs one of them and says which.
    let b = TestBroker::start(&["--io", "auto"]);
    let v = b.client().stats()["ioBackend"].clone();
    assert!(v == "uring" || v == "epoll", "{v}");
    // An unknown driver is refused at startup.
    let out = Command::new(BIN)
        .args(["serve", "--io", "kqueue", "--socket"])
        .arg(b.dir.path().join("other.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}
