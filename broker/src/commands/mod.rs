//! The control commands of the `procmesh` binary: `status`, `stop` and `stats`, for
//! one broker or every shard of a mesh, with their output and exit codes; `serve`,
//! the shell commands (`shell`) and the Prometheus rendering and endpoint (`metrics`)
//! are submodules.

mod metrics;
mod render;
mod serve;
pub mod shell;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use procmesh_broker::cli::{CliConn, CliError};
use procmesh_broker::config::TargetArgs;
use procmesh_proto::addr;
use procmesh_proto::stats::StatsReport;

use crate::StatsFormat;
use render::{human_ms, report, sharded_stats_table, stats_table, sum_stats};
pub use serve::serve;

/// The token of `target` (`--token-file`, `--token`, `PROCMESH_TOKEN`); an unreadable
/// token file is a usage error (exit 2).
fn token(target: &TargetArgs) -> Result<Option<String>, ExitCode> {
    target.resolve_token().map_err(|e| {
        eprintln!("procmesh: {e}");
        ExitCode::from(2)
    })
}

/// `--shards auto` as parsed: resolved by [`resolve_shards`] before use.
pub const SHARDS_AUTO: u16 = 0;

/// The most shards `--shards auto` probes for when `NAME#0` does not announce a count.
const PROBE_MAX: usize = 4096;

/// `--shards` as the commands use it: `auto` ([`SHARDS_AUTO`]) becomes the count the
/// mesh `target.name` announces in `welcome` from `NAME#0` (a mesh started by
/// procmesh-launch), else the number of consecutive shards `NAME#0`, `NAME#1`, …
/// that answer; with no `NAME#0`, the plain broker `NAME` (`None`: one broker).
/// Reports and fails with exit 3 when neither answers.
pub fn resolve_shards(
    target: &TargetArgs,
    shards: Option<u16>,
    token: Option<&str>,
) -> Result<Option<u16>, ExitCode> {
    if shards != Some(SHARDS_AUTO) {
        return Ok(shards);
    }
    let env = addr::AddrEnv::from_lookup(std::env::var_os);
    let first = env.default_socket_path(&addr::shard_name(&target.name, 0));
    match CliConn::connect(&first, token)
        .and_then(|mut c| c.request(serde_json::json!({"t": "hello"})))
    {
        Ok(w) => {
            if let Some(n) = w["shards"].as_u64().and_then(|n| u16::try_from(n).ok()) {
                return Ok(Some(n.max(1)));
            }
            let found = (1..PROBE_MAX)
                .take_while(|&i| {
                    std::os::unix::net::UnixStream::connect(
                        env.default_socket_path(&addr::shard_name(&target.name, i)),
                    )
                    .is_ok()
                })
                .count();
            Ok(Some((found + 1) as u16))
        }
        Err(CliError::NotRunning(_)) if target.path().exists() => Ok(None),
        Err(CliError::NotRunning(_)) => {
            eprintln!(
                "procmesh: no mesh `{}` found: neither {} nor {} answers",
                target.name,
                first.display(),
                target.path().display()
            );
            Err(ExitCode::from(3))
        }
        Err(e) => Err(fail(e)),
    }
}

/// `procmesh status`: one line about the broker (`shards: None`) or each shard.
pub fn status(target: &TargetArgs, shards: Option<u16>) -> ExitCode {
    let shards = match token(target).and_then(|t| resolve_shards(target, shards, t.as_deref())) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(n) = shards {
        return mesh_status(target, n.into());
    }
    let path = target.path();
    let token = match token(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    match shard_stats(&path, token.as_deref()) {
        Ok(v) => {
            let r = report(&v);
            println!(
                "procmesh broker `{}` is running at {} (pid {}, up {}, {} connections)",
                if r.name.is_empty() { "?" } else { &r.name },
                path.display(),
                pid(&r),
                human_ms(r.uptime_ms),
                r.connections
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `procmesh stop`: stops the broker (or every shard) and waits until it has.
pub fn stop(target: &TargetArgs, shards: Option<u16>) -> ExitCode {
    let shards = match token(target).and_then(|t| resolve_shards(target, shards, t.as_deref())) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(n) = shards {
        return mesh_stop(target, n.into());
    }
    let path = target.path();
    let token = match token(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    match stop_at(&path, token.as_deref(), &mut Vec::new()) {
        Ok(()) => {
            println!("procmesh broker at {} stopped", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `procmesh stats`: a table, the raw map as JSON, or Prometheus text; with `watch`,
/// again every interval until the process is interrupted.
pub fn stats(
    target: &TargetArgs,
    shards: Option<u16>,
    format: StatsFormat,
    watch: Option<Duration>,
) -> ExitCode {
    let token = match token(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let shards = match resolve_shards(target, shards, token.as_deref()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let Some(every) = watch else {
        return stats_once(target, token.as_deref(), shards, format);
    };
    let clear =
        format == StatsFormat::Table && std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        if clear {
            print!("\x1b[2J\x1b[H");
        }
        let code = stats_once(target, token.as_deref(), shards, format);
        if code == ExitCode::from(3) {
            return code;
        }
        if !clear {
            println!();
        }
        std::io::Write::flush(&mut std::io::stdout()).ok();
        std::thread::sleep(every);
    }
}

fn stats_once(
    target: &TargetArgs,
    token: Option<&str>,
    shards: Option<u16>,
    format: StatsFormat,
) -> ExitCode {
    if let Some(n) = shards {
        return mesh_stats(target, token, n.into(), format);
    }
    match shard_stats(&target.path(), token) {
        Ok(v) => {
            match format {
                StatsFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
                }
                StatsFormat::Table => print!("{}", stats_table(&v)),
                StatsFormat::Prometheus => {
                    let r = report(&v);
                    print!("{}", metrics::render(&r.name, &[(None, Some(r.clone()))]));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// A report's pid as the status line shows it.
fn pid(r: &StatsReport) -> String {
    r.pid.map_or("null".into(), |p| p.to_string())
}

/// How long `stop` waits for a launcher to stop its mesh (its own default stop
/// timeout is 10 s, then it kills the stragglers).
const LAUNCHER_STOP_WAIT: Duration = Duration::from_secs(15);

/// Asks the broker at `path` to shut down and waits until it has removed its socket.
///
/// A broker started by `procmesh-launch` would be restarted by it (a `shutdown`
/// cannot take a launched shard down for good): its launcher gets SIGTERM instead,
/// which stops the whole mesh cleanly, once (`signaled` holds the launchers already
/// told: a second SIGTERM would make it kill the shards).
fn stop_at(path: &Path, token: Option<&str>, signaled: &mut Vec<u32>) -> Result<(), CliError> {
    let mut c = CliConn::connect(path, token)?;
    let pid = c.request(serde_json::json!({"t": "stats"}))?["value"]["pid"].as_u64();
    if let Some(launcher) = pid.and_then(|p| launcher_of(p as u32)) {
        drop(c);
        if !signaled.contains(&launcher) {
            // SAFETY: kill has no memory-safety preconditions.
            if unsafe { libc::kill(launcher as libc::pid_t, libc::SIGTERM) } != 0 {
                return Err(CliError::Io(std::io::Error::last_os_error()));
            }
            signaled.push(launcher);
        }
        wait_gone(path, LAUNCHER_STOP_WAIT);
        return Ok(());
    }
    c.request(serde_json::json!({"t": "shutdown"}))?;
    c.wait_closed();
    // The broker removes its socket as its last step: wait for that.
    wait_gone(path, Duration::from_secs(2));
    Ok(())
}

/// Polls until `path` is gone or `limit` passed.
fn wait_gone(path: &Path, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pid of the `procmesh-launch` that started process `pid`, if its parent is one
/// (from `/proc`: the parent pid in `stat`, the parent's `comm`).
fn launcher_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces and parentheses: split after
    // the last ')'.
    let ppid: u32 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
    (comm.trim_end() == "procmesh-launch").then_some(ppid)
}

/// The shards of the mesh `target.name`: `(NAME#i, socket)`.
fn mesh(target: &TargetArgs, n: usize) -> Result<Vec<(String, PathBuf)>, ExitCode> {
    match addr::AddrEnv::from_lookup(std::env::var_os).shard_paths(&target.name, n) {
        Ok(paths) => Ok(paths
            .into_iter()
            .enumerate()
            .map(|(i, p)| (addr::member_name(&target.name, i, n), p))
            .collect()),
        Err(e) => {
            eprintln!("procmesh: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// 0 when all `n` shards answered, 3 when none did, else 1.
fn mesh_exit(running: usize, n: usize) -> ExitCode {
    match running {
        0 => ExitCode::from(3),
        r if r == n => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

fn shard_stats(path: &Path, token: Option<&str>) -> Result<serde_json::Value, CliError> {
    let mut c = CliConn::connect(path, token)?;
    Ok(c.request(serde_json::json!({"t": "stats"}))?["value"].take())
}

fn mesh_status(target: &TargetArgs, n: usize) -> ExitCode {
    let shards = match mesh(target, n) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let token = match token(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let mut running = 0;
    for (name, path) in &shards {
        match shard_stats(path, token.as_deref()) {
            Ok(v) => {
                running += 1;
                let r = report(&v);
                let core = r.core.map_or("not pinned".into(), |c| format!("core {c}"));
                println!(
                    "{name}: running at {} (pid {}, {core}, up {}, {} connections)",
                    path.display(),
                    pid(&r),
                    human_ms(r.uptime_ms),
                    r.connections
                );
            }
            Err(e) => println!("{name}: {e}"),
        }
    }
    println!(
        "procmesh mesh `{}`: {running} of {n} shards running",
        target.name
    );
    mesh_exit(running, n)
}

fn mesh_stop(target: &TargetArgs, n: usize) -> ExitCode {
    let shards = match mesh(target, n) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let token = match token(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let (mut stopped, mut failed) = (0, false);
    let mut signaled = Vec::new();
    for (name, path) in &shards {
        match stop_at(path, token.as_deref(), &mut signaled) {
            Ok(()) => {
                stopped += 1;
                println!("{name}: stopped ({})", path.display());
            }
            // The launcher told to stop an earlier shard stopped this one too.
            Err(CliError::NotRunning(_)) if !signaled.is_empty() => {
                stopped += 1;
                println!("{name}: stopped with its launcher ({})", path.display());
            }
            Err(e @ CliError::NotRunning(_)) => println!("{name}: {e}"),
            Err(e) => {
                failed = true;
                eprintln!("procmesh: {name}: {e}");
            }
        }
    }
    match (stopped, failed) {
        (_, true) => ExitCode::from(1),
        (0, false) => ExitCode::from(3),
        _ => ExitCode::SUCCESS,
    }
}

fn mesh_stats(target: &TargetArgs, token: Option<&str>, n: usize, format: StatsFormat) -> ExitCode {
    let shards = match mesh(target, n) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut per_shard = Vec::with_capacity(n);
    for (name, path) in &shards {
        match shard_stats(path, token) {
            Ok(v) => per_shard.push(Some(v)),
            Err(e) => {
                eprintln!("procmesh: {name}: {e}");
                per_shard.push(None);
            }
        }
    }
    let running = per_shard.iter().flatten().count();
    if running > 0 {
        match format {
            StatsFormat::Json => {
                let sum = sum_stats(&target.name, &per_shard);
                println!("{}", serde_json::to_string_pretty(&sum).unwrap_or_default());
            }
            StatsFormat::Table => {
                print!(
                    "{}",
                    sharded_stats_table(&sum_stats(&target.name, &per_shard))
                );
            }
            StatsFormat::Prometheus => {
                let reports: Vec<_> = per_shard
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (Some(i), v.as_ref().map(report)))
                    .collect();
                print!("{}", metrics::render(&target.name, &reports));
            }
        }
    }
    mesh_exit(running, n)
}

fn fail(e: CliError) -> ExitCode {
    eprintln!("procmesh: {e}");
    match e {
        CliError::NotRunning(_) => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}
