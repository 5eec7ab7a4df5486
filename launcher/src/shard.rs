//! Starting one shard's broker process: its command line (`--shard I/N`), its
//! pinning and parent-death signal (set between fork and exec), its readiness socket
//! (`NOTIFY_SOCKET`, the sd_notify protocol `procmesh serve` already speaks), and a
//! thread that forwards its output to our stderr.
//!
//! Owns nothing after `spawn` returns: the supervisor owns the `Child`. Invariant: the
//! broker is pinned before its first instruction runs, so it never runs on another
//! core, not even while it binds.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

use crate::config::{LaunchConfig, ShardSpec};

/// What a broker said on its notification socket (one datagram, sd_notify(3) form:
/// `VAR=value` lines; `procmesh serve` sends `READY=1` once it serves and
/// `STOPPING=1` with `STATUS=stopping: <reason>` when it stops).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notice {
    /// `MAINPID`: the sender.
    pub pid: Option<u32>,
    /// `READY=1`: it serves.
    pub ready: bool,
    /// `STOPPING=1`: it is stopping.
    pub stopping: bool,
    /// `STATUS`, when given.
    pub status: Option<String>,
}

impl Notice {
    /// Parses one datagram; unknown variables are ignored, as systemd does.
    pub fn parse(msg: &[u8]) -> Notice {
        let mut n = Notice::default();
        for line in String::from_utf8_lossy(msg).lines() {
            match line.split_once('=') {
                Some(("MAINPID", v)) => n.pid = v.trim().parse().ok(),
                Some(("READY", "1")) => n.ready = true,
                Some(("STOPPING", "1")) => n.stopping = true,
                Some(("STATUS", v)) => n.status = Some(v.to_string()),
                _ => {}
            }
        }
        n
    }

    /// Whether the broker says it stops because it was idle (the one clean stop the
    /// launcher honours while it runs: `--idle-timeout` is meant to end the mesh).
    pub fn is_idle_stop(&self) -> bool {
        self.stopping
            && self
                .status
                .as_deref()
                .is_some_and(|s| s.contains("idle timeout"))
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

/// Starts `procmesh serve` for `spec` as shard `i/N`: pinned to its core when it has
/// one, with SIGTERM as its parent-death signal, `NOTIFY_SOCKET=notify_socket` (it
/// reports readiness and its stop reason there, see [`Notice`]), stdout and stderr
/// forwarded to our stderr (prefixed with the shard name).
///
/// Must be called from the thread that lives as long as the supervisor (the main
/// thread): Linux sends the parent-death signal when the *thread* that forked exits.
pub fn spawn(cfg: &LaunchConfig, spec: &ShardSpec, notify_socket: &OsStr) -> io::Result<Started> {
    let mut cmd = Command::new(&cfg.broker_bin);
    cmd.arg("serve")
        .arg("--name")
        .arg(&spec.name)
        .arg("--socket")
        .arg(&spec.socket)
        .arg("--shard")
        .arg(format!("{}/{}", spec.id, cfg.shards.len()));
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
    // The shard reads the file itself at every start (a rotated token applies to
    // restarts); it wins over PROCMESH_TOKEN there as it does here.
    match &cfg.token_file {
        Some(p) => cmd.env("PROCMESH_TOKEN_FILE", p),
        None => cmd.env_remove("PROCMESH_TOKEN_FILE"),
    };
    // Readiness and stop reasons come back on our socket, not systemd's.
    cmd.env("NOTIFY_SOCKET", notify_socket);
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
    let (done, output_done) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("{name}-output"))
        .spawn(move || {
            forward(reader, &name);
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

/// Copies the broker's output to our stderr as `[NAME#i] line`.
fn forward(reader: UnixStream, name: &str) {
    let mut r = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let _ = writeln!(io::stderr().lock(), "[{name}] {}", text.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_like_sd_notify() {
        let n = Notice::parse(b"STOPPING=1\nSTATUS=stopping: idle timeout\nMAINPID=42");
        assert_eq!(n.pid, Some(42));
        assert!(n.stopping && !n.ready && n.is_idle_stop());
        let n = Notice::parse(b"READY=1\nMAINPID=7\nX_OTHER=1");
        assert!(n.ready && !n.stopping && !n.is_idle_stop());
        let n = Notice::parse(b"STOPPING=1\nSTATUS=stopping: shutdown request\nMAINPID=7");
        assert!(!n.is_idle_stop());
    }

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
