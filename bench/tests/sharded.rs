//! The load generator's `--shards N`: keys route by FNV-1a to the `NAME#i` sockets.

use clap::Parser;
use procmesh_bench::cli::RunArgs;
use procmesh_broker::Broker;

#[test]
fn sharded_routing_uses_each_shard() {
    // TMPDIR decides where `name#i` sockets live (PROTOCOL.md §1). This is the only
    // test in this binary, so changing the environment races with nothing.
    let dir = tempfile::tempdir().expect("temp dir");
    std::env::set_var("TMPDIR", dir.path());
    std::env::remove_var("PROCMESH_SOCKET");
    let shards: Vec<_> = (0..2)
        .map(|i| {
            Broker::builder()
                .socket(
                    procmesh_proto::addr::AddrEnv::from_lookup(std::env::var_os)
                        .default_socket_path(&format!("bench#{i}")),
                )
                .max_keys(0)
                .start()
                .expect("shard starts")
        })
        .collect();
    let r = procmesh_bench::run::run(&RunArgs::parse_from([
        "procmesh-bench",
        "--name",
        "bench",
        "--shards",
        "2",
        "-t",
        "set",
        "-c",
        "2",
        "-P",
        "4",
        "-n",
        "400",
        "-r",
        "50",
    ]))
    .expect("sharded run");
    assert_eq!((r.requests, r.errors, r.shards), (400, 0, 2));
    let mut total = 0;
    for shard in &shards {
        let mut conn =
            procmesh_broker::cli::CliConn::connect(shard.path(), None).expect("stats connection");
        let stats = conn
            .request(serde_json::json!({"t": "stats"}))
            .expect("stats reply");
        let size = stats["value"]["cacheSize"].as_u64().expect("cacheSize");
        assert!(size > 0, "shard {} got no keys", shard.path().display());
        total += size;
    }
    assert!(total <= 50, "each key lives on one shard only: {total}");
    drop(shards);
}
