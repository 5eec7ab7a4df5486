//! A plain tokio service whose instances share a cache and a counter through
//! procmesh (`procmesh::aio`).
//!
//! ```text
//! cargo run -p procmesh --example aio_service --features tokio
//! ```
//!
//! Starts a broker inside this process on a temporary socket, then two
//! "instances" of a tiny HTTP service (each its own `aio::Client`, as two
//! processes would have) on local ports. Every request bumps the shared
//! counter `hits`; a page is rendered once and then served from the shared
//! cache by either instance. The example sends a few requests to both and exits.

use std::time::Duration;

use procmesh::aio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let broker = procmesh_broker::Broker::builder()
        .socket(dir.path().join("service.sock"))
        .start()?;
    let mut ports = Vec::new();
    for instance in ["a", "b"] {
        let client = aio::Client::builder()
            .address(broker.path())
            .connect_async()
            .await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port());
        tokio::spawn(serve(listener, client, instance));
    }
    for (i, path) in ["/", "/about", "/about", "/", "/"].iter().enumerate() {
        let port = ports[i % 2];
        let body = get(port, path).await?;
        println!("GET {path} on port {port}: {body}");
    }
    Ok(())
}

/// Serves each connection on its own task; all tasks share one client.
async fn serve(listener: TcpListener, client: aio::Client, instance: &'static str) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(sock, &client, instance).await {
                eprintln!("instance {instance}: {e}");
            }
        });
    }
}

async fn handle(
    mut sock: TcpStream,
    client: &aio::Client,
    instance: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut buf = vec![0u8; 4096];
    let n = sock.read(&mut buf).await?;
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let hits = client.incr("hits", 1).await?;
    let key = format!("page:{path}");
    let (page, how) = match client.get::<String>(&key).await? {
        Some(p) => (p, "cached"),
        None => {
            let p = format!("<h1>{path}</h1> rendered by instance {instance}");
            client
                .set_with_ttl(&key, &p, Duration::from_secs(60))
                .await?;
            (p, "rendered")
        }
    };
    let body = format!("{page} ({how} for instance {instance}, hit #{hits})");
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    Ok(())
}

async fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}
