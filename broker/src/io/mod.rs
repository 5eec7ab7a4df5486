//! I/O drivers: what feeds the state machine (`core`) from sockets.
//!
//! `io` owns everything that touches the operating system on a client's behalf: the
//! address lock and the listening socket (shared by every driver, here), the choice
//! of driver ([`Reactor::bind`] on [`IoBackend`]), and per driver the poll or ring,
//! tokens, accept, reads, flushes and the loop order. Two drivers drive the same
//! `Core` through [`crate::connection::Transport`]: [`uring`] (io_uring, the default
//! where the kernel allows it) and [`epoll`] (mio, the fallback).

mod common;
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

/// Bytes read from one connection per wake (epoll), or the unread input at which a
/// connection the core is behind on stops receiving (io_uring), before others get a
/// turn. Before `hello` the core's smaller pre-auth budget applies
/// ([`crate::core::Core::read_budget`]).
pub(crate) const READ_BUDGET: usize = 1 << 20;

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
        let ring = match (cfg.io, cfg.sqpoll) {
            (IoBackend::Epoll, Some(_)) => {
                return Err(BindError::Io(io::Error::other(
                    "--sqpoll (ioSqpoll) is an io_uring mode: it cannot run with --io epoll",
                )))
            }
            (IoBackend::Epoll, None) => None,
            // SQPOLL is only ever asked for: refused is an error, as with `--io uring`.
            (_, Some(idle)) => Some(uring::probe(Some(idle)).map_err(|why| {
                BindError::Io(io::Error::other(format!(
                    "io_uring SQPOLL was asked for (--sqpoll) but is refused: {why}"
                )))
            })?),
            (IoBackend::Uring, None) => Some(uring::probe(None).map_err(|why| {
                BindError::Io(io::Error::other(format!(
                    "io_uring was asked for (--io uring) but is refused: {why}"
                )))
            })?),
            (IoBackend::Auto, None) => match uring::probe(None) {
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

    fn base(&self) -> &common::Base {
        match self {
            Reactor::Uring(r) => &r.base,
            Reactor::Epoll(r) => &r.base,
        }
    }

    /// Notes from recovery (torn log tails cut, repairs) for the operator.
    pub fn warnings(&self) -> &[String] {
        self.base().warnings()
    }

    /// Keys recovered from persistence and the time recovery took (`None` without
    /// persistence).
    pub fn recovered(&self) -> Option<(usize, std::time::Duration)> {
        self.base().recovered()
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        self.base().socket()
    }

    /// A flag and waker that stop the loop from another thread.
    pub fn stopper(&self) -> (Arc<AtomicBool>, Arc<mio::Waker>) {
        self.base().stopper()
    }

    /// Watches a stream whose readability means "shut down" (the binary's signal pipe).
    pub fn watch_signals(&mut self, stream: UnixStream) -> io::Result<()> {
        match self {
            Reactor::Uring(r) => r.base.watch_signals(stream),
            Reactor::Epoll(r) => r.base.watch_signals(stream),
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
    /// The address lock is held but nothing serves the address (within
    /// [`LOCK_HELD_GRACE`]): a stuck broker, or a process that took the lock to keep
    /// brokers out. The message names the lock, the holder when known, and what to do.
    LockHeld(String),
    /// Something not ours sits at the socket or lock path (a symbolic link, a file that
    /// is not a socket, a file owned by another user): the broker neither follows nor
    /// removes it. The message names the path and what to do.
    Unsafe(String),
    /// Anything else.
    Io(io::Error),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::AlreadyRunning(p) => {
                write!(f, "a broker is already serving {}", p.display())
            }
            BindError::Recovery(m) | BindError::LockHeld(m) | BindError::Unsafe(m) => {
                write!(f, "{m}")
            }
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

/// How long a broker whose address lock is held waits for the holder to start
/// serving before it fails with [`BindError::LockHeld`] (a broker that just took the
/// lock, e.g. the winner of a spawn race, binds within it unless recovering a large
/// log).
pub const LOCK_HELD_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens (creating, 0600) the lock file at `path` without following a symbolic link,
/// close-on-exec, and checks that it is a regular file of ours.
fn open_lock_file(path: &Path) -> Result<File, BindError> {
    let opened = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(BindError::Unsafe(format!(
                "the lock path {} is a symbolic link; the broker does not follow links there \
                 (one planted in a shared directory could redirect it): remove it, or choose \
                 another --socket (or $TMPDIR, $PROCMESH_SOCKET)",
                path.display()
            )))
        }
        Err(e) => {
            return Err(BindError::Io(io::Error::new(
                e.kind(),
                format!("cannot open the lock file {}: {e}", path.display()),
            )))
        }
    };
    let m = file.metadata()?;
    if !m.file_type().is_file() {
        return Err(BindError::Unsafe(format!(
            "the lock path {} is not a regular file: remove it, or choose another --socket",
            path.display()
        )));
    }
    if let Some(why) = foreign_owner("lock file", path, m.uid(), current_uid()) {
        return Err(BindError::Unsafe(why));
    }
    Ok(file)
}

/// This process's effective uid.
pub(crate) fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why a file at `path` owned by `owner` is not ours to use (`None`: it is `ours`).
/// The seam of the owner check (a file of another uid is hard to make in a test).
pub(crate) fn foreign_owner(what: &str, path: &Path, owner: u32, ours: u32) -> Option<String> {
    (owner != ours).then(|| {
        format!(
            "the {what} {} belongs to uid {owner}, not to this broker's uid {ours} (someone \
             may have planted it in a shared directory): remove it as its owner or root, or \
             choose another --socket (or $TMPDIR, $PROCMESH_SOCKET)",
            path.display()
        )
    })
}

/// Whether a live broker answers at `socket`.
fn serving(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok_and(|s| listener_alive(&s))
}

/// The pid holding a `flock` on the file with inode `ino`, from `/proc/locks`.
fn flock_holder(ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (blocked waiters have "->")
        let (kind, pid, dev_ino) = (f.get(1)?, f.get(4)?, f.get(5)?);
        (*kind == "FLOCK" && dev_ino.rsplit(':').next()?.parse::<u64>().ok()? == ino)
            .then(|| pid.parse().ok())
            .flatten()
    })
}

fn acquire_lock(socket: &Path) -> Result<AddressLock, BindError> {
    let path = lock_path(socket);
    loop {
        let file = open_lock_file(&path)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(lock_held(socket, &path, &file));
            }
            return Err(e.into());
        }
        // The previous owner may have unlinked the file between our open and flock:
        // then we locked an orphan and must retry on the new file.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.ino() == file.metadata()?.ino() && m.dev() == file.metadata()?.dev() => {
                return Ok(AddressLock { file, path });
            }
            _ => continue,
        }
    }
}

/// The lock at `path` is held: a live broker at `socket` (now, or within
/// [`LOCK_HELD_GRACE`]) makes it [`BindError::AlreadyRunning`] (the quiet exit of a
/// spawn race's loser); else [`BindError::LockHeld`], naming the holder.
#[cold]
fn lock_held(socket: &Path, path: &Path, file: &File) -> BindError {
    let deadline = std::time::Instant::now() + LOCK_HELD_GRACE;
    loop {
        if serving(socket) {
            return BindError::AlreadyRunning(socket.to_path_buf());
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let holder = file
        .metadata()
        .ok()
        .and_then(|m| flock_holder(m.ino()))
        .map_or_else(
            || "another process".to_string(),
            |pid| format!("process {pid}"),
        );
    BindError::LockHeld(format!(
        "the address lock {} is held by {holder}, but nothing serves {} (waited {} s): \
         stop that process, or choose another --socket",
        path.display(),
        socket.display(),
        LOCK_HELD_GRACE.as_secs()
    ))
}

/// Takes the address lock (creating the socket's directory, 0700, if needed).
pub(crate) fn lock_address(socket: &Path) -> Result<AddressLock, BindError> {
    if let Some(dir) = socket.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    acquire_lock(socket)
}

/// Binds the socket (with the address lock held): replaces a stale socket file,
/// refuses when a live broker answers, and restricts the socket to its owner (0600).
pub(crate) fn bind(socket: &Path) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(socket) {
        // Only a socket of ours is probed and replaced; anything else is left alone.
        let kind = m.file_type();
        if !kind.is_socket() {
            let what = if kind.is_symlink() {
                "a symbolic link"
            } else if kind.is_dir() {
                "a directory"
            } else {
                "a file that is not a socket"
            };
            return Err(BindError::Unsafe(format!(
                "{} is {what}; the broker neither follows nor removes it: remove it \
                 yourself, or choose another --socket (or $TMPDIR, $PROCMESH_SOCKET)",
                socket.display()
            )));
        }
        if let Some(why) = foreign_owner("socket", socket, m.uid(), current_uid()) {
            return Err(BindError::Unsafe(why));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_another_uid_is_refused_naming_the_path_and_both_uids() {
        let p = Path::new("/tmp/procmesh-default.sock.lock");
        assert_eq!(foreign_owner("lock file", p, 1000, 1000), None);
        let why = foreign_owner("lock file", p, 1001, 1000).expect("refused");
        assert!(
            why.contains("/tmp/procmesh-default.sock.lock")
                && why.contains("uid 1001")
                && why.contains("uid 1000")
                && why.contains("remove it"),
            "{why}"
        );
        // Root gets no pass: a file another user planted is refused for root too.
        assert!(foreign_owner("socket", p, 1000, 0).is_some());
    }

    #[test]
    fn the_lock_holder_is_found_in_proc_locks() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let lock = lock_address(&sock).unwrap();
        let ino = lock.file.metadata().unwrap().ino();
        assert_eq!(flock_holder(ino), Some(std::process::id()));
        // A second take of the same lock (another descriptor) is refused as held.
        let second = open_lock_file(&lock_path(&sock)).unwrap();
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(second.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_ne!(rc, 0);
    }
}
