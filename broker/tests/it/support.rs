//! Test support: the real `procmesh` binary on a socket in a per-test temp dir, and a
//! small blocking client that speaks JSON or MessagePack over a real Unix socket.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_procmesh");

/// The real broker binary, killed and cleaned up on drop.
pub struct TestBroker {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestBroker {
    /// Starts `procmesh serve --socket <tmp>/mesh.sock <args>` with heartbeats off
    /// unless `args` set them, and waits for its "serving" line.
    pub fn start(args: &[&str]) -> TestBroker {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mesh.sock");
        let child = spawn_serve(&path, args);
        TestBroker {
            child: Some(child),
            dir,
            path,
        }
    }

    pub fn client(&self) -> TestClient {
        TestClient::connect(&self.path, Codec::Json)
    }

    pub fn client_with(&self, codec: Codec) -> TestClient {
        TestClient::connect(&self.path, codec)
    }

    /// Waits for the broker process to exit by itself; returns its exit status code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `procmesh serve` and waits until it reports that it is serving.
pub fn spawn_serve(path: &Path, args: &[&str]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--socket").arg(path);
    if !args.contains(&"--heartbeat") {
        cmd.args(["--heartbeat", "0"]);
    }
    // The suite runs once per I/O driver: PROCMESH_TEST_IO=epoll|uring|auto.
    if let (Ok(io), false) = (std::env::var("PROCMESH_TEST_IO"), args.contains(&"--io")) {
        cmd.args(["--io", &io]);
    }
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("PROCMESH_BROKER_OPTS");
    let mut child = cmd.spawn().expect("spawn procmesh serve");
    let stderr = child.stderr.take().expect("stderr");
    // Warnings (e.g. a torn log tail cut at recovery) may come before "serving at".
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("serving at") => break,
            Some(Ok(line)) if line.contains("warning") => continue,
            // `--io auto` falling back to epoll says why, once.
            Some(Ok(line)) if line.contains("io_uring unavailable") => continue,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("unexpected broker output: {other:?}");
            }
        }
    }
    child
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Json,
    MsgPack,
}

/// A blocking protocol client for tests.
pub struct TestClient {
    pub stream: UnixStream,
    pub codec: Codec,
    next_id: u64,
    /// Frames that are not replies (msg, invoke, ping), in arrival order.
    pub inbox: VecDeque<Value>,
}

pub fn encode(codec: Codec, v: &Value) -> Vec<u8> {
    let payload = match codec {
        Codec::Json => serde_json::to_vec(v).expect("json"),
        Codec::MsgPack => rmp_serde::to_vec_named(v).expect("msgpack"),
    };
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

impl TestClient {
    pub fn connect(path: &Path, codec: Codec) -> TestClient {
        let stream = UnixStream::connect(path).expect("connect to broker");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        TestClient {
            stream,
            codec,
            next_id: 0,
            inbox: VecDeque::new(),
        }
    }

    /// Connects and says hello.
    pub fn hello(path: &Path, codec: Codec, token: Option<&str>) -> TestClient {
        let mut c = TestClient::connect(path, codec);
        let mut h = json!({"t": "hello", "name": "test"});
        if let Some(t) = token {
            h["token"] = json!(t);
        }
        let r = c.request(h);
        assert_eq!(r["t"], "welcome", "{r}");
        c
    }

    pub fn send(&mut self, v: &Value) {
        self.stream
            .write_all(&encode(self.codec, v))
            .expect("write frame");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one frame; `None` when the broker closed the connection.
    pub fn read_frame(&mut self) -> Option<Value> {
        let mut len = [0u8; 4];
        if self.stream.read_exact(&mut len).is_err() {
            return None;
        }
        let n = u32::from_be_bytes(len) as usize;
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).ok()?;
        Some(match buf.first() {
            Some(b'{') => serde_json::from_slice(&buf).expect("broker sent invalid JSON"),
            _ => rmp_serde::from_slice(&buf).expect("broker sent invalid MessagePack"),
        })
    }

    /// Sends a request with a fresh id and returns the frame answering it.
    pub fn request(&mut self, mut v: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        v["id"] = json!(id);
        self.send(&v);
        self.reply_to(id)
    }

    /// Sends with a fresh id without waiting; returns the id.
    pub fn send_request(&mut self, mut v: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        v["id"] = json!(id);
        self.send(&v);
        id
    }

    /// Reads until the reply to `id` arrives, keeping other frames in the inbox. A
    /// reply already in the inbox (pipelined replies may come in any order) is taken
    /// from there.
    pub fn reply_to(&mut self, id: u64) -> Value {
        let is_reply = |f: &Value| {
            f.get("id").and_then(Value::as_u64) == Some(id)
                && matches!(f["t"].as_str(), Some("ok" | "err" | "welcome" | "pong"))
        };
        if let Some(i) = self.inbox.iter().position(is_reply) {
            return self
                .inbox
                .remove(i)
                .expect("invariant: position is in range");
        }
        loop {
            let f = self.read_frame().unwrap_or_else(|| {
                panic!("connection closed (or read timed out) while waiting for reply {id}")
            });
            if is_reply(&f) {
                return f;
            }
            self.inbox.push_back(f);
        }
    }

    /// The `value` of a successful reply (panics on `err`).
    pub fn ok(&mut self, v: Value) -> Value {
        let r = self.request(v);
        assert_eq!(r["t"], "ok", "expected ok, got {r}");
        r.get("value").cloned().unwrap_or(Value::Null)
    }

    /// The code of an error reply (panics on `ok`).
    pub fn err_code(&mut self, v: Value) -> String {
        let r = self.request(v);
        assert_eq!(r["t"], "err", "expected err, got {r}");
        r["code"].as_str().expect("code").to_string()
    }

    /// The next non-reply frame (msg, invoke, ping).
    pub fn next_event(&mut self) -> Option<Value> {
        if let Some(f) = self.inbox.pop_front() {
            return Some(f);
        }
        self.read_frame()
    }

    pub fn stats(&mut self) -> Value {
        self.ok(json!({"t": "stats"}))
    }

    /// True when the broker closes this connection within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.stream.set_read_timeout(Some(limit)).expect("timeout");
        let mut b = [0u8; 4096];
        let deadline = Instant::now() + limit;
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {
                    if Instant::now() > deadline {
                        return false;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Polls `cond` until it holds, failing after `limit`. Only for state that no frame
/// signals (e.g. the broker having noticed another connection's close).
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
