//! Issue 11 items 3–4: retained pub/sub (offsets, rings and their bounds, replay on
//! `sub` with `replay`/`since`, across restarts and compaction) and durable acks
//! (every acknowledged `acks:"all"` publish on a retained channel survives SIGKILL).
//! Brokers are embedded (`Broker::builder()`, the config structs of `retain`/`dedup`)
//! over real sockets; the crash test runs one in a child process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use procmesh_broker::dedup::DedupConfig;
use procmesh_broker::persistence::{FsyncMode, PersistConfig};
use procmesh_broker::retain::{DurableAcks, RetainConfig};
use procmesh_broker::{Broker, BrokerHandle};
use serde_json::{json, Value};

use crate::support::{Codec, TestClient};

pub const CODECS: [Codec; 2] = [Codec::Json, Codec::MsgPack];

/// Retention on, with `retention` messages per channel.
pub fn retained(retention: usize) -> RetainConfig {
    RetainConfig {
        persist: true,
        retention,
        ..Default::default()
    }
}

/// An embedded broker on a fixed socket and (optional) persistence directory,
/// restartable with the same configuration.
pub struct Embedded {
    _dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub data: PathBuf,
    pub dedup: DedupConfig,
    pub pubsub: RetainConfig,
    pub persist: Option<PersistConfig>,
    handle: Option<BrokerHandle>,
}

impl Embedded {
    pub fn new(dedup: DedupConfig, pubsub: RetainConfig, fsync: Option<FsyncMode>) -> Embedded {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("mesh.sock");
        let data = dir.path().join("data");
        let persist = fsync.map(|f| {
            let mut p = PersistConfig::new(&data);
            p.fsync = f;
            p
        });
        let mut e = Embedded {
            _dir: dir,
            sock,
            data,
            dedup,
            pubsub,
            persist,
            handle: None,
        };
        e.start();
        e
    }

    pub fn start(&mut self) {
        let h = Broker::builder()
            .socket(&self.sock)
            .heartbeat(None)
            .dedup(self.dedup.clone())
            .pubsub(self.pubsub.clone())
            .persistence(self.persist.clone())
            .start()
            .expect("start embedded broker");
        self.handle = Some(h);
    }

    /// Clean stop, then start again on the same directory.
    pub fn restart(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().expect("clean shutdown");
        }
        self.start();
    }

    pub fn client(&self, codec: Codec) -> TestClient {
        TestClient::hello(&self.sock, codec, None)
    }
}

/// `sub` with extra fields; returns the backlog frames that came before the reply
/// (asserting that nothing else did) and the reply's value.
pub fn sub_replay(c: &mut TestClient, channel: &str, extra: Value) -> (Vec<Value>, Value) {
    let mut req = json!({"t":"sub","channel":channel});
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    assert!(c.inbox.is_empty(), "inbox not empty before sub");
    let id = c.send_request(req);
    let mut backlog = Vec::new();
    loop {
        let f = c.read_frame().expect("broker closed during sub");
        if f["t"] == "msg" {
            backlog.push(f);
            continue;
        }
        assert_eq!(f["id"], json!(id), "unexpected frame {f}");
        assert_eq!(f["t"], "ok", "{f}");
        return (backlog, f["value"].clone());
    }
}

pub fn publish(c: &mut TestClient, channel: &str, payload: Value) -> Value {
    c.ok(json!({"t":"pub","channel":channel,"payload":payload}))
}

/// The `msg` frames that reached `c` before a ping sent now is answered.
pub fn drain_msgs(c: &mut TestClient) -> Vec<Value> {
    assert_eq!(c.request(json!({"t":"ping"}))["t"], "pong");
    let msgs: Vec<Value> = c.inbox.drain(..).collect();
    for m in &msgs {
        assert_eq!(m["t"], "msg", "unexpected frame {m}");
    }
    msgs
}

fn payloads(msgs: &[Value]) -> Vec<Value> {
    msgs.iter().map(|m| m["payload"].clone()).collect()
}

fn offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["offset"].as_u64().expect("offset"))
        .collect()
}

#[test]
fn replay_true_delivers_the_backlog_oldest_first_with_offsets_before_the_reply() {
    for codec in CODECS {
        let b = Embedded::new(DedupConfig::default(), retained(100), None);
        let mut p = b.client(codec);
        let mut live = b.client(codec);
        assert_eq!(
            sub_replay(&mut live, "r", json!({})).1,
            json!({"ok":true,"offset":0})
        );
        for n in 1..=3 {
            assert_eq!(publish(&mut p, "r", json!({"n": n})), json!(1));
        }
        // Live deliveries carry the offset too.
        assert_eq!(offsets(&drain_msgs(&mut live)), [1, 2, 3]);
        let mut s = b.client(codec);
        let (backlog, reply) = sub_replay(&mut s, "r", json!({"replay": true}));
        assert_eq!(reply, json!({"ok":true,"offset":3}));
        assert_eq!(
            backlog,
            (1..=3)
                .map(|n| json!({"t":"msg","channel":"r","payload":{"n":n},"offset":n}))
                .collect::<Vec<_>>()
        );
        // Then live messages, continuing the offsets.
        publish(&mut p, "r", json!("live"));
        assert_eq!(offsets(&drain_msgs(&mut s)), [4]);
        // Without replay: no backlog, but the high-water.
        let mut plain = b.client(codec);
        let (none, reply) = sub_replay(&mut plain, "r", json!({}));
        assert!(none.is_empty());
        assert_eq!(reply, json!({"ok":true,"offset":4}));
    }
}

#[test]
fn replay_n_gives_the_most_recent_n_and_since_only_offsets_above() {
    for codec in CODECS {
        let b = Embedded::new(DedupConfig::default(), retained(100), None);
        let mut p = b.client(codec);
        for n in 1..=6 {
            publish(&mut p, "r", json!(n));
        }
        let mut s = b.client(codec);
        let (bl, _) = sub_replay(&mut s, "r", json!({"replay": 2}));
        assert_eq!(payloads(&bl), [json!(5), json!(6)]);
        let mut s = b.client(codec);
        let (bl, _) = sub_replay(&mut s, "r", json!({"since": 3}));
        assert_eq!(offsets(&bl), [4, 5, 6]);
        // `since` wins over `replay`.
        let mut s = b.client(codec);
        let (bl, _) = sub_replay(&mut s, "r", json!({"since": 4, "replay": 1}));
        assert_eq!(offsets(&bl), [5, 6]);
        // replay 0 / false: nothing.
        for r in [json!(0), json!(false)] {
            let mut s = b.client(codec);
            assert!(sub_replay(&mut s, "r", json!({"replay": r})).0.is_empty());
        }
    }
}

#[test]
fn wildcard_sub_replays_every_matching_retained_channel_in_offset_order() {
    for codec in CODECS {
        let b = Embedded::new(DedupConfig::default(), retained(100), None);
        let mut p = b.client(codec);
        publish(&mut p, "a.1", json!(1));
        publish(&mut p, "b.1", json!(2));
        publish(&mut p, "a.2", json!(3));
        publish(&mut p, "a.1", json!(4));
        let mut s = b.client(codec);
        let (bl, reply) = sub_replay(&mut s, "a.*", json!({"replay": true}));
        assert_eq!(reply["offset"], json!(4));
        assert_eq!(offsets(&bl), [1, 3, 4]);
        let chans: Vec<&str> = bl.iter().map(|m| m["channel"].as_str().unwrap()).collect();
        assert_eq!(chans, ["a.1", "a.2", "a.1"]);
    }
}

#[test]
fn replay_has_no_gap_and_no_duplicate_at_the_seam_with_live_publishes() {
    for codec in CODECS {
        let b = Embedded::new(DedupConfig::default(), retained(10_000), None);
        let sock = b.sock.clone();
        const N: u64 = 400;
        let publisher = std::thread::spawn(move || {
            let mut p = TestClient::hello(&sock, codec, None);
            for n in 1..=N {
                publish(&mut p, "seam", json!(n));
            }
        });
        // Subscribe while the publisher runs; wait until at least one was published.
        let mut probe = b.client(codec);
        crate::support::wait_until(Duration::from_secs(20), "a first publish", || {
            sub_replay(&mut probe, "unrelated", json!({})).1["offset"].as_u64() > Some(0)
        });
        let mut s = b.client(codec);
        let (backlog, _) = sub_replay(&mut s, "seam", json!({"replay": true}));
        let mut got = offsets(&backlog);
        while got.last() != Some(&N) {
            let m = s.next_event().expect("message");
            assert_eq!(m["t"], "msg");
            got.push(m["offset"].as_u64().unwrap());
        }
        publisher.join().unwrap();
        assert_eq!(
            got,
            (1..=N).collect::<Vec<_>>(),
            "gap or duplicate at the seam"
        );
    }
}

#[test]
fn retention_count_bound_keeps_the_newest() {
    for codec in CODECS {
        let b = Embedded::new(DedupConfig::default(), retained(3), None);
        let mut p = b.client(codec);
        for n in 1..=5 {
            publish(&mut p, "r", json!(n));
        }
        let mut s = b.client(codec);
        let (bl, reply) = sub_replay(&mut s, "r", json!({"replay": true}));
        assert_eq!(offsets(&bl), [3, 4, 5]);
        assert_eq!(reply["offset"], json!(5));
    }
}

#[test]
fn retention_age_bound_drops_older_messages() {
    for codec in CODECS {
        let cfg = RetainConfig {
            retention_ms: 150,
            ..retained(100)
        };
        let b = Embedded::new(DedupConfig::default(), cfg, None);
        let mut p = b.client(codec);
        publish(&mut p, "r", json!("old"));
        // The bound is an age: let the first message grow older than it.
        std::thread::sleep(Duration::from_millis(300));
        publish(&mut p, "r", json!("new"));
        let mut s = b.client(codec);
        let (bl, _) = sub_replay(&mut s, "r", json!({"replay": true}));
        assert_eq!(payloads(&bl), [json!("new")]);
        assert_eq!(offsets(&bl), [2]);
    }
}

#[test]
fn max_channels_bound_evicts_the_least_recently_published_channel() {
    for codec in CODECS {
        let cfg = RetainConfig {
            max_channels: 2,
            ..retained(100)
        };
        let b = Embedded::new(DedupConfig::default(), cfg, None);
        let mut p = b.client(codec);
        publish(&mut p, "c.1", json!(1));
        publish(&mut p, "c.2", json!(2));
        publish(&mut p, "c.1", json!(3)); // c.1 is now the most recent
        publish(&mut p, "c.3", json!(4)); // evicts c.2
        let mut s = b.client(codec);
        let (bl, _) = sub_replay(&mut s, "c.*", json!({"replay": true}));
        assert_eq!(offsets(&bl), [1, 3, 4]);
        let mut s = b.client(codec);
        assert!(sub_replay(&mut s, "c.2", json!({"replay": true}))
            .0
            .is_empty());
    }
}

#[test]
fn retention_zero_retains_nothing_but_still_numbers_messages() {
    for codec in CODECS {
        let b = Embedded::new(DedupConfig::default(), retained(0), None);
        let mut p = b.client(codec);
        let mut live = b.client(codec);
        sub_replay(&mut live, "r", json!({}));
        publish(&mut p, "r", json!(1));
        publish(&mut p, "r", json!(2));
        assert_eq!(offsets(&drain_msgs(&mut live)), [1, 2]);
        let mut s = b.client(codec);
        let (bl, reply) = sub_replay(&mut s, "r", json!({"replay": true}));
        assert!(bl.is_empty());
        assert_eq!(reply["offset"], json!(2));
    }
}

#[test]
fn unsubscribe_then_resubscribe_with_replay_gets_the_backlog_again() {
    for codec in CODECS {
        let b = Embedded::new(DedupConfig::default(), retained(100), None);
        let mut p = b.client(codec);
        let mut s = b.client(codec);
        sub_replay(&mut s, "r", json!({}));
        publish(&mut p, "r", json!(1));
        publish(&mut p, "r", json!(2));
        assert_eq!(drain_msgs(&mut s).len(), 2);
        assert_eq!(s.ok(json!({"t":"unsub","channel":"r"})), json!(true));
        publish(&mut p, "r", json!(3));
        assert!(drain_msgs(&mut s).is_empty(), "unsubscribed");
        let (bl, _) = sub_replay(&mut s, "r", json!({"replay": true}));
        assert_eq!(offsets(&bl), [1, 2, 3]);
        publish(&mut p, "r", json!(4));
        assert_eq!(offsets(&drain_msgs(&mut s)), [4], "no duplicate delivery");
    }
}

#[test]
fn replay_after_restart_and_offsets_keep_increasing() {
    for codec in CODECS {
        let mut b = Embedded::new(
            DedupConfig::default(),
            retained(100),
            Some(FsyncMode::EverySec),
        );
        let mut p = b.client(codec);
        for n in 1..=3 {
            publish(&mut p, "r", json!({"n": n}));
        }
        drop(p);
        b.restart();
        let mut s = b.client(codec);
        let (bl, reply) = sub_replay(&mut s, "r", json!({"replay": true}));
        assert_eq!(offsets(&bl), [1, 2, 3]);
        assert_eq!(
            payloads(&bl),
            (1..=3).map(|n| json!({"n": n})).collect::<Vec<_>>()
        );
        // Offsets issued before the restart are never issued again.
        let high = reply["offset"].as_u64().unwrap();
        assert!(high >= 3);
        let mut p = b.client(codec);
        publish(&mut p, "r", json!("after"));
        let o = offsets(&drain_msgs(&mut s));
        assert_eq!(o.len(), 1);
        assert!(o[0] > high, "offset {} not above {high}", o[0]);
        // since: catch up from the last offset seen before the restart.
        let mut c = b.client(codec);
        let (bl, _) = sub_replay(&mut c, "r", json!({"since": 3}));
        assert_eq!(payloads(&bl), [json!("after")]);
    }
}

#[test]
fn retained_messages_survive_log_compaction() {
    let mut cfg = PersistConfig::new("unused");
    cfg.compact_bytes = 1; // snapshot after every write
    let mut b = Embedded::new(
        DedupConfig::default(),
        retained(100),
        Some(FsyncMode::EverySec),
    );
    b.persist = Some(PersistConfig {
        dir: b.data.clone(),
        ..cfg
    });
    b.restart();
    let mut p = b.client(Codec::MsgPack);
    for n in 1..=3 {
        publish(&mut p, "r", json!(n));
    }
    // A snapshot completes (it rotates the log and drops the old segments).
    crate::support::wait_until(Duration::from_secs(20), "a snapshot", || {
        p.ok(json!({"t":"set","key":"k","value":1}));
        p.stats()["persistence"]["snapshots"].as_u64() >= Some(2)
    });
    drop(p);
    b.restart();
    let mut s = b.client(Codec::Json);
    let (bl, _) = sub_replay(&mut s, "r", json!({"replay": true}));
    assert_eq!(offsets(&bl), [1, 2, 3]);
}

// ---- crash: durable acks ----

const CHILD_ENV: &str = "PROCMESH_K2_CHILD";

/// Not a test on its own: the broker process of the crash test (run by re-executing
/// this test binary with `CHILD_ENV` = "<socket> <dir>").
#[test]
#[ignore]
fn crash_child_broker() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (sock, dir) = spec.split_once(' ').unwrap();
    let mut pc = PersistConfig::new(dir);
    pc.fsync = FsyncMode::EverySec;
    let h = Broker::builder()
        .socket(sock)
        .heartbeat(None)
        .pubsub(RetainConfig {
            durable_acks: DurableAcks::All,
            ..retained(1_000_000)
        })
        .persistence(Some(pc))
        .start()
        .unwrap();
    println!("child serving at {sock}");
    h.join().unwrap();
}

/// A child broker, SIGKILLed (and reaped) at the latest on drop.
struct Child9(Child);

impl Child9 {
    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child9 {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_child(sock: &Path, dir: &Path) -> Child9 {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "retained::crash_child_broker",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, format!("{} {}", sock.display(), dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    let mut c = Child9(c);
    for line in BufReader::new(out).lines() {
        if line.unwrap().contains("child serving at") {
            return c;
        }
    }
    c.kill9();
    panic!("child broker did not start");
}

#[test]
fn every_acknowledged_acks_all_publish_on_a_retained_channel_survives_sigkill() {
    for codec in CODECS {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("mesh.sock");
        let data = dir.path().join("data");
        let mut child = spawn_child(&sock, &data);
        let mut p = TestClient::hello(&sock, codec, None);
        // Pipelined acks:"all" publishes (everysec: only the durable ack path fsyncs);
        // the broker is killed while they are in flight.
        let mut acked = Vec::new();
        let mut next = 0u64;
        let mut inflight = std::collections::VecDeque::new();
        let mut killed = false;
        loop {
            while !killed && inflight.len() < 32 {
                next += 1;
                let id = p
                    .send_request(json!({"t":"pub","channel":"crash","payload":next,"acks":"all"}));
                inflight.push_back((id, next));
            }
            if acked.len() == 300 && !killed {
                child.kill9();
                killed = true;
            }
            let Some((id, n)) = inflight.pop_front() else {
                break;
            };
            match p.read_frame() {
                Some(f) => {
                    assert_eq!(f["id"], json!(id), "{f}");
                    assert_eq!(f["t"], "ok", "{f}");
                    acked.push(n);
                }
                None => break,
            }
        }
        assert!(acked.len() >= 300);
        let mut child = spawn_child(&sock, &data);
        let mut s = TestClient::hello(&sock, codec, None);
        let (bl, _) = sub_replay(&mut s, "crash", json!({"since": 0}));
        let got: std::collections::HashSet<u64> =
            bl.iter().map(|m| m["payload"].as_u64().unwrap()).collect();
        for n in &acked {
            assert!(got.contains(n), "acknowledged publish {n} lost ({codec:?})");
        }
        // Offsets stay strictly increasing in the recovered backlog.
        let o = offsets(&bl);
        assert!(o.windows(2).all(|w| w[0] < w[1]));
        child.kill9();
    }
}
