//! `procmesh-bench`: the load generator behind `scripts/compare.sh`, in the spirit of
//! `redis-benchmark`, plus the criterion benches in `benches/`.
//!
//! It speaks the procmesh protocol (or, with `--target redis`, RESP to a Redis server)
//! over Unix sockets with plain blocking `std` streams: each connection keeps `-P`
//! requests in flight by writing a batch of frames, reading whatever replies arrived
//! and refilling as many. Connections are spread over a few threads so that the
//! generator is not the bottleneck; latencies go into an HDR histogram.
//!
//! # Layout
//! - [`cli`]: command-line options.
//! - [`keys`]: the random generator and `redis-benchmark`-style keys, shard routing.
//! - [`wire`]: request encoding and reply parsing for procmesh and for RESP.
//! - [`workload`]: what each stream sends next (keys, values, lock/channel names).
//! - [`stream`]: one socket with its buffers and in-flight window.
//! - [`run`]: threads, workloads, subscribers and RPC workers; produces a [`RunResult`].
//! - [`report`]: the result type, its text/JSON output and the markdown comparison
//!   report built from many runs.
//!
//! # Example
//! ```no_run
//! use clap::Parser;
//! use procmesh_bench::cli::RunArgs;
//!
//! // Equivalent to `procmesh-bench -t get -c 4 -P 64 -n 100000 --socket /tmp/pm.sock`.
//! let args = RunArgs::parse_from(["procmesh-bench", "-t", "get", "-c", "4", "-P", "64",
//!     "-n", "100000", "--socket", "/tmp/pm.sock"]);
//! let result = procmesh_bench::run::run(&args).expect("broker reachable");
//! println!("{:.0} ops/s", result.ops_per_sec);
//! ```

pub mod cli;
pub mod keys;
pub mod report;
pub mod run;
pub mod stream;
pub mod wire;
pub mod workload;

pub use report::RunResult;
