//! `procmesh serve`: binds the broker, routes SIGINT/SIGTERM into its loop, runs it.

use std::process::ExitCode;

use procmesh_broker::{BindError, BrokerConfig, Reactor};

/// Runs a broker in the foreground until it is stopped; exit 0 also when another
/// broker already owns the address.
pub fn serve(cfg: BrokerConfig) -> ExitCode {
    let path = cfg.socket.clone();
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
    let pipe = std::os::unix::net::UnixStream::pair().and_then(|(rx, tx)| {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
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
    eprintln!(
        "procmesh: serving at {} (pid {})",
        path.display(),
        std::process::id()
    );
    match reactor.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("procmesh: broker loop failed: {e}");
            ExitCode::from(1)
        }
    }
}
