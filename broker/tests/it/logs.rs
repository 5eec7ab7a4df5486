//! The `serve` binary's log lines (issue 16 item 3): one startup line saying the io
//! backend, persistence and what was recovered, one shutdown line with the reason and
//! uptime, timestamps, and `PROCMESH_LOG` / `--log` filtering.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// `procmesh serve --socket <path> <args>` with `log` as PROCMESH_LOG (unset: none),
/// its stderr lines on a channel.
fn serve(path: &Path, args: &[&str], log: Option<&str>) -> (Child, Receiver<String>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--socket")
        .arg(path)
        .args(["--heartbeat", "0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("PROCMESH_BROKER_OPTS")
        .env_remove("PROCMESH_PERSIST_DIR")
        .env_remove("PROCMESH_LOG");
    if let Some(l) = log {
        cmd.env("PROCMESH_LOG", l);
    }
    let mut child = cmd.spawn().expect("spawn procmesh serve");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// The next line containing `what` (panics after 10 s, listing what came).
fn line_with(rx: &Receiver<String>, what: &str) -> String {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.contains(what) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line with {what:?}; got {seen:?}"),
        }
    }
}

/// Every remaining line, once the process has exited (its stderr closed).
fn rest(rx: &Receiver<String>) -> Vec<String> {
    rx.iter().collect()
}

/// `2026-12-01T23:59:15.123456Z procmesh: …`: an RFC 3339 UTC time, then the program.
fn assert_timestamped(l: &str) {
    let (ts, rest) = l.split_once(' ').unwrap_or_else(|| panic!("{l}"));
    assert!(
        ts.len() >= 20
            && ts.as_bytes()[4] == b'-'
            && ts.as_bytes()[10] == b'T'
            && ts.ends_with('Z'),
        "no timestamp first: {l}"
    );
    assert!(rest.starts_with("procmesh: "), "{l}");
}

fn term(child: &mut Child) {
    kill_pid(child.id(), libc::SIGTERM);
    assert!(child.wait().unwrap().success());
}

fn kill_pid(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

#[test]
fn serve_logs_one_startup_line_with_backend_persistence_and_recovery_and_one_shutdown_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mesh.sock");
    let data = dir.path().join("data");
    let persist = ["--persist-dir", data.to_str().unwrap(), "--fsync", "always"];
    let (mut child, rx) = serve(&sock, &persist, None);
    let start = line_with(&rx, "serving at");
    assert_timestamped(&start);
    assert!(
        start.contains(&format!(
            "serving at {} (pid {};",
            sock.display(),
            child.id()
        )),
        "{start}"
    );
    assert!(
        start.contains("; io uring;") || start.contains("; io epoll;"),
        "{start}"
    );
    assert!(
        start.contains(&format!("persistence on: {}, fsync always", data.display())),
        "{start}"
    );
    assert!(start.contains("recovered 0 keys in "), "{start}");
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    for i in 0..5 {
        c.ok(json!({"t": "set", "key": format!("k{i}"), "value": i}));
    }
    drop(c);
    term(&mut child);
    let stopped: Vec<String> = rest(&rx);
    let last = stopped
        .iter()
        .find(|l| l.contains("stopped"))
        .unwrap_or_else(|| panic!("{stopped:?}"));
    assert_timestamped(last);
    assert!(last.contains("stopped (signal) after "), "{last}");

    // Again: the five keys come back, and a client's shutdown is the reason now.
    let (mut child, rx) = serve(&sock, &persist, None);
    let start = line_with(&rx, "serving at");
    assert!(start.contains("recovered 5 keys in "), "{start}");
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    c.ok(json!({"t": "shutdown"}));
    assert!(child.wait().unwrap().success());
    let lines = rest(&rx);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stopped (shutdown request) after ")),
        "{lines:?}"
    );
    // Exactly one startup and one shutdown line per run.
    assert_eq!(lines.iter().filter(|l| l.contains("serving at")).count(), 0);
    assert_eq!(lines.iter().filter(|l| l.contains("stopped (")).count(), 1);
}

#[test]
fn serve_without_persistence_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mesh.sock");
    let (mut child, rx) = serve(&sock, &["--shard", "2/8"], None);
    let start = line_with(&rx, "serving at");
    assert!(start.contains("; persistence off"), "{start}");
    assert!(!start.contains("recovered"), "{start}");
    assert!(start.ends_with("; shard 2 of 8)"), "{start}");
    term(&mut child);
}

#[test]
fn procmesh_log_warn_silences_the_info_lines_but_not_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mesh.sock");
    let run_with = |log: &str| {
        let (mut child, rx) = {
            // An unknown option key is a warning at startup.
            let mut cmd = Command::new(BIN);
            cmd.arg("serve")
                .arg("--socket")
                .arg(&sock)
                .args(["--heartbeat", "0"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .env("PROCMESH_BROKER_OPTS", r#"{"noSuchOption":1}"#)
                .env_remove("PROCMESH_PERSIST_DIR")
                .env("PROCMESH_LOG", log);
            let mut child = cmd.spawn().unwrap();
            let err = child.stderr.take().unwrap();
            (child, err)
        };
        // Serving, whatever it printed: a client gets answers.
        wait_until(Duration::from_secs(10), "the broker serves", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        let mut c = TestClient::hello(&sock, Codec::Json, None);
        assert_eq!(c.request(json!({"t": "ping"}))["t"], "pong");
        drop(c);
        term(&mut child);
        let mut text = String::new();
        let mut rx = rx;
        rx.read_to_string(&mut text).unwrap();
        text
    };
    let quiet = run_with("warn");
    assert!(!quiet.contains("serving at"), "{quiet}");
    assert!(!quiet.contains("stopped ("), "{quiet}");
    assert!(
        quiet.contains("warning:") && quiet.contains("noSuchOption"),
        "{quiet}"
    );
    // The same broker at the default level prints both lines.
    let loud = run_with("info");
    assert!(
        loud.contains("serving at") && loud.contains("stopped (signal)"),
        "{loud}"
    );
}

#[test]
fn a_log_filter_that_does_not_parse_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--log", "procmesh=loud", "--socket"])
        .arg(dir.path().join("s.sock"))
        .env_remove("PROCMESH_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid log filter `procmesh=loud`"), "{err}");
}

#[test]
fn a_broker_whose_stderr_closed_keeps_serving_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mesh.sock");
    // Debug logs a line per connection: every client below writes to the closed pipe.
    let (mut child, rx) = serve(&sock, &["--log", "debug"], None);
    line_with(&rx, "serving at");
    drop(rx); // the reader thread ends at its next line: the pipe's read end closes
    for i in 0..20 {
        let mut c = TestClient::hello(&sock, Codec::Json, None);
        c.ok(json!({"t": "set", "key": format!("k{i}"), "value": i}));
    }
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    assert_eq!(c.ok(json!({"t": "get", "key": "k19"})), json!(19));
    drop(c);
    term(&mut child);
}
