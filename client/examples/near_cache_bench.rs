//! Near-cache measurements (bench/results/2026-12-01-near-cache.md): the latency of a
//! near-cache hit beside a broker round trip, and the invalidation delay seen by a
//! reader in one process when a writer in another process changes the key.
//!
//! ```text
//! procmesh serve --socket /tmp/near.sock --heartbeat 0 &
//! cargo run --release -p procmesh --example near_cache_bench -- /tmp/near.sock
//! ```
//!
//! Invalidation delay: the writer process stores `(i, t_send)` (`t_send`: wall-clock
//! ns just before the `set` is written) every `GAP`; the reader process spins on a
//! cached `get` (a local hit until the invalidation is applied, then one broker read)
//! and records `t_seen - t_send` for each new `i`. That is the writer's `set` round
//! trip plus the `inv` delivery plus the reader's detection; the writer's own `set`
//! round trip is printed beside it, so the share after the acknowledgement shows.
//! Both clocks are the same machine's `CLOCK_REALTIME`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procmesh::{Client, Codec};

const HITS: usize = 200_000;
const TRIPS: usize = 20_000;
const WRITES: usize = 2_000;
const GAP: Duration = Duration::from_millis(2);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

fn connect(path: &Path, near: bool) -> Client {
    let mut b = Client::builder()
        .address(path)
        .codec(Codec::MsgPack)
        .auto_spawn(false);
    if near {
        b = b.near_cache(10_000);
    }
    b.connect().expect("connect to the broker")
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64;
    println!(
        "| {what} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        ns.len(),
        mean / 1000.0,
        pct(&ns, 0.5) as f64 / 1000.0,
        pct(&ns, 0.99) as f64 / 1000.0,
        pct(&ns, 0.999) as f64 / 1000.0,
    );
}

fn writer(path: &Path) {
    let c = connect(path, false);
    let mut trips = Vec::with_capacity(WRITES);
    for i in 1..=WRITES as u64 {
        std::thread::sleep(GAP);
        let t = now_ns();
        let t0 = Instant::now();
        c.set("bench:inv", &(i, t)).expect("set");
        trips.push(t0.elapsed().as_nanos() as u64);
    }
    report("writer: `set` round trip (other process)", trips);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().expect("usage: near_cache_bench SOCKET"));
    if args.next().as_deref() == Some("writer") {
        return writer(&path);
    }
    println!("| what | n | mean µs | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|---|");
    let near = connect(&path, true);
    let plain = connect(&path, false);
    near.set("bench:k", &"a value of some thirty bytes..")
        .unwrap();
    let _: Option<String> = near.get("bench:k").unwrap();
    let mut hits = Vec::with_capacity(HITS);
    for _ in 0..HITS {
        let t0 = Instant::now();
        let v: Option<String> = near.get("bench:k").unwrap();
        hits.push(t0.elapsed().as_nanos() as u64);
        assert!(v.is_some());
    }
    let s = near.near_cache_stats().unwrap();
    assert!(s.hits >= HITS as u64, "every read was a hit: {s:?}");
    report("`get`, near-cache hit", hits);
    let mut trips = Vec::with_capacity(TRIPS);
    for _ in 0..TRIPS {
        let t0 = Instant::now();
        let v: Option<String> = plain.get("bench:k").unwrap();
        trips.push(t0.elapsed().as_nanos() as u64);
        assert!(v.is_some());
    }
    report("`get`, broker round trip (no near cache)", trips);

    // Invalidation delay, writer in another process.
    near.set("bench:inv", &(0u64, 0u64)).unwrap();
    let _: Option<(u64, u64)> = near.get("bench:inv").unwrap();
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .arg(&path)
        .arg("writer")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the writer process");
    let mut seen = 0u64;
    let mut delays = Vec::with_capacity(WRITES);
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < WRITES as u64 && Instant::now() < deadline {
        let (i, t): (u64, u64) = near.get("bench:inv").unwrap().expect("value");
        if i != seen {
            delays.push(now_ns().saturating_sub(t));
            seen = i;
        } else {
            std::thread::yield_now();
        }
    }
    let out = child.wait_with_output().expect("writer exits");
    assert!(out.status.success(), "writer failed");
    report(
        "invalidation delay: writer's `set` sent → reader sees the new value",
        delays,
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\nnear cache: {:?}", near.near_cache_stats().unwrap());
}
