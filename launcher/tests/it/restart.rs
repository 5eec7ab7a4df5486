//! Shard-count safety and the restart policy of a launched mesh (issue 12 item 14,
//! issue 16 item 7): a client's `shutdown` does not take a shard down for good, the
//! idle timeout still ends the mesh, each shard knows its index and count, a
//! one-shard mesh is the plain name, and `--token-file` reaches every shard.

use std::time::Duration;

use procmesh_broker::cli::{CliConn, CliError};
use serde_json::json;

use crate::support::*;

/// What issue 5 allows a stopped shard before it serves again.
const RESTART_LIMIT: Duration = Duration::from_secs(2);

#[test]
fn a_shard_shut_down_by_a_client_is_restarted_until_the_launcher_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::launch_in(dir.path(), 2, &[]);
    let mut pid = mesh.shards[1].pid;
    // Twice: the second `shutdown` hits the restarted broker.
    for start in 2..=3 {
        let mut c = mesh.conn(1);
        c.request(json!({"t": "shutdown"})).unwrap();
        c.wait_closed();
        let s = mesh.next_serving(RESTART_LIMIT).unwrap_or_else(|| {
            panic!(
                "shard 1 was not restarted within {RESTART_LIMIT:?}:\n{}",
                mesh.stderr()
            )
        });
        assert_eq!((s.shard, s.start), (1, start), "{s:?}");
        assert_ne!(s.pid, pid, "a new broker process");
        assert!(!alive(pid), "the old broker exited");
        pid = s.pid;
        assert_eq!(stats(&mut mesh.conn(1))["pid"], json!(pid));
    }
    assert!(mesh.stderr().contains("stopping: shutdown request"));
    // Shard 0 never stopped.
    assert_eq!(stats(&mut mesh.conn(0))["pid"], json!(mesh.shards[0].pid));
    // The launcher stopping is the one way to stop the mesh: nothing restarts then.
    mesh.signal(libc::SIGTERM);
    let st = mesh
        .wait_exit(Duration::from_secs(10))
        .expect("the launcher exits after SIGTERM");
    assert!(st.success(), "{st:?}");
    assert!(!alive(pid) && !alive(mesh.shards[0].pid));
    assert!(
        mesh.next_serving(Duration::from_millis(300)).is_none(),
        "no restart while stopping"
    );
    assert!(!mesh.socket(0).exists() && !mesh.socket(1).exists());
}

#[test]
fn shards_stopped_by_their_idle_timeout_stay_stopped_and_the_launcher_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::launch_in(dir.path(), 2, &["--idle-timeout", "300"]);
    let st = mesh
        .wait_exit(Duration::from_secs(10))
        .expect("the launcher exits once both shards idled out");
    assert!(st.success(), "{st:?}");
    let err = mesh.stderr();
    assert!(err.contains("after its idle timeout"), "{err}");
    assert!(!err.contains("restarting in"), "{err}");
}

#[test]
fn each_shard_announces_its_index_and_the_shard_count_in_welcome() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::launch_in(dir.path(), 3, &[]);
    for i in 0..3 {
        let w = mesh.conn(i).request(json!({"t": "hello"})).unwrap();
        assert_eq!(w["t"], "welcome");
        assert_eq!(w["broker"], json!(format!("{NAME}#{i}")));
        assert_eq!(
            (w["shard"].clone(), w["shards"].clone()),
            (json!(i), json!(3))
        );
    }
}

#[test]
fn a_one_shard_mesh_serves_the_plain_name_every_client_uses() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::launch_in(dir.path(), 1, &[]);
    // Where procmesh-js `shards: 1`, `Client::sharded(1)` and `procmesh-bench
    // --shards 1` connect: the broker `NAME`, not `NAME#0`.
    let plain = dir.path().join(format!("procmesh-{NAME}.sock"));
    assert_eq!(mesh.shards[0].name, NAME);
    assert_eq!(mesh.shards[0].socket, plain);
    let w = CliConn::connect(&plain, None)
        .unwrap()
        .request(json!({"t": "hello"}))
        .unwrap();
    assert_eq!(w["broker"], json!(NAME));
    assert_eq!(
        (w["shard"].clone(), w["shards"].clone()),
        (json!(0), json!(1))
    );
    // The shell with --shards 1 reaches it too.
    let out = mesh.cli(&["set", "--shards", "1", "--name", NAME, "k", "7"]);
    assert!(out.status.success(), "{out:?}");
    let out = mesh.cli(&["get", "--name", NAME, "k"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7", "{out:?}");
}

#[test]
fn token_file_reaches_every_shard_and_stays_out_of_argv() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret-from-file\n").unwrap();
    let mesh = Mesh::launch_in(dir.path(), 2, &["--token-file", file.to_str().unwrap()]);
    for i in 0..2 {
        match CliConn::connect(&mesh.socket(i), None) {
            Err(CliError::Broker { code, .. }) => assert_eq!(code, "EAUTH"),
            Err(e) => panic!("shard {i}: {e}"),
            Ok(_) => panic!("shard {i} accepted a client without the token"),
        }
        let mut c = CliConn::connect(&mesh.socket(i), Some("s3cret-from-file")).unwrap();
        assert_eq!(stats(&mut c)["name"], json!(format!("{NAME}#{i}")));
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", mesh.shards[i].pid)).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("s3cret"),
            "the token is not in the shard's argv"
        );
    }
}

#[test]
fn an_unreadable_token_file_fails_the_launch_with_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = spawn_launcher(dir.path(), 1, &["--token-file", "/nonexistent/token"])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the token file"), "{err}");
}

#[test]
fn a_client_with_another_shard_count_fails_to_connect_with_eshards() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::launch_in(dir.path(), 3, &[]);
    // Two of the three shards: keys would route by % 2 instead of % 3.
    let e = procmesh::Client::builder()
        .addresses((0..2).map(|i| mesh.socket(i)))
        .auto_spawn(false)
        .connect()
        .map(drop)
        .expect_err("a 2-shard client must not use a 3-shard mesh");
    assert_eq!(e.code(), Some(procmesh::ErrorCode::ShardMismatch), "{e}");
    assert_eq!(e.code_str(), Some("ESHARDS"));
    let text = e.to_string();
    assert!(
        text.contains("shard 0 of 3") && text.contains("shard 0 of 2"),
        "{text}"
    );
    // Shards in the wrong order route keys to the wrong shard just the same.
    let e = procmesh::Client::builder()
        .addresses([mesh.socket(1), mesh.socket(0), mesh.socket(2)])
        .auto_spawn(false)
        .connect()
        .map(drop)
        .expect_err("shards out of order");
    assert_eq!(e.code(), Some(procmesh::ErrorCode::ShardMismatch), "{e}");
    // The right count connects.
    let c = procmesh::Client::builder()
        .addresses((0..3).map(|i| mesh.socket(i)))
        .auto_spawn(false)
        .connect()
        .expect("3 shards");
    c.set("k", &1).unwrap();
    // The shell refuses the wrong count the same way (exit 1, the code in the message).
    let out = mesh.cli(&["get", "--shards", "2", "--name", NAME, "k"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ESHARDS"),
        "{out:?}"
    );
}

#[test]
fn stats_with_shards_auto_finds_the_launched_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::launch_in(dir.path(), 3, &[]);
    let out = mesh.cli(&["stats", "--json", "--shards", "auto", "--name", NAME]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shards = v["shards"].as_array().expect("per-shard maps");
    assert_eq!(shards.len(), 3);
    for (s, line) in shards.iter().zip(&mesh.shards) {
        assert_eq!(s["pid"], json!(line.pid));
    }
    // Shell commands take it too.
    let out = mesh.cli(&["set", "--shards", "auto", "--name", NAME, "a", "1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = mesh.cli(&["get", "--shards", "3", "--name", NAME, "a"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    // No mesh at all: exit 3, saying what was looked for.
    let out = mesh.cli(&["stats", "--shards", "auto", "--name", "nothing-here"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mesh `nothing-here`"));
}

#[test]
fn stats_with_shards_auto_finds_a_one_shard_mesh_at_the_plain_name() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::launch_in(dir.path(), 1, &[]);
    let out = mesh.cli(&["stats", "--json", "--shards", "auto", "--name", NAME]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pid"], json!(mesh.shards[0].pid));
}

#[test]
fn procmesh_log_warn_quiets_the_launcher_and_its_shards_but_not_stdout() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(LAUNCH)
        .args(["--shards", "2", "--name", NAME, "--json"])
        .env("TMPDIR", dir.path())
        .env("PROCMESH_BROKER_BIN", broker_bin())
        .env("PROCMESH_LOG", "warn")
        .env_remove("PROCMESH_SOCKET")
        .env_remove("PROCMESH_TOKEN")
        .env_remove("PROCMESH_PERSIST_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // stdout still says each shard serves: it is output, not a log.
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let l = out.next().expect("a serving line").unwrap();
        assert!(l.contains("\"socket\""), "{l}");
    }
    kill(child.id(), libc::SIGTERM);
    let st = child.wait().unwrap();
    assert!(st.success());
    let err = read_all(child.stderr.take().unwrap());
    assert!(!err.contains("serving"), "{err}");
    assert!(!err.contains("stopped ("), "{err}");
}

#[test]
fn launcher_log_lines_are_timestamped_and_name_the_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::launch_in(dir.path(), 1, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let err = mesh.stderr();
        if let Some(l) = err.lines().find(|l| l.contains("serving on 1 shard")) {
            break l.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "{err}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let (ts, rest) = line.split_once(' ').unwrap();
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{line}");
    assert!(
        rest.starts_with("procmesh-launch: mesh `t` serving"),
        "{line}"
    );
}

#[test]
fn under_systemd_the_launcher_says_ready_once_every_shard_serves_and_stopping_at_stop() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sd = UnixDatagram::bind(&notify).unwrap();
    sd.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = std::process::Command::new(LAUNCH)
        .args(["--shards", "2", "--name", NAME, "--json"])
        .env("TMPDIR", dir.path())
        .env("PROCMESH_BROKER_BIN", broker_bin())
        .env("NOTIFY_SOCKET", &notify)
        .env_remove("PROCMESH_SOCKET")
        .env_remove("PROCMESH_TOKEN")
        .env_remove("PROCMESH_PERSIST_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sd.recv(&mut buf).expect("READY=1 from the launcher");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(
        msg.contains(&format!("MAINPID={}", child.id())),
        "the launcher's, not a shard's: {msg}"
    );
    // Both shards serve by then.
    for i in 0..2 {
        let sock = dir.path().join(format!("procmesh-{NAME}#{i}.sock"));
        CliConn::connect(&sock, None).expect("shard serves when READY=1 arrives");
    }
    kill(child.id(), libc::SIGTERM);
    let n = sd.recv(&mut buf).expect("STOPPING=1 from the launcher");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}
