//! `procmesh serve`: binds the broker, routes SIGINT/SIGTERM into its loop, starts the
//! opt-in metrics endpoint, tells systemd it is ready (`READY=1` to `$NOTIFY_SOCKET`),
//! runs the loop. Logs through `tracing` (the subscriber is installed by `main`): one
//! startup line, one shutdown line (see `procmesh_broker::log`).

use std::net::SocketAddr;
use std::process::ExitCode;

use std::time::Instant;

use procmesh_broker::events::{self, BrokerEvent};
use procmesh_broker::{BindError, BrokerConfig, Reactor, StopReason};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Undelivered events the logging thread may fall behind by before events are dropped.
const EVENT_LOG_CAPACITY: usize = 4096;

/// Runs a broker in the foreground until it is stopped; exit 0 also when another
/// broker already owns the address. With `metrics`, serves `GET /metrics` there.
/// With `debug` enabled every broker event is logged too.
pub fn serve(mut cfg: BrokerConfig, metrics: Option<SocketAddr>) -> ExitCode {
    let started = Instant::now();
    for w in std::mem::take(&mut cfg.warnings) {
        tracing::warn!("{w}");
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
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
            tracing::warn!("cannot log events: {e}");
        }
    }
    let path = cfg.socket.clone();
    let token = cfg.token.clone();
    let persistence = match &cfg.persist {
        Some(p) => format!(
            "persistence on: {}, fsync {}",
            p.dir.display(),
            p.fsync.name()
        ),
        None => "persistence off".to_string(),
    };
    let shard = cfg
        .shard
        .map(|s| format!("; shard {} of {}", s.index, s.count))
        .unwrap_or_default();
    let mut reactor = match Reactor::bind(cfg) {
        Ok(r) => r,
        Err(BindError::AlreadyRunning(p)) => {
            println!("procmesh: a broker already serves {}; exiting", p.display());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            tracing::error!("cannot serve at {}: {e}", path.display());
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
                tracing::error!("cannot watch signals: {e}");
                return ExitCode::from(1);
            }
        }
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    }
    for w in reactor.warnings() {
        tracing::warn!("{w}");
    }
    let endpoint = match metrics {
        Some(addr) => match super::metrics::spawn_endpoint(addr, path.clone(), token) {
            Ok(bound) => Some(bound),
            Err(e) => {
                tracing::error!("cannot serve metrics at {addr}: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let recovered = match reactor.recovered() {
        Some((keys, took)) => format!("; recovered {keys} keys in {} ms", took.as_millis()),
        None => String::new(),
    };
    // The one startup line; scripts (and the tests) wait for "serving at".
    tracing::info!(
        "serving at {} (pid {}; io {}; {persistence}{recovered}{shard})",
        path.display(),
        std::process::id(),
        reactor.backend().name(),
    );
    if let Some(bound) = endpoint {
        tracing::info!("metrics at http://{bound}/metrics");
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
    let uptime = started.elapsed();
    match r {
        Ok(_) => {
            tracing::info!(
                "stopped ({reason}) after {}",
                humantime::format_duration(std::time::Duration::from_millis(
                    uptime.as_millis() as u64
                ))
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(
                "broker loop failed: {e}; stopped after {}",
                humantime::format_duration(std::time::Duration::from_millis(
                    uptime.as_millis() as u64
                ))
            );
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
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}

/// One `debug` line per event (`--log debug`).
fn log_event(ev: &BrokerEvent) {
    match ev {
        BrokerEvent::Connect(c) => tracing::debug!("connect conn={}", c.0),
        BrokerEvent::Disconnect(c) => tracing::debug!("disconnect conn={}", c.0),
        BrokerEvent::Reap(c) => tracing::debug!("reap conn={}", c.0),
        BrokerEvent::Drop { channel, conn } => {
            tracing::debug!("drop channel={channel} conn={}", conn.0)
        }
        BrokerEvent::Stats(s) => tracing::debug!(
            "stats connections={} cacheSize={} ops={} dropped={} reaped={}",
            s.connections,
            s.cache_size,
            s.ops.values().sum::<u64>(),
            s.dropped,
            s.reaped
        ),
        BrokerEvent::PersistError(e) => tracing::debug!("persist-error {e}"),
        other => tracing::debug!("{}", other.name()),
    }
}
