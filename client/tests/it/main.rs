//! Integration tests of the client against the real broker over real Unix
//! sockets: in-process brokers for API semantics, `procmesh serve` processes
//! and re-executions of this binary for everything about processes (sharing,
//! auto-spawn races, kill and restart, sharding).

mod redis_support;
mod support;

mod address;
#[cfg(feature = "tokio")]
mod aio;
mod behaviour;
mod cache;
mod connection;
mod locks;
mod near_cache;
mod negotiate;
mod pipeline;
mod processes;
mod pubsub;
#[cfg(feature = "redis")]
mod redis_backend;
#[cfg(feature = "redis")]
mod redis_cluster;
mod retained;
mod rpc;
mod sharding;
mod stream;

/// Entry point of child processes: the multi-process tests run this binary
/// again with `PROCMESH_IT_ROLE` set (see `support::child`).
#[test]
#[ignore = "child-process entry, run by the multi-process tests"]
fn child_entry() {
    let role = std::env::var("PROCMESH_IT_ROLE").expect("PROCMESH_IT_ROLE");
    if role.starts_with("near-") {
        near_cache::run_role(&role);
    } else {
        processes::run_role(&role);
    }
}
