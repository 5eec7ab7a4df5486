//! Integration tests: the real `procmesh` binary over real Unix sockets.

mod support;

mod bad_input;
mod cache;
mod control;
mod dedup;
mod events;
mod locks;
mod options;
mod persistence;
mod pubsub;
mod retained;
mod rpc;
mod shell;
