//! Integration tests: the real `procmesh` binary over real Unix sockets.

mod support;

mod bad_input;
mod cache;
mod control;
mod dedup;
mod durability;
mod events;
mod hardening_files;
mod hardening_limits;
mod hardening_misc;
mod hardening_replies;
mod locks;
mod logs;
mod msgpackr;
mod options;
mod persistence;
mod pubsub;
mod retained;
mod rpc;
mod scan;
mod shell;
mod tracking;
