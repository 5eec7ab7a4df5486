//! Issue 11 item 7, the client's delivery guarantees: acks 0/1/"all", the
//! idempotent producer (dedup of a retried sequence, gap fill, a stable producer
//! id across clients and across a broker restart), replay/since on subscribe,
//! `Message::offset`, and catch-up after a reconnect with no gap and no duplicate.
//! Real brokers: `procmesh serve` processes with `--pubsub-persist` (and a
//! persistence directory with `--fsync always` where a restart must keep state),
//! or an in-process broker with retention in memory; both codecs.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;
use std::time::Instant;

use procmesh::{
    Acks, Client, ClientBuilder, Codec, Event, Message, PublishOptions, Published, Replay,
    SubscribeOptions,
};
use procmesh_broker::retain::RetainConfig;

use crate::support::{wait_event, BrokerProc, InProc, CODECS, WAIT};

/// The payload that marks the end of a test's messages: everything published
/// before it on the channel has reached a subscriber once it arrives.
const END: i64 = -1;

/// A `procmesh serve` with retained pub/sub, persisted (`--fsync always`) unless
/// `in_memory`, restartable on the same socket and directory.
struct Retained {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    data: PathBuf,
    in_memory: bool,
    broker: Option<BrokerProc>,
}

impl Retained {
    fn persisted() -> Retained {
        Self::new(false)
    }

    fn new(in_memory: bool) -> Retained {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Retained {
            sock: dir.path().join("mesh.sock"),
            data: dir.path().join("data"),
            _dir: dir,
            in_memory,
            broker: None,
        };
        r.start();
        r
    }

    fn start(&mut self) {
        let data = self.data.to_str().unwrap().to_owned();
        let mut args = vec!["--pubsub-persist"];
        if self.in_memory {
            args.push("--no-persist");
        } else {
            args.extend(["--persist-dir", &data, "--fsync", "always"]);
        }
        self.broker = Some(BrokerProc::start(&self.sock, &args));
    }

    /// SIGKILL (every acknowledged write is on disk with `--fsync always`).
    fn kill(&mut self) {
        if let Some(mut b) = self.broker.take() {
            b.kill();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.start();
    }

    fn builder(&self, codec: Codec) -> ClientBuilder {
        Client::builder()
            .address(&self.sock)
            .codec(codec)
            .auto_spawn(false)
            .call_timeout(WAIT)
    }

    fn client(&self, codec: Codec) -> Client {
        self.builder(codec).connect().expect("connect")
    }
}

/// An in-process broker retaining up to 100 messages per channel, in memory.
fn in_memory() -> InProc {
    InProc::start_with(|b| {
        b.pubsub(RetainConfig {
            persist: true,
            retention: 100,
            ..Default::default()
        })
    })
}

/// What a collecting handler saw: `(offset, payload)` per message.
type Seen = Receiver<(Option<u64>, i64)>;

/// A handler that forwards `(offset, payload)`, and the receiving end.
fn collector() -> (impl Fn(Message) + Send + Sync + 'static, Seen) {
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let h = move |m: Message| {
        let _ = tx
            .lock()
            .unwrap()
            .send((m.offset(), m.payload::<i64>().unwrap()));
    };
    (h, rx)
}

/// Everything `rx` gets up to the [`END`] marker (which the caller publishes).
fn until_end(rx: &Seen) -> Vec<(Option<u64>, i64)> {
    let deadline = Instant::now() + WAIT * 3;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (o, n) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no end marker; got {out:?}"));
        if n == END {
            return out;
        }
        out.push((o, n));
    }
}

fn values(got: &[(Option<u64>, i64)]) -> Vec<i64> {
    got.iter().map(|(_, n)| *n).collect()
}

fn offsets(got: &[(Option<u64>, i64)]) -> Vec<u64> {
    got.iter()
        .map(|(o, _)| o.expect("a retained message has an offset"))
        .collect()
}

fn assert_ascending(offs: &[u64]) {
    assert!(
        offs.windows(2).all(|w| w[0] < w[1]),
        "offsets not strictly increasing: {offs:?}"
    );
}

#[test]
fn acks_none_leader_and_all_are_answered_as_asked() {
    for codec in CODECS {
        let b = Retained::persisted();
        let sub = b.client(codec);
        let (h, rx) = collector();
        let _s = sub.subscribe("orders", h).unwrap();
        let p = b.client(codec);
        let none = p.publish_with("orders", &1, PublishOptions::new().acks(Acks::None));
        assert_eq!(none.unwrap(), Published::Sent);
        let leader = p.publish_with("orders", &2, PublishOptions::new().acks(Acks::Leader));
        assert_eq!(leader.unwrap(), Published::Delivered(1));
        // acks "all" on a retained channel of a persisting broker: answered after fsync.
        let all = p.publish_with("orders", &3, PublishOptions::new().acks(Acks::All));
        assert_eq!(all.unwrap().delivered(), Some(1));
        assert_eq!(p.publish("orders", &END).unwrap(), 1);
        let got = until_end(&rx);
        assert_eq!(values(&got), vec![1, 2, 3], "{codec:?}");
        assert_ascending(&offsets(&got));
    }
}

#[test]
fn a_retried_sequence_is_delivered_once_and_answered_duplicate() {
    for codec in CODECS {
        let b = in_memory();
        let sub = b.client(codec);
        let (h, rx) = collector();
        let _s = sub.subscribe("c", h).unwrap();
        let p = Client::builder()
            .address(&b.path)
            .codec(codec)
            .auto_spawn(false)
            .idempotent(true)
            .connect()
            .unwrap();
        assert_eq!(
            p.publish_with("c", &1, PublishOptions::new()).unwrap(),
            Published::Delivered(1)
        );
        assert_eq!(p.sequence("c"), 1);
        // The same sequence number again (what a retry sends): deduplicated.
        p.set_sequence("c", 0).unwrap();
        let again = p.publish_with("c", &1, PublishOptions::new()).unwrap();
        assert!(again.is_duplicate(), "{again:?}");
        assert_eq!(p.publish("c", &2).unwrap(), 1, "seq 2 is new");
        // `publish` reports a duplicate as delivered to 0.
        p.set_sequence("c", 1).unwrap();
        assert_eq!(p.publish("c", &2).unwrap(), 0);
        // Not idempotent for one call: no sequence, always delivered.
        let plain = p.publish_with("c", &3, PublishOptions::new().idempotent(false));
        assert_eq!(plain.unwrap(), Published::Delivered(1));
        p.publish_with("c", &END, PublishOptions::new().idempotent(false))
            .unwrap();
        assert_eq!(values(&until_end(&rx)), vec![1, 2, 3], "{codec:?}");
    }
}

#[test]
fn a_gap_sequence_inside_the_window_is_delivered() {
    for codec in CODECS {
        let b = in_memory();
        let sub = b.client(codec);
        let (h, rx) = collector();
        let _s = sub.subscribe("g", h).unwrap();
        let p = b.client(codec);
        let idem = || PublishOptions::new().idempotent(true);
        p.publish_with("g", &1, idem()).unwrap();
        // Skip seq 2: publish seq 3, then fill the gap with seq 2.
        p.set_sequence("g", 2).unwrap();
        assert_eq!(
            p.publish_with("g", &3, idem()).unwrap(),
            Published::Delivered(1)
        );
        p.set_sequence("g", 1).unwrap();
        assert_eq!(
            p.publish_with("g", &2, idem()).unwrap(),
            Published::Delivered(1)
        );
        // Filled once, it is a duplicate like any other.
        p.set_sequence("g", 1).unwrap();
        assert!(p.publish_with("g", &2, idem()).unwrap().is_duplicate());
        p.publish("g", &END).unwrap();
        assert_eq!(values(&until_end(&rx)), vec![1, 3, 2], "{codec:?}");
    }
}

#[test]
fn a_stable_producer_id_continues_its_sequences_in_a_second_client() {
    for codec in CODECS {
        let b = in_memory();
        let sub = b.client(codec);
        let (h, rx) = collector();
        let _s = sub.subscribe("jobs", h).unwrap();
        let first = Client::builder()
            .address(&b.path)
            .codec(codec)
            .auto_spawn(false)
            .producer_id("producer-a")
            .connect()
            .unwrap();
        for n in 1..=3 {
            assert_eq!(first.publish("jobs", &n).unwrap(), 1);
        }
        let last = first.sequence("jobs");
        assert_eq!(last, 3);
        first.close();
        // The "restarted" producer: same id; without the sequences it would start at
        // 1 and the broker would take its messages for the first one's.
        let restarted = |seqs: u64| {
            Client::builder()
                .address(&b.path)
                .codec(codec)
                .auto_spawn(false)
                .producer_id("producer-a")
                .sequences([("jobs", seqs)])
                .connect()
                .unwrap()
        };
        let naive = restarted(0);
        assert!(naive
            .publish_with("jobs", &99, PublishOptions::new())
            .unwrap()
            .is_duplicate());
        naive.close();
        let second = restarted(last);
        assert_eq!(
            second
                .publish_with("jobs", &4, PublishOptions::new())
                .unwrap(),
            Published::Delivered(1)
        );
        second
            .publish_with("jobs", &END, PublishOptions::new().idempotent(false))
            .unwrap();
        assert_eq!(values(&until_end(&rx)), vec![1, 2, 3, 4], "{codec:?}");
    }
}

#[test]
fn dedup_holds_across_a_broker_restart_with_persistence() {
    for codec in CODECS {
        let mut b = Retained::persisted();
        let producer = |b: &Retained, seqs: u64| {
            b.builder(codec)
                .producer_id("stable")
                .sequences([("d", seqs)])
                .connect()
                .unwrap()
        };
        let p = producer(&b, 0);
        for n in 1..=2 {
            let r = p.publish_with("d", &n, PublishOptions::new().acks(Acks::All));
            assert_eq!(r.unwrap(), Published::Delivered(0));
        }
        p.close();
        b.restart();
        // Seq 2 again after the restart: the broker still knows it.
        let p = producer(&b, 1);
        assert!(
            p.publish_with("d", &2, PublishOptions::new())
                .unwrap()
                .is_duplicate(),
            "{codec:?}"
        );
        assert_eq!(
            p.publish_with("d", &3, PublishOptions::new()).unwrap(),
            Published::Delivered(0)
        );
        // And what was retained is exactly 1, 2, 3.
        let s = b.client(codec);
        let (h, rx) = collector();
        let _s = s
            .subscribe_with("d", SubscribeOptions::new().replay(Replay::All), h)
            .unwrap();
        p.publish_with("d", &END, PublishOptions::new().idempotent(false))
            .unwrap();
        assert_eq!(values(&until_end(&rx)), vec![1, 2, 3], "{codec:?}");
    }
}

#[test]
fn replay_on_subscribe_delivers_the_backlog_in_memory_oldest_first() {
    for codec in CODECS {
        let b = in_memory();
        let p = b.client(codec);
        for n in 1..=5 {
            p.publish("r", &n).unwrap();
        }
        let s = b.client(codec);
        let (h, all_rx) = collector();
        let _all = s
            .subscribe_with("r", SubscribeOptions::new().replay(Replay::All), h)
            .unwrap();
        let (h, last_rx) = collector();
        // Another pattern (an exact channel and a wildcard are separate subscriptions).
        let _last = s
            .subscribe_with("r*", SubscribeOptions::new().replay(Replay::Last(2)), h)
            .unwrap();
        let (h, live_rx) = collector();
        let live_client = b.client(codec);
        let _live = live_client.subscribe("r", h).unwrap();
        p.publish("r", &6).unwrap();
        p.publish("r", &END).unwrap();
        let all = until_end(&all_rx);
        assert_eq!(values(&all), vec![1, 2, 3, 4, 5, 6], "{codec:?}");
        assert_ascending(&offsets(&all));
        assert_eq!(values(&until_end(&last_rx)), vec![4, 5, 6], "{codec:?}");
        assert_eq!(
            values(&until_end(&live_rx)),
            vec![6],
            "no replay without asking"
        );
    }
}

#[test]
fn replay_after_a_broker_restart_with_persistence() {
    for codec in CODECS {
        let mut b = Retained::persisted();
        let p = b.client(codec);
        for n in 1..=3 {
            p.publish_with("kept", &n, PublishOptions::new().acks(Acks::All))
                .unwrap();
        }
        p.close();
        b.restart();
        let s = b.client(codec);
        let (h, rx) = collector();
        let _s = s
            .subscribe_with("kept", SubscribeOptions::new().replay(Replay::All), h)
            .unwrap();
        s.publish("kept", &END).unwrap();
        let got = until_end(&rx);
        assert_eq!(values(&got), vec![1, 2, 3], "{codec:?}");
        assert_ascending(&offsets(&got));
    }
}

#[test]
fn since_replays_only_offsets_above_it_and_never_delivers_one_below() {
    for codec in CODECS {
        let b = in_memory();
        let s = b.client(codec);
        let (h, rx) = collector();
        let first = s.subscribe("s", h).unwrap();
        let p = b.client(codec);
        for n in 1..=4 {
            p.publish("s", &n).unwrap();
        }
        p.publish("s", &END).unwrap();
        let got = until_end(&rx);
        first.unsubscribe().unwrap();
        let second_offset = offsets(&got)[1];
        // A later run resumes after the second message it handled.
        let (h, rx) = collector();
        let _s = s
            .subscribe_with("s", SubscribeOptions::new().since(second_offset), h)
            .unwrap();
        p.publish("s", &5).unwrap();
        p.publish("s", &END).unwrap();
        let resumed = until_end(&rx);
        // Above `since` from the backlog (3, 4 and the first END marker), then live.
        assert_eq!(values(&resumed), vec![3, 4], "{codec:?}: {resumed:?}");
        let resumed = until_end(&rx);
        assert_eq!(values(&resumed), vec![5], "{codec:?}");
    }
}

#[test]
fn unsubscribe_then_resubscribe_with_replay_gets_the_backlog_again() {
    for codec in CODECS {
        let b = in_memory();
        let p = b.client(codec);
        for n in 1..=3 {
            p.publish("u", &n).unwrap();
        }
        let s = b.client(codec);
        for round in 0..2 {
            let (h, rx) = collector();
            let sub = s
                .subscribe_with("u", SubscribeOptions::new().replay(Replay::All), h)
                .unwrap();
            p.publish("u", &END).unwrap();
            // The backlog holds the END markers of earlier rounds too.
            let mut got = until_end(&rx);
            for _ in 0..round {
                got.extend(until_end(&rx));
            }
            assert_eq!(values(&got), vec![1, 2, 3], "{codec:?} round {round}");
            sub.unsubscribe().unwrap();
        }
    }
}

#[test]
fn reconnect_catch_up_has_no_gap_and_no_duplicate() {
    const N: i64 = 300;
    for codec in CODECS {
        let mut b = Retained::persisted();
        let s = b.client(codec);
        let events = s.events();
        let (h, rx) = collector();
        let _sub = s.subscribe("feed", h).unwrap();
        let p = b
            .builder(codec)
            .idempotent(true)
            .publish_retries(20)
            .call_timeout(WAIT * 2)
            .connect()
            .unwrap();
        let (progress_tx, progress) = channel::<i64>();
        let publisher = std::thread::spawn(move || {
            for n in 0..N {
                let r = p.publish_with("feed", &n, PublishOptions::new().acks(Acks::All));
                r.unwrap_or_else(|e| panic!("publish {n}: {e}"));
                let _ = progress_tx.send(n);
            }
            p
        });
        // Kill and restart the broker twice while the publisher is at it; the
        // subscriber misses what is published while it is away.
        for at in [N / 3, 2 * N / 3] {
            while progress.recv_timeout(WAIT).expect("publisher stalled") < at {}
            b.restart();
            wait_event(&events, "reconnect", |e| {
                matches!(e, Event::Reconnected { .. })
            });
        }
        let p = publisher.join().expect("publisher");
        p.publish_with("feed", &END, PublishOptions::new().idempotent(false))
            .unwrap();
        let got = until_end(&rx);
        assert_eq!(
            values(&got),
            (0..N).collect::<Vec<_>>(),
            "{codec:?}: a gap or a duplicate"
        );
        assert_ascending(&offsets(&got));
    }
}

#[test]
fn a_subscribe_issued_while_disconnected_replays_after_connecting() {
    for codec in CODECS {
        let mut b = Retained::persisted();
        let p = b.client(codec);
        for n in 1..=3 {
            p.publish_with("later", &n, PublishOptions::new().acks(Acks::All))
                .unwrap();
        }
        p.close();
        let s = b.client(codec);
        let events = s.events();
        b.kill();
        wait_event(&events, "disconnect", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        let (h, rx) = collector();
        let (asking_tx, asking) = channel::<()>();
        let subscribing = {
            let s = s.clone();
            std::thread::spawn(move || {
                asking_tx.send(()).unwrap();
                // Waits for the reconnect; the subscription is in the client's table
                // before, so the reconnect's resubscription asks for the replay (or,
                // had the thread been slower, this call's own `sub` does).
                s.subscribe_with("later", SubscribeOptions::new().replay(Replay::All), h)
            })
        };
        asking.recv_timeout(WAIT).unwrap();
        b.start();
        let _sub = subscribing
            .join()
            .unwrap()
            .expect("subscribe after reconnect");
        s.publish("later", &END).unwrap();
        let got = until_end(&rx);
        assert_eq!(values(&got), vec![1, 2, 3], "{codec:?}: replayed once");
    }
}

#[test]
fn an_in_memory_broker_restart_does_not_make_the_subscriber_skip_new_messages() {
    // Offsets start again on a broker without persistence: the watermark must
    // follow the new broker's offsets down, or messages would be taken for seen.
    for codec in CODECS {
        let mut b = Retained::new(true);
        let s = b.client(codec);
        let events = s.events();
        let (h, rx) = collector();
        let _sub = s.subscribe("m", h).unwrap();
        let p = b.client(codec);
        for n in 1..=5 {
            p.publish("m", &n).unwrap();
        }
        p.publish("m", &END).unwrap();
        assert_eq!(values(&until_end(&rx)), vec![1, 2, 3, 4, 5]);
        b.restart();
        wait_event(&events, "reconnect", |e| {
            matches!(e, Event::Reconnected { .. })
        });
        let p = b.client(codec);
        p.publish("m", &6).unwrap();
        p.publish("m", &END).unwrap();
        let got = until_end(&rx);
        assert_eq!(values(&got), vec![6], "{codec:?}");
        assert_eq!(offsets(&got), vec![1], "the new broker's first offset");
    }
}

#[test]
fn wildcard_replay_over_two_shards_gets_each_shards_backlog() {
    for codec in CODECS {
        let (a, c) = (in_memory(), in_memory());
        let client = || {
            Client::builder()
                .addresses([a.path.clone(), c.path.clone()])
                .codec(codec)
                .auto_spawn(false)
                .connect()
                .unwrap()
        };
        let p = client();
        // Channels on both shards.
        let chans: Vec<String> = (0..8).map(|i| format!("w.{i}")).collect();
        assert!(chans.iter().any(|ch| p.shard_of(ch).0 == 0));
        assert!(chans.iter().any(|ch| p.shard_of(ch).0 == 1));
        for (i, ch) in chans.iter().enumerate() {
            p.publish(ch, &(i as i64)).unwrap();
        }
        let s = client();
        let (h, rx) = collector();
        let _s = s
            .subscribe_with("w.*", SubscribeOptions::new().replay(Replay::All), h)
            .unwrap();
        let mut got: Vec<i64> = (0..chans.len())
            .map(|_| rx.recv_timeout(WAIT).expect("replayed message").1)
            .collect();
        got.sort();
        assert_eq!(got, (0..8).collect::<Vec<_>>(), "{codec:?}");
        // Offsets are per broker: nothing else arrives before a marker on each shard.
        for ch in ["w.0", "w.1", "w.2", "w.3"] {
            p.publish(ch, &END).unwrap();
        }
        for _ in 0..4 {
            assert_eq!(rx.recv_timeout(WAIT).unwrap().1, END, "no duplicate replay");
        }
    }
}

#[test]
fn an_idempotent_publish_cut_off_by_a_broker_crash_is_retried_after_the_reconnect() {
    for codec in CODECS {
        let mut b = Retained::persisted();
        let p = b
            .builder(codec)
            .idempotent(true)
            .publish_retries(10)
            .connect()
            .unwrap();
        // A stopped broker takes the frame into its socket buffer and never answers;
        // SIGKILL then cuts the connection with the publish unacknowledged.
        b.broker.as_ref().unwrap().signal(libc::SIGSTOP);
        let (asking_tx, asking) = channel::<()>();
        let publishing = {
            let p = p.clone();
            std::thread::spawn(move || {
                asking_tx.send(()).unwrap();
                p.publish_with("x", &1, PublishOptions::new().acks(Acks::All))
            })
        };
        asking.recv_timeout(WAIT).unwrap();
        b.restart();
        let r = publishing
            .join()
            .unwrap()
            .expect("retried after the reconnect");
        assert_eq!(r, Published::Delivered(0), "{codec:?}");
        let s = b.client(codec);
        let (h, rx) = collector();
        let _s = s
            .subscribe_with("x", SubscribeOptions::new().replay(Replay::All), h)
            .unwrap();
        s.publish("x", &END).unwrap();
        assert_eq!(
            values(&until_end(&rx)),
            vec![1],
            "{codec:?}: delivered once"
        );
    }
}

#[test]
fn the_broker_minted_producer_id_is_presented_again_after_a_reconnect() {
    for codec in CODECS {
        let mut b = Retained::persisted();
        // No producer id of our own: the broker mints one in `welcome`.
        let p = b.builder(codec).idempotent(true).connect().unwrap();
        let events = p.events();
        assert_eq!(p.publish("pid", &1).unwrap(), 0);
        b.restart();
        wait_event(&events, "reconnect", |e| {
            matches!(e, Event::Reconnected { .. })
        });
        // Seq 1 again: a duplicate only if the reconnect presented the same id.
        p.set_sequence("pid", 0).unwrap();
        let again = p.publish_with("pid", &1, PublishOptions::new()).unwrap();
        assert!(again.is_duplicate(), "{codec:?}: {again:?}");
    }
}
