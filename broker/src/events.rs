//! Broker events for an embedded broker, like the `Broker` EventEmitter of procmesh-js:
//! `connect`, `disconnect`, `drop`, `reap`, `stats` (every `statsInterval`) and
//! `persist-error`.
//!
//! `events` owns the event type and the sending side of one bounded channel
//! ([`EventSink`]); the loop never blocks on it: when the receiver lags and the
//! channel is full, the event is dropped and counted ([`EventSink::dropped`]). Without
//! a sink (the default) nothing is built or sent: each emit point is one `Option`
//! check. When the receiver is dropped, the loop stops emitting.
//! Bound: the channel's capacity, chosen by the embedder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use procmesh_proto::stats::StatsReport;

/// A connection, as events name it: unique for the broker's lifetime (the
/// connection's serial, not its reusable slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnSerial(pub u64);

/// Something that happened in the broker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BrokerEvent {
    /// `connect`: a connection was accepted.
    Connect(ConnSerial),
    /// `disconnect`: a connection was closed (by either side, or reaped).
    Disconnect(ConnSerial),
    /// `drop`: a best-effort message on `channel` was dropped at a slow consumer.
    Drop {
        /// The channel the message was published on.
        channel: String,
        /// The consumer that was too slow.
        conn: ConnSerial,
    },
    /// `reap`: a connection silent for three heartbeat intervals was closed.
    Reap(ConnSerial),
    /// `stats`: the periodic snapshot (the same report the `stats` command gives).
    Stats(Box<StatsReport>),
    /// `persist-error`: writing or syncing the log (or a snapshot) failed; writes are
    /// refused until it recovers.
    PersistError(String),
}

impl BrokerEvent {
    /// The procmesh-js event name: `connect`, `disconnect`, `drop`, `reap`, `stats`,
    /// `persist-error`.
    pub fn name(&self) -> &'static str {
        match self {
            BrokerEvent::Connect(_) => "connect",
            BrokerEvent::Disconnect(_) => "disconnect",
            BrokerEvent::Drop { .. } => "drop",
            BrokerEvent::Reap(_) => "reap",
            BrokerEvent::Stats(_) => "stats",
            BrokerEvent::PersistError(_) => "persist-error",
        }
    }
}

/// The loop's end of the event channel.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: SyncSender<BrokerEvent>,
    dropped: Arc<AtomicU64>,
}

/// A bounded event channel holding at most `capacity` undelivered events (at least 1).
pub fn channel(capacity: usize) -> (EventSink, Receiver<BrokerEvent>) {
    let (tx, rx) = sync_channel(capacity.max(1));
    (
        EventSink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        },
        rx,
    )
}

impl EventSink {
    /// Events dropped because the receiver lagged (shared by every clone).
    pub fn dropped(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }
}

/// The loop's optional sink; emitting through it never blocks.
#[derive(Debug, Default)]
pub struct Events {
    sink: Option<EventSink>,
}

impl Events {
    /// Events going to `sink` (or nowhere).
    pub fn new(sink: Option<EventSink>) -> Events {
        Events { sink }
    }

    /// Whether anyone listens: emit points that must build something (a channel
    /// name, a stats report) check this first.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.sink.is_some()
    }

    /// Sends `ev` if someone listens; counts it when the channel is full, stops
    /// emitting once the receiver is gone.
    #[inline]
    pub fn emit(&mut self, ev: impl FnOnce() -> BrokerEvent) {
        let Some(s) = &self.sink else { return };
        match s.tx.try_send(ev()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                s.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => self.sink = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_drops_and_counts_and_a_gone_receiver_stops_emitting() {
        let (sink, rx) = channel(2);
        let dropped = sink.dropped();
        let mut ev = Events::new(Some(sink));
        for i in 0..5 {
            ev.emit(|| BrokerEvent::Connect(ConnSerial(i)));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        let got: Vec<_> = rx.try_iter().map(|e| e.name()).collect();
        assert_eq!(got, ["connect", "connect"]);
        drop(rx);
        ev.emit(|| BrokerEvent::Reap(ConnSerial(9)));
        assert!(!ev.is_on(), "the receiver is gone: no more events");
        let mut built = false;
        ev.emit(|| {
            built = true;
            BrokerEvent::Reap(ConnSerial(9))
        });
        assert!(!built, "nothing is built without a listener");
    }
}
