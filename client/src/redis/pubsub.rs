//! The Redis backend's subscriber: one thread with its own connection in
//! subscribe mode, feeding the client's dispatch thread.
//!
//! Owns the Redis side of the connection's subscriptions: an exact channel is a
//! `SUBSCRIBE {name}:c:<channel>`, a `prefix*` pattern a `PSUBSCRIBE` of the
//! glob-escaped `{name}:c:<prefix>` followed by `*`. Callers hand it commands
//! through a queue and wake it with a `PUBLISH` on its private wake-up channel
//! (a blocked read cannot be interrupted otherwise), then wait for its answer.
//! A message is delivered to the handlers of the one subscription Redis matched
//! (so a handler sees each message once, as with the broker). After a lost
//! connection the thread reconnects with backoff and subscribes again to every
//! pattern of the connection's table; messages published meanwhile are lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

use procmesh_proto::topic;

use super::{from_store, glob_escape, Backend};
use crate::dispatch::Message;
use crate::error::{ClientError, Result};
use crate::event::{Event, ShardId};
use crate::pending::lock;

/// Longest pause between reconnect attempts of the subscriber.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

enum Cmd {
    /// Subscribe (`true`) or unsubscribe a local pattern; answer on the sender.
    Change(String, bool, Sender<Result<()>>),
    Close,
}

/// The queue between callers and the subscriber thread.
#[derive(Default)]
pub(super) struct Subscriber {
    queue: std::sync::Mutex<VecDeque<Cmd>>,
    active: AtomicUsize,
}

impl Subscriber {
    /// Subscriptions held at Redis.
    pub fn count(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

fn wake_channel(b: &Backend) -> String {
    b.nkey("wake", &b.id)
}

/// The Redis channel or glob pattern of a local pattern, and whether it is a glob.
fn redis_pattern(b: &Backend, pattern: &str) -> (String, bool) {
    if topic::is_pattern(pattern) {
        let prefix = &pattern[..pattern.len() - 1];
        (format!("{}*", glob_escape(&b.nkey("c", prefix))), true)
    } else {
        (b.nkey("c", pattern), false)
    }
}

/// Starts the subscriber thread (it holds the backend until `close`).
pub(super) fn start(b: &Arc<Backend>) -> Result<()> {
    let con = b.open_plain()?;
    let b2 = b.clone();
    let (ready_tx, ready_rx) = channel();
    std::thread::Builder::new()
        .name("procmesh-redis-sub".into())
        .spawn(move || run(b2, Some(con), ready_tx))
        .map_err(|e| ClientError::Config(format!("cannot start the subscriber thread: {e}")))?;
    // A wake-up published before the thread listens would be lost.
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(()) => Ok(()),
        Err(_) => Err(ClientError::disconnected(format!(
            "the Redis subscriber at {} did not start",
            b.display_url()
        ))),
    }
}

/// Subscribes or unsubscribes `pattern` and waits for Redis to confirm.
pub(super) fn subscribe(b: &Backend, pattern: &str, on: bool, timeout: Duration) -> Result<()> {
    let (tx, rx) = channel();
    lock(&b.sub.queue).push_back(Cmd::Change(pattern.to_owned(), on, tx));
    b.with(|c| {
        redis::cmd("PUBLISH")
            .arg(wake_channel(b))
            .arg("")
            .query::<u64>(c)
    })?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            op: if on { "sub" } else { "unsub" },
            after: timeout,
        }),
    }
}

/// Stops the subscriber thread.
pub(super) fn close(b: &Backend) {
    lock(&b.sub.queue).push_back(Cmd::Close);
    let _ = b.with(|c| {
        redis::cmd("PUBLISH")
            .arg(wake_channel(b))
            .arg("")
            .query::<u64>(c)
    });
}

fn run(b: Arc<Backend>, mut first: Option<redis::Connection>, ready: Sender<()>) {
    let mut pause = Duration::from_millis(10);
    let mut attempts = 0u32;
    loop {
        if b.is_closed() {
            return;
        }
        let con = match first.take().map_or_else(|| b.open_plain(), Ok) {
            Ok(c) => c,
            Err(_) => {
                attempts += 1;
                std::thread::sleep(pause);
                pause = (pause * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        pause = Duration::from_millis(10);
        let reconnected = attempts > 0;
        match session(&b, con, reconnected, attempts, &ready) {
            Session::Closed => return,
            Session::Lost(reason) => {
                attempts = 1;
                if let Some(conn) = b.conn() {
                    conn.shared().dispatch.event(Event::Disconnected {
                        shard: ShardId(0),
                        path: b.display_url().into(),
                        reason: format!("Redis subscriber connection lost: {reason}"),
                    });
                }
            }
        }
    }
}

enum Session {
    Closed,
    Lost(String),
}

/// One subscriber connection's life: subscribe (again), then read messages.
fn session(
    b: &Backend,
    mut con: redis::Connection,
    reconnected: bool,
    attempts: u32,
    ready: &Sender<()>,
) -> Session {
    let mut ps = con.as_pubsub();
    let wake = wake_channel(b);
    if let Err(e) = ps.subscribe(&wake) {
        return Session::Lost(e.to_string());
    }
    // Redis glob pattern → local pattern.
    let mut globs: HashMap<String, String> = HashMap::new();
    let mut active = 0usize;
    if let Some(conn) = b.conn() {
        let patterns: Vec<String> = lock(&conn.subs)
            .resubscriptions()
            .into_iter()
            .map(|r| r.pattern)
            .collect();
        for p in patterns {
            let (rp, glob) = redis_pattern(b, &p);
            let r = if glob {
                globs.insert(rp.clone(), p.clone());
                ps.psubscribe(&rp)
            } else {
                ps.subscribe(&rp)
            };
            if let Err(e) = r {
                return Session::Lost(e.to_string());
            }
            active += 1;
        }
        if reconnected {
            conn.shared().dispatch.event(Event::Reconnected {
                shard: ShardId(0),
                path: b.display_url().into(),
                attempts,
            });
        }
    }
    b.sub.active.store(active, Ordering::Relaxed);
    let _ = ready.send(());
    let prefix = b.nkey("c", "");
    // Commands queued while (re)connecting are served before the first read.
    let mut drain = true;
    loop {
        let msg = if drain {
            None
        } else {
            match ps.get_message() {
                Ok(m) => Some(m),
                Err(e) => return Session::Lost(e.to_string()),
            }
        };
        if drain || msg.as_ref().is_some_and(|m| m.get_channel_name() == wake) {
            drain = false;
            loop {
                let Some(cmd) = lock(&b.sub.queue).pop_front() else {
                    break;
                };
                match cmd {
                    Cmd::Close => return Session::Closed,
                    Cmd::Change(p, on, done) => {
                        let (rp, glob) = redis_pattern(b, &p);
                        let r = match (glob, on) {
                            (true, true) => ps.psubscribe(&rp),
                            (true, false) => ps.punsubscribe(&rp),
                            (false, true) => ps.subscribe(&rp),
                            (false, false) => ps.unsubscribe(&rp),
                        };
                        let lost = r.as_ref().err().map(|e| e.to_string());
                        if r.is_ok() {
                            if on {
                                active += 1;
                                if glob {
                                    globs.insert(rp, p);
                                }
                            } else {
                                active = active.saturating_sub(1);
                                globs.remove(&rp);
                            }
                            b.sub.active.store(active, Ordering::Relaxed);
                        }
                        let _ = done.send(r.map_err(|e| b.error(e)));
                        if let Some(reason) = lost {
                            return Session::Lost(reason);
                        }
                    }
                }
            }
            continue;
        }
        let Some(msg) = msg else { continue };
        let Some(channel) = msg.get_channel_name().strip_prefix(prefix.as_str()) else {
            continue;
        };
        let local = if msg.from_pattern() {
            match msg
                .get_pattern::<String>()
                .ok()
                .and_then(|g| globs.get(&g).cloned())
            {
                Some(p) => p,
                None => continue,
            }
        } else {
            channel.to_owned()
        };
        let Some(conn) = b.conn() else { continue };
        let handlers = lock(&conn.subs).handlers(&local);
        if handlers.is_empty() {
            continue;
        }
        let codec = conn.shared().settings.codec;
        let Ok(payload) = from_store(codec, msg.get_payload_bytes().to_vec()) else {
            continue;
        };
        conn.shared().dispatch.msg(
            handlers,
            Message::new(channel.to_owned(), payload, codec, None),
        );
    }
}
