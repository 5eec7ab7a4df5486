//! Connection events (connect, disconnect, reconnect, error) and how users
//! observe them.
//!
//! Events are delivered on the client's dispatch thread, in order, to the
//! callbacks given to [`ClientBuilder::on_event`](crate::ClientBuilder::on_event)
//! and to every receiver from [`Client::events`](crate::Client::events).

use std::fmt;
use std::path::PathBuf;

/// Index of a shard in a sharded client (0 for a plain client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub usize);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// Something that happened to one shard's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The first connection to a shard's broker is up (hello answered).
    Connected {
        /// Which shard.
        shard: ShardId,
        /// Its socket address.
        path: PathBuf,
    },
    /// The connection was lost; requests in flight failed with `EDISCONNECTED`.
    Disconnected {
        /// Which shard.
        shard: ShardId,
        /// Its socket address.
        path: PathBuf,
        /// Why (EOF, I/O error, missed pings, …).
        reason: String,
    },
    /// The connection is back after a disconnect; subscriptions and
    /// registrations have been sent again.
    Reconnected {
        /// Which shard.
        shard: ShardId,
        /// Its socket address.
        path: PathBuf,
        /// Connection attempts it took.
        attempts: u32,
    },
    /// The client started a broker because none was listening.
    Spawned {
        /// Which shard.
        shard: ShardId,
        /// The socket address the broker was started for.
        path: PathBuf,
        /// The broker binary.
        program: PathBuf,
    },
    /// Something failed outside any request: a replayed subscription was refused,
    /// a frame could not be decoded, a handler panicked, a reconnect attempt failed.
    Error {
        /// Which shard.
        shard: ShardId,
        /// What failed.
        message: String,
    },
}

impl Event {
    /// The shard the event is about.
    pub fn shard(&self) -> ShardId {
        match self {
            Event::Connected { shard, .. }
            | Event::Disconnected { shard, .. }
            | Event::Reconnected { shard, .. }
            | Event::Spawned { shard, .. }
            | Event::Error { shard, .. } => *shard,
        }
    }
}
