//! Test support: a launched mesh in a per-test `TMPDIR`, read through the launcher's
//! `--json` "serving" lines, and stopped and cleaned up on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procmesh_broker::cli::CliConn;
use serde_json::{json, Value};

pub const LAUNCH: &str = env!("CARGO_BIN_EXE_procmesh-launch");

/// The mesh name every test uses (each test has its own `TMPDIR`, so its own sockets).
pub const NAME: &str = "t";

/// How long a whole mesh may take to start in tests (debug builds, busy CI).
pub const START_LIMIT: Duration = Duration::from_secs(20);

/// The `procmesh` broker binary, next to the launcher (`cargo test --workspace`
/// builds both into the same directory).
pub fn broker_bin() -> PathBuf {
    let p = Path::new(LAUNCH).with_file_name("procmesh");
    assert!(
        p.is_file(),
        "{} is missing: build it first (`cargo build -p procmesh-broker`; \
         `cargo test --workspace` does)",
        p.display()
    );
    p
}

/// The CPUs this test process may run on, ascending.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it and
    // CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// One `--json` "serving" line of the launcher.
#[derive(Debug, Clone, PartialEq)]
pub struct Serving {
    pub shard: usize,
    pub name: String,
    pub socket: PathBuf,
    pub pid: u32,
    pub core: Option<usize>,
    /// 1 for the first start of the shard, +1 per restart.
    pub start: u64,
}

impl Serving {
    fn parse(line: &str) -> Serving {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("launcher stdout is not a JSON line ({e}): {line:?}"));
        Serving {
            shard: v["shard"].as_u64().expect("shard") as usize,
            name: v["name"].as_str().expect("name").to_string(),
            socket: PathBuf::from(v["socket"].as_str().expect("socket")),
            pid: v["pid"].as_u64().expect("pid") as u32,
            core: v["core"].as_u64().map(|c| c as usize),
            start: v["start"].as_u64().expect("start"),
        }
    }
}

/// A running `procmesh-launch`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Mesh {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub n: usize,
    /// The first "serving" line of each shard, in shard order.
    pub shards: Vec<Serving>,
    lines: Receiver<Serving>,
    stderr: Arc<Mutex<String>>,
}

/// Starts `procmesh-launch --shards n --name t --json <args>` with `TMPDIR=dir`.
pub fn spawn_launcher(dir: &Path, n: usize, args: &[&str]) -> Child {
    Command::new(LAUNCH)
        .args(["--shards", &n.to_string(), "--name", NAME, "--json"])
        .args(args)
        .env("TMPDIR", dir)
        .env("PROCMESH_BROKER_BIN", broker_bin())
        .env_remove("PROCMESH_SOCKET")
        .env_remove("PROCMESH_TOKEN")
        .env_remove("PROCMESH_BROKER_OPTS")
        .env_remove("PROCMESH_PERSIST_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn procmesh-launch")
}

impl Mesh {
    /// Launches `n` shards in `dir` and waits for each one's "serving" line.
    pub fn launch_in(dir: &Path, n: usize, args: &[&str]) -> Mesh {
        let mut child = spawn_launcher(dir, n, args);
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(Serving::parse(&line)).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut mesh = Mesh {
            child: Some(child),
            dir: dir.to_path_buf(),
            n,
            shards: Vec::new(),
            lines,
            stderr,
        };
        let deadline = Instant::now() + START_LIMIT;
        let mut first: Vec<Option<Serving>> = vec![None; n];
        while first.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let s = mesh.next_serving(left).unwrap_or_else(|| {
                panic!(
                    "the mesh did not serve within {START_LIMIT:?}; stderr:\n{}",
                    mesh.stderr()
                )
            });
            let i = s.shard;
            assert!(
                first[i].is_none(),
                "shard {i} announced twice at start: {s:?}"
            );
            first[i] = Some(s);
        }
        mesh.shards = first.into_iter().map(Option::unwrap).collect();
        mesh
    }

    /// The next "serving" line, if one comes within `limit`.
    pub fn next_serving(&self, limit: Duration) -> Option<Serving> {
        self.lines.recv_timeout(limit).ok()
    }

    /// What the launcher wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("procmesh-{NAME}#{i}.sock"))
    }

    pub fn conn(&self, i: usize) -> CliConn {
        CliConn::connect(&self.socket(i), None)
            .unwrap_or_else(|e| panic!("connect to shard {i}: {e}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("launcher running").id()
    }

    /// Sends `sig` to the launcher.
    pub fn signal(&self, sig: libc::c_int) {
        kill(self.pid(), sig);
    }

    /// Waits for the launcher to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `procmesh <args>` against this mesh's `TMPDIR`.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_in(&self.dir, args)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("launcher stderr:\n{}", self.stderr());
        }
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}

/// Runs `procmesh <args>` with `TMPDIR=dir`.
pub fn cli_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(broker_bin())
        .args(args)
        .env("TMPDIR", dir)
        .env_remove("PROCMESH_SOCKET")
        .env_remove("PROCMESH_TOKEN")
        .output()
        .expect("run procmesh")
}

pub fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Whether a process with this pid exists (signal 0 probes without sending).
pub fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Polls until `path` no longer exists (a broker removes its socket as the last step
/// of a clean stop); false if it still exists after `limit`.
pub fn wait_gone(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A shard's stats map.
pub fn stats(c: &mut CliConn) -> Value {
    c.request(json!({"t": "stats"})).expect("stats")["value"].take()
}

/// Whether the shard holds `key`.
pub fn has(c: &mut CliConn, key: &str) -> bool {
    c.request(json!({"t": "has", "key": key})).expect("has")["value"]
        .as_bool()
        .expect("has returns a bool")
}

/// Reads a child's whole stderr (after it exited).
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}
