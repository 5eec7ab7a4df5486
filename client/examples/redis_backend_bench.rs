//! Benchmark of the Redis backend against the broker, through the same
//! `Client` API (issue 14).
//!
//! Starts a broker (in this process, on a Unix socket in a temp dir) and a
//! `redis-server` (a child process, on a Unix socket in a temp dir, no
//! persistence), then runs each workload for `--rounds` rounds, alternating the
//! backends round by round so both see the same machine load, and prints the
//! median and the range of the rounds' throughputs as a Markdown table.
//!
//! ```text
//! cargo run --release -p procmesh --features redis --example redis_backend_bench -- \
//!     --rounds 5 --ops 2000
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procmesh::{Client, LockOptions};

struct Args {
    rounds: usize,
    ops: usize,
    threads: usize,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 5,
        ops: 2000,
        threads: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v: usize = it.next().and_then(|v| v.parse().ok()).expect("a number");
        match k.as_str() {
            "--rounds" => a.rounds = v.max(1),
            "--ops" => a.ops = v.max(1),
            "--threads" => a.threads = v.max(1),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// One workload: runs `ops` operations on `c` (with `t` threads where it says so).
type Work = fn(&Client, usize, usize);

fn get(c: &Client, ops: usize, _: usize) {
    c.set("bench:get", &"value-of-some-length-0123456789")
        .unwrap();
    for _ in 0..ops {
        let v: Option<String> = c.get("bench:get").unwrap();
        assert!(v.is_some());
    }
}

fn set(c: &Client, ops: usize, _: usize) {
    for i in 0..ops {
        c.set("bench:set", &i).unwrap();
    }
}

fn incr(c: &Client, ops: usize, _: usize) {
    for _ in 0..ops {
        c.incr("bench:incr", 1).unwrap();
    }
}

fn cas(c: &Client, ops: usize, _: usize) {
    c.set("bench:cas", &0u64).unwrap();
    for i in 0..ops as u64 {
        assert!(c.cas("bench:cas", Some(&i), Some(&(i + 1))).unwrap());
    }
}

fn lock_unlock(c: &Client, ops: usize, _: usize) {
    for _ in 0..ops {
        let g = c.lock("bench:lock", LockOptions::new()).unwrap().unwrap();
        g.unlock().unwrap();
    }
}

fn publish(c: &Client, ops: usize, _: usize) {
    let _s = c.subscribe("bench.ch", |_| {}).unwrap();
    for i in 0..ops {
        c.publish("bench.ch", &i).unwrap();
    }
}

fn call(c: &Client, ops: usize, _: usize) {
    let _r = c
        .register("bench.add", |(a, b): (i64, i64)| Ok(a + b))
        .unwrap();
    for i in 0..ops as i64 {
        let r: i64 = c.call("bench.add", &(i, 1), None).unwrap();
        assert_eq!(r, i + 1);
    }
}

fn get_threads(c: &Client, ops: usize, threads: usize) {
    c.set("bench:get", &"value-of-some-length-0123456789")
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..ops / threads {
                    let _: Option<String> = c.get("bench:get").unwrap();
                }
            });
        }
    });
}

fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = procmesh_broker::Broker::builder()
        .socket(dir.path().join("broker.sock"))
        .start()
        .expect("start broker");
    let sock = dir.path().join("redis.sock");
    let mut redis = Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(&sock)
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server (scripts/ci-install-redis.sh)");
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let b = Client::builder()
        .address(broker.path())
        .auto_spawn(false)
        .connect()
        .expect("connect broker");
    let r = Client::builder()
        .name("bench")
        .redis(format!("redis+unix://{}", sock.display()))
        .connect()
        .expect("connect redis");

    let works: [(&str, Work, usize); 8] = [
        ("get (1 thread)", get, 1),
        ("set (1 thread)", set, 1),
        ("incr (1 thread)", incr, 1),
        ("cas (1 thread)", cas, 1),
        ("lock + unlock (1 thread)", lock_unlock, 1),
        ("publish, 1 subscriber (1 thread)", publish, 1),
        ("call, worker in-process (1 thread)", call, 1),
        ("get (threads)", get_threads, a.threads),
    ];
    println!(
        "| workload | broker ops/s median (min–max) | Redis ops/s median (min–max) | broker / Redis |"
    );
    println!("|---|---|---|---|");
    for (name, work, threads) in works {
        let (mut tb, mut tr) = (Vec::new(), Vec::new());
        // One warm-up round each, then alternate.
        work(&b, a.ops / 10 + 1, threads);
        work(&r, a.ops / 10 + 1, threads);
        for round in 0..a.rounds {
            let order: [(&Client, &mut Vec<f64>); 2] = if round % 2 == 0 {
                [(&b, &mut tb), (&r, &mut tr)]
            } else {
                [(&r, &mut tr), (&b, &mut tb)]
            };
            for (c, out) in order {
                let t = Instant::now();
                work(c, a.ops, threads);
                out.push(a.ops as f64 / t.elapsed().as_secs_f64());
            }
        }
        let (bm, bl, bh) = median_range(tb);
        let (rm, rl, rh) = median_range(tr);
        let name = name.replace("threads", &format!("{threads} threads"));
        println!(
            "| {name} | {bm:.0} ({bl:.0}–{bh:.0}) | {rm:.0} ({rl:.0}–{rh:.0}) | {:.2}× |",
            bm / rm
        );
    }
    drop((b, r));
    let _ = redis.kill();
    let _ = redis.wait();
    drop(broker);
}
