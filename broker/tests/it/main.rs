//! Integration tests: the real `procmesh` binary over real Unix sockets.

mod support;

mod bad_input;
mod cache;
mod control;
mod events;
mod locks;
mod options;
mod persistence;
mod pubsub;
mod rpc;
mod shell;
