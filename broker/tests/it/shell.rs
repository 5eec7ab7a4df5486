//! The shell side of the `procmesh` binary against real brokers: every shell command
//! (one broker and a two-shard mesh), exit codes, `stats --format prometheus` and the
//! `serve --metrics-addr` endpoint read by a real Prometheus parser, the token kept
//! out of `--help` and argv, `--token-file`, flags with units, `READY=1` to
//! `$NOTIFY_SOCKET`, and the generated completions and man page.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{spawn_serve, wait_until, Codec, TestBroker, TestClient, BIN};

/// `procmesh` with a clean environment (no token, socket or options inherited).
fn procmesh() -> Command {
    let mut c = Command::new(BIN);
    for v in [
        "PROCMESH_TOKEN",
        "PROCMESH_TOKEN_FILE",
        "PROCMESH_SOCKET",
        "PROCMESH_BROKER_OPTS",
        "PROCMESH_PERSIST_DIR",
        "NOTIFY_SOCKET",
    ] {
        c.env_remove(v);
    }
    c
}

/// `procmesh CMD --socket PATH ARGS...`.
fn at(path: &Path, cmd: &str, args: &[&str]) -> Output {
    procmesh()
        .arg(cmd)
        .arg("--socket")
        .arg(path)
        .args(args)
        .output()
        .expect("run procmesh")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code and returns stdout without its final newline.
fn expect(o: Output, code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o).trim_end_matches('\n').to_owned()
}

#[test]
fn get_set_del_keys_incr_cas_on_one_broker() {
    let b = TestBroker::start(&[]);
    let p = &b.path;
    assert_eq!(expect(at(p, "get", &["user:1"]), 4), "", "no key: exit 4");
    assert_eq!(
        expect(at(p, "set", &["user:1", r#"{"name":"ann","n":[1,2]}"#]), 0),
        ""
    );
    let v: Value = serde_json::from_str(&expect(at(p, "get", &["user:1"]), 0)).unwrap();
    assert_eq!(v, json!({"name":"ann","n":[1,2]}));
    // Strings: JSON in and out, or --raw.
    expect(at(p, "set", &["s", "hello world", "--raw"]), 0);
    assert_eq!(expect(at(p, "get", &["s"]), 0), r#""hello world""#);
    assert_eq!(expect(at(p, "get", &["s", "--raw"]), 0), "hello world");
    let bad = at(p, "set", &["s", "hello"]);
    assert_eq!(bad.status.code(), Some(2), "not JSON is a usage error");
    assert!(stderr(&bad).contains("--raw"), "{}", stderr(&bad));
    expect(at(p, "set", &["neg", "-5"]), 0);
    assert_eq!(expect(at(p, "get", &["neg"]), 0), "-5");
    // A value set here is the value a protocol client reads.
    let mut c = TestClient::hello(p, Codec::Json, None);
    assert_eq!(
        c.ok(json!({"t":"get","key":"user:1"})),
        json!({"name":"ann","n":[1,2]})
    );
    c.ok(json!({"t":"set","key":"from-client","value":{"x":true}}));
    assert_eq!(expect(at(p, "get", &["from-client"]), 0), r#"{"x":true}"#);
    // TTL with units.
    expect(at(p, "set", &["short", "1", "--ttl", "100ms"]), 0);
    expect(at(p, "set", &["long", "1", "--ttl", "5m"]), 0);
    wait_until(Duration::from_secs(5), "the 100ms key expires", || {
        at(p, "get", &["short"]).status.code() == Some(4)
    });
    assert_eq!(expect(at(p, "get", &["long"]), 0), "1");
    // del
    assert_eq!(expect(at(p, "del", &["long"]), 0), "true");
    assert_eq!(expect(at(p, "del", &["long"]), 0), "false");
    // keys: sorted, --prefix, --limit
    for k in ["job:3", "job:1", "job:2"] {
        expect(at(p, "set", &[k, "0"]), 0);
    }
    assert_eq!(
        expect(at(p, "keys", &["--prefix", "job:"]), 0),
        "job:1\njob:2\njob:3"
    );
    assert_eq!(
        expect(at(p, "keys", &["--prefix", "job:", "--limit", "2"]), 0),
        "job:1\njob:2"
    );
    let all = expect(at(p, "keys", &[]), 0);
    assert!(all.contains("user:1") && all.contains("s"), "{all}");
    // incr
    assert_eq!(expect(at(p, "incr", &["hits"]), 0), "1");
    assert_eq!(expect(at(p, "incr", &["hits", "--by", "10"]), 0), "11");
    assert_eq!(expect(at(p, "incr", &["hits", "--by", "-20"]), 0), "-9");
    let not_int = at(p, "incr", &["user:1"]);
    assert_eq!(not_int.status.code(), Some(1), "{}", stderr(&not_int));
    // cas: swapped 0, not swapped 4; null = missing key / delete
    assert_eq!(expect(at(p, "cas", &["hits", "-9", "100"]), 0), "true");
    assert_eq!(expect(at(p, "cas", &["hits", "-9", "101"]), 4), "false");
    assert_eq!(expect(at(p, "get", &["hits"]), 0), "100");
    assert_eq!(
        expect(at(p, "cas", &["fresh", "null", r#"{"v":1}"#]), 0),
        "true"
    );
    assert_eq!(expect(at(p, "cas", &["fresh", "null", "2"]), 4), "false");
    assert_eq!(
        expect(at(p, "cas", &["fresh", r#"{"v":1}"#, "null"]), 0),
        "true"
    );
    expect(at(p, "get", &["fresh"]), 4);
    assert_eq!(
        expect(at(p, "cas", &["s", "hello world", "bye", "--raw"]), 0),
        "true"
    );
    assert_eq!(expect(at(p, "get", &["s", "--raw"]), 0), "bye");
}

#[test]
fn publish_and_subscribe_until_sigterm() {
    let b = TestBroker::start(&[]);
    let p = &b.path;
    let mut sub = procmesh()
        .args(["subscribe", "--socket"])
        .arg(p)
        .args(["orders.created", "news.*"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(sub.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(
        line.contains("subscribed to orders.created news.*"),
        "{line}"
    );
    assert_eq!(
        expect(at(p, "publish", &["orders.created", r#"{"id":7}"#]), 0),
        "1"
    );
    assert_eq!(
        expect(at(p, "publish", &["news.rust", "procmesh 0.1", "--raw"]), 0),
        "1"
    );
    assert_eq!(expect(at(p, "publish", &["nobody.here", "1"]), 0), "0");
    // A protocol client's publish reaches the shell subscriber too.
    let mut c = TestClient::hello(p, Codec::MsgPack, None);
    c.ok(json!({"t":"pub","channel":"news.go","payload":[1,2.5,null]}));
    let mut out = BufReader::new(sub.stdout.take().unwrap()).lines();
    let mut next = || -> Value { serde_json::from_str(&out.next().unwrap().unwrap()).unwrap() };
    assert_eq!(
        next(),
        json!({"channel":"orders.created","payload":{"id":7}})
    );
    assert_eq!(
        next(),
        json!({"channel":"news.rust","payload":"procmesh 0.1"})
    );
    assert_eq!(next(), json!({"channel":"news.go","payload":[1,2.5,null]}));
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe { libc::kill(sub.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(
        sub.wait().unwrap().code(),
        Some(0),
        "SIGTERM is a clean stop"
    );

    // A subscriber whose broker goes away exits 1.
    let mut sub = procmesh()
        .args(["subscribe", "--socket"])
        .arg(p)
        .arg("x")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(sub.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("subscribed"), "{line}");
    expect(at(p, "stop", &[]), 0);
    assert_eq!(sub.wait().unwrap().code(), Some(1));
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("connection lost"), "{rest}");
}

#[test]
fn call_a_procedure_served_by_a_protocol_worker() {
    let b = TestBroker::start(&[]);
    let p = b.path.clone();
    let mut w = b.client();
    assert_eq!(w.ok(json!({"t":"reg","name":"echo"})), json!(true));
    let worker = std::thread::spawn(move || {
        for _ in 0..3 {
            let f = w.next_event().expect("invoke");
            assert_eq!(f["t"], "invoke", "{f}");
            let result = match f["args"].get(0) {
                Some(Value::String(s)) if s == "fail" => {
                    w.send(&json!({"t":"result","id":f["id"],"error":{"code":"EINVAL","message":"no"}}));
                    continue;
                }
                _ => f["args"].clone(),
            };
            w.send(&json!({"t":"result","id":f["id"],"result":result}));
        }
    });
    assert_eq!(expect(at(&p, "call", &["echo", "[1,2]"]), 0), "[1,2]");
    assert_eq!(expect(at(&p, "call", &["echo"]), 0), "[]");
    let failed = at(&p, "call", &["echo", r#""fail""#]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(stderr(&failed).contains("EINVAL"), "{}", stderr(&failed));
    worker.join().unwrap();
    let none = at(&p, "call", &["nobody", "--timeout", "1s"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(stderr(&none).contains("ENOHANDLER"), "{}", stderr(&none));
}

#[test]
fn lock_runs_a_command_with_the_fencing_token() {
    let b = TestBroker::start(&[]);
    let p = &b.path;
    let script = r#"echo "$PROCMESH_LOCK_KEY $PROCMESH_FENCING_TOKEN"; exit 7"#;
    let out = expect(at(p, "lock", &["job", "--", "sh", "-c", script]), 7);
    let (key, token) = out.split_once(' ').unwrap();
    assert_eq!(key, "job");
    let first: u64 = token.parse().unwrap();
    // Released after the command: the next holder gets a larger token.
    let out = expect(
        at(
            p,
            "lock",
            &[
                "job",
                "--ttl",
                "10s",
                "--",
                "sh",
                "-c",
                "echo $PROCMESH_FENCING_TOKEN",
            ],
        ),
        0,
    );
    assert!(out.parse::<u64>().unwrap() > first, "{out} after {first}");
    // Held elsewhere: not acquired, exit 4, the command does not run.
    let mut holder = TestClient::hello(p, Codec::Json, None);
    let r = holder.ok(json!({"t":"lock","key":"job","ttl":30000}));
    assert_eq!(r["acquired"], true, "{r}");
    let busy = at(
        p,
        "lock",
        &["job", "--wait", "50ms", "--", "sh", "-c", "echo ran"],
    );
    assert_eq!(expect(busy, 4), "");
    // A command that cannot start: 127, and the lock is released.
    holder.ok(json!({"t":"unlock","key":"job","token":r["token"]}));
    expect(at(p, "lock", &["job", "--", "/nonexistent/cmd"]), 127);
    expect(at(p, "lock", &["job", "--", "true"]), 0);
    // A command killed by a signal: 128 + N.
    expect(
        at(p, "lock", &["job", "--", "sh", "-c", "kill -9 $$"]),
        128 + 9,
    );
}

#[test]
fn no_broker_is_exit_3_and_nothing_is_spawned() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("none.sock");
    for (cmd, args) in [
        ("get", &["k"][..]),
        ("set", &["k", "1"]),
        ("del", &["k"]),
        ("keys", &[]),
        ("incr", &["k"]),
        ("cas", &["k", "1", "2"]),
        ("publish", &["c", "1"]),
        ("subscribe", &["c"]),
        ("call", &["f"]),
        ("lock", &["k", "--", "true"]),
        ("stats", &["--format", "prometheus"]),
    ] {
        let o = at(&p, cmd, args);
        assert_eq!(o.status.code(), Some(3), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no broker is running"),
            "{cmd}: {}",
            stderr(&o)
        );
    }
    assert!(!p.exists(), "no broker was started");
    // Usage errors are 2.
    assert_eq!(at(&p, "get", &[]).status.code(), Some(2));
    assert_eq!(
        at(&p, "set", &["k", "1", "--ttl", "soon"]).status.code(),
        Some(2)
    );
}

/// A mesh of `n` brokers `NAME#i` in a temp dir that serves as `TMPDIR`.
struct Mesh {
    dir: tempfile::TempDir,
    name: &'static str,
    shards: usize,
    /// The running brokers (a test may take one out to stop it).
    brokers: Vec<Child>,
}

impl Mesh {
    fn start(name: &'static str, n: usize) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let brokers = (0..n)
            .map(|i| {
                let shard = format!("{name}#{i}");
                spawn_serve(&Mesh::socket(dir.path(), &shard), &["--name", &shard])
            })
            .collect();
        Mesh {
            dir,
            name,
            shards: n,
            brokers,
        }
    }

    fn socket(dir: &Path, shard: &str) -> PathBuf {
        dir.join(format!("procmesh-{shard}.sock"))
    }

    fn shard(&self, i: usize) -> PathBuf {
        Mesh::socket(self.dir.path(), &format!("{}#{i}", self.name))
    }

    /// `procmesh CMD --name NAME --shards N ARGS...` with `TMPDIR` the mesh's dir.
    fn run(&self, cmd: &str, args: &[&str]) -> Output {
        procmesh()
            .env("TMPDIR", self.dir.path())
            .arg(cmd)
            .args(["--name", self.name, "--shards"])
            .arg(self.shards.to_string())
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for c in &mut self.brokers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn shell_commands_on_a_two_shard_mesh() {
    let m = Mesh::start("shelltest", 2);
    let keys: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
    for (i, k) in keys.iter().enumerate() {
        expect(m.run("set", &[k, &i.to_string()]), 0);
    }
    // Keys are spread over both shards, as every client of the mesh places them.
    let on = |i: usize| -> usize {
        let mut c = TestClient::hello(&m.shard(i), Codec::Json, None);
        c.ok(json!({"t":"keys"})).as_array().unwrap().len()
    };
    let (a, b) = (on(0), on(1));
    assert_eq!(a + b, 20);
    assert!(a > 0 && b > 0, "{a} + {b}");
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(expect(m.run("get", &[k]), 0), i.to_string());
    }
    assert_eq!(expect(m.run("keys", &[]), 0), keys.join("\n"));
    assert_eq!(
        expect(m.run("keys", &["--prefix", "k1", "--limit", "3"]), 0),
        "k10\nk11\nk12"
    );
    assert_eq!(expect(m.run("incr", &["k05", "--by", "2"]), 0), "7");
    assert_eq!(expect(m.run("cas", &["k05", "7", r#""seven""#]), 0), "true");
    assert_eq!(expect(m.run("get", &["k05", "--raw"]), 0), "seven");
    assert_eq!(expect(m.run("del", &["k05"]), 0), "true");
    expect(m.run("get", &["k05"]), 4);
    assert_eq!(expect(m.run("publish", &["c", "1"]), 0), "0");
    let out = expect(
        m.run("lock", &["L", "--", "sh", "-c", "echo $PROCMESH_LOCK_KEY"]),
        0,
    );
    assert_eq!(out, "L");

    // Prometheus text with a shard label per broker, parsed by a real parser.
    let text = expect(m.run("stats", &["--format", "prometheus"]), 0);
    let scrape = parse_prometheus(&text);
    let up: Vec<_> = samples(&scrape, "procmesh_up");
    assert_eq!(up.len(), 2);
    for (i, s) in up.iter().enumerate() {
        assert_eq!(s.labels.get("shard"), Some(i.to_string().as_str()));
        assert_eq!(s.labels.get("mesh"), Some("shelltest"));
        assert_eq!(gauge(s), 1.0);
    }
    let entries: f64 = samples(&scrape, "procmesh_cache_entries")
        .iter()
        .map(|s| gauge(s))
        .sum();
    assert_eq!(entries, 19.0);
    let sets: f64 = samples(&scrape, "procmesh_ops_total")
        .iter()
        .filter(|s| s.labels.get("op") == Some("set"))
        .map(|s| counter(s))
        .sum();
    assert_eq!(sets, 20.0);
    // The table and status still work over the mesh.
    assert!(expect(m.run("stats", &[]), 0).contains("shard"));
    expect(m.run("status", &[]), 0);
}

#[test]
fn a_missing_shard_reads_as_down_in_prometheus() {
    let mut m = Mesh::start("halfmesh", 2);
    let mut gone = m.brokers.remove(1);
    gone.kill().unwrap();
    gone.wait().unwrap();
    std::fs::remove_file(m.shard(1)).ok();
    let o = m.run("stats", &["--format", "prometheus"]);
    assert_eq!(o.status.code(), Some(1), "one of two shards");
    let scrape = parse_prometheus(&stdout(&o));
    let up: Vec<f64> = samples(&scrape, "procmesh_up")
        .iter()
        .map(|s| gauge(s))
        .collect();
    assert_eq!(up, vec![1.0, 0.0]);
    assert!(samples(&scrape, "procmesh_connections")
        .iter()
        .all(|s| s.labels.get("shard") == Some("0")));
    // A shell command needs every shard: the missing one is exit 3, named.
    let o = m.run("get", &["k"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("halfmesh#1"), "{}", stderr(&o));
}

fn parse_prometheus(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

fn samples<'a>(s: &'a prometheus_parse::Scrape, metric: &str) -> Vec<&'a prometheus_parse::Sample> {
    s.samples.iter().filter(|x| x.metric == metric).collect()
}

fn gauge(s: &prometheus_parse::Sample) -> f64 {
    match s.value {
        prometheus_parse::Value::Gauge(v) => v,
        ref other => panic!("{} is not a gauge: {other:?}", s.metric),
    }
}

fn counter(s: &prometheus_parse::Sample) -> f64 {
    match s.value {
        prometheus_parse::Value::Counter(v) => v,
        ref other => panic!("{} is not a counter: {other:?}", s.metric),
    }
}

/// Checks the families every scrape has: HELP, TYPE, and typed values.
fn check_families(scrape: &prometheus_parse::Scrape) {
    for (name, help) in [
        ("procmesh_up", "answered"),
        ("procmesh_ops_total", "request type"),
        ("procmesh_cache_evicted_total", "evicted"),
    ] {
        assert!(
            scrape.docs.get(name).is_some_and(|d| d.contains(help)),
            "HELP of {name}: {:?}",
            scrape.docs.get(name)
        );
    }
    for s in &scrape.samples {
        if s.metric.ends_with("_total") {
            counter(s);
        }
    }
}

#[test]
fn stats_prometheus_and_the_metrics_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sock");
    let tok = dir.path().join("token");
    std::fs::write(&tok, "metrics-secret\n").unwrap();
    let mut child = procmesh()
        .args(["serve", "--heartbeat", "0", "--name", "prom", "--socket"])
        .arg(&path)
        .arg("--token-file")
        .arg(&tok)
        .args(["--metrics-addr", "127.0.0.1:0", "--persist-dir"])
        .arg(dir.path().join("data"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    for line in err.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.split("http://").nth(1) {
            addr = Some(a.trim_end_matches("/metrics").to_owned());
            break;
        }
    }
    let addr = addr.expect("the metrics address line");
    let token = ["--token-file", tok.to_str().unwrap()];
    expect(at(&path, "set", &["a", "1", token[0], token[1]]), 0);
    expect(at(&path, "get", &["nope", token[0], token[1]]), 4);

    let text = expect(
        at(
            &path,
            "stats",
            &["--format", "prometheus", token[0], token[1]],
        ),
        0,
    );
    let scrape = parse_prometheus(&text);
    check_families(&scrape);
    let s = samples(&scrape, "procmesh_cache_entries");
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].labels.get("mesh"), Some("prom"));
    assert_eq!(
        s[0].labels.get("shard"),
        None,
        "one broker has no shard label"
    );
    assert_eq!(gauge(s[0]), 1.0);
    assert_eq!(samples(&scrape, "procmesh_persist_log_bytes").len(), 1);

    // GET /metrics over HTTP/1.1, the broker asked per scrape.
    let get = |target: &str| -> (String, String) {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    };
    let (head, body) = get("/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let scrape = parse_prometheus(&body);
    check_families(&scrape);
    let sets: Vec<_> = samples(&scrape, "procmesh_ops_total")
        .into_iter()
        .filter(|s| s.labels.get("op") == Some("set"))
        .collect();
    assert_eq!(counter(sets[0]), 1.0);
    let (head2, body2) = get("/metrics");
    assert!(head2.starts_with("HTTP/1.1 200"));
    let stats_ops = |b: &str| {
        samples(&parse_prometheus(b), "procmesh_ops_total")
            .iter()
            .find(|s| s.labels.get("op") == Some("stats"))
            .map(|s| counter(s))
    };
    assert!(
        stats_ops(&body2) > stats_ops(&body),
        "a fresh report per scrape"
    );
    let (head, _) = get("/other");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn metrics_on_a_public_address_need_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let o = procmesh()
        .args(["serve", "--socket"])
        .arg(dir.path().join("x.sock"))
        .args(["--metrics-addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--metrics-allow-remote"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_token_stays_out_of_help_and_argv() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["get", "--help"],
        &["status", "--help"],
        &["subscribe", "--help"],
        &["serve", "-h"],
    ] {
        let o = procmesh()
            .env("PROCMESH_TOKEN", "s3cret")
            .env("PROCMESH_TOKEN_FILE", "/run/secret-path")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        let text = stdout(&o);
        assert!(
            !text.contains("s3cret"),
            "{args:?} shows the token:\n{text}"
        );
        assert!(!text.contains("secret-path"), "{args:?}");
        if args[0] != "--help" {
            assert!(
                text.contains("PROCMESH_TOKEN"),
                "the variable is still named"
            );
        }
    }
    // The long help documents the exit codes.
    let help = stdout(&procmesh().arg("--help").output().unwrap());
    for line in ["Exit codes:", "3  no broker", "4  a negative answer"] {
        assert!(help.contains(line), "{line} in:\n{help}");
    }

    // A broker started with --token-file has no token in its argv.
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, "  file-secret  \n# comment\n").unwrap();
    let path = dir.path().join("t.sock");
    let mut broker = spawn_serve(&path, &["--token-file", tok.to_str().unwrap()]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", broker.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("file-secret"));
    // The first line, trimmed, is the token: protocol clients and the CLI use it.
    TestClient::hello(&path, Codec::Json, Some("file-secret"));
    let mut wrong = TestClient::connect(&path, Codec::Json);
    let r = wrong.request(json!({"t":"hello","name":"t","token":"nope"}));
    assert_eq!(r["t"], "err", "{r}");
    let tok_arg = tok.to_str().unwrap();
    expect(at(&path, "set", &["k", "1", "--token-file", tok_arg]), 0);
    assert_eq!(
        expect(at(&path, "get", &["k", "--token-file", tok_arg]), 0),
        "1"
    );
    expect(at(&path, "status", &["--token-file", tok_arg]), 0);
    let o = procmesh()
        .args(["get", "k", "--socket"])
        .arg(&path)
        .env("PROCMESH_TOKEN_FILE", &tok)
        .output()
        .unwrap();
    assert_eq!(expect(o, 0), "1", "PROCMESH_TOKEN_FILE");
    // Without the token the broker refuses (1), a missing file is a usage error (2).
    expect(at(&path, "get", &["k"]), 1);
    let o = at(&path, "get", &["k", "--token-file", "/nonexistent/token"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read the token file"));
    let _ = broker.kill();
    let _ = broker.wait();
}

#[test]
fn serve_flags_take_units() {
    // 1KiB frames: a 500-byte value fits, a 2000-byte one does not.
    let b = TestBroker::start(&["--max-frame", "1KiB", "--default-ttl", "5m"]);
    let small = format!("\"{}\"", "x".repeat(500));
    let big = format!("\"{}\"", "x".repeat(2000));
    expect(at(&b.path, "set", &["small", &small]), 0);
    let o = at(&b.path, "set", &["big", &big]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // An idle timeout with units: the broker exits by itself.
    let mut idle = TestBroker::start(&["--idle-timeout", "200ms"]);
    assert_eq!(idle.wait_exit(Duration::from_secs(10)), Some(0));
    // A bad unit is a usage error before anything binds.
    let dir = tempfile::tempdir().unwrap();
    let o = procmesh()
        .args(["serve", "--socket"])
        .arg(dir.path().join("u.sock"))
        .args(["--heartbeat", "30 parsecs"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a duration"), "{}", stderr(&o));
}

#[test]
fn serve_notifies_systemd_when_ready() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let path = dir.path().join("n.sock");
    let mut child = procmesh()
        .args(["serve", "--heartbeat", "0", "--socket"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(msg, format!("READY=1\nMAINPID={}", child.id()));
    // Ready means bound: a client connects at once.
    TestClient::hello(&path, Codec::Json, None);
    expect(at(&path, "stop", &[]), 0);
    let n = listener.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn completions_and_man_page_are_generated() {
    let run = |args: &[&str]| expect(procmesh().args(args).output().unwrap(), 0);
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("_procmesh") && bash.contains("subscribe"),
        "bash"
    );
    assert!(run(&["completions", "zsh"]).starts_with("#compdef procmesh"));
    assert!(run(&["completions", "fish"]).contains("complete -c procmesh"));
    let man = run(&["man"]);
    assert!(
        man.contains(".TH procmesh"),
        "{}",
        &man[..man.len().min(200)]
    );
    assert!(man.contains("Exit codes"));
    assert_eq!(
        procmesh()
            .args(["completions", "tcsh"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn stats_watch_prints_again_until_interrupted() {
    let b = TestBroker::start(&["--name", "watched"]);
    let mut w = procmesh()
        .args(["stats", "--socket"])
        .arg(&b.path)
        .args(["--watch", "50ms", "--format", "prometheus"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(w.stdout.take().unwrap()).lines();
    // Each round is a full exposition; count the rounds by their first line.
    let mut rounds = 0;
    let mut uptimes = Vec::new();
    while rounds < 3 {
        let line = out.next().unwrap().unwrap();
        if line.starts_with("# HELP procmesh_up ") {
            rounds += 1;
        }
        if let Some(v) = line.strip_prefix("procmesh_uptime_seconds{mesh=\"watched\"} ") {
            uptimes.push(v.parse::<f64>().unwrap());
        }
    }
    assert!(uptimes.windows(2).all(|p| p[0] <= p[1]), "{uptimes:?}");
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe { libc::kill(w.id() as libc::pid_t, libc::SIGINT) };
    w.wait().unwrap();
    // A broker that goes away ends the watch with exit 3.
    let mut w = procmesh()
        .args(["stats", "--socket"])
        .arg(&b.path)
        .args(["--watch", "20ms", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(w.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), "{");
    expect(at(&b.path, "stop", &[]), 0);
    assert_eq!(w.wait().unwrap().code(), Some(3));
}

#[test]
fn lock_passes_sigterm_on_to_the_command_and_holds_until_it_exits() {
    let b = TestBroker::start(&[]);
    let script = r#"trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"#;
    let mut l = procmesh()
        .args(["lock", "--socket"])
        .arg(&b.path)
        .args(["job", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(l.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), "ready");
    // Held while the command runs.
    let mut c = TestClient::hello(&b.path, Codec::Json, None);
    let r = c.ok(json!({"t":"lock","key":"job","ttl":1000}));
    assert_eq!(r["acquired"], false, "{r}");
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe { libc::kill(l.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(l.wait().unwrap().code(), Some(42), "CMD's exit code");
    let r = c.ok(json!({"t":"lock","key":"job","ttl":1000}));
    assert_eq!(r["acquired"], true, "released after CMD exited: {r}");
}

#[test]
fn keys_lists_a_store_too_big_for_one_keys_reply_page_by_page() {
    let b = TestBroker::start(&["--send-hard-limit", "1MiB", "--max-keys", "0"]);
    let mut c = TestClient::hello(&b.path, Codec::Json, None);
    let big = "x".repeat(5000);
    let entries: Vec<Value> = (0..300)
        .map(|i| json!([format!("{i:03}{big}"), 1]))
        .collect();
    c.request(json!({"t": "mset", "entries": entries}));
    // The plain `keys` reply would pass the reply limit…
    assert_eq!(c.request(json!({"t": "keys"}))["code"], "ETOOBIG");
    // …the shell's `keys` scans instead, and lists them all, sorted.
    let out = expect(at(&b.path, "keys", &[]), 0);
    let listed: Vec<&str> = out.lines().collect();
    assert_eq!(listed.len(), 300);
    assert!(listed.windows(2).all(|w| w[0] < w[1]));
    assert!(listed[7].starts_with("007x"));
    let out = expect(at(&b.path, "keys", &["--prefix", "29", "--limit", "3"]), 0);
    let three: Vec<String> = (290..293).map(|i| format!("{i}{big}")).collect();
    assert_eq!(out, three.join("\n"));
}

#[test]
fn prometheus_reports_cache_hits_and_misses() {
    let b = TestBroker::start(&[]);
    expect(at(&b.path, "set", &["a", "1"]), 0);
    expect(at(&b.path, "get", &["a"]), 0);
    expect(at(&b.path, "get", &["a"]), 0);
    expect(at(&b.path, "get", &["nope"]), 4);
    let text = expect(at(&b.path, "stats", &["--format", "prometheus"]), 0);
    let scrape = parse_prometheus(&text);
    for (name, help, want) in [
        ("procmesh_cache_hits_total", "found a live value", 2.0),
        ("procmesh_cache_misses_total", "found no live value", 1.0),
    ] {
        assert!(
            scrape.docs.get(name).is_some_and(|d| d.contains(help)),
            "HELP of {name}: {:?}",
            scrape.docs.get(name)
        );
        let s = samples(&scrape, name);
        assert_eq!(s.len(), 1, "{name}");
        assert_eq!(counter(s[0]), want, "{name}");
    }
}
