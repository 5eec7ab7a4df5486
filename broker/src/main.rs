//! `procmesh`: run a broker (`serve`) or talk to one (`status`, `stop`, `stats`).
//!
//! `status|stop|stats --shards N` cover a sharded mesh (`NAME#0` … `NAME#N-1`, as
//! `procmesh-launch` starts it): a line or row per shard, and totals.
//!
//! Exit codes: 0 success (also `serve` when another broker already owns the
//! address), 1 an error (or only some shards of a mesh are running), 3 no broker is
//! running at the address (no shard of the mesh is).
//!
//! This file only parses arguments: `serve`'s configuration is resolved in
//! [`BrokerConfig::resolve`], and the commands and their output live in `commands/`.

mod commands;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use procmesh_broker::config::{ServeArgs, TargetArgs};
use procmesh_broker::BrokerConfig;

#[derive(Parser)]
#[command(
    name = "procmesh",
    version,
    about = "procmesh broker and control commands"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at startup; the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run a broker in the foreground.
    Serve {
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Say whether a broker (every shard, with --shards) is running.
    Status {
        #[command(flatten)]
        target: TargetArgs,
        /// The mesh is sharded over N brokers `NAME#0` … `NAME#N-1`.
        #[arg(long, value_name = "N", conflicts_with = "socket", value_parser = clap::value_parser!(u16).range(1..))]
        shards: Option<u16>,
    },
    /// Ask a broker (every shard, with --shards) to shut down and wait until it has.
    Stop {
        #[command(flatten)]
        target: TargetArgs,
        /// The mesh is sharded over N brokers `NAME#0` … `NAME#N-1`.
        #[arg(long, value_name = "N", conflicts_with = "socket", value_parser = clap::value_parser!(u16).range(1..))]
        shards: Option<u16>,
    },
    /// Print a broker's stats (per shard and totals, with --shards).
    Stats {
        #[command(flatten)]
        target: TargetArgs,
        /// The mesh is sharded over N brokers `NAME#0` … `NAME#N-1`.
        #[arg(long, value_name = "N", conflicts_with = "socket", value_parser = clap::value_parser!(u16).range(1..))]
        shards: Option<u16>,
        /// Print the raw stats map as JSON (with --shards: the sum plus `shards`).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.cmd {
        Cmd::Serve { .. } => {
            let serve = matches
                .subcommand_matches("serve")
                .expect("invariant: the serve subcommand was parsed");
            let opts = std::env::var("PROCMESH_BROKER_OPTS").ok();
            match BrokerConfig::resolve(serve, opts.as_deref()) {
                Ok(cfg) => commands::serve(cfg),
                Err(e) => {
                    eprintln!("procmesh: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Status { target, shards } => commands::status(&target, shards),
        Cmd::Stop { target, shards } => commands::stop(&target, shards),
        Cmd::Stats {
            target,
            shards,
            json,
        } => commands::stats(&target, shards, json),
    }
}
