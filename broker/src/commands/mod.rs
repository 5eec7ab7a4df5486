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

/// `procmesh status`: one line about the broker (`shards: None`) or each shard.
pub fn status(target: &TargetArgs, shards: Option<u16>) -> ExitCode {
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
    if let Some(n) = shards {
        return mesh_stop(target, n.into());
    }
    let path = target.path();
    let token = match token(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    match stop_at(&path, token.as_deref()) {
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

/// Asks the broker at `path` to shut down and waits until it has removed its socket.
fn stop_at(path: &Path, token: Option<&str>) -> Result<(), CliError> {
    let mut c = CliConn::connect(path, token)?;
    c.request(serde_json::json!({"t": "shutdown"}))?;
    c.wait_closed();
    // The broker removes its socket as its last step: wait for that.
    for _ in 0..200 {
        if !path.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The shards of the mesh `target.name`: `(NAME#i, socket)`.
fn mesh(target: &TargetArgs, n: usize) -> Result<Vec<(String, PathBuf)>, ExitCode> {
    match addr::AddrEnv::from_lookup(std::env::var_os).shard_paths(&target.name, n) {
        Ok(paths) => Ok(paths
            .into_iter()
            .enumerate()
            .map(|(i, p)| (addr::shard_name(&target.name, i), p))
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
    for (name, path) in &shards {
        match stop_at(path, token.as_deref()) {
            Ok(()) => {
                stopped += 1;
                println!("{name}: stopped ({})", path.display());
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
