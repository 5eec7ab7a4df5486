//! Smoke test: every workload of the load generator against an in-process broker,
//! with a few hundred requests each. Checks counts and errors, never speed.

use clap::Parser;
use procmesh_bench::cli::RunArgs;
use procmesh_broker::Broker;

fn args(socket: &std::path::Path, extra: &[&str]) -> RunArgs {
    let mut v = vec![
        "procmesh-bench",
        "--socket",
        socket.to_str().expect("utf-8 temp path"),
    ];
    v.extend_from_slice(extra);
    RunArgs::parse_from(v)
}

#[test]
fn every_workload_against_an_in_process_broker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::builder()
        .socket(dir.path().join("bench.sock"))
        .max_keys(0)
        .start()
        .expect("broker starts");
    let sock = broker.path().to_path_buf();

    for codec in ["msgpack", "json"] {
        for w in ["set", "get", "incr", "mixed", "lock", "call"] {
            let r = procmesh_bench::run::run(&args(
                &sock,
                &[
                    "-t",
                    w,
                    "-c",
                    "3",
                    "-P",
                    "8",
                    "-n",
                    "600",
                    "-r",
                    "100",
                    "--codec",
                    codec,
                    "--threads",
                    "2",
                ],
            ))
            .unwrap_or_else(|e| panic!("{w} ({codec}): {e}"));
            assert_eq!((r.requests, r.errors), (600, 0), "{w} ({codec}): {r:?}");
            assert!(r.latency_us.p50 > 0.0, "{w}: {r:?}");
        }
    }

    let r = procmesh_bench::run::run(&args(
        &sock,
        &[
            "-t", "publish", "-c", "1", "-P", "4", "-s", "3", "-n", "200",
        ],
    ))
    .expect("publish runs");
    assert_eq!((r.requests, r.errors), (200, 0));
    assert_eq!(r.delivered, Some(600), "{r:?}");

    let r = procmesh_bench::run::run(&args(
        &sock,
        &[
            "-t", "fill", "-c", "2", "-P", "16", "-r", "500", "--size", "32",
        ],
    ))
    .expect("fill runs");
    assert_eq!((r.requests, r.errors), (500, 0));

    let r = procmesh_bench::run::run(&args(
        &sock,
        &["-t", "get", "-c", "1", "-P", "1", "-d", "100ms"],
    ))
    .expect("timed run");
    assert!(r.requests > 0 && r.elapsed_s >= 0.1, "{r:?}");
    drop(broker);
}
