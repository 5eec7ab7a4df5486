//! A worker pool over RPC with the async client: several workers serve one
//! procedure and the broker spreads concurrent calls over them.
//!
//! ```text
//! cargo run -p procmesh --example aio_workers --features tokio
//! ```
//!
//! Starts a broker inside this process on a temporary socket and three workers
//! (each its own client, as separate processes would be) that register
//! `thumbnail`; then a caller issues 12 calls at once from 12 tasks and prints
//! which worker answered each.

use std::time::Duration;

use procmesh::aio;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Job {
    image: String,
    width: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let broker = procmesh_broker::Broker::builder()
        .socket(dir.path().join("workers.sock"))
        .start()?;
    let connect = || {
        aio::Client::builder()
            .address(broker.path())
            .handler_threads(2)
            .connect_async()
    };
    let mut workers = Vec::new();
    for w in 0..3 {
        let client = connect().await?;
        // Handlers run on the client's handler threads, not on the runtime.
        let reg = client
            .register("thumbnail", move |job: Job| {
                std::thread::sleep(Duration::from_millis(20)); // the "work"
                Ok(format!("{}@{}px by worker {w}", job.image, job.width))
            })
            .await?;
        workers.push((client, reg));
    }
    let caller = connect().await?;
    let mut calls = Vec::new();
    for i in 0..12 {
        let caller = caller.clone();
        calls.push(tokio::spawn(async move {
            let job = Job {
                image: format!("img{i}.png"),
                width: 128,
            };
            caller
                .call::<_, String>("thumbnail", &job, Some(Duration::from_secs(5)))
                .await
        }));
    }
    for c in calls {
        println!("{}", c.await??);
    }
    Ok(())
}
