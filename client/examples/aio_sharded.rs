//! A sharded mesh with the async client: keys spread over three brokers by
//! FNV-1a, a pipeline that writes to every shard in one write each, and a
//! wildcard subscription that hears every shard.
//!
//! ```text
//! cargo run -p procmesh --example aio_sharded --features tokio
//! ```

use futures_util::StreamExt;
use procmesh::aio;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let brokers = (0..3)
        .map(|i| {
            procmesh_broker::Broker::builder()
                .socket(dir.path().join(format!("shard{i}.sock")))
                .start()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = aio::Client::builder()
        .addresses(brokers.iter().map(|b| b.path().to_owned()))
        .connect_async()
        .await?;
    let mut events = client.subscribe("orders.*").await?;

    // One pipeline: each shard gets its commands in one write.
    let mut p = client.pipeline();
    for i in 0..12 {
        p = p.set(&format!("order:{i}"), &i).ignore();
    }
    p = p.incr("orders:total", 12);
    let (total,): (i64,) = p.query().await?;
    println!("stored 12 orders, total {total}");

    let stats = client.stats().await?;
    for (i, s) in stats.shards.iter().enumerate() {
        println!("shard {i}: {} keys", s.cache_size);
    }
    for i in [0, 5, 11] {
        let k = format!("order:{i}");
        println!("{k} lives on {}", client.shard_of(&k));
    }

    for ch in ["orders.created", "orders.paid", "orders.shipped"] {
        client
            .publish(ch, &format!("{ch} on {}", client.shard_of(ch)))
            .await?;
    }
    for _ in 0..3 {
        let m = events.next().await.expect("a message");
        println!("heard {}: {}", m.channel(), m.payload::<String>()?);
    }
    Ok(())
}
