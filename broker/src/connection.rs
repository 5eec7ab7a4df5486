//! One client connection: its socket, read and write buffers, codec and liveness.
//!
//! `connection` owns buffers and their accounting, not business logic. The read
//! buffer is consumed by offset and compacted only when the consumed head passes
//! half of it; both buffers shrink back after a spike. Outbound bytes are counted
//! against the high-water mark (droppable frames are refused past it) and the hard
//! limit (the connection is closed past it).

use std::io::{self, Read, Write};

use mio::net::UnixStream;
use procmesh_proto::Codec;

/// Capacity a connection's buffers return to after a spike.
pub const BUF_TARGET: usize = 64 * 1024;
/// How much one read asks for at least.
const READ_CHUNK: usize = 64 * 1024;

/// Why and how a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Open.
    No,
    /// Stop reading; close once queued output is written (after an auth failure or
    /// an oversized frame, so the peer sees the error).
    AfterFlush,
    /// Close at the end of this turn.
    Now,
}

/// Outcome of reading a socket until it would block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Read everything available.
    Drained,
    /// Stopped at the per-wake budget with more possibly available.
    Budget,
    /// The peer closed or the socket failed.
    Closed,
}

/// A client connection.
pub struct Connection {
    /// The socket.
    pub stream: UnixStream,
    /// Unique for the broker's lifetime (slab indexes are reused; serials are not).
    pub serial: u64,
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Detected from the first payload.
    pub codec: Option<Codec>,
    /// Passed `hello` with the right token (or no token is required).
    pub authed: bool,
    /// Last inbound frame, ms on the broker clock.
    pub last_in: u64,
    /// Last heartbeat ping sent, ms on the broker clock.
    pub last_ping: u64,
    /// In the reactor's dirty list.
    pub dirty: bool,
    /// Close state.
    pub closing: Closing,
    /// A readiness event reported the peer's end of stream (or an error).
    pub peer_closed: bool,
}

impl Connection {
    /// Wraps an accepted socket.
    pub fn new(stream: UnixStream, serial: u64, authed: bool, now: u64) -> Connection {
        Connection {
            stream,
            serial,
            rbuf: Vec::new(),
            rpos: 0,
            rend: 0,
            wbuf: Vec::new(),
            wpos: 0,
            codec: None,
            authed,
            last_in: now,
            last_ping: now,
            dirty: false,
            closing: Closing::No,
            peer_closed: false,
        }
    }

    /// Reads until the socket would block or `budget` bytes were read.
    ///
    /// A read that returns less than asked drained the socket at that moment; with
    /// edge-triggered readiness any later arrival raises a new event, so the loop
    /// stops there instead of spending a syscall on the `WouldBlock` — unless the
    /// event said the peer closed ([`Connection::peer_closed`]), whose end-of-stream
    /// must be read.
    pub fn fill(&mut self, budget: usize) -> ReadOutcome {
        let peer_closed = self.peer_closed;
        let mut total = 0;
        loop {
            if self.rend == self.rbuf.len() {
                // Zeroed once on growth, then reused: no per-read initialisation.
                let grow = self.rbuf.len().max(READ_CHUNK);
                self.rbuf.resize(self.rbuf.len() + grow, 0);
            }
            let space = self.rbuf.len() - self.rend;
            match self.stream.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(n) => {
                    self.rend += n;
                    total += n;
                    if total >= budget {
                        return ReadOutcome::Budget;
                    }
                    if n < space && !peer_closed {
                        return ReadOutcome::Drained;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Closed,
            }
        }
    }

    /// Takes the input buffer out for processing (so the dispatcher can borrow every
    /// connection while reading this one's frames): the buffer and the range of
    /// unread bytes in it. Give it back with [`Connection::put_input`].
    pub fn take_input(&mut self) -> (Vec<u8>, usize, usize) {
        (std::mem::take(&mut self.rbuf), self.rpos, self.rend)
    }

    /// Returns the input buffer, with everything before `consumed` processed.
    pub fn put_input(&mut self, mut buf: Vec<u8>, consumed: usize, end: usize) {
        if consumed == end {
            self.rpos = 0;
            self.rend = 0;
            if buf.len() > 4 * BUF_TARGET {
                buf = vec![0; BUF_TARGET];
            }
        } else if consumed > buf.len() / 2 {
            buf.copy_within(consumed..end, 0);
            self.rpos = 0;
            self.rend = end - consumed;
        } else {
            self.rpos = consumed;
            self.rend = end;
        }
        self.rbuf = buf;
    }

    /// Bytes queued for the peer and not yet written.
    #[inline]
    pub fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// The output buffer, to append frames to.
    #[inline]
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    /// Writes queued output until done or the socket would block. Returns false when
    /// the socket failed.
    pub fn flush(&mut self) -> bool {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return false,
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            if self.wbuf.capacity() > 4 * BUF_TARGET {
                self.wbuf = Vec::with_capacity(BUF_TARGET);
            }
        } else if self.wpos > self.wbuf.len() / 2 && self.wpos > BUF_TARGET {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        true
    }
}
