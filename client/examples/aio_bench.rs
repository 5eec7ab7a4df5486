//! Throughput of the async client beside the blocking one, on one broker.
//!
//! ```text
//! cargo run --release -p procmesh --example aio_bench --features tokio -- [ROUNDS] [OPS] [CONCURRENCY]
//! ```
//!
//! Starts a broker inside this process (its own thread, on a temporary socket)
//! and measures `get` throughput over one shared connection, in ROUNDS rounds
//! (default 5) of OPS requests (default 200000) each:
//! - `blocking`: CONCURRENCY threads (default 64) on one `Client`;
//! - `aio`: CONCURRENCY tasks on a multi-threaded tokio runtime (2 workers) on one
//!   `aio::Client`;
//! - `blocking-pipeline` / `aio-pipeline`: the same, in pipelines of 64 `get`s.
//!
//! Prints the median and the range (min–max) of each mode's rounds; the modes
//! alternate within each round, so a loaded machine slows them alike.

use std::sync::Arc;
use std::time::Instant;

use procmesh::{aio, Client};

const PIPELINE: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let ops: usize = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let conc: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let broker = procmesh_broker::Broker::builder()
        .socket(dir.path().join("bench.sock"))
        .heartbeat(None)
        .start()?;
    let client = Client::builder()
        .address(broker.path())
        .auto_spawn(false)
        .connect()?;
    client.set("k", &"a small value")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let aclient = aio::Client::from(client.clone());

    let modes = ["blocking", "aio", "blocking-pipeline", "aio-pipeline"];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        for (m, mode) in modes.iter().enumerate() {
            let t0 = Instant::now();
            match *mode {
                "blocking" => blocking(&client, ops, conc, 1),
                "aio" => rt.block_on(tasks(&aclient, ops, conc, 1)),
                "blocking-pipeline" => blocking(&client, ops, conc, PIPELINE),
                _ => rt.block_on(tasks(&aclient, ops, conc, PIPELINE)),
            }
            let rate = ops as f64 / t0.elapsed().as_secs_f64();
            results[m].push(rate);
            eprintln!("round {round} {mode}: {rate:.0} ops/s");
        }
    }
    println!("| mode | median ops/s | range (min–max) |");
    println!("|---|---:|---:|");
    for (m, mode) in modes.iter().enumerate() {
        let r = &mut results[m];
        r.sort_by(f64::total_cmp);
        println!(
            "| {mode} | {:.0} | {:.0}–{:.0} |",
            r[r.len() / 2],
            r[0],
            r[r.len() - 1]
        );
    }
    Ok(())
}

/// `ops` gets from `conc` threads, `batch` per round trip.
fn blocking(client: &Client, ops: usize, conc: usize, batch: usize) {
    let per = ops / conc / batch;
    std::thread::scope(|s| {
        for _ in 0..conc {
            s.spawn(|| {
                for _ in 0..per {
                    if batch == 1 {
                        let _: Option<String> = client.get("k").expect("get");
                    } else {
                        let mut p = client.pipeline();
                        for _ in 0..batch {
                            p = p.get("k");
                        }
                        let r = p.run().expect("pipeline");
                        assert_eq!(r.len(), batch);
                    }
                }
            });
        }
    });
}

/// `ops` gets from `conc` tasks, `batch` per round trip.
async fn tasks(client: &aio::Client, ops: usize, conc: usize, batch: usize) {
    let per = ops / conc / batch;
    let client = Arc::new(client.clone());
    let mut handles = Vec::with_capacity(conc);
    for _ in 0..conc {
        let c = client.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..per {
                if batch == 1 {
                    let _: Option<String> = c.get("k").await.expect("get");
                } else {
                    let mut p = c.pipeline();
                    for _ in 0..batch {
                        p = p.get("k");
                    }
                    let r = p.run().await.expect("pipeline");
                    assert_eq!(r.len(), batch);
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
}
