//! Issue 12 #12 over the real binary: the persistence directory and its files are
//! private, and what is planted at the socket or lock path (a symbolic link, a file,
//! a process holding the lock) stops the broker with a clear error and a non-zero
//! exit, never silently.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{spawn_serve, TestClient, BIN};

/// Kills the child on drop (a failed assertion never leaves a process behind).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `procmesh serve --socket <sock> <args>`, which must exit by itself within
/// 15 s; returns its exit code and stderr.
fn serve_exits(sock: &Path, args: &[&str]) -> (Option<i32>, String) {
    let child = Command::new(BIN)
        .args(["serve", "--heartbeat", "0", "--socket"])
        .arg(sock)
        .args(args)
        .env_remove("PROCMESH_BROKER_OPTS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "serve kept running");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    (status.code(), err + &out)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_persist_dir_the_broker_creates_is_0700_and_its_files_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data/p");
    // A socket directory the broker creates is private too.
    let sock = tmp.path().join("run/m.sock");
    let child = Reap(spawn_serve(
        &sock,
        &[
            "--persist-dir",
            dir.to_str().unwrap(),
            "--fsync",
            "always",
            "--compact-bytes",
            "1KB",
        ],
    ));
    let mut c = TestClient::connect(&sock, crate::support::Codec::Json);
    // Past 1 KB of log a snapshot is written: its files are checked too.
    for i in 0..50 {
        let v = "v".repeat(100);
        assert_eq!(
            c.ok(json!({"t":"set","key":format!("secret{i}"),"value":v})),
            json!(true)
        );
    }
    crate::support::wait_until(Duration::from_secs(10), "a snapshot", || {
        dir.join("snapshot.bin").exists()
    });
    assert_eq!(mode(&dir), 0o700, "the persistence directory");
    let mut files = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        files += 1;
    }
    assert!(files >= 3, "LOCK, a snapshot and a log segment at least");
    assert_eq!(mode(&sock), 0o600, "the socket");
    assert_eq!(
        mode(&tmp.path().join("run")),
        0o700,
        "the socket's directory"
    );
    drop(child);
}

#[test]
fn an_existing_persist_dir_open_to_other_users_is_warned_about_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("snapshot.bin.tmp"), b"").unwrap();
    std::fs::set_permissions(
        dir.join("snapshot.bin.tmp"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let sock = tmp.path().join("m.sock");
    let mut child = Reap(
        Command::new(BIN)
            .args(["serve", "--heartbeat", "0", "--socket"])
            .arg(&sock)
            .arg("--persist-dir")
            .arg(&dir)
            .env_remove("PROCMESH_BROKER_OPTS")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let mut warnings = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("serving at") {
            break;
        }
        warnings.push(line);
    }
    let all = warnings.join("\n");
    assert!(
        all.contains("warning")
            && all.contains(&format!(
                "{} is accessible to other users (mode 755)",
                dir.display()
            ))
            && all.contains("chmod 700"),
        "{all}"
    );
    assert!(all.contains("snapshot.bin.tmp (644)"), "{all}");
    // Warned, not changed: the operator's modes are left alone.
    assert_eq!(mode(&dir), 0o755);
}

#[test]
fn a_symlink_planted_at_the_lock_path_is_refused_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("m.sock");
    let target = tmp.path().join("victim");
    std::os::unix::fs::symlink(&target, tmp.path().join("m.sock.lock")).unwrap();
    let (code, err) = serve_exits(&sock, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("{}.lock is a symbolic link", sock.display()))
            && err.contains("remove it"),
        "{err}"
    );
    assert!(!target.exists(), "the link was followed");
    assert!(!sock.exists());
}

#[test]
fn a_file_planted_at_the_socket_path_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("m.sock");
    std::fs::write(&sock, b"not a socket").unwrap();
    let (code, err) = serve_exits(&sock, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{} is a file that is not a socket",
            sock.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
    // A symbolic link there is refused the same way.
    std::fs::remove_file(&sock).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), &sock).unwrap();
    let (code, err) = serve_exits(&sock, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is a symbolic link"), "{err}");
}

#[test]
fn a_held_address_lock_with_nothing_serving_fails_serve_with_a_clear_error() {
    // A real second process (flock(1)) holds the lock and serves nothing: `serve`
    // used to exit 0 with nothing serving.
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("m.sock");
    let lock = tmp.path().join("m.sock.lock");
    let mut holder = Reap(
        // -o: the lock stays with flock itself (not the command), so killing it frees it.
        Command::new("flock")
            .args(["-n", "-o"])
            .arg(&lock)
            .args(["-c", "echo locked; exec sleep 60"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("flock(1) from util-linux"),
    );
    let mut line = String::new();
    BufReader::new(holder.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let (code, err) = serve_exits(&sock, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "the address lock {} is held by process",
            lock.display()
        )) && err.contains("nothing serves"),
        "{err}"
    );
    // Once the holder is gone, the broker starts.
    drop(holder);
    let child = Reap(spawn_serve(&sock, &[]));
    let mut c = TestClient::connect(&sock, crate::support::Codec::Json);
    assert_eq!(c.request(json!({"t":"ping"}))["t"], "pong");
    // And a second broker at a served address still exits 0 quietly (spawn races).
    let (code, out) = serve_exits(&sock, &[]);
    assert_eq!(code, Some(0), "{out}");
    drop(child);
}
