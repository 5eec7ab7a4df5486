//! Test support: real brokers (in-process or as `procmesh serve` processes) on
//! sockets in per-test temp dirs, and this test binary re-executed as a child
//! process for multi-process tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use procmesh::{Client, Codec, Event};

/// Both codecs, for tests that must behave the same in each.
pub const CODECS: [Codec; 2] = [Codec::MsgPack, Codec::Json];

/// Generous bound on waits for things that do happen (CI machines are slow).
pub const WAIT: Duration = Duration::from_secs(10);

/// An in-process broker on a socket in its own temp dir.
pub struct InProc {
    pub handle: Option<procmesh_broker::BrokerHandle>,
    pub path: PathBuf,
    pub dir: tempfile::TempDir,
}

impl InProc {
    pub fn start() -> InProc {
        Self::start_with(|b| b)
    }

    pub fn start_with(
        f: impl FnOnce(procmesh_broker::BrokerBuilder) -> procmesh_broker::BrokerBuilder,
    ) -> InProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mesh.sock");
        let b = procmesh_broker::Broker::builder()
            .socket(&path)
            .heartbeat(None);
        let handle = f(b).start().expect("start broker");
        InProc {
            handle: Some(handle),
            path,
            dir,
        }
    }

    pub fn client(&self, codec: Codec) -> Client {
        client_at(&self.path, codec)
    }
}

/// A plain client at `path`: no auto-spawn, so a test never talks to a broker
/// it did not start.
pub fn client_at(path: &Path, codec: Codec) -> Client {
    Client::builder()
        .address(path)
        .codec(codec)
        .auto_spawn(false)
        .connect()
        .expect("connect")
}

/// The broker binary: `PROCMESH_BROKER_BIN`, else `target/<profile>/procmesh`
/// next to this test's `deps/` dir; built once with cargo when missing (as
/// under `cargo test -p procmesh`, which does not build other packages' bins).
pub fn broker_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = std::env::var_os("PROCMESH_BROKER_BIN").filter(|b| !b.is_empty()) {
            return PathBuf::from(b);
        }
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let bin = profile_dir.join("procmesh");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "procmesh-broker", "--bin", "procmesh"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("run cargo build for the broker");
            assert!(st.success(), "cargo build -p procmesh-broker failed");
        }
        assert!(bin.exists(), "broker binary missing at {}", bin.display());
        bin
    })
}

/// An example of this package (`target/<profile>/examples/<name>`), built
/// with cargo when missing.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("examples").join(name);
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "procmesh", "--example", name]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("cargo build").success(),
            "building example {name} failed"
        );
    }
    bin
}

/// A `procmesh serve` process, killed on drop.
pub struct BrokerProc {
    pub child: Option<Child>,
    pub path: PathBuf,
}

impl BrokerProc {
    /// Starts `procmesh serve --socket path` (heartbeats off) and waits for its
    /// "serving at" line.
    pub fn start(path: &Path, extra: &[&str]) -> BrokerProc {
        let mut cmd = Command::new(broker_bin());
        cmd.arg("serve")
            .arg("--socket")
            .arg(path)
            .args(["--heartbeat", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("PROCMESH_BROKER_OPTS")
            .env_remove("PROCMESH_TOKEN");
        let mut child = cmd.spawn().expect("spawn procmesh serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut line = String::new();
        BufReader::new(stderr)
            .read_line(&mut line)
            .expect("read broker output");
        assert!(
            line.contains("serving at"),
            "unexpected broker output: {line:?}"
        );
        BrokerProc {
            child: Some(child),
            path: path.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL and reap: the socket file stays behind, as after a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({sig})");
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // SIGCONT first, in case a test stopped it and failed before resuming.
            // SAFETY: as above.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// This test binary, to run as a child process in `role` (see `child_entry`).
pub fn child(role: &str) -> Command {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "child_entry",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
        "-q",
    ])
    .env("PROCMESH_IT_ROLE", role)
    .env("PROCMESH_BROKER_BIN", broker_bin())
    .env_remove("PROCMESH_SOCKET")
    .env_remove("PROCMESH_BROKER_OPTS");
    cmd
}

/// Runs a child to completion and checks that it succeeded; returns its stdout.
pub fn run_child(mut cmd: Command) -> String {
    let out = cmd.output().expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value of `KEY=value` lines a child printed.
pub fn reported<'a>(stdout: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// Waits for the first event matching `f`.
pub fn wait_event(rx: &Receiver<Event>, what: &str, f: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) if f(&e) => return e,
            Ok(_) => {}
            Err(_) => panic!("no {what} event within {WAIT:?}"),
        }
    }
}

/// Polls `f` until it is true, for conditions that have no signal (expiry,
/// another process's exit).
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Live `procmesh serve` processes whose command line names `socket`.
pub fn brokers_serving(socket: &Path) -> Vec<i32> {
    let needle = socket.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_zombie = std::fs::read_to_string(e.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !is_zombie && args.iter().any(|a| a == "serve") && args.contains(&needle) {
            out.push(pid);
        }
    }
    out
}
