//! A launched mesh: serving, routing, pinning, restart after a crash, clean stop, the
//! `procmesh --shards` commands, and refusing to start twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use procmesh_broker::cli::CliConn;
use serde_json::{json, Value};

use crate::support::*;

/// What issue 5 allows a crashed shard before it serves again.
const RESTART_LIMIT: Duration = Duration::from_secs(2);

fn sharded_client(mesh: &Mesh) -> procmesh::Client {
    procmesh::Client::builder()
        .addresses((0..mesh.n).map(|i| mesh.socket(i)))
        .auto_spawn(false)
        .connect()
        .expect("sharded client")
}

#[test]
fn two_shards_serve_route_by_fnv1a_and_report_their_pinning() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::launch_in(dir.path(), 2, &[]);
    let cpus = allowed_cpus();
    for (i, s) in mesh.shards.iter().enumerate() {
        assert_eq!(s.shard, i);
        assert_eq!(s.name, format!("{NAME}#{i}"));
        assert_eq!(s.socket, mesh.socket(i));
        assert_eq!(s.start, 1);
        assert_eq!(
            s.core,
            Some(cpus[i % cpus.len()]),
            "shard {i} pinned in order"
        );
        // The shard itself answers on its socket and reports what the launcher said.
        let st = stats(&mut mesh.conn(i));
        assert_eq!(st["name"], json!(s.name));
        assert_eq!(st["pid"], json!(s.pid));
        assert_eq!(
            st["core"],
            json!(s.core),
            "the broker reports its pinned CPU"
        );
    }
    assert_ne!(
        mesh.shards[0].pid, mesh.shards[1].pid,
        "one process per shard"
    );

    // Keys written through the sharded client land on shard fnv1a(key) % 2, and only
    // there.
    let client = sharded_client(&mesh);
    let keys: Vec<String> = (0..40).map(|i| format!("user:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        client.set(k, &i).unwrap();
    }
    let mut conns = [mesh.conn(0), mesh.conn(1)];
    let mut per_shard = [0u64; 2];
    for k in &keys {
        let home = (procmesh::fnv1a(k) % 2) as usize;
        per_shard[home] += 1;
        assert!(has(&mut conns[home], k), "{k} missing on shard {home}");
        assert!(
            !has(&mut conns[1 - home], k),
            "{k} also on shard {}",
            1 - home
        );
    }
    assert!(per_shard.iter().all(|&n| n > 0), "both shards hold keys");
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(stats(c)["cacheSize"], json!(per_shard[i]));
    }
    // And the client reads every key back through the right shard.
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(client.get::<usize>(k).unwrap(), Some(i));
    }
}

#[test]
fn a_killed_shard_serves_again_within_2s_while_the_other_never_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::launch_in(dir.path(), 2, &[]);
    let survivor_pid = mesh.shards[1].pid;

    // Shard 1 is hammered on one connection for the whole test: every request must
    // succeed, promptly.
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let stop = Arc::clone(&stop);
        let mut c = mesh.conn(1);
        std::thread::spawn(move || {
            let (mut n, mut worst) = (0u64, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c.request(json!({"t": "incr", "key": "hits"}));
                worst = worst.max(t.elapsed());
                n += 1;
                assert_eq!(r.expect("shard 1 kept serving")["value"], json!(n));
            }
            (n, worst)
        })
    };

    // SIGKILL (a crash) and then SIGABRT (what a panic under panic=abort does): each
    // time a new broker serves shard 0 at the same socket within 2 s.
    let mut victim = mesh.shards[0].clone();
    for (round, sig) in [libc::SIGKILL, libc::SIGABRT].into_iter().enumerate() {
        let killed = Instant::now();
        kill(victim.pid, sig);
        let again = mesh
            .next_serving(RESTART_LIMIT)
            .unwrap_or_else(|| panic!("shard 0 not back within 2 s after signal {sig}"));
        assert_eq!(again.shard, 0);
        assert_eq!(again.socket, victim.socket, "same address");
        assert_eq!(again.start, round as u64 + 2);
        assert_ne!(again.pid, victim.pid);
        let mut c = CliConn::connect(&again.socket, None).expect("restarted shard answers");
        c.request(json!({"t": "set", "key": "k", "value": round}))
            .unwrap();
        assert_eq!(stats(&mut c)["pid"], json!(again.pid));
        assert_eq!(stats(&mut c)["core"], json!(victim.core), "re-pinned");
        let took = killed.elapsed();
        assert!(took < RESTART_LIMIT, "serving again took {took:?}");
        assert!(!alive(victim.pid), "the killed broker is gone (reaped)");
        victim = again;
    }

    stop.store(true, Ordering::Relaxed);
    let (n, worst) = hammer.join().expect("shard 1 never failed a request");
    assert!(n > 0);
    assert!(
        worst < Duration::from_secs(1),
        "shard 1 stalled for {worst:?}"
    );
    let st = stats(&mut mesh.conn(1));
    assert_eq!(
        st["pid"],
        json!(survivor_pid),
        "shard 1 was never restarted"
    );
    let log = mesh.stderr();
    assert!(log.contains("(SIGKILL); restarting in 50ms"), "{log}");
    assert!(log.contains("(SIGABRT); restarting in 100ms"), "{log}");
}

#[test]
fn sigterm_stops_every_shard_cleanly_and_persistence_survives() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("job:{i}")).collect();
    {
        let mut mesh =
            Mesh::launch_in(dir.path(), 2, &["--persist-dir", data_arg, "--fsync", "no"]);
        let client = sharded_client(&mesh);
        for (i, k) in keys.iter().enumerate() {
            client.set(k, &i).unwrap();
        }
        client.close();
        mesh.signal(libc::SIGTERM);
        let st = mesh
            .wait_exit(Duration::from_secs(10))
            .expect("the launcher exits after SIGTERM");
        assert!(
            st.success(),
            "exit status {st:?}; stderr:\n{}",
            mesh.stderr()
        );
        for s in &mesh.shards {
            assert!(!s.socket.exists(), "{} left behind", s.socket.display());
            assert!(!alive(s.pid), "{} still running", s.name);
        }
        assert!(data.join("shard-0").is_dir() && data.join("shard-1").is_dir());
    }
    // The same mesh comes back with every key on its shard; unpinned this time.
    let mut mesh = Mesh::launch_in(dir.path(), 2, &["--persist-dir", data_arg, "--no-pin"]);
    assert!(mesh.shards.iter().all(|s| s.core.is_none()));
    if allowed_cpus().len() > 1 {
        assert_eq!(stats(&mut mesh.conn(0))["core"], Value::Null);
    }
    let mut conns = [mesh.conn(0), mesh.conn(1)];
    for (i, k) in keys.iter().enumerate() {
        let home = (procmesh::fnv1a(k) % 2) as usize;
        let v = conns[home].request(json!({"t": "get", "key": k})).unwrap();
        assert_eq!(v["value"], json!(i), "{k} on shard {home} after restart");
    }
    mesh.signal(libc::SIGINT);
    let st = mesh
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGINT");
    assert!(st.success());
    assert!(!mesh.socket(0).exists() && !mesh.socket(1).exists());
}

#[test]
fn procmesh_shards_commands_cover_the_mesh_and_stop_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::launch_in(dir.path(), 2, &[]);

    let out = mesh.cli(&["status", "--shards", "2", "--name", NAME]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for s in &mesh.shards {
        assert!(text.contains(&format!("{}: running", s.name)), "{text}");
        assert!(text.contains(&format!("pid {}", s.pid)), "{text}");
    }
    assert!(text.contains("2 of 2 shards running"), "{text}");

    let out = mesh.cli(&["stats", "--json", "--shards", "2", "--name", NAME]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).expect("stats --json is JSON");
    assert_eq!(v["name"], json!(NAME));
    let shards = v["shards"].as_array().expect("per-shard maps");
    assert_eq!(shards.len(), 2);
    for (s, line) in shards.iter().zip(&mesh.shards) {
        assert_eq!(s["name"], json!(line.name));
        assert_eq!(s["pid"], json!(line.pid));
        assert_eq!(s["core"], json!(line.core));
    }
    let rss: u64 = shards
        .iter()
        .map(|s| s["memory"]["rss"].as_u64().unwrap())
        .sum();
    assert_eq!(v["memory"]["rss"], json!(rss), "totals are sums");

    let out = mesh.cli(&["stats", "--shards", "2", "--name", NAME]);
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "header, two shards, total:\n{table}");
    assert_eq!(rows[0][..3], ["shard", "pid", "core"]);
    for (row, line) in rows[1..3].iter().zip(&mesh.shards) {
        let core = line.core.map_or("-".to_string(), |c| c.to_string());
        assert_eq!(
            row[..3],
            [line.name.as_str(), &line.pid.to_string(), core.as_str()]
        );
    }
    assert_eq!(rows[3][0], "total");

    // Stopping every shard is stopping the mesh: the launcher does not restart shards
    // that exit cleanly, and exits once all have.
    let out = mesh.cli(&["stop", "--shards", "2", "--name", NAME]);
    assert_eq!(out.status.code(), Some(0));
    let st = mesh
        .wait_exit(Duration::from_secs(10))
        .expect("the launcher exits once every shard stopped");
    assert!(st.success());
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".sock")));
    let out = mesh.cli(&["status", "--shards", "2", "--name", NAME]);
    assert_eq!(out.status.code(), Some(3), "no shard runs any more");
}

#[test]
fn a_running_mesh_is_not_launched_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::launch_in(dir.path(), 2, &[]);

    let out = spawn_launcher(dir.path(), 2, &[])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("already runs 2 shards"), "{text}");

    drop(mesh);

    // With only one shard's broker there, the mesh is half there: a launcher refuses
    // rather than start beside it. (A launched shard no longer stays down after a
    // `shutdown`, so the half mesh is a lone broker at `t#0`.)
    let half = tempfile::tempdir().unwrap();
    let mut lone = std::process::Command::new(broker_bin())
        .args(["serve", "--name", &format!("{NAME}#0")])
        .env("TMPDIR", half.path())
        .env_remove("PROCMESH_SOCKET")
        .env_remove("PROCMESH_PERSIST_DIR")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sock0 = half.path().join(format!("procmesh-{NAME}#0.sock"));
    let err = std::io::BufReader::new(lone.stderr.take().unwrap());
    let serving = std::io::BufRead::lines(err).any(|l| l.unwrap().contains("serving at"));
    assert!(serving, "the lone broker serves");
    let lone_pid = stats(&mut CliConn::connect(&sock0, None).unwrap())["pid"].clone();
    let out = spawn_launcher(half.path(), 2, &[])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{NAME}#0 already served")), "{err}");
    // The lone broker still serves shard 0, the same process.
    assert_eq!(
        stats(&mut CliConn::connect(&sock0, None).unwrap())["pid"],
        lone_pid
    );
    assert_eq!(lone_pid, json!(lone.id()));
    kill(lone.id(), libc::SIGTERM);
    assert!(lone.wait().unwrap().success());
}

#[test]
fn a_shard_that_cannot_start_fails_the_launch() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_launcher(dir.path(), 2, &["--", "--no-such-flag"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the mesh did not start"), "{err}");
    assert!(
        err.contains("--no-such-flag"),
        "the broker's own error is shown: {err}"
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".sock")));
}

/// Set in the environment of the child test run by
/// `client_sharded_by_name_uses_the_launched_mesh`.
const CHILD_ENV: &str = "PROCMESH_LAUNCH_TEST_CHILD";

#[test]
fn client_sharded_by_name_uses_the_launched_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::launch_in(dir.path(), 2, &[]);
    // A client resolves shard sockets from TMPDIR, which is process-wide: run the
    // client half in a child process of this test binary with TMPDIR set.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "mesh::sharded_client_child",
            "--ignored",
            "--nocapture",
        ])
        .env("TMPDIR", dir.path())
        .env(CHILD_ENV, "1")
        .env_remove("PROCMESH_SOCKET")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "child test failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the client wrote is where FNV-1a says, on the launched shards.
    let mut conns = [mesh.conn(0), mesh.conn(1)];
    for i in 0..20 {
        let k = format!("via-name:{i}");
        let home = (procmesh::fnv1a(&k) % 2) as usize;
        assert!(has(&mut conns[home], &k), "{k} not on shard {home}");
        assert!(!has(&mut conns[1 - home], &k));
    }
}

/// The client half of `client_sharded_by_name_uses_the_launched_mesh`.
#[test]
#[ignore = "run as a child process by client_sharded_by_name_uses_the_launched_mesh"]
fn sharded_client_child() {
    assert!(std::env::var_os(CHILD_ENV).is_some(), "only run as a child");
    let client = procmesh::Client::builder()
        .name(NAME)
        .shards(2)
        .auto_spawn(false)
        .connect()
        .expect("the sharded client connects to the launched mesh");
    let tmp = std::env::var_os("TMPDIR").unwrap();
    let want: Vec<_> = (0..2)
        .map(|i| std::path::Path::new(&tmp).join(format!("procmesh-{NAME}#{i}.sock")))
        .collect();
    assert_eq!(client.addresses(), want);
    for i in 0..20 {
        client.set(&format!("via-name:{i}"), &i).unwrap();
    }
    let st = client.stats().unwrap();
    assert_eq!(st.shards.len(), 2);
    assert_eq!(st.cache_size, 20);
}

#[test]
fn shards_do_not_outlive_a_killed_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::launch_in(dir.path(), 2, &[]);
    // SIGKILL cannot be caught: the shards learn of it from their parent-death signal
    // (SIGTERM) and stop cleanly, removing their sockets.
    mesh.signal(libc::SIGKILL);
    mesh.wait_exit(Duration::from_secs(5)).expect("killed");
    for i in 0..2 {
        assert!(
            wait_gone(&mesh.socket(i), Duration::from_secs(5)),
            "shard {i} still serves after its launcher died"
        );
    }
}
