//! The shell commands of the `procmesh` binary (`get`, `set`, `del`, `keys`, `incr`,
//! `cas`, `publish`, `subscribe`, `call`, `lock`): one [`procmesh::Client`] call each,
//! with JSON in and out and the exit codes of `procmesh --help`.
//!
//! They use the client crate's public API only, over JSON (so any value a Node.js or
//! Rust peer stored prints as JSON), and never start a broker: no broker is exit 3.

use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::time::Duration;

use procmesh::{Client, ClientError, Codec, Event, LockOptions};
use serde_json::Value;

use crate::MeshArgs;

/// A negative answer: no such key, not swapped, lock not acquired.
const EXIT_NO: u8 = 4;

/// Why a shell command failed, and its exit code.
enum Failure {
    /// Bad input from the command line (exit 2).
    Usage(String),
    /// A client error (exit 3 when no broker listens, else 1).
    Client(ClientError),
    /// Already reported; exit with this code.
    Exit(ExitCode),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

type Outcome = Result<ExitCode, Failure>;

/// Prints the failure and returns its exit code.
fn finish(r: Outcome) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("procmesh: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Exit(code)) => code,
        Err(Failure::Client(e)) => {
            let code = match e {
                ClientError::Connect { ref path, .. } => {
                    eprintln!("procmesh: no broker is running at {}", path.display());
                    return ExitCode::from(3);
                }
                ClientError::Config(_) => 2,
                _ => 1,
            };
            eprintln!("procmesh: {e}");
            ExitCode::from(code)
        }
    }
}

/// A client for the broker or mesh `m`: JSON codec, no auto-spawn, no reconnect.
fn connect(m: &MeshArgs) -> Result<Client, Failure> {
    let t = &m.target;
    let mut b = Client::builder()
        .name(t.name.clone())
        .codec(Codec::Json)
        .auto_spawn(false)
        .reconnect(false)
        .ping_interval(None);
    let shards = super::resolve_shards(t, m.shards, t.resolve_token().ok().flatten().as_deref())
        .map_err(Failure::Exit)?;
    if let Some(n) = shards {
        b = b.shards(n.into());
    } else {
        b = b.address(t.path());
    }
    if let Some(token) = t.resolve_token().map_err(Failure::Usage)? {
        b = b.token(token);
    }
    Ok(b.connect()?)
}

/// An argument as a value: JSON, or with `raw` the string itself.
fn parse_value(what: &str, text: &str, raw: bool) -> Result<Value, Failure> {
    if raw {
        return Ok(Value::String(text.to_owned()));
    }
    serde_json::from_str(text).map_err(|e| {
        Failure::Usage(format!(
            "{what} `{text}` is not JSON ({e}); quote strings ('\"text\"') or pass --raw"
        ))
    })
}

/// A value as printed: JSON, or with `raw` a string without quotes.
fn show(v: &Value, raw: bool) -> String {
    match v {
        Value::String(s) if raw => s.clone(),
        v => v.to_string(),
    }
}

/// `procmesh get KEY`: the value, or exit 4 when there is none.
pub fn get(m: &MeshArgs, key: &str, raw: bool) -> ExitCode {
    finish((|| {
        let c = connect(m)?;
        match c.get::<Value>(key)? {
            Some(v) => {
                println!("{}", show(&v, raw));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("procmesh: no such key: {key}");
                Ok(ExitCode::from(EXIT_NO))
            }
        }
    })())
}

/// `procmesh set KEY VALUE [--ttl D]`.
pub fn set(m: &MeshArgs, key: &str, value: &str, ttl: Option<Duration>, raw: bool) -> ExitCode {
    finish((|| {
        let v = parse_value("VALUE", value, raw)?;
        let c = connect(m)?;
        match ttl {
            Some(t) => c.set_with_ttl(key, &v, t)?,
            None => c.set(key, &v)?,
        }
        Ok(ExitCode::SUCCESS)
    })())
}

/// `procmesh del KEY`: prints whether it existed.
pub fn del(m: &MeshArgs, key: &str) -> ExitCode {
    finish((|| {
        println!("{}", connect(m)?.del(key)?);
        Ok(ExitCode::SUCCESS)
    })())
}

/// `procmesh keys [--prefix P] [--limit N]`: sorted, one a line (the first N).
pub fn keys(m: &MeshArgs, prefix: Option<&str>, limit: Option<usize>) -> ExitCode {
    finish((|| {
        // Page by page (`scan`): no reply is larger than a page, however many keys
        // the mesh holds; the prefix is matched by the broker. A procmesh-js broker
        // does not know `scan`: plain `keys` there.
        let c = connect(m)?;
        let p = prefix.unwrap_or("");
        let mut keys = match c.keys_with_prefix(p) {
            Err(e) if e.code() == Some(procmesh::ErrorCode::Unknown) => {
                let mut all = c.keys()?;
                all.retain(|k| k.starts_with(p));
                all
            }
            r => r?,
        };
        keys.sort_unstable();
        keys.truncate(limit.unwrap_or(usize::MAX));
        let mut out = String::new();
        for k in &keys {
            out.push_str(k);
            out.push('\n');
        }
        print!("{out}");
        Ok(ExitCode::SUCCESS)
    })())
}

/// `procmesh incr KEY [--by N]`: prints the new value.
pub fn incr(m: &MeshArgs, key: &str, by: i64) -> ExitCode {
    finish((|| {
        println!("{}", connect(m)?.incr(key, by)?);
        Ok(ExitCode::SUCCESS)
    })())
}

/// `procmesh cas KEY PREV NEXT`: prints whether it swapped; exit 4 when not.
pub fn cas(m: &MeshArgs, key: &str, prev: &str, next: &str, raw: bool) -> ExitCode {
    finish((|| {
        let p = parse_value("PREV", prev, raw)?;
        let n = parse_value("NEXT", next, raw)?;
        let c = connect(m)?;
        let swapped = c.cas(
            key,
            (!p.is_null()).then_some(&p),
            (!n.is_null()).then_some(&n),
        )?;
        println!("{swapped}");
        Ok(if swapped {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_NO)
        })
    })())
}

/// `procmesh publish CHANNEL PAYLOAD`: prints the number of receivers.
pub fn publish(m: &MeshArgs, channel: &str, payload: &str, raw: bool) -> ExitCode {
    finish((|| {
        let v = parse_value("PAYLOAD", payload, raw)?;
        println!("{}", connect(m)?.publish(channel, &v)?);
        Ok(ExitCode::SUCCESS)
    })())
}

/// What ends a `subscribe` or interrupts a `lock`.
enum Stop {
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// A shard's connection was lost.
    Lost(String),
}

/// Sends SIGINT/SIGTERM to `tx` from a signal-hook thread.
fn forward_signals(tx: mpsc::Sender<Stop>) -> Result<(), Failure> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|e| {
        Failure::Client(ClientError::Config(format!(
            "cannot install signal handlers: {e}"
        )))
    })?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if tx.send(Stop::Signal(sig)).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// `procmesh subscribe CHANNEL...`: one JSON line per message until a signal; exit 1
/// when the broker goes away.
pub fn subscribe(m: &MeshArgs, channels: &[String]) -> ExitCode {
    finish((|| {
        let c = connect(m)?;
        let (tx, rx) = mpsc::channel();
        forward_signals(tx.clone())?;
        let events = c.events();
        std::thread::spawn(move || {
            for e in events {
                if let Event::Disconnected { path, reason, .. } = e {
                    let _ = tx.send(Stop::Lost(format!("{}: {reason}", path.display())));
                    break;
                }
            }
        });
        let mut subs = Vec::with_capacity(channels.len());
        for ch in channels {
            subs.push(c.subscribe(ch, |msg| {
                use std::io::Write;
                let payload = msg.payload::<Value>().unwrap_or(Value::Null);
                let line = serde_json::json!({"channel": msg.channel(), "payload": payload});
                let mut out = std::io::stdout().lock();
                // A closed stdout (`| head`) is not an error worth a panic.
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            })?);
        }
        eprintln!("procmesh: subscribed to {}", channels.join(" "));
        let stop = rx.recv();
        drop(subs);
        match stop {
            Ok(Stop::Lost(why)) => {
                eprintln!("procmesh: connection lost: {why}");
                Ok(ExitCode::from(1))
            }
            _ => Ok(ExitCode::SUCCESS),
        }
    })())
}

/// `procmesh call NAME [ARGS]`: prints the result.
pub fn call(
    m: &MeshArgs,
    name: &str,
    args: Option<&str>,
    timeout: Option<Duration>,
    raw: bool,
) -> ExitCode {
    finish((|| {
        let a = match args {
            Some(text) => parse_value("ARGS", text, false)?,
            None => Value::Null,
        };
        let c = connect(m)?;
        let r: Value = c.call(name, &a, timeout)?;
        println!("{}", show(&r, raw));
        Ok(ExitCode::SUCCESS)
    })())
}

/// `procmesh lock KEY -- CMD...`: runs CMD while holding the lock, exits with its code.
pub fn lock(m: &MeshArgs, key: &str, ttl: Duration, wait: Duration, cmd: &[String]) -> ExitCode {
    finish((|| {
        let (program, args) = cmd
            .split_first()
            .ok_or_else(|| Failure::Usage("lock needs a command after `--`".into()))?;
        let c = connect(m)?;
        let Some(guard) = c.lock(key, LockOptions::new().ttl(ttl).wait(wait))? else {
            eprintln!("procmesh: lock `{key}` is held elsewhere; not acquired");
            return Ok(ExitCode::from(EXIT_NO));
        };
        // SIGINT/SIGTERM go on to CMD (Ctrl-C reaches it through the terminal anyway);
        // we keep the lock until it has exited. Installed before CMD starts, so a
        // signal in between is queued for CMD rather than killing us alone.
        let (tx, rx) = mpsc::channel();
        forward_signals(tx)?;
        let mut child = match Command::new(program)
            .args(args)
            .env("PROCMESH_LOCK_KEY", key)
            .env("PROCMESH_FENCING_TOKEN", guard.token().0.to_string())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                eprintln!("procmesh: cannot run {program}: {e}");
                drop(guard.unlock());
                return Ok(ExitCode::from(127));
            }
        };
        let pid = child.id() as libc::pid_t;
        std::thread::spawn(move || {
            while let Ok(Stop::Signal(sig)) = rx.recv() {
                // SAFETY: kill(2) takes no pointers; `pid` is the child we spawned. A
                // signal after the main thread reaped it could only race the exit that
                // follows at once.
                unsafe { libc::kill(pid, sig) };
            }
        });
        let status = child.wait().map_err(|e| {
            Failure::Client(ClientError::Config(format!("waiting for {program}: {e}")))
        })?;
        if let Err(e) = guard.unlock() {
            eprintln!("procmesh: warning: unlocking `{key}`: {e}");
        }
        use std::os::unix::process::ExitStatusExt;
        let code = match (status.code(), status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 1,
        };
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
    })())
}
