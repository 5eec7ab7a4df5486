//! Integration tests: the real `procmesh` binary over real Unix sockets.

mod support;

mod bad_input;
mod cache;
mod control;
mod dedup;
mod durability;
mod hardening_misc;
mod locks;
mod msgpackr;
mod persistence;
mod pubsub;
mod retained;
mod rpc;
mod shell;
