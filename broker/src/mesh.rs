//! The mesh state a broker holds, gathered in one struct for the command families.
//!
//! `mesh` owns no logic: each field is a module that owns its own state (`store`
//! the cache, `locks` the locks, `pubsub` the subscriptions, `rpc` the pools and
//! calls, `timers` their deadlines, `stats` the counters, the persistence
//! [`Gate`] the durability decisions), plus the turn's clock and reusable scratch
//! buffers. Connections and their output are not here ([`crate::connection::Conns`]):
//! `dispatch` takes both, so a reply can borrow a stored value while it is written.
//! `core` owns one `Mesh`; nothing in here knows which I/O loop feeds it.

use std::time::Duration;

use procmesh_proto::msgpackr::{Encoder, Normalizer};

use crate::config::BrokerConfig;
use crate::connection::ConnId;
use crate::dedup::Dedup;
use crate::locks::{LockEvent, LockTable};
use crate::persistence::gate::Gate;
use crate::pubsub::PubSub;
use crate::retain::Retain;
use crate::rpc::Rpc;
use crate::stats::Stats;
use crate::store::Store;
use crate::timers::Timers;
use crate::tracking::MeshEffects;

/// The fan-out slot of connections that write msgpackr records.
pub const FANOUT_RECORDS: usize = 2;

/// The broker's cache: effects are logged once persistence is switched on, and key
/// changes reach the near-cache tracking table.
pub type MeshStore = Store<MeshEffects>;

/// All mesh state; see the module doc.
pub struct Mesh {
    /// Configuration.
    pub cfg: BrokerConfig,
    /// The cache.
    pub store: MeshStore,
    /// Subscriptions.
    pub pubsub: PubSub,
    /// Idempotent-producer dedup.
    pub dedup: Dedup,
    /// Offsets and retained messages.
    pub retain: Retain,
    /// Wall-clock ms (Unix epoch) at broker time 0: `epoch0 + now` stamps retained
    /// messages, so their age survives a restart.
    pub epoch0: u64,
    /// Worker pools and pending calls.
    pub rpc: Rpc,
    /// Locks and fencing tokens.
    pub locks: LockTable,
    /// Call deadlines, lock TTLs and waits.
    pub timers: Timers,
    /// Counters.
    pub stats: Stats,
    /// Write admission, held replies and the log commit.
    pub gate: Gate,
    /// This turn's time, ms on the broker clock.
    pub now: u64,
    /// CPU time used before the broker started (for the stats' CPU fraction).
    pub cpu_start: Duration,
    /// Last minted producer id suffix.
    pub next_pid: u64,
    /// A client asked for shutdown (or a signal did).
    pub shutdown: bool,
    /// Scratch: lock events to deliver (reused, never shrunk).
    pub lock_events: Vec<LockEvent>,
    /// Scratch: one encoded `msg` frame per dialect for a fan-out (JSON, MessagePack,
    /// msgpackr records: `[FANOUT_RECORDS]`).
    pub fanout: [Vec<u8>; 3],
    /// msgpackr input: the normaliser and the plain frame it writes (one frame, at most
    /// the frame limit; reused, shrunk back after a spike).
    pub mpr_in: Normalizer,
    pub mpr_plain: Vec<u8>,
    /// msgpackr output for fan-outs (converted once per publish).
    pub mpr_enc: Encoder,
    /// Scratch: a publish's matching connections.
    pub targets: Vec<ConnId>,
    /// Broker events for an embedder (off unless one listens).
    pub events: crate::events::Events,
}
