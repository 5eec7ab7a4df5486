//! procmesh in two processes: a shared value, a counter, a pub/sub message, an
//! RPC call and a lock.
//!
//! ```text
//! cargo run -p procmesh --example quickstart
//! ```
//!
//! The first process connects to the mesh `quickstart` (starting a broker if
//! none runs: the `procmesh` binary when it has been built, else one embedded
//! in this process), serves the procedure `greet`, subscribes to `chat.*`, and
//! starts a second process: this same program with the argument `child`.

use std::process::Command;
use std::sync::mpsc::channel;
use std::sync::Mutex;
use std::time::Duration;

use procmesh::{Client, ClientError, LockOptions};
use serde::{Deserialize, Serialize};

const MESH: &str = "quickstart";

#[derive(Debug, Serialize, Deserialize)]
struct Config {
    greeting: String,
    max_users: u32,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("child") {
        return child();
    }
    // Keeps an embedded broker alive for the whole run, when one was needed.
    let (client, _embedded) = connect()?;
    let me = std::process::id();

    client.set(
        "config",
        &Config {
            greeting: "hello".into(),
            max_users: 10,
        },
    )?;
    client.set("visits", &0)?;
    let _greet = client.register("greet", move |name: String| {
        Ok(format!("hello {name}, from process {me}"))
    })?;

    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let _chat = client.subscribe("chat.*", move |msg| {
        let text: String = msg.payload().unwrap_or_default();
        let _ = tx.lock().map(|t| t.send((msg.channel().to_owned(), text)));
    })?;

    println!("[parent {me}] stored a config, serving `greet`, subscribed to chat.*; starting a child process");
    let status = Command::new(std::env::current_exe()?)
        .arg("child")
        .status()?;
    if !status.success() {
        return Err(format!("child failed: {status}").into());
    }

    let (channel, text) = rx.recv_timeout(Duration::from_secs(10))?;
    println!("[parent {me}] message on {channel}: {text}");
    println!(
        "[parent {me}] visits counted by the child: {:?}",
        client.get::<i64>("visits")?
    );
    println!(
        "[parent {me}] the child wrote under the lock: {:?}",
        client.get::<String>("report")?
    );
    Ok(())
}

fn child() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::builder().name(MESH).connect()?;
    let me = std::process::id();

    let cfg: Option<Config> = client.get("config")?;
    println!("[child {me}] config from the parent: {cfg:?}");
    let visits = client.incr("visits", 1)?;
    println!("[child {me}] visits is now {visits}");

    let reply: String = client.call("greet", &"child", None)?;
    println!("[child {me}] greet returned: {reply}");

    // Writes through the lock context are fenced: refused if the lock was lost.
    let token = client.with_lock(
        "report-lock",
        LockOptions::new().wait(Duration::from_secs(5)),
        |ctx| {
            ctx.set(
                "report",
                &format!("written by {me} with token {}", ctx.token()),
            )?;
            Ok::<_, ClientError>(ctx.token())
        },
    )?;
    println!("[child {me}] wrote `report` holding the lock (token {token})");

    let delivered = client.publish("chat.general", &format!("hi from process {me}"))?;
    println!("[child {me}] published to chat.general ({delivered} subscriber connection)");
    Ok(())
}

/// Connects, auto-spawning the `procmesh` broker; when its binary has not been
/// built (a fresh checkout), runs a broker inside this process instead.
fn connect() -> Result<(Client, Option<procmesh_broker::BrokerHandle>), Box<dyn std::error::Error>>
{
    match Client::builder().name(MESH).connect() {
        Ok(c) => Ok((c, None)),
        Err(ClientError::BrokerNotFound { .. }) => {
            println!("(no `procmesh` binary built yet: running the broker inside this process)");
            let handle = procmesh_broker::Broker::builder().name(MESH).start()?;
            Ok((
                Client::builder().name(MESH).auto_spawn(false).connect()?,
                Some(handle),
            ))
        }
        Err(e) => Err(e.into()),
    }
}
