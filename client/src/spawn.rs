//! Auto-spawn: finding the `procmesh` broker binary and starting it detached,
//! plus the backoff schedule shared with reconnect.
//!
//! Owns the search order for the binary (`PROCMESH_BROKER_BIN`, next to the
//! current executable, its parent directory, then `PATH`) and the command line
//! of a spawned broker. Racing spawners are safe because a broker that finds a
//! live one at its address exits by itself; the caller then simply connects to
//! whichever broker won.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::ClientError;

/// The broker binary's file name.
pub(crate) const BROKER_BIN_NAME: &str = "procmesh";

/// Where to look for the broker binary, in order, with the first existing file.
pub(crate) fn locate_broker() -> Result<PathBuf, ClientError> {
    let candidates = broker_candidates(
        std::env::var_os("PROCMESH_BROKER_BIN").map(PathBuf::from),
        std::env::current_exe().ok(),
        std::env::var_os("PATH"),
    );
    for c in &candidates {
        if is_executable(c) {
            return Ok(c.clone());
        }
    }
    Err(ClientError::BrokerNotFound {
        searched: candidates,
    })
}

/// The candidate paths: `PROCMESH_BROKER_BIN` (alone when set: an explicit
/// choice is not second-guessed), else the current executable's directory and
/// its parent (so `target/debug/deps/test-…` and `target/debug/examples/…`
/// find `target/debug/procmesh`), then each `PATH` entry.
fn broker_candidates(
    env_bin: Option<PathBuf>,
    exe: Option<PathBuf>,
    path: Option<std::ffi::OsString>,
) -> Vec<PathBuf> {
    if let Some(b) = env_bin.filter(|b| !b.as_os_str().is_empty()) {
        return vec![b];
    }
    let mut out = Vec::new();
    if let Some(dir) = exe.as_deref().and_then(Path::parent) {
        out.push(dir.join(BROKER_BIN_NAME));
        if let Some(up) = dir.parent() {
            out.push(up.join(BROKER_BIN_NAME));
        }
    }
    if let Some(p) = path {
        out.extend(
            std::env::split_paths(&p)
                .filter(|d| !d.as_os_str().is_empty())
                .map(|d| d.join(BROKER_BIN_NAME)),
        );
    }
    // Our own executable may itself be called `procmesh` (a user binary); never
    // spawn that.
    if let Some(exe) = exe {
        out.retain(|c| c != &exe);
    }
    out
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a spawned broker is told.
#[derive(Debug, Clone)]
pub(crate) struct SpawnConfig {
    /// Mesh name (`--name`).
    pub name: String,
    /// Socket path (`--socket`).
    pub socket: PathBuf,
    /// `--idle-timeout` in ms (0 = never exit when idle).
    pub idle_timeout: Duration,
    /// `--token`.
    pub token: Option<String>,
    /// `--max-keys`.
    pub max_keys: Option<u64>,
    /// Everything else, as the `PROCMESH_BROKER_OPTS` JSON object.
    pub opts: serde_json::Map<String, serde_json::Value>,
}

/// The broker's argument list for `cfg`.
fn serve_args(cfg: &SpawnConfig) -> Vec<String> {
    let mut args = vec![
        "serve".to_owned(),
        "--name".to_owned(),
        cfg.name.clone(),
        "--socket".to_owned(),
        cfg.socket.to_string_lossy().into_owned(),
        "--idle-timeout".to_owned(),
        cfg.idle_timeout.as_millis().to_string(),
    ];
    if let Some(n) = cfg.max_keys {
        args.extend(["--max-keys".to_owned(), n.to_string()]);
    }
    args
}

/// `PROCMESH_BROKER_OPTS` for a spawned broker: the inherited object (if it is
/// one) with the client's options laid over it; `None` leaves the inherited
/// variable alone.
fn broker_opts_env(
    inherited: Option<&str>,
    ours: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    if ours.is_empty() {
        return None;
    }
    let mut base = inherited
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| match v {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    for (k, v) in ours {
        match (base.get_mut(k), v) {
            (Some(serde_json::Value::Object(b)), serde_json::Value::Object(o)) => {
                b.extend(o.clone());
            }
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    Some(serde_json::Value::Object(base).to_string())
}

/// Starts `program serve …` detached: its own session, stdio on /dev/null, and
/// a thread that reaps it so it never lingers as a zombie of this process.
pub(crate) fn spawn_broker(program: &Path, cfg: &SpawnConfig) -> Result<(), ClientError> {
    let mut cmd = Command::new(program);
    cmd.args(serve_args(cfg))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = &cfg.token {
        // Through the environment rather than argv, which other users can read.
        cmd.env("PROCMESH_TOKEN", t);
    }
    if let Some(opts) = broker_opts_env(
        std::env::var("PROCMESH_BROKER_OPTS").ok().as_deref(),
        &cfg.opts,
    ) {
        cmd.env("PROCMESH_BROKER_OPTS", opts);
    }
    // SAFETY: between fork and exec only async-signal-safe functions may run;
    // setsid(2) is one, and the closure touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ClientError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    // Reap the broker when it exits (idle timeout, or a loser of a spawn race).
    let _ = std::thread::Builder::new()
        .name("procmesh-reap".into())
        .spawn(move || {
            let _ = child.wait();
        });
    Ok(())
}

/// Exponential backoff with jitter: `base * 2^attempt`, capped at `max`, then a
/// uniformly random fraction between 50 % and 100 % of that.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: XorShift,
}

impl Backoff {
    /// A schedule starting at `base`, never above `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
            rng: XorShift::seeded(),
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exp.min(self.max);
        let frac = 0.5 + 0.5 * self.rng.next_f64();
        capped.mul_f64(frac)
    }
}

/// A xorshift64* generator: jitter only, never security.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// Seeded from the clock, the process id and a per-process counter, so that
    /// processes started together still spread out.
    pub fn seeded() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = t
            ^ ((std::process::id() as u64) << 32)
            ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        XorShift(seed | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_in_documented_order() {
        let c = broker_candidates(
            None,
            Some(PathBuf::from("/w/target/debug/deps/t-123")),
            Some("/usr/bin::/bin".into()),
        );
        assert_eq!(
            c,
            vec![
                PathBuf::from("/w/target/debug/deps/procmesh"),
                PathBuf::from("/w/target/debug/procmesh"),
                PathBuf::from("/usr/bin/procmesh"),
                PathBuf::from("/bin/procmesh"),
            ]
        );
        let only = broker_candidates(
            Some("/opt/pm".into()),
            Some("/x/y".into()),
            Some("/bin".into()),
        );
        assert_eq!(only, vec![PathBuf::from("/opt/pm")]);
        // A user binary called procmesh is never spawned as the broker.
        let own = broker_candidates(
            None,
            Some("/usr/bin/procmesh".into()),
            Some("/usr/bin".into()),
        );
        assert!(
            !own.contains(&PathBuf::from("/usr/bin/procmesh")),
            "{own:?}"
        );
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(!is_executable(&missing));
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(!is_executable(&file), "not executable without x bits");
    }

    #[test]
    fn serve_args_carry_name_socket_and_idle_timeout() {
        let cfg = SpawnConfig {
            name: "m#1".into(),
            socket: "/tmp/procmesh-m#1.sock".into(),
            idle_timeout: Duration::from_secs(60),
            token: Some("secret".into()),
            max_keys: Some(5),
            opts: Default::default(),
        };
        let a = serve_args(&cfg);
        assert_eq!(
            a,
            [
                "serve",
                "--name",
                "m#1",
                "--socket",
                "/tmp/procmesh-m#1.sock",
                "--idle-timeout",
                "60000",
                "--max-keys",
                "5"
            ]
        );
        assert!(
            !a.iter().any(|s| s.contains("secret")),
            "token stays out of argv"
        );
    }

    #[test]
    fn broker_opts_merge_over_inherited() {
        let ours: serde_json::Map<_, _> =
            serde_json::from_str(r#"{"cache":{"ttl":5},"callTimeout":9}"#).unwrap();
        assert_eq!(broker_opts_env(Some("{}"), &Default::default()), None);
        let merged = broker_opts_env(
            Some(r#"{"cache":{"max":3},"callTimeout":1,"x":true}"#),
            &ours,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cache":{"max":3,"ttl":5},"callTimeout":9,"x":true})
        );
        let fresh = broker_opts_env(Some("not json"), &ours).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&fresh).unwrap(),
            serde_json::Value::Object(ours)
        );
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(
            d[0] >= Duration::from_millis(5) && d[0] <= Duration::from_millis(10),
            "{d:?}"
        );
        assert!(
            d[2] >= Duration::from_millis(20) && d[2] <= Duration::from_millis(40),
            "{d:?}"
        );
        assert!(d.iter().all(|x| *x <= Duration::from_millis(100)), "{d:?}");
        assert!(d[7] >= Duration::from_millis(50), "{d:?}");
        // Two schedules started together differ (jitter).
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let mut c = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let xs: Vec<_> = (0..4).map(|_| a.next_delay()).collect();
        let ys: Vec<_> = (0..4).map(|_| c.next_delay()).collect();
        assert_ne!(xs, ys);
    }
}
