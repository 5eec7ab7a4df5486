//! I/O drivers: what feeds the state machine (`core`) from sockets.
//!
//! `io` owns everything that touches the operating system on a client's behalf: the
//! address lock and the listening socket (shared by every driver, here), the choice
//! of driver ([`Reactor::bind`] on [`IoBackend`]), and per driver the poll or ring,
//! tokens, accept, reads, flushes and the loop order. Two drivers drive the same
//! `Core` through [`crate::connection::Transport`]: [`uring`] (io_uring, the default
//! where the kernel allows it) and [`epoll`] (mio, the fallback).

pub mod epoll;
pub mod uring;

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use mio::net::{UnixListener, UnixStream};

use crate::config::{BrokerConfig, IoBackend};

/// A bound broker on the chosen driver, ready to run its loop on the calling thread.
pub enum Reactor {
    /// The io_uring driver.
    Uring(Box<uring::Reactor>),
    /// The mio (epoll) driver.
    Epoll(Box<epoll::Reactor>),
}

impl Reactor {
    /// Picks the driver `cfg.io` asks for (`auto`: io_uring when the kernel allows
    /// it, else epoll with one log line saying why; `uring` where it is refused is
    /// an error), then binds the socket of `cfg` and prepares the loop.
    pub fn bind(mut cfg: BrokerConfig) -> Result<Reactor, BindError> {
        let ring = match cfg.io {
            IoBackend::Epoll => None,
            IoBackend::Uring => Some(uring::probe().map_err(|why| {
                BindError::Io(io::Error::other(format!(
                    "io_uring was asked for (--io uring) but is refused: {why}"
                )))
            })?),
            IoBackend::Auto => match uring::probe() {
                Ok(ring) => Some(ring),
                Err(why) => {
                    tracing::info!("io_uring unavailable ({why}); using epoll");
                    None
                }
            },
        };
        if let Some(ring) = ring {
            Ok(Reactor::Uring(Box::new(uring::Reactor::bind(cfg, ring)?)))
        } else {
            cfg.io = IoBackend::Epoll;
            Ok(Reactor::Epoll(Box::new(epoll::Reactor::bind(cfg)?)))
        }
    }

    /// The running backend: [`IoBackend::Uring`] or [`IoBackend::Epoll`].
    pub fn backend(&self) -> IoBackend {
        match self {
            Reactor::Uring(_) => IoBackend::Uring,
            Reactor::Epoll(_) => IoBackend::Epoll,
        }
    }

    /// Notes from recovery (torn log tails cut, repairs) for the operator.
    pub fn warnings(&self) -> &[String] {
        match self {
            Reactor::Uring(r) => r.warnings(),
            Reactor::Epoll(r) => r.warnings(),
        }
    }

    /// Keys recovered from persistence and the time recovery took (`None` without
    /// persistence).
    pub fn recovered(&self) -> Option<(usize, std::time::Duration)> {
        match self {
            Reactor::Uring(r) => r.recovered(),
            Reactor::Epoll(r) => r.recovered(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        match self {
            Reactor::Uring(r) => r.socket(),
            Reactor::Epoll(r) => r.socket(),
        }
    }

    /// A flag and waker that stop the loop from another thread.
    pub fn stopper(&self) -> (Arc<AtomicBool>, Arc<mio::Waker>) {
        match self {
            Reactor::Uring(r) => r.stopper(),
            Reactor::Epoll(r) => r.stopper(),
        }
    }

    /// Watches a stream whose readability means "shut down" (the binary's signal pipe).
    pub fn watch_signals(&mut self, stream: UnixStream) -> io::Result<()> {
        match self {
            Reactor::Uring(r) => r.watch_signals(stream),
            Reactor::Epoll(r) => r.watch_signals(stream),
        }
    }

    /// Runs until `shutdown`, a stop request, a signal, or the idle timeout; says which.
    pub fn run(self) -> io::Result<StopReason> {
        match self {
            Reactor::Uring(r) => r.run(),
            Reactor::Epoll(r) => r.run(),
        }
    }
}

/// Why a broker's loop stopped (the driver cannot tell a signal from a `shutdown`
/// request: both raise the same flag; the binary knows whether it caught a signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// A client's `shutdown`, a signal, or [`crate::BrokerHandle::shutdown`].
    Requested,
    /// No connection for the idle timeout.
    IdleTimeout,
}

/// Why a broker could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum BindError {
    /// A live broker already serves the address (it answered a connect, or holds the
    /// address lock). Auto-spawn races rely on the loser exiting quietly.
    AlreadyRunning(PathBuf),
    /// The persistence directory could not be recovered (the message names the file
    /// and offset) or is in use.
    Recovery(String),
    /// Anything else.
    Io(io::Error),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::AlreadyRunning(p) => {
                write!(f, "a broker is already serving {}", p.display())
            }
            BindError::Recovery(m) => write!(f, "{m}"),
            BindError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BindError {}

impl From<io::Error> for BindError {
    fn from(e: io::Error) -> Self {
        BindError::Io(e)
    }
}

/// The address lock: `<socket>.lock`, held (flock) for the broker's lifetime.
pub(crate) struct AddressLock {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn acquire_lock(socket: &Path) -> Result<AddressLock, BindError> {
    let path = lock_path(socket);
    loop {
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(BindError::AlreadyRunning(socket.to_path_buf()));
            }
            return Err(e.into());
        }
        // The previous owner may have unlinked the file between our open and flock:
        // then we locked an orphan and must retry on the new file.
        match std::fs::metadata(&path) {
            Ok(m) if m.ino() == file.metadata()?.ino() && m.dev() == file.metadata()?.dev() => {
                return Ok(AddressLock { file, path });
            }
            _ => continue,
        }
    }
}

/// Takes the address lock (creating the socket's directory if needed).
pub(crate) fn lock_address(socket: &Path) -> Result<AddressLock, BindError> {
    if let Some(dir) = socket.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)?;
        }
    }
    acquire_lock(socket)
}

/// Binds the socket (with the address lock held): replaces a stale socket file,
/// refuses when a live broker answers, and restricts the socket to its owner (0600).
pub(crate) fn bind(socket: &Path) -> Result<UnixListener, BindError> {
    if socket.exists() {
        // A broker that does not use our lock (the Node.js one) may be alive.
        if let Ok(s) = std::os::unix::net::UnixStream::connect(socket) {
            if listener_alive(&s) {
                return Err(BindError::AlreadyRunning(socket.to_path_buf()));
            }
        }
        std::fs::remove_file(socket)?;
    }
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Whether the process that listens behind `s` is alive. A broker killed while its
/// io_uring still held an accept keeps its listener open until the kernel has torn
/// the ring down (shortly after the process died), so a connect can succeed to a dead
/// broker: its listener's owner (`SO_PEERCRED`) tells. Unknown owners count as alive.
fn listener_alive(s: &std::os::unix::net::UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred we own.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 || cred.pid <= 0 {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{}/stat", cred.pid)) {
        // The state follows the parenthesised command name: Z (zombie) and X (dead)
        // no longer serve.
        Ok(stat) => !matches!(
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}
