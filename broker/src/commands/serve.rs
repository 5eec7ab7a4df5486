//! `procmesh serve`: binds the broker, routes SIGINT/SIGTERM into its loop, starts the
//! opt-in metrics endpoint, tells systemd it is ready (`READY=1` to `$NOTIFY_SOCKET`),
//! runs the loop.

use std::net::SocketAddr;
use std::process::ExitCode;

use procmesh_broker::config::LogLevel;
use procmesh_broker::events::{self, BrokerEvent};
use procmesh_broker::{BindError, BrokerConfig, Reactor, StopReason};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Undelivered events the logging thread may fall behind by before events are dropped.
const EVENT_LOG_CAPACITY: usize = 4096;

/// Runs a broker in the foreground until it is stopped; exit 0 also when another
/// broker already owns the address. With `metrics`, serves `GET /metrics` there.
/// Persistence errors are logged at every level (by the broker); with
/// `LogLevel::Debug` every broker event is logged too.
pub fn serve(mut cfg: BrokerConfig, metrics: Option<SocketAddr>, log: LogLevel) -> ExitCode {
    for w in std::mem::take(&mut cfg.warnings) {
        eprintln!("procmesh: warning: {w}");
    }
    if log == LogLevel::Debug {
        let (sink, rx) = events::channel(EVENT_LOG_CAPACITY);
        cfg.events = Some(sink);
        // The thread ends when the broker drops its sink (the channel closes).
        let spawned = std::thread::Builder::new()
            .name("procmesh-events".into())
            .spawn(move || {
                for ev in rx {
                    log_event(&ev);
                }
            });
        if let Err(e) = spawned {
            eprintln!("procmesh: warning: cannot log events: {e}");
        }
    }
    let path = cfg.socket.clone();
    let token = cfg.token.clone();
    let mut reactor = match Reactor::bind(cfg) {
        Ok(r) => r,
        Err(BindError::AlreadyRunning(p)) => {
            println!("procmesh: a broker already serves {}; exiting", p.display());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("procmesh: cannot serve at {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    // SIGINT/SIGTERM write to a pipe the loop watches: a clean stop removes the socket.
    // The flag tells a signal from a client's `shutdown` afterwards (both stop the loop
    // the same way).
    let signaled = Arc::new(AtomicBool::new(false));
    let pipe = std::os::unix::net::UnixStream::pair().and_then(|(rx, tx)| {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&signaled))?;
            signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
        }
        rx.set_nonblocking(true)?;
        Ok(rx)
    });
    match pipe {
        Ok(rx) => {
            if let Err(e) = reactor.watch_signals(mio::net::UnixStream::from_std(rx)) {
                eprintln!("procmesh: cannot watch signals: {e}");
                return ExitCode::from(1);
            }
        }
        Err(e) => {
            eprintln!("procmesh: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    }
    for w in reactor.warnings() {
        eprintln!("procmesh: warning: {w}");
    }
    let endpoint = match metrics {
        Some(addr) => match super::metrics::spawn_endpoint(addr, path.clone(), token) {
            Ok(bound) => Some(bound),
            Err(e) => {
                eprintln!("procmesh: cannot serve metrics at {addr}: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    eprintln!(
        "procmesh: serving at {} (pid {})",
        path.display(),
        std::process::id()
    );
    // After the "serving at" line, which scripts (and the tests) wait for first.
    if let Some(bound) = endpoint {
        eprintln!("procmesh: metrics at http://{bound}/metrics");
    }
    notify("READY=1");
    let r = reactor.run();
    let reason = match r {
        _ if signaled.load(Ordering::Relaxed) => "signal",
        Ok(StopReason::IdleTimeout) => "idle timeout",
        Ok(_) => "shutdown request",
        Err(_) => "error",
    };
    // procmesh-launch reads the reason: it restarts a shard that stopped for anything
    // but its idle timeout.
    notify(&format!("STOPPING=1\nSTATUS=stopping: {reason}"));
    match r {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("procmesh: broker loop failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Sends `state` to systemd's notification socket when `$NOTIFY_SOCKET` is set (a
/// path, or `@name` for an abstract socket); failures are reported and otherwise
/// ignored, as sd_notify(3) does.
fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
        let bytes = target.as_encoded_bytes();
        let msg = format!("{state}\nMAINPID={}", std::process::id());
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)
        } else {
            sock.send_to(msg.as_bytes(), &target)
        }
    });
    if let Err(e) = sent {
        eprintln!("procmesh: warning: cannot notify systemd ({state}): {e}");
    }
}

/// One stderr line per event (`--log debug`); a closed stderr is ignored.
fn log_event(ev: &BrokerEvent) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = match ev {
        BrokerEvent::Connect(c) => writeln!(err, "procmesh: debug: connect conn={}", c.0),
        BrokerEvent::Disconnect(c) => writeln!(err, "procmesh: debug: disconnect conn={}", c.0),
        BrokerEvent::Reap(c) => writeln!(err, "procmesh: debug: reap conn={}", c.0),
        BrokerEvent::Drop { channel, conn } => {
            writeln!(
                err,
                "procmesh: debug: drop channel={channel} conn={}",
                conn.0
            )
        }
        BrokerEvent::Stats(s) => writeln!(
            err,
            "procmesh: debug: stats connections={} cacheSize={} ops={} dropped={} reaped={}",
            s.connections,
            s.cache_size,
            s.ops.values().sum::<u64>(),
            s.dropped,
            s.reaped
        ),
        BrokerEvent::PersistError(e) => writeln!(err, "procmesh: debug: persist-error {e}"),
        other => writeln!(err, "procmesh: debug: {}", other.name()),
    };
}
