//! I/O drivers: what feeds the state machine (`core`) from sockets.
//!
//! `io` owns everything that touches the operating system on a client's behalf: the
//! address lock and the listening socket (shared by every driver, here), and per
//! driver the poll or ring, tokens, accept, reads, flushes and the loop order. Today
//! there is one driver, [`epoll`] (mio); an io_uring driver would sit beside it and
//! drive the same `Core` through [`crate::connection::Transport`].

pub mod epoll;

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use mio::net::UnixListener;

pub use epoll::Reactor;

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
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(BindError::AlreadyRunning(socket.to_path_buf()));
        }
        std::fs::remove_file(socket)?;
    }
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
