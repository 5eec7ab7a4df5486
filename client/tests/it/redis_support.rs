//! Test support for the Redis backend: a real `redis-server` on a Unix socket
//! in a per-test temp dir (killed on drop), a three-node Redis Cluster on
//! loopback ports, and the skip rule: tests skip, saying so, only when
//! `redis-server` is missing and `PROCMESH_REQUIRE_REDIS` is unset.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::WAIT;

/// Whether `prog` runs (`prog --version`).
fn runs(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The redis-server binary (`PROCMESH_REDIS_SERVER`, else `redis-server` on PATH),
/// or `None` to skip. Panics when it is missing and `PROCMESH_REQUIRE_REDIS` is set.
pub fn redis_server_bin() -> Option<String> {
    let bin = std::env::var("PROCMESH_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    if runs(&bin) {
        return Some(bin);
    }
    if std::env::var_os("PROCMESH_REQUIRE_REDIS").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("PROCMESH_REQUIRE_REDIS is set but `{bin}` does not run; install redis-server");
    }
    eprintln!(
        "SKIPPED: `{bin}` not found; the Redis backend tests need redis-server \
         (scripts/ci-install-redis.sh installs it; PROCMESH_REQUIRE_REDIS=1 makes this an error)"
    );
    None
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `redis+unix:///…/redis.sock`, or `redis://127.0.0.1:<port>/` for TCP.
    pub url: String,
    pub port: Option<u16>,
}

impl RedisServer {
    /// A server on a Unix socket; `None` when the tests skip.
    pub fn start() -> Option<RedisServer> {
        let bin = redis_server_bin()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("redis.sock");
        let child = Command::new(bin)
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&sock)
            .args(["--unixsocketperm", "700"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let s = RedisServer {
            child,
            url: format!("redis+unix://{}", sock.display()),
            dir,
            port: None,
        };
        wait_unix(&sock);
        Some(s)
    }

    /// A cluster-enabled server on a loopback `port` (its bus on `port + 10000`).
    pub fn start_cluster_node(bin: &str, port: u16) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--cluster-enabled",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--cluster-config-file")
            .arg(dir.path().join("nodes.conf"))
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let s = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
            dir,
            port: Some(port),
        };
        wait_tcp(port);
        s
    }

    /// Starts the server again on the same socket (after [`RedisServer::kill`]),
    /// empty.
    pub fn restart(&mut self) {
        self.kill();
        let sock = PathBuf::from(self.url.strip_prefix("redis+unix://").expect("unix url"));
        let _ = std::fs::remove_file(&sock);
        self.child = Command::new(redis_server_bin().expect("redis-server ran before"))
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&sock)
            .args(["--unixsocketperm", "700"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        wait_unix(&sock);
    }

    /// Kills the server now (a crash, as far as clients can tell).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_unix(sock: &Path) {
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(
            t0.elapsed() < WAIT,
            "redis-server did not listen on {sock:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_tcp(port: u16) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < WAIT,
            "redis-server did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A loopback port that is free now, with its cluster bus port (+10000) free too.
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// A three-node Redis Cluster on loopback ports (no replicas), ready when built.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `None` when the tests skip (no redis-server or redis-cli).
    pub fn start() -> Option<RedisCluster> {
        let bin = redis_server_bin()?;
        let cli = PathBuf::from(&bin).with_file_name("redis-cli");
        let cli = if cli.exists() {
            cli
        } else {
            PathBuf::from("redis-cli")
        };
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_cluster_node(&bin, free_port()))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port.expect("tcp")))
            .collect();
        let out = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Ready when every node reports cluster_state:ok.
        let t0 = Instant::now();
        for a in &addrs {
            let (host, port) = a.split_once(':').expect("addr");
            loop {
                let info = Command::new(&cli)
                    .args(["-h", host, "-p", port, "cluster", "info"])
                    .output()
                    .expect("redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(t0.elapsed() < WAIT * 3, "cluster not ok at {a}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(RedisCluster { nodes })
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }
}
