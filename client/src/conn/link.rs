//! The socket's life for one [`Conn`]: connect (spawning a broker when allowed),
//! the hello handshake, and after a disconnect, failing what was in flight and
//! reconnecting with replay.
//!
//! Owns the connect/spawn polling and reconnect backoff schedules and the
//! order of a reconnect: the link comes up and the subscriptions and
//! registrations are replayed under `io`, before any caller may write, so a
//! subscription is back before requests that rely on it. It reads only the
//! handshake's frames; after `welcome` the same [`ReadBuf`] (with any bytes read
//! past the welcome) goes to the reader thread.

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use procmesh_proto::message::opt_str;
use procmesh_proto::{Dialect, Frame, Kind, Raw, Request};

use super::buf::ReadBuf;
use super::reader::Records;
use super::{fail_all, frame_in, Conn, Link};
use crate::error::{ClientError, Result};
use crate::event::Event;
use crate::pending::{lock, Pending};
use crate::spawn::{self, Backoff, SpawnConfig};

/// First and largest delay between reconnect attempts (jittered).
const RECONNECT_BASE: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Delays between connect attempts while a freshly spawned broker starts.
const SPAWN_POLL_BASE: Duration = Duration::from_millis(5);
const SPAWN_POLL_MAX: Duration = Duration::from_millis(200);

impl Conn {
    /// Connects (spawning if allowed) and completes the hello exchange.
    ///
    /// Without a configured codec the wire dialect is negotiated (PROTOCOL §3, ours):
    /// `hello` in JSON; a `welcome` listing `msgpack` (our broker) switches the link to
    /// MessagePack from the next frame, one without a list (a Node.js broker) keeps JSON;
    /// a broker that closes on the JSON hello (a Node.js broker with `codec: 'msgpack'`)
    /// is connected again and greeted with a msgpackr record hello, and the link then
    /// writes records.
    ///
    /// With a near cache, tracking is switched on before the link is handed over
    /// ([`Conn::track`]).
    pub(super) fn establish(&self) -> Result<(UnixStream, ReadBuf)> {
        let (mut s, mut buf) = self.establish_link()?;
        if let Some(near) = self.shared.near.as_ref().filter(|n| n.is_enabled()) {
            self.track(&mut s, &mut buf, near)?;
        }
        Ok((s, buf))
    }

    fn establish_link(&self) -> Result<(UnixStream, ReadBuf)> {
        let s = self.connect_or_spawn()?;
        if !self.shared.settings.negotiate {
            let d = self.shared.settings.codec.into();
            self.set_dialect(d);
            return self
                .handshake(s, d)?
                .ok_or_else(|| self.closed_during_hello());
        }
        if let Some(up) = self.handshake(s, Dialect::JSON)? {
            return Ok(up);
        }
        let s = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        self.handshake(s, Dialect::MSGPACKR)?
            .ok_or_else(|| self.closed_during_hello())
    }

    /// Sends `track` (ours) on a fresh link and reads until its reply, answering
    /// pings: from now on the broker pushes `inv` for every key this link reads. A
    /// broker that refuses (a Node.js broker: `EUNKNOWN`) turns the near cache off
    /// for good, with an `Event::Error` saying so.
    fn track(
        &self,
        s: &mut UnixStream,
        buf: &mut ReadBuf,
        near: &crate::near::NearCache,
    ) -> Result<()> {
        let io_err = |source: std::io::Error| ClientError::Connect {
            path: self.path.clone(),
            source,
        };
        let d = self.dialect();
        let id = self.next_id();
        s.write_all(&frame_in(d, &Request::Track, Some(id))?)
            .map_err(io_err)?;
        let mut records = Records::default();
        loop {
            while let Some(payload) = buf
                .next_frame()
                .map_err(|e| ClientError::Decode(e.to_string()))?
            {
                let (_, f) = records
                    .decode(payload)
                    .map_err(|e| ClientError::Decode(e.message().to_owned()))?;
                let is_ours = f.id.and_then(|r| r.as_i64()) == Some(id as i64);
                match f.kind() {
                    Kind::Ok if is_ours => return Ok(()),
                    Kind::Err if is_ours => {
                        near.disable();
                        self.emit(Event::Error {
                            shard: self.shard,
                            message: format!(
                                "near cache off: the broker at {} does not track keys ({})",
                                self.path.display(),
                                ClientError::from_err_frame(&f)
                            ),
                        });
                        return Ok(());
                    }
                    Kind::Ping => {
                        s.write_all(&frame_in(d, &Request::Pong, None)?)
                            .map_err(io_err)?;
                    }
                    _ => {}
                }
            }
            match buf.fill_from(s) {
                Ok(0) => return Err(self.closed_during_hello()),
                Ok(_) => {}
                Err(e) => read_failed(e, "track", self.shared.settings.connect_timeout, io_err)?,
            }
        }
    }

    /// The producer id of this connection: the one presented in `hello` and
    /// confirmed by `welcome`, or minted by the broker (kept across reconnects).
    pub(crate) fn producer_id(&self) -> Option<String> {
        lock(&self.io).pid.clone()
    }

    fn closed_during_hello(&self) -> ClientError {
        ClientError::disconnected(format!(
            "the broker at {} closed the connection during hello",
            self.path.display()
        ))
    }

    fn connect_or_spawn(&self) -> Result<UnixStream> {
        let first = match UnixStream::connect(&self.path) {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let nobody_listens = matches!(
            first.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        );
        let Some(sp) = self
            .shared
            .settings
            .spawn
            .as_ref()
            .filter(|_| nobody_listens)
        else {
            return Err(ClientError::Connect {
                path: self.path.clone(),
                source: first,
            });
        };
        let program = match &sp.program {
            Some(p) => p.clone(),
            None => spawn::locate_broker()?,
        };
        spawn::spawn_broker(
            &program,
            &SpawnConfig {
                name: self.name.clone(),
                socket: self.path.clone(),
                idle_timeout: sp.idle_timeout,
                token: self.shared.settings.token.clone(),
                max_keys: sp.max_keys,
                opts: sp.opts.clone(),
            },
        )?;
        self.emit(Event::Spawned {
            shard: self.shard,
            path: self.path.clone(),
            program,
        });
        // Whichever broker wins a spawn race owns the socket; poll until it is there.
        let deadline = Instant::now() + self.shared.settings.connect_timeout;
        let mut backoff = Backoff::new(SPAWN_POLL_BASE, SPAWN_POLL_MAX);
        loop {
            std::thread::sleep(backoff.next_delay());
            match UnixStream::connect(&self.path) {
                Ok(s) => return Ok(s),
                Err(source) if Instant::now() >= deadline => {
                    return Err(ClientError::Connect {
                        path: self.path.clone(),
                        source,
                    })
                }
                Err(_) => {}
            }
        }
    }

    /// Sends `hello` in dialect `d` and reads until `welcome` (answering pings
    /// meanwhile), then fixes the link's dialect. Returns the socket and the read
    /// buffer, holding any bytes read past the welcome; `None` when the broker closed
    /// the connection before answering.
    fn handshake(&self, mut s: UnixStream, d: Dialect) -> Result<Option<(UnixStream, ReadBuf)>> {
        let io_err = |source: std::io::Error| ClientError::Connect {
            path: self.path.clone(),
            source,
        };
        let timeout = self.shared.settings.connect_timeout;
        s.set_read_timeout(Some(timeout)).map_err(io_err)?;
        // The token goes only to a listener of our own user (or root): anyone may
        // bind a socket at a path in a shared directory first.
        if self.shared.settings.token.is_some() {
            let peer = peer_uid(&s).map_err(io_err)?;
            if let Some(e) = token_refusal(&self.path, peer, current_uid()) {
                return Err(e);
            }
        }
        let id = self.next_id();
        let pid = lock(&self.io).pid.clone();
        // {"t":"hello","id":ID,"name":NAME,"token"?:T,"pid"?:P}
        let hello = Request::Hello {
            name: Some(self.name.as_str().into()),
            token: self.shared.settings.token.as_deref().map(Into::into),
            pid: pid.as_deref().map(Into::into),
        };
        let closed = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        };
        match s.write_all(&frame_in(d, &hello, Some(id))?) {
            Ok(()) => {}
            Err(e) if closed(&e) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        }
        let mut buf = ReadBuf::new();
        let mut records = Records::default();
        let mut switch_to = d;
        loop {
            let mut welcomed = false;
            while let Some(payload) = buf
                .next_frame()
                .map_err(|e| ClientError::Decode(e.to_string()))?
            {
                let (_, f) = records
                    .decode(payload)
                    .map_err(|e| ClientError::Decode(e.message().to_owned()))?;
                let is_ours = f.id.and_then(|r| r.as_i64()) == Some(id as i64);
                match f.kind() {
                    Kind::Welcome | Kind::Ok if is_ours => {
                        self.check_shard(&f)?;
                        if let Ok(Some(p)) = opt_str(f.pid, "pid") {
                            lock(&self.io).pid = Some(p.into_owned());
                        }
                        if self.shared.settings.negotiate
                            && d == Dialect::JSON
                            && lists_codec(f.codecs, "msgpack")
                        {
                            switch_to = Dialect::MSGPACK;
                        }
                        welcomed = true;
                        break;
                    }
                    Kind::Err if is_ours => return Err(ClientError::from_err_frame(&f)),
                    Kind::Ping => {
                        s.write_all(&frame_in(d, &Request::Pong, None)?)
                            .map_err(io_err)?;
                    }
                    _ => {}
                }
            }
            if welcomed {
                // A broker that accepts no bytes for a whole call timeout is
                // treated as dead (the write fails and the socket is shut down),
                // so a writer never blocks forever holding `io`.
                s.set_write_timeout(Some(
                    self.shared
                        .settings
                        .call_timeout
                        .max(Duration::from_secs(1)),
                ))
                .map_err(io_err)?;
                self.set_dialect(switch_to);
                return Ok(Some((s, buf)));
            }
            match buf.fill_from(&mut s) {
                Ok(0) => return Ok(None),
                Err(e) if closed(&e) => return Ok(None),
                Ok(_) => {}
                Err(e) => read_failed(e, "hello", timeout, io_err)?,
            }
        }
    }

    /// After the reader saw the socket die: fail what was in flight, tell
    /// observers, and reconnect (unless closed or reconnect is off). Returns the
    /// new socket and read buffer for the reader, or `None` when the reader
    /// should exit.
    pub(super) fn after_disconnect(&self, reason: String) -> Option<(UnixStream, ReadBuf)> {
        let mut io = lock(&self.io);
        if let Some(s) = io.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        io.generation += 1;
        // Invalidations may have been lost with the socket: nothing cached is trusted,
        // and reads in flight do not fill (their pending marks go too).
        if let Some(near) = &self.shared.near {
            near.flush_all();
        }
        let was_closed = io.link == Link::Closed;
        if !was_closed {
            if self.shared.settings.reconnect {
                io.link = Link::Reconnecting;
            } else {
                io.link = Link::Closed;
                io.closed_reason = format!(
                    "disconnected from {} ({reason}); reconnect is off",
                    self.path.display()
                );
            }
        }
        let drained = std::mem::take(&mut *lock(&self.pending));
        self.notify_link();
        let closed = io.link == Link::Closed;
        drop(io);
        fail_all(
            drained,
            &format!(
                "connection to the broker at {} lost: {reason}",
                self.path.display()
            ),
        );
        if was_closed {
            return None;
        }
        self.emit(Event::Disconnected {
            shard: self.shard,
            path: self.path.clone(),
            reason,
        });
        if closed {
            return None;
        }
        self.reconnect()
    }

    fn reconnect(&self) -> Option<(UnixStream, ReadBuf)> {
        let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_MAX);
        let mut attempts = 0u32;
        loop {
            // Sleep for the backoff, but wake at once when the client is closed.
            {
                let deadline = Instant::now() + backoff.next_delay();
                let mut io = lock(&self.io);
                loop {
                    if io.link == Link::Closed {
                        return None;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    io = self
                        .link_changed
                        .wait_timeout(io, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            attempts += 1;
            let (stream, buf) = match self.establish() {
                Ok(x) => x,
                Err(e) => {
                    self.emit(Event::Error {
                        shard: self.shard,
                        message: format!("reconnect attempt {attempts} failed: {e}"),
                    });
                    continue;
                }
            };
            let Ok(writer) = stream.try_clone() else {
                continue;
            };
            let mut io = lock(&self.io);
            if io.link == Link::Closed {
                let _ = stream.shutdown(Shutdown::Both);
                return None;
            }
            io.stream = Some(writer);
            io.link = Link::Up;
            // Replay before anyone else may write, so a subscription is back before
            // requests that rely on it.
            // Each subscription resumes after the highest retention offset it saw
            // (`since`), so the retained messages it missed arrive, none twice.
            let resubs = lock(&self.subs).resubscriptions();
            let names: Vec<String> = lock(&self.regs).keys().cloned().collect();
            // Names and patterns are plain strings: encoding cannot fail.
            for r in resubs {
                let id = self.next_id();
                let sub = Request::Sub {
                    channel: r.pattern.as_str().into(),
                    replay: r.replay,
                    since: r.since,
                };
                let _ =
                    self.write_locked(&mut io, id, &sub, Pending::Resubscribe(r.pattern.clone()));
            }
            for n in names {
                let id = self.next_id();
                let reg = Request::Reg {
                    name: n.as_str().into(),
                };
                let _ = self.write_locked(&mut io, id, &reg, Pending::Background("re-register"));
            }
            self.notify_link();
            drop(io);
            self.emit(Event::Reconnected {
                shard: self.shard,
                path: self.path.clone(),
                attempts,
            });
            return Some((stream, buf));
        }
    }
}

impl Conn {
    /// Fails with [`ClientError::ShardMismatch`] when the `welcome` announces a place
    /// in the mesh (`shard`, `shards`; ours) other than the one this connection
    /// routes to. A broker that announces nothing (procmesh-js, a plain `serve`)
    /// passes.
    fn check_shard(&self, welcome: &Frame<'_>) -> Result<()> {
        let (Some(count), index) = (
            welcome.shards.and_then(|r| r.as_i64()),
            welcome.shard.and_then(|r| r.as_i64()),
        ) else {
            return Ok(());
        };
        let expected = (self.shard.0, self.shared.settings.shards);
        let index = index.unwrap_or(0);
        if (index, count) == (expected.0 as i64, expected.1 as i64) {
            return Ok(());
        }
        Err(ClientError::ShardMismatch {
            path: self.path.clone(),
            expected,
            announced: (index.max(0) as u64, count.max(0) as u64),
        })
    }
}

/// Whether a `welcome`'s `codecs` list (ours) names `codec`.
fn lists_codec(codecs: Option<Raw<'_>>, codec: &str) -> bool {
    codecs
        .and_then(|c| c.array())
        .is_some_and(|mut it| it.any(|v| v.as_str().is_some_and(|s| s == codec)))
}

/// This process's effective uid.
fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the process listening behind `s` (`SO_PEERCRED`, as of its bind).
fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    use std::os::unix::io::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred we own.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The error that keeps the token from a listener at `path` owned by `peer`, when
/// it is neither `ours` nor root (root can read our memory anyway): `EAUTH`,
/// raised here without sending anything (docs/protocol.md §3).
fn token_refusal(path: &std::path::Path, peer: u32, ours: u32) -> Option<ClientError> {
    (peer != ours && peer != 0).then(|| ClientError::Remote {
        code: procmesh_proto::ErrorCode::Auth.as_str().to_string(),
        message: format!(
            "the token was not sent: the listener at {} runs as uid {peer}, not as this \
             process's uid {ours} or root (another user may have bound the path first); \
             use a socket in a private directory ($TMPDIR or PROCMESH_SOCKET)",
            path.display()
        ),
    })
}

/// A failed read of the handshake: retried when interrupted, else the call's
/// error (a read timeout is `ETIMEOUT` for `op`, anything else `io_err`'s).
fn read_failed(
    e: std::io::Error,
    op: &'static str,
    after: Duration,
    io_err: impl FnOnce(std::io::Error) -> ClientError,
) -> Result<()> {
    match e.kind() {
        std::io::ErrorKind::Interrupted => Ok(()),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            Err(ClientError::Timeout { op, after })
        }
        _ => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_token_is_kept_from_a_listener_of_another_uid() {
        let path = std::path::Path::new("/tmp/procmesh-default.sock");
        let e = super::token_refusal(path, 1001, 1000).expect("refused");
        assert_eq!(e.code(), Some(procmesh_proto::ErrorCode::Auth));
        let text = e.to_string();
        assert!(
            text.contains("/tmp/procmesh-default.sock") && text.contains("uid 1001"),
            "{text}"
        );
        assert!(
            super::token_refusal(path, 1000, 1000).is_none(),
            "our own uid"
        );
        assert!(super::token_refusal(path, 0, 1000).is_none(), "root");
    }

    #[test]
    fn the_peer_uid_of_a_real_listener_is_ours() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let s = std::os::unix::net::UnixStream::connect(&p).unwrap();
        let _accepted = l.accept().unwrap();
        assert_eq!(super::peer_uid(&s).unwrap(), super::current_uid());
        assert!(
            super::token_refusal(&p, super::peer_uid(&s).unwrap(), super::current_uid()).is_none()
        );
    }

    use std::os::unix::net::UnixListener;
    use std::sync::Arc;

    use procmesh_proto::response::{Push, Reply as Response};
    use procmesh_proto::{Codec, Frame};

    use super::*;
    use crate::conn::{Settings, Shared};
    use crate::dispatch::Dispatcher;
    use crate::event::ShardId;

    /// Reads one frame from `s` into `buf` and returns its kind and id.
    fn read_one(s: &mut UnixStream, buf: &mut ReadBuf, codec: Codec) -> (Kind, Option<u64>) {
        loop {
            if let Some(p) = buf.next_frame().unwrap() {
                let f = Frame::decode(codec, p).unwrap();
                return (f.kind(), f.id.and_then(|i| i.as_i64()).map(|i| i as u64));
            }
            assert!(buf.fill_from(s).unwrap() > 0, "client hung up");
        }
    }

    /// Bytes that arrive in the same read as the `welcome` are not lost: the
    /// handshake's buffer goes on to the reader thread, which answers the ping.
    #[test]
    fn bytes_after_the_welcome_reach_the_reader() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("fake.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let broker = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = ReadBuf::new();
                let (kind, id) = read_one(&mut s, &mut buf, codec);
                assert_eq!(kind, Kind::Hello);
                let id_bytes = match codec {
                    Codec::Json => id.unwrap().to_string().into_bytes(),
                    Codec::MsgPack => vec![id.unwrap() as u8],
                };
                let mut out = Vec::new();
                Response::Welcome {
                    broker: "fake",
                    pid: "p1",
                    codecs: &[],
                    shard: None,
                }
                .encode_into(
                    codec,
                    Some(procmesh_proto::Raw::new(codec, &id_bytes)),
                    &mut out,
                );
                Push::Ping.encode_into(codec, &mut out).unwrap();
                s.write_all(&out).unwrap(); // one write: welcome and ping together
                read_one(&mut s, &mut buf, codec).0
            });
            let settings = Settings {
                codec,
                negotiate: false,
                token: None,
                call_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(10),
                ping_interval: None,
                reconnect: false,
                spawn: None,
                handler_threads: 1,
                near_cache: None,
                shards: 1,
                producer: Default::default(),
            };
            let shared = Arc::new(Shared::new(settings, Dispatcher::start(vec![]).unwrap()));
            let conn = Conn::open(ShardId(0), path, "t".into(), shared).unwrap();
            assert_eq!(broker.join().unwrap(), Kind::Pong);
            assert_eq!(lock(&conn.io).pid.as_deref(), Some("p1"));
            conn.close("test over");
        }
    }
}
