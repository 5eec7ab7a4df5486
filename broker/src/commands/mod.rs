//! The control commands of the `procmesh` binary: `status`, `stop` and `stats`, for
//! one broker or every shard of a mesh, with their output and exit codes.

mod render;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use procmesh_broker::cli::{CliConn, CliError};
use procmesh_broker::config::TargetArgs;
use procmesh_proto::addr;
use procmesh_proto::stats::StatsReport;

use render::{human_ms, report, sharded_stats_table, stats_table, sum_stats};
pub use serve::serve;

/// `procmesh status`: one line about the broker (`shards: None`) or each shard.
pub fn status(target: &TargetArgs, shards: Option<u16>) -> ExitCode {
    if let Some(n) = shards {
        return mesh_status(target, n.into());
    }
    let path = target.path();
    match CliConn::connect(&path, target.token.as_deref())
        .and_then(|mut c| c.request(serde_json::json!({"t": "stats"})))
    {
        Ok(reply) => {
            let r = report(&reply["value"]);
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
    match stop_at(&path, target.token.as_deref()) {
        Ok(()) => {
            println!("procmesh broker at {} stopped", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `procmesh stats`: a table, or the raw map as JSON.
pub fn stats(target: &TargetArgs, shards: Option<u16>, json: bool) -> ExitCode {
    if let Some(n) = shards {
        return mesh_stats(target, n.into(), json);
    }
    let path = target.path();
    match CliConn::connect(&path, target.token.as_deref())
        .and_then(|mut c| c.request(serde_json::json!({"t": "stats"})))
    {
        Ok(reply) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reply["value"]).unwrap_or_default()
                );
            } else {
                print!("{}", stats_table(&reply["value"]));
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
    match addr::shard_paths(&target.name, n) {
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
    let mut running = 0;
    for (name, path) in &shards {
        match shard_stats(path, target.token.as_deref()) {
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
    let (mut stopped, mut failed) = (0, false);
    for (name, path) in &shards {
        match stop_at(path, target.token.as_deref()) {
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

fn mesh_stats(target: &TargetArgs, n: usize, json: bool) -> ExitCode {
    let shards = match mesh(target, n) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut per_shard = Vec::with_capacity(n);
    for (name, path) in &shards {
        match shard_stats(path, target.token.as_deref()) {
            Ok(v) => per_shard.push(Some(v)),
            Err(e) => {
                eprintln!("procmesh: {name}: {e}");
                per_shard.push(None);
            }
        }
    }
    let running = per_shard.iter().flatten().count();
    if running > 0 {
        let sum = sum_stats(&target.name, &per_shard);
        if json {
            println!("{}", serde_json::to_string_pretty(&sum).unwrap_or_default());
        } else {
            print!("{}", sharded_stats_table(&sum));
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
