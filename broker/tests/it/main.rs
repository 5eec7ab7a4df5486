//! Integration tests: the real `procmesh` binary over real Unix sockets.

mod support;

mod bad_input;
mod cache;
mod control;
mod hardening_misc;
mod locks;
mod persistence;
mod pubsub;
mod rpc;
mod shell;
