//! One socket of the generator: blocking `UnixStream`, a read buffer consumed by
//! offset, a write buffer flushed once per batch, and the in-flight window.
//!
//! The window maps each outstanding request to its send time. Procmesh replies are
//! matched by id: a request's id is `seq * window + slot`, so `id % window` finds its
//! slot and a slot is reused only after its reply arrived. RESP replies are matched
//! in order. Owns no workload logic: callers queue ops and consume replies.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::wire::{Op, Reply, ReplyKind, Wire};

/// Initial read buffer size; it grows only for a frame larger than itself.
pub const READ_BUF_LEN: usize = 256 << 10;

/// One connection of the generator.
pub struct Stream<W: Wire> {
    pub(crate) sock: UnixStream,
    pub(crate) wire: W,
    pub(crate) rbuf: Vec<u8>,
    pub(crate) rstart: usize,
    pub(crate) rend: usize,
    pub(crate) wbuf: Vec<u8>,
    window: usize,
    slots: Vec<Option<Instant>>,
    free: Vec<u32>,
    seq: u64,
    fifo: VecDeque<Instant>,
    inflight: usize,
    /// Requests this stream may still send (`u64::MAX` for a timed run).
    pub remaining: u64,
}

impl<W: Wire> Stream<W> {
    /// Connects to `path`, keeping at most `window` requests in flight.
    pub fn connect(path: &Path, wire: W, window: usize) -> io::Result<Stream<W>> {
        let sock = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot connect to {}: {e}", path.display()),
            )
        })?;
        let window = window.max(1);
        Ok(Stream {
            sock,
            wire,
            rbuf: vec![0; READ_BUF_LEN],
            rstart: 0,
            rend: 0,
            wbuf: Vec::with_capacity(4096),
            window,
            slots: vec![None; window],
            free: (0..window as u32).rev().collect(),
            seq: 0,
            fifo: VecDeque::with_capacity(window),
            inflight: 0,
            remaining: u64::MAX,
        })
    }

    /// Requests sent and not yet answered.
    #[inline]
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Whether another request fits in the window and the budget.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.inflight < self.window && self.remaining > 0
    }

    /// Appends `op` to the write buffer as a windowed request sent at `now`.
    #[inline]
    pub fn queue(&mut self, op: &Op<'_>, now: Instant) {
        let id = if W::ORDERED {
            self.fifo.push_back(now);
            0
        } else {
            let slot = self
                .free
                .pop()
                .expect("invariant: queue is only called with room in the window");
            self.slots[slot as usize] = Some(now);
            let id = self.seq * self.window as u64 + slot as u64;
            self.seq += 1;
            id
        };
        self.wire.encode(op, id, &mut self.wbuf);
        self.inflight += 1;
        self.remaining = self.remaining.saturating_sub(1);
    }

    /// Writes the write buffer out (blocking).
    #[inline]
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.sock.write_all(&self.wbuf)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads once (blocking, or up to the socket's read timeout). Returns the bytes read;
    /// a closed connection is an `UnexpectedEof` error.
    pub fn fill(&mut self) -> io::Result<usize> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() {
            if self.rstart > 0 {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            } else {
                let n = self.rbuf.len() * 2;
                self.rbuf.resize(n, 0);
            }
        }
        let n = self.sock.read(&mut self.rbuf[self.rend..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.rend += n;
        Ok(n)
    }

    /// Takes the next complete frame from the read buffer, if any.
    #[inline]
    pub fn next_reply(&mut self) -> io::Result<Option<Reply>> {
        match self.wire.decode(&self.rbuf[self.rstart..self.rend]) {
            Ok(Some((len, reply))) => {
                self.rstart += len;
                Ok(Some(reply))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// Matches a reply to its request; returns the request's latency. Frames that are
    /// not replies (deliveries, heartbeats) return `None`.
    #[inline]
    pub fn complete(&mut self, reply: &Reply, now: Instant) -> io::Result<Option<Duration>> {
        if matches!(
            reply.kind,
            ReplyKind::Msg | ReplyKind::Ping | ReplyKind::Other
        ) {
            return Ok(None);
        }
        let sent = if W::ORDERED {
            self.fifo.pop_front()
        } else {
            reply.id.and_then(|id| {
                let slot = (id % self.window as u64) as usize;
                let sent = self.slots.get_mut(slot)?.take();
                if sent.is_some() {
                    self.free.push(slot as u32);
                }
                sent
            })
        };
        match sent {
            Some(t) => {
                self.inflight -= 1;
                Ok(Some(now.saturating_duration_since(t)))
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply {reply:?} matches no request in flight"),
            )),
        }
    }

    /// Sends `op` outside the window and waits for its reply (connection setup:
    /// `sub`, `reg`). Deliveries that arrive first are skipped.
    pub fn roundtrip(&mut self, op: &Op<'_>) -> io::Result<Reply> {
        self.wire.encode(op, 0, &mut self.wbuf);
        self.flush()?;
        loop {
            while let Some(r) = self.next_reply()? {
                if matches!(r.kind, ReplyKind::Ok | ReplyKind::Err(_)) {
                    return Ok(r);
                }
            }
            self.fill()?;
        }
    }

    /// Sets the read timeout of the socket.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }
}
