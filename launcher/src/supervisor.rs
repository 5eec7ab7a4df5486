//! The supervisor: starts every shard, restarts the ones that fail, and stops them all
//! on SIGINT/SIGTERM.
//!
//! Owns the shards' `Child` handles, their restart backoff and the launcher's stdout
//! (one line per shard each time it starts serving). Does not own what a shard does:
//! brokers remove their own sockets and flush their own persistence when told to stop.
//!
//! Everything happens on the main thread in one loop; it sleeps in `poll` on a socket
//! that receives a byte for every SIGCHLD, SIGINT and SIGTERM, and on the shards'
//! notification socket (`READY=1` once a shard serves, `STOPPING=1` with its reason
//! when it stops; see [`Notice`]), so no event waits for a timer tick. A shard's
//! notices are read before its exit is looked at: it sends them before it exits, so
//! its stop reason is known when its exit is handled.
//!
//! Policy (systemd's `Restart=on-failure`):
//! - a shard that exits non-zero or is killed by a signal is restarted at the same
//!   address after a backoff: [`Backoff::INITIAL`], doubling up to [`Backoff::MAX`],
//!   back to the start once the shard had stayed up [`Backoff::STABLE_AFTER`];
//! - a shard that exits 0 after serving is restarted the same way, unless it stopped
//!   for its idle timeout: a client's `shutdown` (or a signal to that shard alone)
//!   cannot take one shard of the mesh down for good (issue 12 item 14). Only the
//!   launcher stopping stops the mesh (`procmesh stop` signals the launcher of a
//!   launched broker);
//! - a shard that stopped for its idle timeout, or exited 0 before serving (another
//!   broker owns its address), stays stopped; once every shard has stopped, the
//!   launcher exits 0;
//! - SIGINT/SIGTERM sends SIGTERM to every shard and waits up to the stop timeout for
//!   them to exit (a broker then has removed its socket and flushed its persistence);
//!   a second signal, or the timeout, kills the stragglers with SIGKILL and removes
//!   their stale sockets;
//! - at start, a shard that exits or does not serve within the startup timeout
//!   fails the whole launch: the others are stopped and the launcher exits 1.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{LaunchConfig, ShardSpec};
use crate::shard::{self, Notice};

/// Largest notification datagram read (sd_notify messages are a few lines).
const NOTICE_MAX: usize = 4096;

/// The longest the loop sleeps without looking at its children (a safety net: every
/// event also writes to the wake-up socket).
const MAX_WAIT: Duration = Duration::from_millis(500);

/// How long to wait, after a broker exited, for the rest of its output (its output
/// socket closes with it unless it left a process behind that holds it).
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// How a launch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every shard stopped cleanly (signal, or each was stopped on purpose).
    Stopped,
    /// A mesh with this name and shard count was already running; nothing started.
    AlreadyRunning,
    /// Shards had to be killed at stop (listed).
    Killed(Vec<String>),
    /// The mesh failed to start; the reason.
    StartFailed(String),
}

/// Restart delays for one shard: exponential, capped, reset after a stable run.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first restart delay.
    pub const INITIAL: Duration = Duration::from_millis(50);
    /// The largest restart delay.
    pub const MAX: Duration = Duration::from_secs(2);
    /// A shard that ran this long before failing restarts after [`Backoff::INITIAL`].
    pub const STABLE_AFTER: Duration = Duration::from_secs(10);

    /// A fresh backoff.
    pub fn new() -> Backoff {
        Backoff {
            next: Backoff::INITIAL,
        }
    }

    /// The delay before restarting a shard that failed after running `uptime`.
    pub fn on_failure(&mut self, uptime: Duration) -> Duration {
        if uptime >= Backoff::STABLE_AFTER {
            self.next = Backoff::INITIAL;
        }
        let d = self.next;
        self.next = (d * 2).min(Backoff::MAX);
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// One shard's supervision state.
struct Slot {
    spec: ShardSpec,
    /// The running broker, if any.
    child: Option<Child>,
    /// Disconnects once `child`'s output is fully forwarded.
    output_done: Option<mpsc::Receiver<()>>,
    /// When `child` was started.
    started: Instant,
    /// Which start of this shard `child` is (1 for the first).
    generation: u64,
    /// What `child` said when it began stopping (`STOPPING=1`), if it did.
    stop_notice: Option<Notice>,
    /// `child` has printed its "serving" line.
    serving: bool,
    /// A restart is due at this time.
    restart_at: Option<Instant>,
    /// Stopped on purpose (exit 0): not restarted.
    stopped: bool,
    backoff: Backoff,
}

/// Runs the mesh until it is stopped. Returns an error only for failures to set the
/// launcher itself up (signal handlers, the wake-up socket).
pub fn run(cfg: LaunchConfig) -> io::Result<Outcome> {
    if let Some(o) = check_existing(&cfg) {
        return Ok(o);
    }
    for dir in cfg.shards.iter().filter_map(|s| s.persist_dir.as_ref()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Ok(Outcome::StartFailed(format!(
                "cannot create {}: {e}",
                dir.display()
            )));
        }
    }
    let (wake_rx, wake_tx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    let (notices, notify_addr) = notify_socket()?;
    let term = Arc::new(AtomicBool::new(false));
    use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&term))?;
    }
    for sig in [SIGINT, SIGTERM, SIGCHLD] {
        signal_hook::low_level::pipe::register(sig, wake_tx.try_clone()?)?;
    }
    let now = Instant::now();
    let slots = cfg
        .shards
        .iter()
        .map(|spec| Slot {
            spec: spec.clone(),
            child: None,
            output_done: None,
            started: now,
            generation: 0,
            stop_notice: None,
            serving: false,
            restart_at: None,
            stopped: false,
            backoff: Backoff::new(),
        })
        .collect();
    let mut sup = Supervisor {
        cfg,
        slots,
        notices,
        notify_addr,
        wake_rx,
        term,
        started: false,
        stopping: None,
        failure: None,
        killed: Vec::new(),
    };
    Ok(sup.run())
}

/// If shards of this mesh already answer: the whole mesh → [`Outcome::AlreadyRunning`]
/// (like `procmesh serve`), part of it → a start failure.
fn check_existing(cfg: &LaunchConfig) -> Option<Outcome> {
    let live: Vec<&ShardSpec> = cfg
        .shards
        .iter()
        .filter(|s| UnixStream::connect(&s.socket).is_ok())
        .collect();
    if live.is_empty() {
        None
    } else if live.len() == cfg.shards.len() {
        Some(Outcome::AlreadyRunning)
    } else {
        let names: Vec<&str> = live.iter().map(|s| s.name.as_str()).collect();
        Some(Outcome::StartFailed(format!(
            "{} already served by another broker; stop it first",
            names.join(", ")
        )))
    }
}

struct Supervisor {
    cfg: LaunchConfig,
    slots: Vec<Slot>,
    /// The shards' notification socket (nonblocking).
    notices: UnixDatagram,
    /// Its address as `NOTIFY_SOCKET` spells it (`@name`, abstract).
    notify_addr: OsString,
    wake_rx: UnixStream,
    term: Arc<AtomicBool>,
    /// Every shard has served once.
    started: bool,
    /// Stopping: SIGTERM was sent, SIGKILL follows at this deadline.
    stopping: Option<Instant>,
    /// Why the start failed.
    failure: Option<String>,
    /// Shards that had to be killed at stop.
    killed: Vec<String>,
}

impl Supervisor {
    fn run(&mut self) -> Outcome {
        let start_deadline = Instant::now() + self.cfg.startup_timeout;
        for i in 0..self.slots.len() {
            if let Err(e) = self.start(i) {
                self.fail(format!(
                    "cannot start {} ({}): {e}",
                    self.slots[i].spec.name,
                    self.cfg.broker_bin.display()
                ));
                break;
            }
        }
        loop {
            let now = Instant::now();
            if self.term.swap(false, Ordering::SeqCst) {
                match self.stopping {
                    None => self.begin_stop(now + self.cfg.stop_timeout),
                    // A second signal: stop waiting.
                    Some(_) => self.stopping = Some(now),
                }
            }
            self.read_notices();
            // Started as soon as every shard has announced serving, before exits are
            // looked at: a shard that dies right after the last "serving" line (a user
            // who read it may act at once) is a crash to restart, not a failed start.
            if !self.started && self.stopping.is_none() && self.slots.iter().all(|s| s.serving) {
                self.started = true;
                tracing::info!(
                    "mesh `{}` serving on {} shard{} (pid {})",
                    self.cfg.name,
                    self.slots.len(),
                    if self.slots.len() == 1 { "" } else { "s" },
                    std::process::id()
                );
                sd_notify("READY=1");
            }
            for i in 0..self.slots.len() {
                let status = match self.slots[i].child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(st))) => st,
                    Some(Err(e)) => {
                        tracing::error!("cannot wait for {}: {e}", self.slots[i].spec.name);
                        continue;
                    }
                    _ => continue,
                };
                self.exited(i, status, now);
            }
            // Not started yet means some shard has not announced serving.
            if !self.started && self.stopping.is_none() && now >= start_deadline {
                let late: Vec<&str> = self
                    .slots
                    .iter()
                    .filter(|s| !s.serving)
                    .map(|s| s.spec.name.as_str())
                    .collect();
                self.fail(format!(
                    "{} did not report serving within {:?}",
                    late.join(", "),
                    self.cfg.startup_timeout
                ));
            }
            if self.stopping.is_none() {
                for i in 0..self.slots.len() {
                    if self.slots[i].restart_at.is_some_and(|t| t <= now) {
                        self.slots[i].restart_at = None;
                        if let Err(e) = self.start(i) {
                            let s = &mut self.slots[i];
                            let d = s.backoff.on_failure(Duration::ZERO);
                            tracing::warn!(
                                "cannot restart {}: {e}; retrying in {d:?}",
                                s.spec.name
                            );
                            s.restart_at = Some(now + d);
                        }
                    }
                }
            }
            let running = self.slots.iter().any(|s| s.child.is_some());
            if let Some(deadline) = self.stopping {
                if !running {
                    return self.finish();
                }
                if now >= deadline {
                    self.kill_all();
                }
            } else if !running && self.slots.iter().all(|s| s.stopped) {
                tracing::info!("every shard has stopped; exiting");
                return self.finish();
            }
            let mut wait = MAX_WAIT;
            let wake_times = self.slots.iter().filter_map(|s| s.restart_at);
            for t in wake_times.chain(self.stopping).chain(
                (!self.started)
                    .then_some(start_deadline)
                    .filter(|_| self.stopping.is_none()),
            ) {
                wait = wait.min(t.saturating_duration_since(now));
            }
            self.wait(wait);
        }
    }

    fn start(&mut self, i: usize) -> io::Result<()> {
        let s = &mut self.slots[i];
        let generation = s.generation + 1;
        let started = shard::spawn(&self.cfg, &s.spec, &self.notify_addr)?;
        s.generation = generation;
        s.stop_notice = None;
        s.child = Some(started.child);
        s.output_done = Some(started.output_done);
        s.started = Instant::now();
        s.serving = false;
        Ok(())
    }

    /// Shard `i`'s broker exited with `status`.
    fn exited(&mut self, i: usize, status: ExitStatus, now: Instant) {
        let s = &mut self.slots[i];
        let pid = s.child.take().map_or(0, |c| c.id());
        if let Some(done) = s.output_done.take() {
            // Returns when the forwarding thread ends (the sender is dropped).
            let _ = done.recv_timeout(OUTPUT_DRAIN);
        }
        let was_serving = std::mem::replace(&mut s.serving, false);
        let name = s.spec.name.clone();
        if self.stopping.is_some() {
            if !status.success() && !self.killed.contains(&name) {
                tracing::warn!("{name} (pid {pid}) {} while stopping", describe(status));
            }
            return;
        }
        if !self.started {
            let why = if was_serving {
                format!("{name} (pid {pid}) {} during start", describe(status))
            } else {
                format!("{name} (pid {pid}) {} before serving", describe(status))
            };
            self.fail(why);
            return;
        }
        let notice = s.stop_notice.take();
        let idle = notice.as_ref().is_some_and(Notice::is_idle_stop);
        if status.success() && (idle || !was_serving) {
            s.stopped = true;
            let why = if idle {
                "after its idle timeout"
            } else {
                "before serving (another broker serves its address?)"
            };
            tracing::info!("{name} (pid {pid}) stopped {why}; not restarting it");
            return;
        }
        let delay = s
            .backoff
            .on_failure(now.saturating_duration_since(s.started));
        s.restart_at = Some(now + delay);
        let what = match notice.and_then(|n| n.status) {
            // "stopping: shutdown request" / "stopping: signal"
            Some(st) if status.success() => format!("exited cleanly ({st})"),
            _ => describe(status),
        };
        tracing::warn!("{name} (pid {pid}) {what}; restarting in {delay:?}");
    }

    /// The start failed: remember why and stop whatever runs.
    fn fail(&mut self, why: String) {
        tracing::error!("{why}; stopping the mesh");
        self.failure.get_or_insert(why);
        if self.stopping.is_none() {
            self.begin_stop(Instant::now() + self.cfg.stop_timeout);
        }
    }

    fn begin_stop(&mut self, deadline: Instant) {
        if self.stopping.is_none() {
            sd_notify("STOPPING=1");
        }
        self.stopping = Some(deadline);
        for s in &mut self.slots {
            s.restart_at = None;
            if let Some(c) = &s.child {
                signal(c, libc::SIGTERM);
            }
        }
    }

    fn kill_all(&mut self) {
        for s in &mut self.slots {
            if let Some(c) = &mut s.child {
                if !self.killed.contains(&s.spec.name) {
                    tracing::warn!(
                        "{} (pid {}) did not stop in time; killing it",
                        s.spec.name,
                        c.id()
                    );
                    let _ = c.kill();
                    self.killed.push(s.spec.name.clone());
                }
            }
        }
    }

    /// Every shard has exited: remove sockets that nothing answers on any more (a
    /// killed broker leaves its socket behind) and say how it went.
    fn finish(&mut self) -> Outcome {
        for s in &self.slots {
            if s.spec.socket.exists() && UnixStream::connect(&s.spec.socket).is_err() {
                let _ = std::fs::remove_file(&s.spec.socket);
            }
        }
        if let Some(why) = self.failure.take() {
            Outcome::StartFailed(why)
        } else if !self.killed.is_empty() {
            Outcome::Killed(std::mem::take(&mut self.killed))
        } else {
            Outcome::Stopped
        }
    }

    /// Reads every queued notice: a `READY=1` marks its shard serving (and prints the
    /// shard's line); a `STOPPING=1` is kept for when its exit is handled. Notices
    /// from pids that are not a current shard (a previous start) are ignored.
    fn read_notices(&mut self) {
        let mut buf = [0u8; NOTICE_MAX];
        while let Ok(n) = self.notices.recv(&mut buf) {
            let notice = Notice::parse(&buf[..n]);
            let Some(pid) = notice.pid else { continue };
            let Some(slot) = self
                .slots
                .iter_mut()
                .find(|s| s.child.as_ref().is_some_and(|c| c.id() == pid))
            else {
                continue;
            };
            if notice.ready && !slot.serving {
                slot.serving = true;
                announce(&self.cfg, slot, pid);
            }
            if notice.stopping {
                slot.stop_notice = Some(notice);
            }
        }
    }

    /// Sleeps until a signal or notice arrives, or `timeout` passes.
    fn wait(&mut self, timeout: Duration) {
        let t = timeout.clamp(Duration::from_millis(1), MAX_WAIT);
        let mut fds = [
            libc::pollfd {
                fd: self.wake_rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.notices.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds that outlives the call.
        // A wake-up, a timeout or EINTR all mean the same: look again.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                t.as_millis() as i32,
            );
        }
        let mut buf = [0u8; 64];
        while matches!(self.wake_rx.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// The shards' notification socket: a datagram socket at a fresh abstract address
/// (no file to clean up), nonblocking, and that address as `NOTIFY_SOCKET` spells it.
fn notify_socket() -> io::Result<(UnixDatagram, OsString)> {
    use std::os::linux::net::SocketAddrExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("procmesh-launch/{}/{nanos}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let sock = UnixDatagram::bind_addr(&addr)?;
    sock.set_nonblocking(true)?;
    Ok((sock, OsString::from(format!("@{name}"))))
}

/// Tells systemd (when the launcher runs under it with `Type=notify`) about the whole
/// mesh: `READY=1` once every shard serves, `STOPPING=1` when it stops. Best effort.
fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("{state}\nMAINPID={}", std::process::id());
    let _ = UnixDatagram::unbound().and_then(|sock| {
        let bytes = target.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)
        } else {
            sock.send_to(msg.as_bytes(), &target)
        }
    });
}

/// Prints the shard's "serving" line on stdout (the launcher's only stdout output).
fn announce(cfg: &LaunchConfig, slot: &Slot, pid: u32) {
    let s = &slot.spec;
    let line = if cfg.json {
        serde_json::json!({
            "shard": s.id.0,
            "name": s.name,
            "socket": s.socket.to_string_lossy(),
            "pid": pid,
            "core": s.core,
            "start": slot.generation,
        })
        .to_string()
    } else {
        let core = s
            .core
            .map_or_else(|| "not pinned".to_string(), |c| format!("core {c}"));
        format!(
            "procmesh-launch: {} serving at {} (pid {pid}, {core})",
            s.name,
            s.socket.display()
        )
    };
    let mut out = io::stdout().lock();
    // A closed stdout must not stop the mesh.
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

fn signal(c: &Child, sig: libc::c_int) {
    // The child is not reaped yet (we hold its handle), so its pid is still ours.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(c.id() as libc::pid_t, sig);
    }
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}{}", signame(sig)),
        _ => format!("exited ({st})"),
    }
}

fn signame(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets_after_a_stable_run() {
        let mut b = Backoff::new();
        let quick = Duration::from_millis(10);
        let delays: Vec<u64> = (0..8)
            .map(|_| b.on_failure(quick).as_millis() as u64)
            .collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.on_failure(Backoff::STABLE_AFTER), Backoff::INITIAL);
        assert_eq!(b.on_failure(quick), Duration::from_millis(100));
    }

    #[test]
    fn describes_exits() {
        assert_eq!(
            describe(ExitStatus::from_raw(9)),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(101 << 8)),
            "exited with status 101"
        );
    }
}
