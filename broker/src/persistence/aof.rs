//! Log records and the append-only log file.
//!
//! Records describe *effects* (an absolute set with an absolute expiry, a delete, a
//! clear, a fencing reservation), so replaying a record twice changes nothing. The
//! records of one loop turn share one frame and one checksum (a turn is also the unit
//! of group commit, so it is written whole or torn as a whole).
//!
//! ```text
//! frame   := len:u32be  crc:u32be  entry+              crc = crc32(entries), len = their size
//! entry   := tag:u8 ...
//!   tag & 0x07 = 1 SET   key_len:varint key  [expire_unix_ms:u64be if tag & 0x10]
//!                        value_len:varint value        codec: MessagePack if tag & 0x08, else JSON
//!              | 2 DEL   key_len:varint key
//!              | 3 CLEAR
//!              | 4 FENCE reserved_to:u64be   (tokens ≤ reserved_to may have been issued)
//!              | 5 PUB   ch_len:varint ch  offset:u64be  ts_unix_ms:u64be
//!                        [pid_len:varint pid  seq:varint if tag & 0x10]
//!                        payload_len:varint payload   codec: MessagePack if tag & 0x08
//!                        (a retained message; its pid/seq also feed dedup)
//!              | 6 DEDUP pid_len:varint pid  ch_len:varint ch  seq:varint
//!                        (an accepted idempotent publish on a channel not retained)
//!              | 7 OFFSET reserved_to:u64be  (pub/sub offsets ≤ reserved_to may have been issued)
//! varint  := LEB128 (7 bits per byte, low first)
//! ```
//!
//! Encoders append entries to a buffer that [`open`]s with a reserved frame header;
//! [`seal`] fills it in before the buffer is written. The same frames make up snapshots.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use procmesh_proto::Codec;

use crate::store::EffectSink;

const SET: u8 = 1;
const DEL: u8 = 2;
const CLEAR: u8 = 3;
const FENCE: u8 = 4;
const PUB: u8 = 5;
const DEDUP: u8 = 6;
const OFFSET: u8 = 7;
const HAS_PID: u8 = 0x10;
const OP_MASK: u8 = 0x07;
const MSGPACK: u8 = 0x08;
const EXPIRES: u8 = 0x10;
const HEADER: usize = 8;

/// Longest frame accepted when reading: a turn can carry many 64 MiB frames' values.
pub const MAX_RECORD: usize = u32::MAX as usize;

/// Reserves the frame header when `buf` holds no entries yet.
#[inline]
pub fn open(buf: &mut Vec<u8>) {
    if buf.is_empty() {
        buf.extend_from_slice(&[0; HEADER]);
    }
}

/// Fills in the frame header over every entry appended since [`open`]. Returns false
/// when there is nothing to write. Sealing again after appending more is fine.
pub fn seal(buf: &mut [u8]) -> bool {
    if buf.len() <= HEADER {
        return false;
    }
    let len = (buf.len() - HEADER) as u32;
    let crc = crc32fast::hash(&buf[HEADER..]);
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf[4..8].copy_from_slice(&crc.to_be_bytes());
    true
}

#[inline]
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a SET entry.
#[inline]
pub fn encode_set(out: &mut Vec<u8>, key: &[u8], codec: Codec, value: &[u8], expire_unix_ms: u64) {
    open(out);
    let mut tag = SET;
    if codec == Codec::MsgPack {
        tag |= MSGPACK;
    }
    if expire_unix_ms != 0 {
        tag |= EXPIRES;
    }
    out.push(tag);
    varint(out, key.len() as u64);
    out.extend_from_slice(key);
    if expire_unix_ms != 0 {
        out.extend_from_slice(&expire_unix_ms.to_be_bytes());
    }
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Appends a DEL entry.
pub fn encode_del(out: &mut Vec<u8>, key: &[u8]) {
    open(out);
    out.push(DEL);
    varint(out, key.len() as u64);
    out.extend_from_slice(key);
}

/// Appends a CLEAR entry.
pub fn encode_clear(out: &mut Vec<u8>) {
    open(out);
    out.push(CLEAR);
}

/// Appends a FENCE entry.
pub fn encode_fence(out: &mut Vec<u8>, reserved_to: u64) {
    open(out);
    out.push(FENCE);
    out.extend_from_slice(&reserved_to.to_be_bytes());
}

/// Appends a PUB entry (a retained message).
#[allow(clippy::too_many_arguments)]
pub fn encode_pub(
    out: &mut Vec<u8>,
    channel: &str,
    offset: u64,
    ts_unix_ms: u64,
    idem: Option<(&str, u64)>,
    codec: Codec,
    payload: &[u8],
) {
    open(out);
    let mut tag = PUB;
    if codec == Codec::MsgPack {
        tag |= MSGPACK;
    }
    if idem.is_some() {
        tag |= HAS_PID;
    }
    out.push(tag);
    varint(out, channel.len() as u64);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&ts_unix_ms.to_be_bytes());
    if let Some((pid, seq)) = idem {
        varint(out, pid.len() as u64);
        out.extend_from_slice(pid.as_bytes());
        varint(out, seq);
    }
    varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Appends a DEDUP entry.
pub fn encode_dedup(out: &mut Vec<u8>, pid: &str, channel: &str, seq: u64) {
    open(out);
    out.push(DEDUP);
    varint(out, pid.len() as u64);
    out.extend_from_slice(pid.as_bytes());
    varint(out, channel.len() as u64);
    out.extend_from_slice(channel.as_bytes());
    varint(out, seq);
}

/// Appends an OFFSET reservation entry.
pub fn encode_offset(out: &mut Vec<u8>, reserved_to: u64) {
    open(out);
    out.push(OFFSET);
    out.extend_from_slice(&reserved_to.to_be_bytes());
}

/// The store's effects of this turn, encoded as log entries as they happen (one
/// reused buffer: no allocation per write once it has grown).
#[derive(Debug)]
pub struct EffectLog {
    buf: Vec<u8>,
    unix_base_ms: u64,
}

impl EffectLog {
    /// An empty log; `unix_base_ms` is the wall-clock time of the store's time 0
    /// (records carry absolute Unix deadlines).
    pub fn new(unix_base_ms: u64) -> EffectLog {
        EffectLog {
            buf: Vec::new(),
            unix_base_ms,
        }
    }

    /// The entries written since the buffer was last drained.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl EffectSink for EffectLog {
    #[inline]
    fn set(&mut self, key: &[u8], codec: Codec, value: &[u8], expire_at: u64) {
        let unix = if expire_at == 0 {
            0
        } else {
            self.unix_base_ms.saturating_add(expire_at)
        };
        encode_set(&mut self.buf, key, codec, value, unix);
    }

    #[inline]
    fn del(&mut self, key: &[u8]) {
        encode_del(&mut self.buf, key);
    }

    #[inline]
    fn clear(&mut self) {
        encode_clear(&mut self.buf);
    }

    #[inline]
    fn wants_undo(&self) -> bool {
        true
    }
}

/// One decoded record, borrowing from the file's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// Absolute set.
    Set {
        /// Key bytes (UTF-8).
        key: &'a str,
        /// Codec of `value`.
        codec: Codec,
        /// Deadline in Unix ms, 0 = none.
        expire_unix_ms: u64,
        /// Encoded value.
        value: &'a [u8],
    },
    /// Delete.
    Del {
        /// Key.
        key: &'a str,
    },
    /// Remove everything.
    Clear,
    /// Fencing tokens up to this may have been issued.
    Fence {
        /// The reservation.
        reserved_to: u64,
    },
    /// A retained pub/sub message.
    Pub {
        /// Channel.
        channel: &'a str,
        /// Its offset.
        offset: u64,
        /// Publish time, Unix ms.
        ts_unix_ms: u64,
        /// The idempotent producer's (pid, seq), when it had them.
        idem: Option<(&'a str, u64)>,
        /// Codec of `payload`.
        codec: Codec,
        /// Encoded payload.
        payload: &'a [u8],
    },
    /// An accepted idempotent publish (channel not retained).
    Dedup {
        /// Producer id.
        pid: &'a str,
        /// Channel.
        channel: &'a str,
        /// Sequence.
        seq: u64,
    },
    /// Pub/sub offsets up to this may have been issued.
    Offset {
        /// The reservation.
        reserved_to: u64,
    },
}

fn str_field<'a>(b: &mut &'a [u8]) -> Option<&'a str> {
    let l = usize::try_from(read_varint(b)?).ok()?;
    std::str::from_utf8(take(b, l)?).ok()
}

/// What is wrong at some offset of a log or snapshot.
///
/// Only the end of a file may be cut without asking: damage is a [`Damage::TornTail`]
/// only when no valid frame follows it (a crash mid-write leaves an incomplete or
/// unchecksummed *last* frame). A bad length or checksum with a valid frame after it
/// is mid-file damage, whatever it looks like.
#[derive(Debug, PartialEq, Eq)]
pub enum Damage {
    /// The file ends inside a record (a crash mid-write): safe to cut here.
    TornTail,
    /// A frame fails its checksum, has an impossible length or does not parse, and
    /// a valid frame follows at `resume` (relative to the data read).
    Corrupt {
        /// What is wrong.
        why: String,
        /// Where the next valid frame starts.
        resume: usize,
    },
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

fn u64be(b: &mut &[u8]) -> Option<u64> {
    take(b, 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

fn read_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *take(b, 1)?.first()?;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn parse_entry<'a>(b: &mut &'a [u8]) -> Option<Record<'a>> {
    let tag = *take(b, 1)?.first()?;
    Some(match tag & OP_MASK {
        SET => {
            let kl = usize::try_from(read_varint(b)?).ok()?;
            let key = std::str::from_utf8(take(b, kl)?).ok()?;
            let expire_unix_ms = if tag & EXPIRES != 0 { u64be(b)? } else { 0 };
            let vl = usize::try_from(read_varint(b)?).ok()?;
            let value = take(b, vl)?;
            let codec = if tag & MSGPACK != 0 {
                Codec::MsgPack
            } else {
                Codec::Json
            };
            Record::Set {
                key,
                codec,
                expire_unix_ms,
                value,
            }
        }
        DEL if tag == DEL => {
            let kl = usize::try_from(read_varint(b)?).ok()?;
            Record::Del {
                key: std::str::from_utf8(take(b, kl)?).ok()?,
            }
        }
        CLEAR if tag == CLEAR => Record::Clear,
        FENCE if tag == FENCE => Record::Fence {
            reserved_to: u64be(b)?,
        },
        PUB if tag & !(MSGPACK | HAS_PID) == PUB => {
            let channel = str_field(b)?;
            let offset = u64be(b)?;
            let ts_unix_ms = u64be(b)?;
            let idem = if tag & HAS_PID != 0 {
                Some((str_field(b)?, read_varint(b)?))
            } else {
                None
            };
            let pl = usize::try_from(read_varint(b)?).ok()?;
            let payload = take(b, pl)?;
            let codec = if tag & MSGPACK != 0 {
                Codec::MsgPack
            } else {
                Codec::Json
            };
            Record::Pub {
                channel,
                offset,
                ts_unix_ms,
                idem,
                codec,
                payload,
            }
        }
        DEDUP if tag == DEDUP => Record::Dedup {
            pid: str_field(b)?,
            channel: str_field(b)?,
            seq: read_varint(b)?,
        },
        OFFSET if tag == OFFSET => Record::Offset {
            reserved_to: u64be(b)?,
        },
        _ => return None,
    })
}

/// Checks the frame at the start of `rest`: its length when it is whole, has the
/// right checksum and every entry parses.
fn valid_frame(rest: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(rest.get(4..HEADER)?.try_into().ok()?);
    if len == 0 || rest.len() - HEADER < len {
        return None;
    }
    let mut body = &rest[HEADER..HEADER + len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    while !body.is_empty() {
        parse_entry(&mut body)?;
    }
    Some(len)
}

/// The offset of the first valid frame starting after `from` (resync after damage).
pub fn next_valid_frame(data: &[u8], from: usize) -> Option<usize> {
    (from + 1..data.len().saturating_sub(HEADER)).find(|&p| valid_frame(&data[p..]).is_some())
}

/// Decodes the frames of `data` in order, calling `f` for each record. Returns the
/// offset where valid data ends and, when it ends early, why. A frame is applied
/// only when all of it is readable. Damage is a torn tail only when no valid frame
/// follows it (see [`Damage`]).
pub fn read_records<'a>(data: &'a [u8], mut f: impl FnMut(Record<'a>)) -> (usize, Option<Damage>) {
    let mut off = 0;
    let mut records = Vec::new();
    'frames: while off < data.len() {
        let rest = &data[off..];
        let why = 'bad: {
            if rest.len() < HEADER {
                break 'bad None;
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if len == 0 {
                break 'bad Some(format!("frame length {len} is impossible"));
            }
            if rest.len() - HEADER < len {
                break 'bad Some(format!(
                    "frame length {len} points past the end of the file"
                ));
            }
            let mut body = &rest[HEADER..HEADER + len];
            if crc32fast::hash(body) != crc {
                break 'bad Some("checksum mismatch".into());
            }
            records.clear();
            while !body.is_empty() {
                match parse_entry(&mut body) {
                    Some(r) => records.push(r),
                    None => break 'bad Some("unreadable record".into()),
                }
            }
            for r in records.drain(..) {
                f(r);
            }
            off += HEADER + len;
            continue 'frames;
        };
        let damage = match (why, next_valid_frame(data, off)) {
            (Some(why), Some(at)) => Damage::Corrupt { why, resume: at },
            _ => Damage::TornTail,
        };
        return (off, Some(damage));
    }
    (off, None)
}

/// Where the log's writes go instead of `write(2)` and `fdatasync(2)`: the io_uring
/// driver submits them through its ring (the write and, when a sync is due, the
/// fsync linked after it) in one `io_uring_enter` with whatever else the loop has
/// queued, and waits for their completions. The call is synchronous, so the
/// durability gate sees a result before any reply that waits for it is flushed,
/// exactly as with the plain path.
pub trait LogSubmit {
    /// Appends all of `buf` to `fd`; with `sync`, then makes the file's data
    /// durable. Returns the write's result and, when `sync` was asked for and the
    /// write succeeded, the sync's.
    fn append(
        &mut self,
        fd: RawFd,
        buf: &[u8],
        sync: bool,
    ) -> (io::Result<()>, Option<io::Result<()>>);
}

thread_local! {
    /// The loop thread's submitter: set by the driver for the time its loop runs, so
    /// every segment the loop opens uses it (snapshot rotation included).
    static SUBMIT: RefCell<Option<Box<dyn LogSubmit>>> = const { RefCell::new(None) };
}

/// Installs `s` as this thread's log submitter (`None` removes it); returns the
/// previous one.
pub fn set_submit(s: Option<Box<dyn LogSubmit>>) -> Option<Box<dyn LogSubmit>> {
    SUBMIT.with(|cell| std::mem::replace(&mut *cell.borrow_mut(), s))
}

/// The log file being appended to.
pub struct AppendLog {
    file: File,
    path: PathBuf,
    /// Bytes written to this segment.
    pub len: u64,
}

impl AppendLog {
    /// Opens (creating) a segment for appending, positioned at `len`.
    pub fn open(path: &Path) -> io::Result<AppendLog> {
        let file = super::private_file().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(AppendLog {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    /// The segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `buf` to the file (page cache).
    /// On failure the file is cut back to its previous length, so a half-written
    /// record never sits in the middle of the log.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.append(buf, false).0
    }

    /// Writes `buf` to the file and, with `sync`, makes it durable: through this
    /// thread's [`LogSubmit`] when one is installed (one submission, the fsync
    /// linked after the write), else `write(2)` then `fdatasync(2)`. Returns the
    /// write's result and, when `sync` was asked for and the write succeeded, the
    /// sync's. On a failed write the file is cut back as with [`AppendLog::write`].
    pub fn append(&mut self, buf: &[u8], sync: bool) -> (io::Result<()>, Option<io::Result<()>>) {
        let fd = self.file.as_raw_fd();
        let submitted = SUBMIT.with(|cell| {
            cell.try_borrow_mut()
                .ok()
                .and_then(|mut s| s.as_mut().map(|s| s.append(fd, buf, sync)))
        });
        let (w, s) = submitted.unwrap_or_else(|| {
            let w = self.file.write_all(buf);
            let s = (sync && w.is_ok()).then(|| self.file.sync_data());
            (w, s)
        });
        match &w {
            Ok(()) => self.len += buf.len() as u64,
            Err(_) => {
                let _ = self.file.set_len(self.len);
            }
        }
        (w, s)
    }

    /// Makes written data durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// A second handle on the file (for a background fsync thread).
    pub fn try_clone(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        // Four frames, as four loop turns would write them.
        let mut out = Vec::new();
        let mut frame = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Vec::new();
            f(&mut b);
            assert!(seal(&mut b));
            out.extend_from_slice(&b);
        };
        frame(&|b| encode_set(b, b"k", Codec::Json, b"[1]", 123));
        frame(&|b| {
            encode_del(b, b"k");
            encode_set(b, &[b'x'; 300], Codec::MsgPack, &[0x90], 0);
        });
        frame(&|b| encode_clear(b));
        frame(&|b| encode_fence(b, 9));
        out
    }

    #[test]
    fn pubsub_records_round_trip() {
        let mut b = Vec::new();
        encode_pub(
            &mut b,
            "ch",
            7,
            1234,
            Some(("p-1", 3)),
            Codec::MsgPack,
            &[0x01],
        );
        encode_pub(&mut b, "ch2", 8, 1235, None, Codec::Json, b"\"x\"");
        encode_dedup(&mut b, "p-2", "c", 99);
        encode_offset(&mut b, 2048);
        assert!(seal(&mut b));
        let mut got = Vec::new();
        let (end, dmg) = read_records(&b, |r| got.push(format!("{r:?}")));
        assert_eq!((end, dmg), (b.len(), None));
        assert_eq!(
            got,
            [
                r#"Pub { channel: "ch", offset: 7, ts_unix_ms: 1234, idem: Some(("p-1", 3)), codec: MsgPack, payload: [1] }"#,
                r#"Pub { channel: "ch2", offset: 8, ts_unix_ms: 1235, idem: None, codec: Json, payload: [34, 120, 34] }"#,
                r#"Dedup { pid: "p-2", channel: "c", seq: 99 }"#,
                "Offset { reserved_to: 2048 }",
            ]
        );
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let mut got = Vec::new();
        let (end, dmg) = read_records(&b, |r| got.push(format!("{r:?}")));
        assert_eq!((end, dmg), (b.len(), None));
        assert_eq!(got.len(), 5);
        assert!(got[0].contains("expire_unix_ms: 123") && got[0].contains("Json"));
        assert!(got[2].contains("MsgPack") && got[2].contains("expire_unix_ms: 0"));
        let mut empty = Vec::new();
        open(&mut empty);
        assert!(!seal(&mut empty), "nothing to write");
    }

    #[test]
    fn torn_tail_and_corruption() {
        let b = sample();
        for cut in 1..b.len() {
            let (end, dmg) = read_records(&b[..cut], |_| {});
            assert!(end <= cut);
            assert!(
                matches!(dmg, Some(Damage::TornTail) | None),
                "cut {cut}: {dmg:?}"
            );
        }
        let mut flipped = b.clone();
        flipped[10] ^= 0xff; // inside the first record's body
        let (end, dmg) = read_records(&flipped, |_| {});
        assert_eq!(end, 0);
        let second = HEADER + u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        assert!(
            matches!(dmg, Some(Damage::Corrupt { resume, .. }) if resume == second),
            "{dmg:?}"
        );
        let mut last = b.clone();
        let n = last.len();
        last[n - 1] ^= 0xff; // the last record: torn, not corrupt
        assert_eq!(read_records(&last, |_| {}).1, Some(Damage::TornTail));
    }

    #[test]
    fn a_huge_expiry_saturates_instead_of_wrapping() {
        let mut log = EffectLog::new(1_700_000_000_000);
        log.set(b"k", Codec::Json, b"1", u64::MAX - 5);
        assert!(seal(log.buf()));
        let mut got = Vec::new();
        read_records(log.buf(), |r| {
            if let Record::Set { expire_unix_ms, .. } = r {
                got.push(expire_unix_ms);
            }
        });
        assert_eq!(got, [u64::MAX], "far future, not wrapped into the past");
    }

    #[test]
    fn a_bad_length_with_valid_frames_after_it_is_corruption_not_a_torn_tail() {
        let b = sample();
        let second = HEADER + u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        for bad in [[0x00, 0x10, 0, 0], [0xff, 0xff, 0xff, 0xff], [0, 0, 0, 0]] {
            let mut d = b.clone();
            d[..4].copy_from_slice(&bad);
            let (end, dmg) = read_records(&d, |_| {});
            assert_eq!(end, 0);
            assert!(
                matches!(dmg, Some(Damage::Corrupt { resume, .. }) if resume == second),
                "{bad:?}: {dmg:?}"
            );
        }
        // The same length damage in the last frame is a torn tail.
        let mut frames = Vec::new();
        let mut off = 0;
        while off < b.len() {
            frames.push(off);
            off += HEADER + u32::from_be_bytes(b[off..off + 4].try_into().unwrap()) as usize;
        }
        let last = *frames.last().unwrap();
        let mut d = b.clone();
        d[last..last + 4].copy_from_slice(&[0x00, 0x10, 0, 0]);
        assert_eq!(read_records(&d, |_| {}), (last, Some(Damage::TornTail)));
    }
}
