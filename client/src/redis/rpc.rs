//! The Redis backend's RPC: worker threads competing for calls, the caller's
//! reply reader, heartbeats.
//!
//! Owns the Redis side of `reg`/`unreg`/`call`. A call is a record pushed on the
//! procedure's queue `{name}:q:<proc>` by a script that first checks that some
//! registered worker's heartbeat is alive (else `ENOHANDLER`). Each registration
//! runs one thread that takes calls with `BLMOVE` into its client's in-flight list
//! (workers of every process compete; a worker takes a call only while its
//! handler pool has a free thread, so calls go to idle workers), records itself as
//! the call's owner `{name}:o:<call>`, and runs the handler on the client's handler
//! pool; the result goes to the caller's reply list `{name}:r:<caller>`, read by
//! one reply thread per calling client. A caller waits until its timeout
//! (`ECALLTIMEOUT`), checking every [`GONE_CHECK`] whether the worker that took its
//! call lost its heartbeat (`EHANDLERGONE`). A closing client answers the calls it
//! took with `EHANDLERGONE` at once.
//!
//! Records: a call is `<call id>\n<caller id>\n<deadline unix ms>\n<proc>\n` and
//! the MessagePack argument array; a reply is `<call id>\nok\n` and the MessagePack
//! result, or `<call id>\nerr\n<code>\n<message>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use procmesh_proto::{Codec, ErrorCode, Raw};

use super::{mp, scripts, to_store, unix_ms, Backend};
use crate::conn::{Conn, Reply};
use crate::error::{ClientError, HandlerError, Result};
use crate::pending::{lock, Slot};

/// A worker's heartbeat key lives this long; refreshed every [`HEARTBEAT_EVERY`].
const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How often a waiting caller checks the liveness of the worker that took its call.
pub(super) const GONE_CHECK: Duration = Duration::from_millis(250);
/// Blocking pops wait this long (seconds), then look at the stop flags.
const BLOCK_SECS: f64 = 1.0;
/// A caller's reply list expires this long after its last reply.
const REPLY_LIST_TTL_MS: u64 = 60_000;

/// The RPC state of one client.
#[derive(Default)]
pub(super) struct Rpc {
    /// Calls waiting for their reply, by call id.
    waiting: Mutex<HashMap<String, Arc<Slot<Vec<u8>>>>>,
    reply_thread: Mutex<bool>,
    heartbeat: Mutex<bool>,
    /// Registered procedures' stop flags.
    workers: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Calls taken by this client's workers and not answered yet: call id →
    /// (caller id, the record in the in-flight list).
    taken: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// Handler slots: taken by the workers in turn (see [`Slots`]).
    busy: Mutex<Slots>,
    freed: Condvar,
}

/// Handler threads busy with taken calls (or with a worker blocked taking one), and
/// the turns of the workers waiting for one: a worker whose wait for a call ran out
/// queues again behind the others, so one registration's workers cannot starve
/// another's (they share the client's handler threads).
#[derive(Default)]
struct Slots {
    busy: usize,
    next_turn: u64,
    serving: u64,
    /// Turns whose worker stopped before they came (at most one per worker).
    skipped: Vec<u64>,
}

impl Slots {
    /// Moves `serving` past the turns of workers that stopped waiting.
    fn skip_given_up(&mut self) {
        while let Some(i) = self.skipped.iter().position(|&t| t == self.serving) {
            self.skipped.swap_remove(i);
            self.serving += 1;
        }
    }
}

struct CallRec<'a> {
    id: &'a str,
    caller: &'a str,
    deadline_ms: u64,
    args: &'a [u8],
}

fn parse_call(rec: &[u8]) -> Option<CallRec<'_>> {
    let mut parts = rec.splitn(5, |b| *b == b'\n');
    let id = std::str::from_utf8(parts.next()?).ok()?;
    let caller = std::str::from_utf8(parts.next()?).ok()?;
    let deadline_ms = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let _proc = parts.next()?;
    let args = parts.next()?;
    Some(CallRec {
        id,
        caller,
        deadline_ms,
        args,
    })
}

fn reply_rec(call: &str, r: &std::result::Result<Vec<u8>, HandlerError>) -> Vec<u8> {
    let mut out = Vec::with_capacity(call.len() + 8);
    out.extend_from_slice(call.as_bytes());
    match r {
        Ok(v) => {
            out.extend_from_slice(b"\nok\n");
            out.extend_from_slice(v);
        }
        Err(e) => {
            out.extend_from_slice(b"\nerr\n");
            out.extend_from_slice(e.code().as_bytes());
            out.push(b'\n');
            out.extend_from_slice(e.message().as_bytes());
        }
    }
    out
}

fn parse_reply(rec: &[u8]) -> Option<(String, Result<Vec<u8>>)> {
    let mut parts = rec.splitn(3, |b| *b == b'\n');
    let id = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let status = parts.next()?;
    let rest = parts.next()?;
    let r = if status == b"ok" {
        Ok(rest.to_vec())
    } else {
        let mut p = rest.splitn(2, |b| *b == b'\n');
        let code = String::from_utf8_lossy(p.next()?).into_owned();
        let message = String::from_utf8_lossy(p.next().unwrap_or_default()).into_owned();
        Err(ClientError::Remote { code, message })
    };
    Some((id, r))
}

fn me(b: &Backend) -> Result<Arc<Backend>> {
    b.me.get()
        .and_then(std::sync::Weak::upgrade)
        .ok_or_else(|| ClientError::disconnected("the client was closed"))
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map(|_| ())
        .map_err(|e| ClientError::Config(format!("cannot start a thread: {e}")))
}

fn beat(b: &Backend) -> Result<()> {
    let ttl = HEARTBEAT_TTL.as_millis() as u64;
    b.with(|c| {
        redis::cmd("SET")
            .arg(b.nkey("hb", &b.id))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .query::<()>(c)?;
        redis::cmd("PEXPIRE")
            .arg(b.nkey("i", &b.id))
            .arg(ttl)
            .query::<()>(c)
    })
}

/// Registers `name`: heartbeat, worker set, one worker thread.
pub(super) fn register(b: &Backend, conn: &Conn, name: &str) -> Result<()> {
    let pool_threads = conn.shared().settings.handler_threads;
    let arc = me(b)?;
    beat(b)?;
    {
        let mut hb = lock(&b.rpc.heartbeat);
        if !*hb {
            let b2 = arc.clone();
            spawn("procmesh-redis-hb".into(), move || {
                while !b2.is_closed() {
                    std::thread::sleep(HEARTBEAT_EVERY);
                    if b2.is_closed() || lock(&b2.rpc.workers).is_empty() {
                        continue;
                    }
                    let _ = beat(&b2);
                }
            })?;
            *hb = true;
        }
    }
    b.with(|c| {
        redis::cmd("SADD")
            .arg(b.nkey("w", name))
            .arg(&b.id)
            .query::<()>(c)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    lock(&b.rpc.workers).insert(name.to_owned(), stop.clone());
    let name2 = name.to_owned();
    spawn(format!("procmesh-redis-w-{name}"), move || {
        worker(arc, name2, stop, pool_threads)
    })
}

/// Unregisters `name`: the worker thread stops within a blocking round.
pub(super) fn unregister(b: &Backend, name: &str) -> Result<()> {
    if let Some(stop) = lock(&b.rpc.workers).remove(name) {
        stop.store(true, Ordering::Release);
    }
    b.with(|c| {
        redis::cmd("SREM")
            .arg(b.nkey("w", name))
            .arg(&b.id)
            .query::<()>(c)
    })
}

fn worker(b: Arc<Backend>, name: String, stop: Arc<AtomicBool>, threads: usize) {
    let queue = b.nkey("q", &name);
    let inflight = b.nkey("i", &b.id);
    let mut link = None;
    while !stop.load(Ordering::Acquire) && !b.is_closed() {
        // Take a call only with a handler thread free for it.
        {
            let mut slots = lock(&b.rpc.busy);
            let turn = slots.next_turn;
            slots.next_turn += 1;
            while slots.serving != turn || slots.busy >= threads.max(1) {
                slots = b
                    .rpc
                    .freed
                    .wait_timeout(slots, Duration::from_millis(500))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if stop.load(Ordering::Acquire) || b.is_closed() {
                    // Give the turn up, so the workers behind it go on.
                    if slots.serving == turn {
                        slots.serving += 1;
                        slots.skip_given_up();
                    } else {
                        slots.skipped.push(turn);
                    }
                    b.rpc.freed.notify_all();
                    return;
                }
            }
            slots.busy += 1;
            slots.serving += 1;
            slots.skip_given_up();
            b.rpc.freed.notify_all();
        }
        let l = match link.take().map_or_else(|| b.open_link(), Ok) {
            Ok(l) => link.insert(l),
            Err(_) => {
                release(&b);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let r: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("BLMOVE")
            .arg(&queue)
            .arg(&inflight)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(BLOCK_SECS)
            .query(l.con());
        let rec = match r {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                release(&b);
                continue;
            }
            Err(_) => {
                link = None;
                release(&b);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if stop.load(Ordering::Acquire) || b.is_closed() {
            // Taken after the stop: hand it back to the other workers.
            let _ = redis::cmd("LREM")
                .arg(&inflight)
                .arg(1)
                .arg(&rec)
                .query::<()>(l.con());
            let _ = redis::cmd("RPUSH")
                .arg(&queue)
                .arg(&rec)
                .query::<()>(l.con());
            release(&b);
            return;
        }
        take(&b, &name, rec, l);
    }
}

fn release(b: &Backend) {
    let mut slots = lock(&b.rpc.busy);
    slots.busy = slots.busy.saturating_sub(1);
    b.rpc.freed.notify_all();
}

/// Starts the handler for one taken call (its busy slot is held).
fn take(b: &Arc<Backend>, name: &str, rec: Vec<u8>, l: &mut super::Link) {
    let inflight = b.nkey("i", &b.id);
    let Some(call) = parse_call(&rec) else {
        let _ = redis::cmd("LREM")
            .arg(&inflight)
            .arg(1)
            .arg(&rec)
            .query::<()>(l.con());
        release(b);
        return;
    };
    let now = unix_ms();
    if call.deadline_ms <= now {
        // The caller has given up (ECALLTIMEOUT) already.
        let _ = redis::cmd("LREM")
            .arg(&inflight)
            .arg(1)
            .arg(&rec)
            .query::<()>(l.con());
        release(b);
        return;
    }
    let _ = redis::cmd("SET")
        .arg(b.nkey("o", call.id))
        .arg(&b.id)
        .arg("PX")
        .arg(call.deadline_ms - now + 5_000)
        .query::<()>(l.con());
    let (id, caller, args) = (
        call.id.to_owned(),
        call.caller.to_owned(),
        call.args.to_vec(),
    );
    lock(&b.rpc.taken).insert(id.clone(), (caller.clone(), rec.clone()));
    let conn = b.conn();
    let pool = conn.as_ref().and_then(|c| c.shared().pool().ok());
    let handler = conn.as_ref().and_then(|c| lock(&c.regs).get(name).cloned());
    let (Some(conn), Some(pool), Some(handler)) = (conn, pool, handler) else {
        let e = HandlerError::new(format!("no handler for `{name}` on this client"))
            .with_code(ErrorCode::NoHandler.as_str());
        answer(b, &id, &caller, &rec, &Err(e));
        release(b);
        return;
    };
    let codec = conn.shared().settings.codec;
    drop(conn);
    let b2 = b.clone();
    pool.submit(Box::new(move || {
        let r = crate::pool::run_handler(&handler, Raw::new(Codec::MsgPack, &args));
        let r = r.and_then(|v| {
            to_store(Raw::new(codec, &v)).map_err(|e| HandlerError::new(e.to_string()))
        });
        answer(&b2, &id, &caller, &rec, &r);
        release(&b2);
    }));
}

/// Sends a taken call's answer to its caller (once: the `taken` entry is the ticket).
fn answer(
    b: &Backend,
    id: &str,
    caller: &str,
    rec: &[u8],
    r: &std::result::Result<Vec<u8>, HandlerError>,
) {
    if lock(&b.rpc.taken).remove(id).is_none() {
        return;
    }
    let out = reply_rec(id, r);
    let _ = b.with(|c| {
        scripts()
            .rpc_done
            .key(b.nkey("r", caller))
            .key(b.nkey("i", &b.id))
            .key(b.nkey("o", id))
            .arg(out)
            .arg(rec)
            .arg(REPLY_LIST_TTL_MS)
            .invoke::<()>(c)
    });
}

fn ensure_reply_thread(b: &Backend) -> Result<()> {
    let mut started = lock(&b.rpc.reply_thread);
    if *started {
        return Ok(());
    }
    let arc = me(b)?;
    spawn("procmesh-redis-replies".into(), move || replies(arc))?;
    *started = true;
    Ok(())
}

fn replies(b: Arc<Backend>) {
    let list = b.nkey("r", &b.id);
    let mut link = None;
    while !b.is_closed() {
        let l = match link.take().map_or_else(|| b.open_link(), Ok) {
            Ok(l) => link.insert(l),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let r: redis::RedisResult<Option<(Vec<u8>, Vec<u8>)>> = redis::cmd("BRPOP")
            .arg(&list)
            .arg(BLOCK_SECS)
            .query(l.con());
        match r {
            Ok(Some((_, rec))) => {
                if let Some((id, r)) = parse_reply(&rec) {
                    if let Some(slot) = lock(&b.rpc.waiting).remove(&id) {
                        slot.fill(r);
                    }
                }
            }
            Ok(None) => {}
            Err(_) => {
                link = None;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Calls `name` with the MessagePack argument array `args`.
pub(super) fn call(b: &Backend, name: &str, args: &[u8], timeout: Duration) -> Result<Reply> {
    ensure_reply_thread(b)?;
    let seq = b.call_seq.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{seq}", b.id);
    let deadline = Instant::now() + timeout;
    let deadline_ms = unix_ms() + timeout.as_millis() as u64;
    let mut rec = format!("{id}\n{}\n{deadline_ms}\n{name}\n", b.id).into_bytes();
    rec.extend_from_slice(args);
    let slot = Arc::new(Slot::default());
    lock(&b.rpc.waiting).insert(id.clone(), slot.clone());
    let queued: Result<u64> = b.with(|c| {
        scripts()
            .rpc_call
            .key(b.nkey("w", name))
            .key(b.nkey("q", name))
            .arg(&rec)
            .arg(b.nkey("hb", ""))
            .arg(name)
            .invoke(c)
    });
    if let Err(e) = queued {
        lock(&b.rpc.waiting).remove(&id);
        return Err(e);
    }
    let owner = b.nkey("o", &id);
    let fail = |code: ErrorCode, message: String| {
        lock(&b.rpc.waiting).remove(&id);
        // The reply may have landed just now.
        match slot.take() {
            Some(o) => o.map(|v| Reply::new(Codec::MsgPack, Some(mp(&v)))),
            None => Err(ClientError::Remote {
                code: code.as_str().to_owned(),
                message,
            }),
        }
    };
    loop {
        let next = (Instant::now() + GONE_CHECK).min(deadline);
        if let Some(o) = slot.wait_until(next) {
            return o.map(|v| Reply::new(Codec::MsgPack, Some(mp(&v))));
        }
        if Instant::now() >= deadline {
            return fail(
                ErrorCode::CallTimeout,
                format!("call `{name}` timed out after {} ms", timeout.as_millis()),
            );
        }
        let gone: u64 = b
            .with(|c| {
                scripts()
                    .rpc_gone
                    .key(&owner)
                    .arg(b.nkey("hb", ""))
                    .invoke(c)
            })
            .unwrap_or(0);
        if gone == 1 {
            return fail(
                ErrorCode::HandlerGone,
                format!("the worker serving `{name}` went away mid-call"),
            );
        }
    }
}

/// Stops the workers, answers the calls they took with `EHANDLERGONE`, fails
/// this client's own waiting calls, and drops the heartbeat.
pub(super) fn close(b: &Backend) {
    let names: Vec<(String, Arc<AtomicBool>)> = lock(&b.rpc.workers).drain().collect();
    for (name, stop) in &names {
        stop.store(true, Ordering::Release);
        let _ = b.with(|c| {
            redis::cmd("SREM")
                .arg(b.nkey("w", name))
                .arg(&b.id)
                .query::<()>(c)
        });
    }
    let taken: Vec<(String, (String, Vec<u8>))> = lock(&b.rpc.taken)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (id, (caller, rec)) in taken {
        let e = HandlerError::new("the worker closed mid-call")
            .with_code(ErrorCode::HandlerGone.as_str());
        answer(b, &id, &caller, &rec, &Err(e));
    }
    if !names.is_empty() {
        let _ = b.with(|c| {
            redis::cmd("DEL")
                .arg(b.nkey("hb", &b.id))
                .arg(b.nkey("i", &b.id))
                .query::<()>(c)
        });
    }
    for (_, slot) in lock(&b.rpc.waiting).drain() {
        slot.fill(Err(ClientError::disconnected("the client was closed")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let rec = b"c1-7\ncaller\n123\nadd\n\x92\x01\x02".to_vec();
        let c = parse_call(&rec).unwrap();
        assert_eq!((c.id, c.caller, c.deadline_ms), ("c1-7", "caller", 123));
        assert_eq!(c.args, b"\x92\x01\x02");
        let ok = reply_rec("c1-7", &Ok(vec![0x03]));
        let (id, r) = parse_reply(&ok).unwrap();
        assert_eq!((id.as_str(), r.unwrap()), ("c1-7", vec![0x03]));
        let e = HandlerError::new("bad\nline").with_code("EINVAL");
        let (_, r) = parse_reply(&reply_rec("x", &Err(e))).unwrap();
        match r.unwrap_err() {
            ClientError::Remote { code, message } => {
                assert_eq!((code.as_str(), message.as_str()), ("EINVAL", "bad\nline"))
            }
            other => panic!("{other:?}"),
        }
    }
}
