//! `procmesh`: run a broker (`serve`), control one (`status`, `stop`, `stats`), and use
//! one from the shell (`get`, `set`, `del`, `keys`, `incr`, `cas`, `publish`,
//! `subscribe`, `call`, `lock`); `completions` and `man` print shell completions and
//! a man page.
//!
//! `--shards N` covers a sharded mesh (`NAME#0` … `NAME#N-1`, as `procmesh-launch`
//! starts it): the control commands print a line or row per shard and totals, the
//! shell commands route keys as every client of the mesh does.
//!
//! Exit codes are in [`EXIT_CODES`] (the long `--help`), and in docs/ops.md.
//!
//! This file only parses arguments: `serve`'s configuration is resolved in
//! [`BrokerConfig::resolve`], and the commands and their output live in `commands/`.

mod commands;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use procmesh_broker::config::{parse_duration, ServeArgs, TargetArgs};
use procmesh_broker::BrokerConfig;

/// The exit codes, shown at the end of `procmesh --help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success (also `serve` when another broker already owns the address)
  1  an error (the broker refused, a connection failed, only some shards answered)
  2  usage: a bad flag or argument (a value that is not JSON, an unknown unit)
  3  no broker is running at the address (no shard of the mesh is); shell commands
     never start one
  4  a negative answer: `get` found no key, `cas` did not swap, `lock` did not
     acquire the lock within --wait
  `lock … -- CMD` otherwise exits with CMD's code (128+N when a signal N killed it,
  127 when it could not be started).

Values are JSON in and out (`set k '{\"a\":1}'`, `get k` prints `{\"a\":1}`); --raw takes
an argument as a plain string and prints a string value without quotes.
Durations take units (250ms, 30s, 5m; a plain number is ms), sizes too (64KB, 512MiB;
a plain number is bytes).";

#[derive(Parser)]
#[command(
    name = "procmesh",
    version,
    about = "procmesh broker, control and shell commands",
    after_long_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Which broker or mesh a shell command talks to.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
    /// The broker.
    #[command(flatten)]
    pub target: TargetArgs,
    /// The mesh is sharded over N brokers `NAME#0` … `NAME#N-1` (one shard: `NAME`);
    /// `auto` finds N from the mesh (what `NAME#0` announces, else by probing).
    #[arg(long, value_name = "N|auto", conflicts_with = "socket", value_parser = parse_shard_count)]
    pub shards: Option<u16>,
}

/// `--shards`: a count in 1..=65535, or `auto` ([`commands::SHARDS_AUTO`], resolved
/// by [`commands::resolve_shards`] before use).
fn parse_shard_count(s: &str) -> Result<u16, String> {
    if s == "auto" {
        return Ok(commands::SHARDS_AUTO);
    }
    match s.parse::<u16>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`{s}` is not a shard count: use 1..=65535 or `auto`"
        )),
    }
}

/// How `stats` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// A table for people.
    Table,
    /// The raw stats map (with --shards: the sum plus `shards`).
    Json,
    /// Prometheus text exposition format 0.0.4.
    Prometheus,
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
        mesh: MeshArgs,
    },
    /// Ask a broker (every shard, with --shards) to shut down and wait until it has.
    Stop {
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Print a broker's stats (per shard and totals, with --shards).
    Stats {
        #[command(flatten)]
        mesh: MeshArgs,
        /// Print the raw stats map as JSON (the same as --format json).
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = StatsFormat::Table)]
        format: StatsFormat,
        /// Print again every DURATION (1s, 500ms) until Ctrl-C.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        watch: Option<Duration>,
    },
    /// Print the value of KEY as JSON (exit 4 when there is none).
    Get {
        #[command(flatten)]
        mesh: MeshArgs,
        key: String,
        /// Print a string value without quotes.
        #[arg(long)]
        raw: bool,
    },
    /// Store VALUE (JSON; with --raw a plain string) at KEY.
    Set {
        #[command(flatten)]
        mesh: MeshArgs,
        key: String,
        #[arg(allow_negative_numbers = true)]
        value: String,
        /// Expire the key after this long (30s, 5m; a plain number is ms).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Take VALUE as a plain string, not JSON.
        #[arg(long)]
        raw: bool,
    },
    /// Delete KEY; prints true when it existed.
    Del {
        #[command(flatten)]
        mesh: MeshArgs,
        key: String,
    },
    /// List live keys, one a line, sorted.
    ///
    /// --prefix and --limit filter client-side for now: the broker sends every key
    /// (a broker-side scan with a cursor is planned).
    Keys {
        #[command(flatten)]
        mesh: MeshArgs,
        /// Only keys starting with P.
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// At most N keys.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Add N (default 1, may be negative) to the integer at KEY; prints the result.
    Incr {
        #[command(flatten)]
        mesh: MeshArgs,
        key: String,
        /// The increment.
        #[arg(
            long,
            value_name = "N",
            default_value_t = 1,
            allow_negative_numbers = true
        )]
        by: i64,
    },
    /// Compare-and-swap: store NEXT at KEY if its value equals PREV (exit 4 when not).
    ///
    /// PREV and NEXT are JSON; `null` as PREV means "no such key", as NEXT "delete it".
    /// Prints true when swapped, false (exit 4) when not.
    Cas {
        #[command(flatten)]
        mesh: MeshArgs,
        key: String,
        #[arg(allow_negative_numbers = true)]
        prev: String,
        #[arg(allow_negative_numbers = true)]
        next: String,
        /// Take PREV and NEXT as plain strings, not JSON.
        #[arg(long)]
        raw: bool,
    },
    /// Publish PAYLOAD (JSON; --raw: a string) on CHANNEL.
    ///
    /// Prints the number of subscribers it reached.
    Publish {
        #[command(flatten)]
        mesh: MeshArgs,
        channel: String,
        #[arg(allow_negative_numbers = true)]
        payload: String,
        /// Take PAYLOAD as a plain string, not JSON.
        #[arg(long)]
        raw: bool,
    },
    /// Print messages on CHANNELs until Ctrl-C or SIGTERM.
    ///
    /// One JSON line `{"channel":…,"payload":…}` per message; patterns like `news.*`
    /// are allowed. Exits 1 when the broker goes away.
    Subscribe {
        #[command(flatten)]
        mesh: MeshArgs,
        #[arg(required = true)]
        channels: Vec<String>,
    },
    /// Call the procedure NAME; prints the result as JSON.
    ///
    /// ARGS is JSON: an array is the argument list, any other value the one argument,
    /// none no arguments.
    Call {
        #[command(flatten)]
        mesh: MeshArgs,
        /// The procedure.
        #[arg(id = "procedure", value_name = "NAME")]
        procedure: String,
        /// Its arguments as JSON.
        #[arg(allow_negative_numbers = true)]
        args: Option<String>,
        /// Fail with ECALLTIMEOUT after this long (default 30s).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Print a string result without quotes.
        #[arg(long)]
        raw: bool,
    },
    /// Hold the lock KEY while `-- CMD ARGS...` runs; exit with CMD's code.
    ///
    /// CMD gets PROCMESH_LOCK_KEY and PROCMESH_FENCING_TOKEN in its environment (use
    /// the token for fenced writes). Exit 4 when the lock was not acquired within
    /// --wait. The grant expires after --ttl even if CMD still runs: pick a ttl longer
    /// than CMD takes. SIGINT/SIGTERM are passed on to CMD; the lock is released when
    /// it exits.
    Lock {
        #[command(flatten)]
        mesh: MeshArgs,
        key: String,
        /// The grant expires after this long (default 30s).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
        ttl: Duration,
        /// Wait up to this long for the lock (default 0: fail at once when held).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0")]
        wait: Duration,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of `procmesh`.
    Man,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    use commands::shell;
    match cli.cmd {
        Cmd::Serve { args } => {
            // Only the binary installs a subscriber; the library just emits events.
            if let Err(e) = procmesh_broker::log::init("procmesh", &args.log) {
                eprintln!("procmesh: {e}");
                return ExitCode::from(2);
            }
            let serve = matches
                .subcommand_matches("serve")
                .expect("invariant: the serve subcommand was parsed");
            let metrics = match args.metrics_listen() {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::from(2);
                }
            };
            let opts = std::env::var("PROCMESH_BROKER_OPTS").ok();
            match BrokerConfig::resolve(serve, opts.as_deref()) {
                Ok(cfg) => commands::serve(cfg, metrics),
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Status { mesh } => commands::status(&mesh.target, mesh.shards),
        Cmd::Stop { mesh } => commands::stop(&mesh.target, mesh.shards),
        Cmd::Stats {
            mesh,
            json,
            format,
            watch,
        } => {
            let format = if json { StatsFormat::Json } else { format };
            commands::stats(&mesh.target, mesh.shards, format, watch)
        }
        Cmd::Get { mesh, key, raw } => shell::get(&mesh, &key, raw),
        Cmd::Set {
            mesh,
            key,
            value,
            ttl,
            raw,
        } => shell::set(&mesh, &key, &value, ttl, raw),
        Cmd::Del { mesh, key } => shell::del(&mesh, &key),
        Cmd::Keys {
            mesh,
            prefix,
            limit,
        } => shell::keys(&mesh, prefix.as_deref(), limit),
        Cmd::Incr { mesh, key, by } => shell::incr(&mesh, &key, by),
        Cmd::Cas {
            mesh,
            key,
            prev,
            next,
            raw,
        } => shell::cas(&mesh, &key, &prev, &next, raw),
        Cmd::Publish {
            mesh,
            channel,
            payload,
            raw,
        } => shell::publish(&mesh, &channel, &payload, raw),
        Cmd::Subscribe { mesh, channels } => shell::subscribe(&mesh, &channels),
        Cmd::Call {
            mesh,
            procedure,
            args,
            timeout,
            raw,
        } => shell::call(&mesh, &procedure, args.as_deref(), timeout, raw),
        Cmd::Lock {
            mesh,
            key,
            ttl,
            wait,
            cmd,
        } => shell::lock(&mesh, &key, ttl, wait, &cmd),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "procmesh",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Cmd::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("procmesh: {e}");
                ExitCode::from(1)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
