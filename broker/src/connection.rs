//! Client connections as the state machine sees them: buffers, codec, liveness,
//! and the table of open connections with its dirty list.
//!
//! `connection` owns buffers and their accounting, not business logic and not the
//! socket: the I/O driver keeps the socket and hands it in to [`Connection::fill`] and
//! [`Connection::flush`], so the same connection state serves any driver. The read
//! buffer is consumed by offset and compacted only when the consumed head passes
//! half of it; both buffers shrink back after a spike. Outbound bytes are counted
//! against the high-water mark (droppable frames are refused past it) and the hard
//! limit (the connection is closed past it).
//!
//! Invariants: a connection is in [`Conns`]' dirty list exactly when its `dirty`
//! flag is set; a [`ConnId`] names one slot of the table, and slots are reused (the
//! [`Connection::serial`] is not).

use std::io::{self, Read, Write};

use procmesh_proto::msgpackr::Encoder;
use procmesh_proto::response::Reply;
use procmesh_proto::{Codec, Dialect, ErrorCode, Raw};
use slab::Slab;

/// Capacity a connection's buffers return to after a spike.
pub const BUF_TARGET: usize = 64 * 1024;
/// How much one read asks for at least.
const READ_CHUNK: usize = 64 * 1024;

/// A connection's slot in the broker's table (also its driver token). Slots are
/// reused after a close; [`Connection::serial`] tells incarnations apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub usize);

impl ConnId {
    /// The id of slot `index`.
    #[inline]
    pub const fn new(index: usize) -> ConnId {
        ConnId(index)
    }

    /// The slot index.
    #[inline]
    pub const fn index(self) -> usize {
        self.0
    }
}

/// The driver side of the connections: what the state machine may ask of the I/O
/// loop that owns the sockets. Implemented by each driver (static dispatch).
pub trait Transport {
    /// Offers `conn`'s queued output to its socket now (an early flush for a slow
    /// subscriber, or the end-of-turn flush). False when the socket failed.
    fn flush(&mut self, id: ConnId, conn: &mut Connection) -> bool;
    /// The state machine closed `id`: release its socket.
    fn release(&mut self, id: ConnId);
}

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

/// A client connection's buffers and state (its socket belongs to the driver).
pub struct Connection {
    /// Unique for the broker's lifetime (slab indexes are reused; serials are not).
    pub serial: u64,
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    codec: Codec,
    codec_known: bool,
    /// The peer writes msgpackr records (procmesh-js's MessagePack): its frames are
    /// normalised on the way in and every frame to it is converted on the way out.
    records: bool,
    /// Passed `hello` with the right token (or no token is required).
    pub authed: bool,
    /// Last inbound frame, ms on the broker clock.
    pub last_in: u64,
    /// Last heartbeat ping sent, ms on the broker clock.
    pub last_ping: u64,
    /// In the dirty list.
    pub dirty: bool,
    /// Close state.
    pub closing: Closing,
    /// A readiness event reported the peer's end of stream (or an error).
    pub peer_closed: bool,
    /// When it was accepted, ms on the broker clock (the handshake deadline counts
    /// from here).
    pub opened: u64,
    /// Its queued bytes as last counted into [`Conns::total_out`].
    counted: usize,
}

impl Connection {
    /// State for a newly accepted connection.
    pub fn new(serial: u64, authed: bool, now: u64) -> Connection {
        Connection {
            serial,
            rbuf: Vec::new(),
            rpos: 0,
            rend: 0,
            wbuf: Vec::new(),
            wpos: 0,
            codec: Codec::Json,
            codec_known: false,
            records: false,
            authed,
            last_in: now,
            last_ping: now,
            dirty: false,
            closing: Closing::No,
            peer_closed: false,
            opened: now,
            counted: 0,
        }
    }

    /// Frees both buffers when nothing is pending in them (an idle connection then
    /// costs no buffer memory; the next read allocates again). True when it freed any.
    pub fn shrink_idle(&mut self) -> bool {
        let mut freed = false;
        if self.rpos == self.rend && self.rbuf.capacity() > 0 {
            self.rbuf = Vec::new();
            self.rpos = 0;
            self.rend = 0;
            freed = true;
        }
        if self.queued() == 0 && self.wbuf.capacity() > 0 {
            self.wbuf = Vec::new();
            self.wpos = 0;
            freed = true;
        }
        freed
    }

    /// Bytes held by its buffers (capacity).
    pub fn buffer_bytes(&self) -> usize {
        self.rbuf.capacity() + self.wbuf.capacity()
    }

    /// The connection's codec: the one detected from its first frame. Until a frame
    /// fixed it (a heartbeat ping or an oversized-frame error before any frame) and
    /// for a connection whose first frame was neither JSON nor MessagePack, JSON.
    #[inline]
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Whether the first frame has fixed the codec.
    #[inline]
    pub fn is_codec_known(&self) -> bool {
        self.codec_known
    }

    /// Fixes the codec (from the first frame).
    #[inline]
    pub fn set_codec(&mut self, codec: Codec) {
        self.set_dialect(codec.into());
    }

    /// Fixes the codec and whether the peer writes msgpackr records.
    #[inline]
    pub fn set_dialect(&mut self, d: Dialect) {
        self.codec = d.codec;
        self.records = d.records;
        self.codec_known = true;
    }

    /// The connection's dialect (codec, and msgpackr records or not).
    #[inline]
    pub fn dialect(&self) -> Dialect {
        Dialect {
            codec: self.codec,
            records: self.records,
        }
    }

    /// Lets the next frame fix the codec again (after a JSON `hello` answered with our
    /// codec list: the client may switch without another round trip). Replies until
    /// then stay in the current codec.
    #[inline]
    pub fn redetect_codec(&mut self) {
        self.codec_known = false;
    }

    /// Reads from `src` until it would block or `budget` bytes were read.
    ///
    /// A read that returns less than asked drained the socket at that moment; with
    /// edge-triggered readiness any later arrival raises a new event, so the loop
    /// stops there instead of spending a syscall on the `WouldBlock` — unless the
    /// event said the peer closed ([`Connection::peer_closed`]), whose end-of-stream
    /// must be read.
    pub fn fill(&mut self, src: &mut impl Read, budget: usize) -> ReadOutcome {
        let peer_closed = self.peer_closed;
        let mut total = 0;
        loop {
            if self.rend == self.rbuf.len() {
                // Zeroed once on growth, then reused: no per-read initialisation.
                let grow = self.rbuf.len().max(READ_CHUNK);
                self.rbuf.resize(self.rbuf.len() + grow, 0);
            }
            let space = self.rbuf.len() - self.rend;
            match src.read(&mut self.rbuf[self.rend..]) {
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

    /// Unread input when a whole frame waits at its head (the core stopped at its
    /// per-turn frame budget), else 0. Past their read budget, the drivers stop
    /// reading such a connection until the core catches up, so a peer that sends
    /// faster than it is served waits in its socket. A partial frame never counts:
    /// reading is what completes it, and the frame limit bounds it.
    #[inline]
    pub fn backlog(&self) -> usize {
        match procmesh_proto::frame::try_decode(&self.rbuf[self.rpos..self.rend], usize::MAX) {
            Ok(Some(_)) => self.rend - self.rpos,
            _ => 0,
        }
    }

    /// Bytes queued for the peer and not yet written.
    #[inline]
    pub fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Length of the output buffer (the offset the next frame appended starts at).
    #[inline]
    pub fn out_len(&self) -> usize {
        self.wbuf.len()
    }

    /// The output buffer, to append frames to.
    #[inline]
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    /// Writes queued output to `dst` until done or it would block. Returns false
    /// when the socket failed.
    pub fn flush(&mut self, dst: &mut impl Write) -> bool {
        while self.wpos < self.wbuf.len() {
            match dst.write(&self.wbuf[self.wpos..]) {
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

/// The open connections, the list of those with output (or a close) pending this
/// turn, the hard output limit, and the global output cap.
///
/// Bounds: one reply is at most `reply_budget` bytes (min of the hard limit and
/// `u32::MAX`, so a length prefix never wraps); one connection's queue at most the
/// hard limit; all queues together at most `max_out` (past it the biggest queues
/// are disconnected). Invariant: `total_out` is the sum of every open connection's
/// `counted`, which is its `queued()` as of its last write or flush.
pub struct Conns {
    slab: Slab<Connection>,
    dirty: Vec<ConnId>,
    hard_limit: usize,
    reply_budget: usize,
    total_out: usize,
    max_out: usize,
    /// Connections closed for passing the hard limit (or shed at the global output
    /// cap) since start.
    pub slow_closed: u64,
    /// Connections closed because all queues together passed `maxOutputBytes`.
    pub shed_closed: u64,
    /// Replies refused with `ETOOBIG` for passing the reply budget.
    pub too_big: u64,
    /// Converts frames to msgpackr records for connections that write them, through
    /// `scratch` (one frame's size at most; shrunk back after a spike).
    records_enc: Encoder,
    scratch: Vec<u8>,
}

impl Conns {
    /// An empty table; connections queuing more than `hard_limit` bytes are closed,
    /// and the biggest queues when all of them hold more than `max_out`.
    pub fn new(hard_limit: usize, max_out: usize) -> Conns {
        Conns {
            slab: Slab::new(),
            dirty: Vec::new(),
            hard_limit,
            reply_budget: hard_limit.min(u32::MAX as usize),
            total_out: 0,
            max_out,
            slow_closed: 0,
            shed_closed: 0,
            too_big: 0,
            records_enc: Encoder::new(),
            scratch: Vec::new(),
        }
    }

    /// The most bytes one reply frame may take.
    #[inline]
    pub fn reply_budget(&self) -> usize {
        self.reply_budget
    }

    /// Bytes queued over all connections (as of their last write or flush).
    #[inline]
    pub fn total_out(&self) -> usize {
        self.total_out
    }

    /// Whether `extra` more queued bytes would pass the global output cap (a
    /// best-effort frame is dropped then).
    #[inline]
    pub fn over_output_cap(&self, extra: usize) -> bool {
        self.total_out.saturating_add(extra) > self.max_out
    }

    /// Appends the reply to request `req` with `encode(codec, out)`; a reply frame
    /// larger than the reply budget is replaced by an `ETOOBIG` error to the same
    /// id, so every request is answered exactly once and the connection stays open.
    #[inline]
    pub fn send_reply<R>(
        &mut self,
        id: ConnId,
        req: Raw<'_>,
        encode: impl FnOnce(Codec, &mut Vec<u8>) -> R,
    ) -> R {
        let budget = self.reply_budget;
        let conn = &mut self.slab[id.0];
        let at = conn.wbuf.len();
        let r = encode(conn.codec, &mut conn.wbuf);
        let n = conn.wbuf.len() - at;
        if n > budget {
            conn.wbuf.truncate(at);
            too_big_reply(conn.codec, &mut conn.wbuf, req, n, budget);
            self.too_big += 1;
        }
        if conn.records {
            self.convert_to_records(id, at);
        }
        self.wrote(id);
        r
    }

    /// Room for one more reply on `id`: the reply budget, or less when the
    /// connection's queue already holds most of the hard limit (a reply that passes
    /// the room would close the connection as a slow consumer, unanswered).
    #[inline]
    pub fn reply_room(&self, id: ConnId) -> usize {
        let q = self.slab[id.0].queued();
        self.reply_budget.min(self.hard_limit.saturating_sub(q))
    }

    /// [`send_reply`](Self::send_reply) for a reply that carries a value of at
    /// least `least` bytes (see [`least_reply_len`]): refused with `ETOOBIG` before
    /// anything is built when `least` passes [`reply_room`](Self::reply_room), and
    /// after building when the frame does; `None` when refused before building.
    /// Either way the request is answered once and the connection stays open.
    #[inline]
    pub fn send_value_reply<R>(
        &mut self,
        id: ConnId,
        req: Raw<'_>,
        least: usize,
        encode: impl FnOnce(Codec, &mut Vec<u8>) -> R,
    ) -> Option<R> {
        let room = self.reply_room(id);
        let conn = &mut self.slab[id.0];
        let at = conn.wbuf.len();
        let r = if least > room {
            None
        } else {
            Some(encode(conn.codec, &mut conn.wbuf))
        };
        let n = if r.is_some() {
            conn.wbuf.len() - at
        } else {
            least
        };
        if n > room {
            conn.wbuf.truncate(at);
            too_big_reply(conn.codec, &mut conn.wbuf, req, n, room);
            self.too_big += 1;
        }
        if conn.records {
            self.convert_to_records(id, at);
        }
        self.wrote(id);
        r
    }

    /// Re-counts `id`'s queued bytes into the total (after a flush or a write).
    #[inline]
    pub fn sync(&mut self, id: ConnId) {
        if let Some(conn) = self.slab.get_mut(id.0) {
            if conn.closing == Closing::Now {
                return;
            }
            let q = conn.queued();
            self.total_out = self.total_out - conn.counted + q;
            conn.counted = q;
        }
    }

    /// Disconnects the biggest queues until the total is back under the cap.
    #[cold]
    fn shed(&mut self) {
        let mut big: Vec<(usize, usize)> = self
            .slab
            .iter()
            .filter(|(_, c)| c.closing != Closing::Now && c.counted > 0)
            .map(|(k, c)| (c.counted, k))
            .collect();
        big.sort_unstable_by(|a, b| b.cmp(a));
        for (_, k) in big {
            if self.total_out <= self.max_out {
                break;
            }
            let c = &mut self.slab[k];
            self.total_out -= c.counted;
            c.counted = 0;
            c.closing = Closing::Now;
            self.shed_closed += 1;
            self.slow_closed += 1;
            self.mark_dirty(ConnId(k));
        }
    }

    /// Open connections.
    #[inline]
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True when no connection is open.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The id the next [`Conns::insert`] will return.
    pub fn vacant_id(&self) -> ConnId {
        ConnId(self.slab.vacant_key())
    }

    /// Adds a connection.
    pub fn insert(&mut self, conn: Connection) -> ConnId {
        ConnId(self.slab.insert(conn))
    }

    /// Removes a connection (it may still be in the dirty list: lookups skip it).
    pub fn remove(&mut self, id: ConnId) -> Option<Connection> {
        let c = self.slab.try_remove(id.0)?;
        self.total_out -= c.counted;
        Some(c)
    }

    /// The connection `id`, if open.
    #[inline]
    pub fn get(&self, id: ConnId) -> Option<&Connection> {
        self.slab.get(id.0)
    }

    /// The connection `id`, if open.
    #[inline]
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        self.slab.get_mut(id.0)
    }

    /// Every open connection, mutably (for sweeps that change no queue).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut Connection)> {
        self.slab.iter_mut().map(|(k, c)| (ConnId(k), c))
    }

    /// Every open connection.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Connection)> {
        self.slab.iter().map(|(k, c)| (ConnId(k), c))
    }

    /// Appends one frame to `id`'s output with `encode(codec, out)` and marks it
    /// written. Every reply goes through here (and inlines to the same code as
    /// writing by hand: forced, since it sits on every reply).
    #[inline(always)]
    pub fn send<R>(&mut self, id: ConnId, encode: impl FnOnce(Codec, &mut Vec<u8>) -> R) -> R {
        let conn = &mut self.slab[id.0];
        let start = conn.wbuf.len();
        let r = encode(conn.codec, &mut conn.wbuf);
        if conn.records {
            self.convert_to_records(id, start);
        }
        self.wrote(id);
        r
    }

    /// Converts the plain MessagePack frames appended to `id`'s output from `start` on
    /// into msgpackr records (so procmesh-js decodes objects, not `Map`s). Our builders
    /// write valid frames; should one not convert, it is replaced by an `err`.
    #[cold]
    #[inline(never)]
    fn convert_to_records(&mut self, id: ConnId, start: usize) {
        let conn = &mut self.slab[id.0];
        self.scratch.clear();
        let res = self
            .records_enc
            .encode_frames_into(&conn.wbuf[start..], &mut self.scratch);
        if res.is_err() {
            self.scratch.clear();
            let mut plain = Vec::new();
            Reply::Err {
                code: ErrorCode::Broker,
                message: "reply could not be converted to msgpackr",
            }
            .encode_into(Codec::MsgPack, None, &mut plain);
            let _ = self
                .records_enc
                .encode_frames_into(&plain, &mut self.scratch);
        }
        conn.wbuf.truncate(start);
        conn.wbuf.extend_from_slice(&self.scratch);
        if self.scratch.capacity() > 4 * BUF_TARGET {
            self.scratch = Vec::new();
        }
    }

    /// Marks `id` as having output; closes it at the end of the turn when its queue
    /// passes the hard limit (a consumer that stopped reading).
    #[inline]
    pub fn wrote(&mut self, id: ConnId) {
        let conn = &mut self.slab[id.0];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id);
        }
        if conn.closing == Closing::Now {
            return;
        }
        let q = conn.queued();
        self.total_out = self.total_out - conn.counted + q;
        conn.counted = q;
        if q > self.hard_limit {
            conn.closing = Closing::Now;
            self.slow_closed += 1;
        }
        if self.total_out > self.max_out {
            self.shed();
        }
    }

    /// Puts `id` on the dirty list (so the flush pass writes or closes it).
    #[inline]
    pub fn mark_dirty(&mut self, id: ConnId) {
        let c = &mut self.slab[id.0];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Marks `id` to close, now or after its output is written, and lists it.
    pub fn close_later(&mut self, id: ConnId, how: Closing) {
        if let Some(c) = self.slab.get_mut(id.0) {
            c.closing = how;
            self.mark_dirty(id);
        }
    }

    /// Takes the dirty list (give the emptied vector back with [`Conns::put_dirty`]).
    pub fn take_dirty(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.dirty)
    }

    /// Returns a drained dirty list's allocation when nothing was listed meanwhile.
    pub fn put_dirty(&mut self, mut v: Vec<ConnId>) {
        v.clear();
        if self.dirty.is_empty() {
            self.dirty = v;
        }
    }
}

/// A lower bound of the bytes `v` takes in a reply in codec `to`, known without
/// converting it: its length in its own codec. A conversion may shrink a value to
/// almost nothing (JSON whitespace; a MessagePack extension of any size becomes
/// `null`), so a converted reply is checked after building only.
#[inline]
pub fn least_reply_len(v: Raw<'_>, to: Codec) -> usize {
    if v.codec == to {
        v.bytes.len()
    } else {
        0
    }
}

/// The `ETOOBIG` error that replaces a reply of `n` bytes over `budget`.
#[cold]
fn too_big_reply(codec: Codec, out: &mut Vec<u8>, req: Raw<'_>, n: usize, budget: usize) {
    let message = format!(
        "the reply ({n} bytes) exceeds the reply limit ({budget} bytes, sendHardLimit less \
         unread output): ask for less at a time"
    );
    Reply::Err {
        code: ErrorCode::TooBig,
        message: &message,
    }
    .encode_into(codec, Some(req), out);
}

impl std::ops::Index<ConnId> for Conns {
    type Output = Connection;
    #[inline]
    fn index(&self, id: ConnId) -> &Connection {
        &self.slab[id.0]
    }
}

impl std::ops::IndexMut<ConnId> for Conns {
    #[inline]
    fn index_mut(&mut self, id: ConnId) -> &mut Connection {
        &mut self.slab[id.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_is_json_until_the_first_frame_fixes_it() {
        let mut c = Connection::new(1, true, 0);
        assert_eq!(c.codec(), Codec::Json);
        assert!(!c.is_codec_known());
        c.set_codec(Codec::MsgPack);
        assert_eq!(c.codec(), Codec::MsgPack);
        assert!(c.is_codec_known());
    }

    #[test]
    fn a_value_reply_past_the_room_is_refused_before_it_is_built() {
        let mut conns = Conns::new(2000, usize::MAX);
        let id = conns.insert(Connection::new(1, true, 0));
        let req = Raw::new(Codec::Json, b"7");
        // 1400 bytes queued and unread: 600 left of the hard limit.
        conns.send(id, |_, out| out.extend_from_slice(&[b'q'; 1400]));
        assert_eq!(conns.reply_room(id), 600);
        let mut built = false;
        let r = conns.send_value_reply(id, req, 700, |_, _| built = true);
        assert!(r.is_none() && !built, "refused before building");
        let text = std::str::from_utf8(&conns[id].wbuf[1404..])
            .unwrap()
            .to_string();
        assert!(
            text.contains("ETOOBIG") && text.contains("\"id\":7"),
            "{text}"
        );
        // A reply the lower bound let through is still checked once built.
        let room = conns.reply_room(id);
        let r = conns.send_value_reply(id, req, 10, |_, out| {
            out.extend_from_slice(&vec![b'x'; room + 1])
        });
        assert_eq!(r, Some(()));
        assert_eq!(conns.too_big, 2);
        assert_eq!(
            conns[id].closing,
            Closing::No,
            "answered, and the connection stays open"
        );
        // Same codec: the lower bound is the value's length; across codecs none (a value may shrink).
        let v = Raw::new(Codec::MsgPack, &[0xcb, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(least_reply_len(v, Codec::MsgPack), 9);
        assert_eq!(least_reply_len(v, Codec::Json), 0);
        assert_eq!(
            least_reply_len(Raw::new(Codec::Json, b"[ 1 ]"), Codec::MsgPack),
            0
        );
    }

    #[test]
    fn reply_over_the_budget_is_replaced_by_one_etoobig_reply() {
        let mut conns = Conns::new(200, usize::MAX);
        let id = conns.insert(Connection::new(1, true, 0));
        let req = Raw::new(Codec::Json, b"7");
        conns.send_reply(id, req, |_, out| out.extend_from_slice(&[b'x'; 300]));
        let out = &conns[id].wbuf;
        let text = std::str::from_utf8(&out[4..]).unwrap();
        assert!(
            text.contains("ETOOBIG") && text.contains("\"id\":7"),
            "{text}"
        );
        assert_eq!(conns.too_big, 1);
        assert_eq!(conns[id].closing, Closing::No, "the connection stays open");
    }

    #[test]
    fn global_output_cap_sheds_the_biggest_queue_and_keeps_the_total_exact() {
        let mut conns = Conns::new(usize::MAX, 100);
        let a = conns.insert(Connection::new(1, true, 0));
        let b = conns.insert(Connection::new(2, true, 0));
        conns.send(a, |_, out| out.extend_from_slice(&[0; 30]));
        conns.send(b, |_, out| out.extend_from_slice(&[0; 60]));
        assert_eq!(conns.total_out(), 90);
        assert!(conns.over_output_cap(11));
        conns.send(a, |_, out| out.extend_from_slice(&[0; 20]));
        // 110 > 100: the biggest (b, 60 bytes) goes, a stays.
        assert_eq!(conns[b].closing, Closing::Now);
        assert_eq!(conns[a].closing, Closing::No);
        assert_eq!(conns.total_out(), 50);
        assert_eq!((conns.shed_closed, conns.slow_closed), (1, 1));
        conns.remove(b);
        assert_eq!(conns.total_out(), 50);
        conns.remove(a);
        assert_eq!(conns.total_out(), 0);
    }

    #[test]
    fn flushed_output_leaves_the_total_after_sync() {
        let mut conns = Conns::new(usize::MAX, usize::MAX);
        let a = conns.insert(Connection::new(1, true, 0));
        conns.send(a, |_, out| out.extend_from_slice(&[1; 10]));
        let mut sink = Vec::new();
        assert!(conns[a].flush(&mut sink));
        conns.sync(a);
        assert_eq!((sink.len(), conns.total_out()), (10, 0));
    }

    #[test]
    fn shrink_idle_frees_both_buffers_only_when_nothing_is_pending() {
        let mut c = Connection::new(1, true, 0);
        let mut src: &[u8] = b"abc";
        c.fill(&mut src, 1 << 20);
        c.out().extend_from_slice(b"queued");
        assert!(!c.shrink_idle() || c.buffer_bytes() > 0);
        assert!(
            c.rbuf.capacity() > 0 && c.queued() == 6,
            "pending bytes are kept"
        );
        let (buf, _, end) = c.take_input();
        c.put_input(buf, end, end);
        let mut sink = Vec::new();
        c.flush(&mut sink);
        assert!(c.shrink_idle());
        assert_eq!(c.buffer_bytes(), 0);
    }

    #[test]
    fn hard_limit_closes_once_and_counts() {
        let mut conns = Conns::new(4, usize::MAX);
        let id = conns.insert(Connection::new(1, true, 0));
        conns.send(id, |_, out| out.extend_from_slice(b"12345"));
        conns.send(id, |_, out| out.extend_from_slice(b"6"));
        assert_eq!(conns[id].closing, Closing::Now);
        assert_eq!(conns.slow_closed, 1);
        assert_eq!(conns.take_dirty(), vec![id]);
    }
}
