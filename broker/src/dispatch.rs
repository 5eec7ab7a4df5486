//! Request handling: one decoded frame in, replies and other frames out.
//!
//! `dispatch` owns the meaning of each message kind (PROTOCOL.md §5–§9) and glues
//! the state modules together; it never touches sockets (frames are appended to the
//! connections' output buffers and flushed by the reactor at the end of the turn).
//! Fan-out encodes a `msg` frame once per codec, not once per subscriber.

use std::borrow::Cow;

use procmesh_proto::message::{
    self, need_str, need_value, opt_ms, opt_num, opt_str, opt_u64, Frame,
};
use procmesh_proto::{Codec, DecodeError, ErrorCode, Kind, Num, Raw, Writer};

use crate::connection::Closing;
use crate::locks::{FencingToken, LockEvent, LockOutcome};
use crate::persistence::FsyncMode;
use crate::pubsub::ConnKey;
use crate::reactor::Core;
use crate::rpc::PendingCall;
use crate::stats::Gauges;
use crate::store::{neg, write_num, AtomicError};
use crate::sys;

/// Why a request failed: the code and message sent back.
pub(crate) struct Fail {
    code: ErrorCode,
    message: Cow<'static, str>,
}

impl Fail {
    fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
}

impl From<DecodeError> for Fail {
    fn from(e: DecodeError) -> Fail {
        Fail::new(ErrorCode::Broker, e.message().to_string())
    }
}

type Res = Result<(), Fail>;

/// Default lock TTL when a request has none.
const LOCK_TTL_MS: u64 = 30_000;
/// Longest type tag quoted back in an EUNKNOWN message.
const TAG_QUOTE_MAX: usize = 64;

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Constant-time comparison of two secrets (time depends only on their lengths).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

impl Core {
    /// Handles one frame from connection `k`.
    pub(crate) fn handle_frame(&mut self, k: ConnKey, payload: &[u8]) {
        let codec = match self.conns[k].codec {
            Some(c) => c,
            None => match payload.first().copied().and_then(Codec::detect) {
                Some(c) => {
                    self.conns[k].codec = Some(c);
                    c
                }
                None => {
                    // Without a codec there is no way to answer in kind: say why in
                    // JSON and close this one connection.
                    self.conns[k].codec = Some(Codec::Json);
                    self.send_err(k, None, ErrorCode::Broker, "cannot detect the codec: the first frame must be a JSON or MessagePack map");
                    self.conns[k].closing = Closing::AfterFlush;
                    return;
                }
            },
        };
        let (frame, decoded) = Frame::decode_partial(codec, payload);
        let id = frame.id;
        if let Err(e) = decoded {
            self.stats.error(ErrorCode::Broker);
            if id.is_some() {
                self.send_err(
                    k,
                    id,
                    ErrorCode::Broker,
                    &format!("malformed frame: {}", e.message()),
                );
            }
            return;
        }
        let kind = frame.kind();
        if !self.conns[k].authed && !matches!(kind, Kind::Hello | Kind::Ping | Kind::Pong) {
            self.stats.error(ErrorCode::Auth);
            if id.is_some() {
                self.send_err(
                    k,
                    id,
                    ErrorCode::Auth,
                    "not authenticated: send hello with the broker's token first",
                );
            }
            return;
        }
        self.stats.op(kind);
        if let Some(p) = &self.persist {
            if is_write(kind) {
                if let Some(e) = &p.error {
                    let msg = format!(
                        "persistence is failing ({e}); writes are refused until it recovers"
                    );
                    self.stats.error(ErrorCode::Broker);
                    if id.is_some() {
                        self.send_err(k, id, ErrorCode::Broker, &msg);
                    }
                    return;
                }
                if p.mode() == FsyncMode::Always {
                    let at = self.conns[k].out().len();
                    self.turn_writes
                        .push((k, at, id.map(|i| Box::<[u8]>::from(i.bytes))));
                }
            }
        }
        if let Err(f) = self.dispatch(k, kind, &frame) {
            self.stats.error(f.code);
            if id.is_some() && kind != Kind::Result {
                self.send_err(k, id, f.code, &f.message);
            }
        }
    }

    fn dispatch(&mut self, k: ConnKey, kind: Kind, f: &Frame<'_>) -> Res {
        let now = self.now;
        match kind {
            Kind::Get => {
                let key = need_str(f.key, "key")?;
                let Some(id) = f.id else { return Ok(()) };
                let conn = &mut self.conns[k];
                let codec = conn.codec.unwrap_or(Codec::Json);
                let v = self.store.get(&key, now);
                write_ok_value(codec, conn.out(), id, v, "the stored value");
                self.wrote(k);
            }
            Kind::Set => {
                let key = need_str(f.key, "key")?;
                let value = need_value(f.value, "value")?;
                let ttl = opt_ms(f.ttl, "ttl")?;
                self.store.set(&key, value, ttl, now);
                self.ok_bool(k, f.id, true);
            }
            Kind::Del => {
                let key = need_str(f.key, "key")?;
                let existed = self.store.del(&key, now);
                self.ok_bool(k, f.id, existed);
            }
            Kind::Has => {
                let key = need_str(f.key, "key")?;
                let has = self.store.has(&key, now);
                self.ok_bool(k, f.id, has);
            }
            Kind::Keys => {
                let Some(id) = f.id else { return Ok(()) };
                let conn = &mut self.conns[k];
                let codec = conn.codec.unwrap_or(Codec::Json);
                let keys = self.store.keys(now);
                let mut fw = message::begin_ok(codec, conn.out(), id, true);
                fw.w().begin_array(keys.len());
                for key in keys {
                    fw.w().str(key);
                }
                fw.w().end_array();
                fw.finish();
                self.wrote(k);
            }
            Kind::Clear => {
                self.store.clear();
                self.ok_bool(k, f.id, true);
            }
            Kind::Mget => {
                let keys = need_value(f.keys, "keys")?;
                let items = keys
                    .array()
                    .ok_or_else(|| Fail::new(ErrorCode::Broker, "field `keys` must be an array"))?;
                let mut names = Vec::new();
                for (i, item) in items.enumerate() {
                    names.push(item.as_str().ok_or_else(|| {
                        Fail::new(ErrorCode::Broker, format!("keys[{i}] must be a string"))
                    })?);
                }
                let Some(id) = f.id else { return Ok(()) };
                let conn = &mut self.conns[k];
                let codec = conn.codec.unwrap_or(Codec::Json);
                let mut found = Vec::with_capacity(names.len());
                let out = conn.out();
                let start = out.len();
                let mut fw = message::begin_ok(codec, out, id, true);
                let w = fw.w();
                w.begin_map(2);
                w.key("values");
                w.begin_array(names.len());
                let mut failed = None;
                for name in &names {
                    match self.store.get(name, now) {
                        Some(v) => {
                            found.push(true);
                            if let Err(e) = w.raw(v) {
                                failed = Some(e);
                                break;
                            }
                        }
                        None => {
                            found.push(false);
                            w.nil();
                        }
                    }
                }
                w.end_array();
                w.key("found");
                w.begin_array(found.len());
                for b in &found {
                    w.bool(*b);
                }
                w.end_array();
                w.end_map();
                fw.finish();
                if let Some(e) = failed {
                    self.conns[k].out().truncate(start);
                    return Err(e.into());
                }
                self.wrote(k);
            }
            Kind::Mset => {
                let entries = need_value(f.entries, "entries")?;
                let items = entries.array().ok_or_else(|| {
                    Fail::new(
                        ErrorCode::Broker,
                        "field `entries` must be an array of [key, value] pairs",
                    )
                })?;
                let mut pairs: Vec<(Cow<'_, str>, Raw<'_>)> = Vec::new();
                for (i, item) in items.enumerate() {
                    let bad = || {
                        Fail::new(
                            ErrorCode::Broker,
                            format!("entries[{i}] must be a [key, value] pair with a string key"),
                        )
                    };
                    let mut it = item.array().ok_or_else(bad)?;
                    let key = it.next().and_then(|k| k.as_str()).ok_or_else(bad)?;
                    let value = it.next().ok_or_else(bad)?;
                    if it.next().is_some() {
                        return Err(bad());
                    }
                    pairs.push((key, value));
                }
                for (key, value) in pairs {
                    self.store.set(&key, value, None, now);
                }
                self.ok_bool(k, f.id, true);
            }
            Kind::Incr | Kind::Decr => {
                let key = need_str(f.key, "key")?;
                let by = opt_num(f.by, "by")?.unwrap_or(Num::Int(1));
                let by = if kind == Kind::Decr { neg(by) } else { by };
                match self.store.incr(&key, by, now) {
                    Ok(n) => self.ok_with(k, f.id, |w| write_num(w, n)),
                    Err(AtomicError::NotNumber) => {
                        return Err(Fail::new(
                            ErrorCode::NotNumber,
                            format!("value at key `{}` is not a number", clip(&key, 200)),
                        ))
                    }
                }
            }
            Kind::Cas => {
                let key = need_str(f.key, "key")?;
                let swapped = self.store.cas(&key, f.prev, f.next, now);
                self.ok_bool(k, f.id, swapped);
            }
            Kind::Lock => self.lock(k, f)?,
            Kind::Unlock => {
                let key = need_str(f.key, "key")?;
                let mut events = std::mem::take(&mut self.lock_events);
                let held = self
                    .locks
                    .unlock(&key, k, now, &mut self.timers, &mut events);
                self.ok_bool(k, f.id, held);
                self.deliver_lock_events(&mut events);
                self.lock_events = events;
            }
            Kind::Fset | Kind::Fcas | Kind::Fdel => self.fenced(k, kind, f)?,
            Kind::Sub => {
                let channel = need_str(f.channel, "channel")?;
                self.pubsub.subscribe(k, &channel);
                self.ok_with(k, f.id, |w| {
                    w.begin_map(2);
                    w.key("ok");
                    w.bool(true);
                    w.key("offset");
                    w.int(0);
                    w.end_map();
                });
            }
            Kind::Unsub => {
                let channel = need_str(f.channel, "channel")?;
                self.pubsub.unsubscribe(k, &channel);
                self.ok_bool(k, f.id, true);
            }
            Kind::Pub => self.publish(k, f)?,
            Kind::Reg => {
                let name = need_str(f.name, "name")?;
                self.rpc.register(k, &name);
                self.ok_bool(k, f.id, true);
            }
            Kind::Unreg => {
                let name = need_str(f.name, "name")?;
                self.rpc.unregister(k, &name);
                self.ok_bool(k, f.id, true);
            }
            Kind::Call => self.call(k, f)?,
            Kind::Result => self.result(k, f)?,
            Kind::Hello => self.hello(k, f)?,
            Kind::Ping => {
                let conn = &mut self.conns[k];
                let codec = conn.codec.unwrap_or(Codec::Json);
                message::pong(codec, conn.out(), f.id);
                self.wrote(k);
            }
            Kind::Pong => {}
            Kind::Stats => {
                let Some(id) = f.id else { return Ok(()) };
                let uptime = self.now.max(1);
                let cpu = sys::cpu_time().saturating_sub(self.cpu_start).as_secs_f64() * 1000.0;
                let counters = self.store.counters();
                let g = Gauges {
                    name: &self.cfg.name,
                    uptime_ms: self.now,
                    connections: self.conns.len(),
                    cache_size: self.store.len(),
                    cache_bytes: self.store.value_bytes(),
                    evicted: counters.evicted,
                    expired: counters.expired,
                    locks: self.locks.held(),
                    lock_waiters: self.locks.waiters(),
                    pending_calls: self.rpc.pending(),
                    subscriptions: self.pubsub.len(),
                    procs: self.rpc.procs().collect(),
                    rss: sys::rss_bytes(),
                    cpu_core_fraction: cpu / uptime as f64,
                    os_pid: std::process::id(),
                    core: sys::pinned_core(),
                    persistence: self.persist.as_ref().map(|p| crate::stats::PersistGauges {
                        fsync: p.mode().name(),
                        log_bytes: p.log_bytes(),
                        error: p.error.as_deref(),
                        errors: p.error_count,
                        snapshots: p.snapshots,
                        snapshot_running: p.snapshot_running(),
                    }),
                };
                let conn = &mut self.conns[k];
                let codec = conn.codec.unwrap_or(Codec::Json);
                let mut fw = message::begin_ok(codec, conn.out(), id, true);
                self.stats.encode(&g, fw.w());
                fw.finish();
                self.wrote(k);
            }
            Kind::Shutdown => {
                self.ok_bool(k, f.id, true);
                self.shutdown = true;
            }
            Kind::Welcome | Kind::Ok | Kind::Err | Kind::Msg | Kind::Invoke | Kind::Unknown => {
                let tag = f.t.and_then(|t| t.as_str()).unwrap_or(Cow::Borrowed("?"));
                return Err(Fail::new(
                    ErrorCode::Unknown,
                    format!("unknown message type `{}`", clip(&tag, TAG_QUOTE_MAX)),
                ));
            }
            _ => return Err(Fail::new(ErrorCode::Unknown, "unknown message type")),
        }
        Ok(())
    }

    fn hello(&mut self, k: ConnKey, f: &Frame<'_>) -> Res {
        let given = opt_str(f.token, "token").ok().flatten();
        if let Some(expected) = &self.cfg.token {
            let ok = given
                .as_deref()
                .is_some_and(|g| ct_eq(g.as_bytes(), expected.as_bytes()));
            if !ok {
                self.stats.error(ErrorCode::Auth);
                self.send_err(
                    k,
                    f.id,
                    ErrorCode::Auth,
                    "authentication failed: wrong or missing token",
                );
                self.conns[k].closing = Closing::AfterFlush;
                return Ok(());
            }
        }
        self.conns[k].authed = true;
        let pid = match opt_str(f.pid, "pid") {
            Ok(Some(p)) => p.into_owned(),
            _ => {
                self.next_pid += 1;
                format!("{}-{}", std::process::id(), self.next_pid)
            }
        };
        let conn = &mut self.conns[k];
        let codec = conn.codec.unwrap_or(Codec::Json);
        message::welcome(codec, conn.out(), f.id, &self.cfg.name, &pid);
        self.wrote(k);
        Ok(())
    }

    fn lock(&mut self, k: ConnKey, f: &Frame<'_>) -> Res {
        let key = need_str(f.key, "key")?;
        let ttl = opt_ms(f.ttl, "ttl")?
            .filter(|t| *t > 0)
            .unwrap_or(LOCK_TTL_MS);
        let wait = opt_ms(f.wait, "wait")?.unwrap_or(0);
        let reply_to = f.id.map(|id| id.bytes);
        match self
            .locks
            .lock(&key, k, ttl, wait, reply_to, self.now, &mut self.timers)
        {
            LockOutcome::Granted(token) => self.lock_reply(k, f.id, Some(token)),
            LockOutcome::Busy => self.lock_reply(k, f.id, None),
            LockOutcome::Queued => {}
        }
        Ok(())
    }

    fn lock_reply(&mut self, k: ConnKey, id: Option<Raw<'_>>, token: Option<FencingToken>) {
        self.ok_with(k, id, |w| {
            w.begin_map(2);
            w.key("acquired");
            w.bool(token.is_some());
            w.key("token");
            match token {
                Some(t) => w.uint(t.0),
                None => w.nil(),
            }
            w.end_map();
        });
    }

    pub(crate) fn deliver_lock_events(&mut self, events: &mut Vec<LockEvent>) {
        for ev in events.drain(..) {
            let (conn, reply_to, token) = match ev {
                LockEvent::Granted {
                    conn,
                    reply_to,
                    token,
                } => (conn, reply_to, Some(token)),
                LockEvent::TimedOut { conn, reply_to } => (conn, reply_to, None),
            };
            let Some(c) = self.conns.get(conn) else {
                continue;
            };
            let codec = c.codec.unwrap_or(Codec::Json);
            let id = reply_to.as_deref().map(|b| Raw::new(codec, b));
            self.lock_reply(conn, id, token);
        }
    }

    fn fenced(&mut self, k: ConnKey, kind: Kind, f: &Frame<'_>) -> Res {
        let lock_key = need_str(f.key, "key")?;
        let target = need_str(f.k, "k")?;
        let token = opt_u64(f.token, "token")?.map(FencingToken);
        // Validate the whole request before the fence check raises the mark.
        let set_args = if kind == Kind::Fset {
            Some((need_value(f.value, "value")?, opt_ms(f.ttl, "ttl")?))
        } else {
            None
        };
        if !self.locks.fence(&lock_key, token) {
            return Err(Fail::new(
                ErrorCode::Fenced,
                format!(
                    "stale fencing token for lock `{}`: a newer holder has written or holds it",
                    clip(&lock_key, 200)
                ),
            ));
        }
        let now = self.now;
        let result = match kind {
            Kind::Fset => {
                if let Some((value, ttl)) = set_args {
                    self.store.set(&target, value, ttl, now);
                }
                true
            }
            Kind::Fcas => self.store.cas(&target, f.prev, f.next, now),
            _ => self.store.del(&target, now),
        };
        self.ok_bool(k, f.id, result);
        Ok(())
    }

    fn publish(&mut self, k: ConnKey, f: &Frame<'_>) -> Res {
        let channel = need_str(f.channel, "channel")?;
        let src_codec = self.conns[k].codec.unwrap_or(Codec::Json);
        let null: &[u8] = if src_codec == Codec::Json {
            b"null"
        } else {
            &[0xc0]
        };
        let payload = f.payload.unwrap_or(Raw::new(src_codec, null));
        let (reply, droppable) = match f.acks {
            None => (true, true),
            Some(a) if a.is_nil() => (true, true),
            Some(a) => match (a.as_i64(), a.as_str()) {
                (Some(0), _) => (false, true),
                (Some(1), _) => (true, true),
                (_, Some(s)) if s == "all" => (true, false),
                _ => {
                    return Err(Fail::new(
                        ErrorCode::Broker,
                        "field `acks` must be 0, 1 or \"all\"",
                    ))
                }
            },
        };
        // Encode the message once per codec.
        let mut enc = std::mem::take(&mut self.fanout);
        for e in enc.iter_mut() {
            e.clear();
        }
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        self.pubsub.for_each_match(&channel, |c| targets.push(c));
        let mut delivered = 0u64;
        let mut failed = None;
        for &c in &targets {
            let Some(conn) = self.conns.get_mut(c) else {
                continue;
            };
            if conn.closing != Closing::No {
                continue;
            }
            let codec = conn.codec.unwrap_or(Codec::Json);
            let slot = codec as usize;
            if enc[slot].is_empty() {
                if let Err(e) = message::msg(codec, &mut enc[slot], &channel, payload) {
                    failed = Some(e);
                    break;
                }
            }
            if droppable && conn.queued() > self.cfg.send_hwm {
                // Bytes queued this turn are not yet offered to the socket: offer them
                // now, so only what the peer's socket does not take counts against the
                // mark (as with Node's writableLength). Replies to writes awaiting an
                // `fsync always` commit must not leave early, so such connections wait.
                let early_ok = !matches!(&self.persist, Some(p) if p.mode() == FsyncMode::Always)
                    || !self.turn_writes.iter().any(|(w, _, _)| *w == c);
                if early_ok && !conn.flush() {
                    conn.closing = Closing::Now;
                    self.dirty_close(c);
                    continue;
                }
            }
            if droppable && conn.queued() > self.cfg.send_hwm {
                self.stats.dropped += 1;
                continue;
            }
            conn.out().extend_from_slice(&enc[slot]);
            delivered += 1;
            self.wrote(c);
        }
        self.fanout = enc;
        self.targets = targets;
        if let Some(e) = failed {
            return Err(e.into());
        }
        if reply {
            self.ok_with(k, f.id, |w| w.uint(delivered));
        }
        Ok(())
    }

    fn call(&mut self, k: ConnKey, f: &Frame<'_>) -> Res {
        let name = need_str(f.name, "name")?;
        let codec = self.conns[k].codec.unwrap_or(Codec::Json);
        let empty: &[u8] = if codec == Codec::Json { b"[]" } else { &[0x90] };
        let args = match f.args {
            Some(a) if !a.is_nil() => a,
            _ => Raw::new(codec, empty),
        };
        let timeout = opt_ms(f.timeout, "timeout")?
            .filter(|t| *t > 0)
            .unwrap_or(self.cfg.call_timeout.as_millis() as u64);
        let deadline = self
            .now
            .saturating_add(timeout)
            .saturating_add(self.cfg.call_grace.as_millis() as u64);
        let serial = self.conns[k].serial;
        let reply_to = f.id.map(|id| Box::<[u8]>::from(id.bytes));
        let started = self.rpc.start(
            &name,
            |worker| PendingCall {
                caller: k,
                caller_serial: serial,
                reply_to,
                worker,
                name: name.as_ref().into(),
            },
            deadline,
            &mut self.timers,
        );
        let Some((call_id, worker)) = started else {
            return Err(Fail::new(
                ErrorCode::NoHandler,
                format!("no handler registered for `{}`", clip(&name, 200)),
            ));
        };
        let wconn = &mut self.conns[worker];
        let wcodec = wconn.codec.unwrap_or(Codec::Json);
        if let Err(e) = message::invoke(wcodec, wconn.out(), call_id, &name, args) {
            self.rpc.expire(call_id);
            return Err(e.into());
        }
        self.wrote(worker);
        Ok(())
    }

    fn result(&mut self, k: ConnKey, f: &Frame<'_>) -> Res {
        let Some(call_id) = opt_u64(f.id, "id")? else {
            return Err(Fail::new(
                ErrorCode::Broker,
                "result without the invoke's `id`",
            ));
        };
        // Late (reaped) or foreign results are ignored.
        let Some(call) = self.rpc.finish(call_id, k) else {
            return Ok(());
        };
        let Some(caller) = self
            .conns
            .get(call.caller)
            .filter(|c| c.serial == call.caller_serial)
        else {
            return Ok(());
        };
        let codec = caller.codec.unwrap_or(Codec::Json);
        let Some(reply_to) = call.reply_to.as_deref() else {
            return Ok(());
        };
        let id = Raw::new(codec, reply_to);
        match f.error.filter(|e| !e.is_nil()) {
            Some(err) => {
                let mut message = String::from("call failed");
                let mut code = String::from(ErrorCode::Call.as_str());
                if let Some(entries) = err.map() {
                    for (key, v) in entries {
                        match (&*key, v.as_str()) {
                            ("message", Some(m)) => message = clip(&m, 4096).to_string(),
                            ("code", Some(c)) if !c.is_empty() => code = clip(&c, 64).to_string(),
                            _ => {}
                        }
                    }
                } else if let Some(m) = err.as_str() {
                    message = clip(&m, 4096).to_string();
                }
                let conn = &mut self.conns[call.caller];
                message::err_with_code_str(codec, conn.out(), Some(id), &code, &message);
            }
            None => {
                let out = self.conns[call.caller].out();
                write_ok_value(codec, out, id, f.result, "the worker's result");
            }
        }
        self.wrote(call.caller);
        Ok(())
    }

    /// Fails a call whose worker vanished or whose deadline passed.
    pub(crate) fn fail_call(&mut self, call: PendingCall, code: ErrorCode) {
        let Some(caller) = self
            .conns
            .get(call.caller)
            .filter(|c| c.serial == call.caller_serial)
        else {
            return;
        };
        let codec = caller.codec.unwrap_or(Codec::Json);
        let Some(reply_to) = call.reply_to.as_deref() else {
            return;
        };
        let message = match code {
            ErrorCode::HandlerGone => format!(
                "the worker for `{}` disconnected with the call in flight",
                call.name
            ),
            _ => format!("call to `{}` timed out", call.name),
        };
        self.stats.error(code);
        let conn = &mut self.conns[call.caller];
        message::err(
            codec,
            conn.out(),
            Some(Raw::new(codec, reply_to)),
            code,
            &message,
        );
        self.wrote(call.caller);
    }

    // ------------------------------------------------------------ reply helpers

    fn ok_bool(&mut self, k: ConnKey, id: Option<Raw<'_>>, v: bool) {
        let Some(id) = id else { return };
        let conn = &mut self.conns[k];
        let codec = conn.codec.unwrap_or(Codec::Json);
        message::ok_bool(codec, conn.out(), id, v);
        self.wrote(k);
    }

    fn ok_with(&mut self, k: ConnKey, id: Option<Raw<'_>>, f: impl FnOnce(&mut Writer<'_>)) {
        let Some(id) = id else { return };
        let conn = &mut self.conns[k];
        let codec = conn.codec.unwrap_or(Codec::Json);
        let mut fw = message::begin_ok(codec, conn.out(), id, true);
        f(fw.w());
        fw.finish();
        self.wrote(k);
    }

    pub(crate) fn send_err(&mut self, k: ConnKey, id: Option<Raw<'_>>, code: ErrorCode, msg: &str) {
        let conn = &mut self.conns[k];
        let codec = conn.codec.unwrap_or(Codec::Json);
        message::err(codec, conn.out(), id, code, msg);
        self.wrote(k);
    }
}

/// Kinds whose effects are logged (or, for `lock`, may reserve fencing tokens).
fn is_write(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Set
            | Kind::Del
            | Kind::Clear
            | Kind::Mset
            | Kind::Incr
            | Kind::Decr
            | Kind::Cas
            | Kind::Fset
            | Kind::Fcas
            | Kind::Fdel
            | Kind::Lock
    )
}

/// `ok` with a stored value (or no value when absent), never leaving a partial frame.
/// `what` names the value in the error sent when it cannot be converted.
fn write_ok_value(codec: Codec, out: &mut Vec<u8>, id: Raw<'_>, v: Option<Raw<'_>>, what: &str) {
    match v {
        Some(v) => {
            let start = out.len();
            let mut fw = message::begin_ok(codec, out, id, true);
            let r = fw.w().raw(v);
            fw.finish();
            if r.is_err() {
                out.truncate(start);
                message::err(
                    codec,
                    out,
                    Some(id),
                    ErrorCode::Broker,
                    &format!("{what} could not be converted to this connection's codec"),
                );
            }
        }
        None => message::ok_empty(codec, out, id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("ééé", 3), "é");
        assert_eq!(clip("abc", 10), "abc");
    }
}
