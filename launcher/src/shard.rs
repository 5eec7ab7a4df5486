//! Starting one shard's broker process: its command line, its pinning and
//! parent-death signal (set between fork and exec), and a thread that forwards its
//! output to our stderr and reports when it is serving.
//!
//! Owns nothing after `spawn` returns: the supervisor owns the `Child`. Invariant: the
//! broker is pinned before its first instruction runs, so it never runs on another
//! core, not even while it binds.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};

use crate::config::{LaunchConfig, ShardId, ShardSpec};

/// The line a broker prints on stderr once it has bound its socket.
const SERVING_PREFIX: &str = "procmesh: serving at ";

/// What output-forwarding threads tell the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Start number `generation` of `shard` printed its "serving" line.
    Serving {
        /// The shard.
        shard: ShardId,
        /// Which start of it (0 for the first, +1 per restart).
        generation: u64,
    },
}

/// Where forwarding threads report: the event channel, and the write end of the
/// supervisor's wake-up socket (one byte per event).
#[derive(Clone)]
pub struct Notifier {
    /// Events, in the order they happened per shard.
    pub events: Sender<Event>,
    /// Wakes the supervisor's wait.
    pub waker: std::sync::Arc<UnixStream>,
}

impl Notifier {
    fn send(&self, e: Event) {
        // The supervisor outlives every start it cares about; a closed channel means it
        // is exiting and nobody listens.
        if self.events.send(e).is_ok() {
            let _ = (&*self.waker).write(&[1]);
        }
    }
}

/// A started broker process.
pub struct Started {
    /// The process.
    pub child: Child,
    /// Disconnects once all of the broker's output has been forwarded (its output
    /// socket reached EOF): wait on it after the process exits so its last words are
    /// printed before ours.
    pub output_done: Receiver<()>,
}

/// Starts `procmesh serve` for `spec`: pinned to its core when it has one, with
/// SIGTERM as its parent-death signal, stdout and stderr forwarded to our stderr
/// (prefixed with the shard name) by a thread that sends [`Event::Serving`].
///
/// Must be called from the thread that lives as long as the supervisor (the main
/// thread): Linux sends the parent-death signal when the *thread* that forked exits.
pub fn spawn(
    cfg: &LaunchConfig,
    spec: &ShardSpec,
    generation: u64,
    notify: &Notifier,
) -> io::Result<Started> {
    let mut cmd = Command::new(&cfg.broker_bin);
    cmd.arg("serve")
        .arg("--name")
        .arg(&spec.name)
        .arg("--socket")
        .arg(&spec.socket);
    if let Some(dir) = &spec.persist_dir {
        cmd.arg("--persist-dir").arg(dir);
    }
    cmd.args(&cfg.broker_args);
    // Both would point every shard at one place; the launcher resolved them per shard.
    cmd.env_remove("PROCMESH_SOCKET")
        .env_remove("PROCMESH_PERSIST_DIR");
    match &cfg.token {
        Some(t) => cmd.env("PROCMESH_TOKEN", t),
        None => cmd.env_remove("PROCMESH_TOKEN"),
    };
    // stdout and stderr share one socket so lines keep their order and one thread
    // reads both ("a broker already serves …" goes to stdout, the rest to stderr).
    let (reader, writer) = UnixStream::pair()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(OwnedFd::from(writer.try_clone()?)))
        .stderr(Stdio::from(OwnedFd::from(writer)));

    let parent = std::process::id() as libc::pid_t;
    let mask = spec.core.map(one_cpu_mask);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, sched_setaffinity) on data that was
    // fully built before the fork; it allocates nothing (`last_os_error` and
    // `from_raw_os_error` build an error from an integer).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The launcher died between fork and prctl: no signal will come, so stop.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if let Some(mask) = &mask {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), mask) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // `cmd` holds our copies of the write end; the reader sees EOF only once they and
    // the child's are closed.
    drop(cmd);

    let name = spec.name.clone();
    let shard = spec.id;
    let notify = notify.clone();
    let (done, output_done) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("{name}-output"))
        .spawn(move || {
            forward(reader, &name, shard, generation, &notify);
            drop(done);
        })?;
    Ok(Started { child, output_done })
}

/// A CPU set holding only `cpu` (built before the fork: no work in the child).
fn one_cpu_mask(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET writes one bit of the
    // set we own (it ignores CPUs past CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Copies the broker's output to our stderr as `[NAME#i] line`, except its first
/// "serving" line, which becomes an [`Event::Serving`] (the supervisor prints its own).
fn forward(reader: UnixStream, name: &str, shard: ShardId, generation: u64, notify: &Notifier) {
    let mut r = BufReader::new(reader);
    let mut buf = Vec::new();
    let mut announced = false;
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim_end();
        if !announced && text.starts_with(SERVING_PREFIX) {
            announced = true;
            notify.send(Event::Serving { shard, generation });
            continue;
        }
        let _ = writeln!(io::stderr().lock(), "[{name}] {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cpu_mask_has_exactly_that_cpu() {
        let m = one_cpu_mask(3);
        // SAFETY: CPU_COUNT and CPU_ISSET only read the set.
        unsafe {
            assert_eq!(libc::CPU_COUNT(&m), 1);
            assert!(libc::CPU_ISSET(3, &m));
        }
    }
}
