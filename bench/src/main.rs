//! `procmesh-bench`: parses the command line and runs a benchmark or renders a report.

use clap::Parser;
use procmesh_bench::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Report(r)) => std::fs::read_to_string(&r.runs)
            .map_err(|e| format!("cannot read {}: {e}", r.runs.display()))
            .and_then(|text| procmesh_bench::report::render_markdown(&text))
            .map(|md| print!("{md}")),
        None => procmesh_bench::run::run(&cli.run).and_then(|res| {
            if cli.run.json {
                serde_json::to_string(&res)
                    .map(|j| println!("{j}"))
                    .map_err(|e| e.to_string())
            } else {
                print!("{}", res.to_text());
                Ok(())
            }
        }),
    };
    if let Err(e) = outcome {
        eprintln!("procmesh-bench: {e}");
        std::process::exit(1);
    }
}
