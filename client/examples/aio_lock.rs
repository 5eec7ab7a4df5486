//! A fenced lock with the async client: a holder that stalls past its lease
//! loses the lock, and its late write is refused (`EFENCED`) instead of
//! overwriting the new holder's.
//!
//! ```text
//! cargo run -p procmesh --example aio_lock --features tokio
//! ```

use std::time::Duration;

use procmesh::{aio, ErrorCode, LockOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let broker = procmesh_broker::Broker::builder()
        .socket(dir.path().join("lock.sock"))
        .start()?;
    let a = aio::Client::builder()
        .address(broker.path())
        .connect_async()
        .await?;
    let b = aio::Client::builder()
        .address(broker.path())
        .connect_async()
        .await?;

    let lease = LockOptions::new().ttl(Duration::from_millis(200));
    let slow = a.lock("report", lease).await?.expect("the lock is free");
    println!("A holds `report` with token {}", slow.token());
    slow.set("report:owner", &"A").await?;

    // B waits in line; A's lease runs out while A is "paused".
    let wait = lease.wait(Duration::from_secs(5));
    let fast = b
        .lock("report", wait)
        .await?
        .expect("granted after A's lease");
    println!("B holds `report` with token {}", fast.token());
    fast.set("report:owner", &"B").await?;

    // A wakes up and writes with its old token: refused.
    match slow.set("report:owner", &"A (late)").await {
        Err(e) if e.code() == Some(ErrorCode::Fenced) => println!("A's late write: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    let owner: Option<String> = b.get("report:owner").await?;
    println!("report:owner = {owner:?}");
    fast.unlock().await?;
    Ok(())
}
