//! Log records and the append-only log file.
//!
//! Records describe *effects* (an absolute set with an absolute expiry, a delete, a
//! clear, a fencing reservation), so replaying a record twice changes nothing.
//!
//! ```text
//! record  := len:u32be  crc:u32be  body[len]         crc = crc32(body)
//! body    := 1 SET   key_len:u32be key  codec:u8  expire_unix_ms:u64be (0 = none)
//!                    value_len:u32be value
//!          | 2 DEL   key_len:u32be key
//!          | 3 CLEAR
//!          | 4 FENCE reserved_to:u64be      (tokens ≤ reserved_to may have been issued)
//! ```
//!
//! The same records make up snapshots (see `snapshot`).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use procmesh_proto::Codec;

/// Record tags.
const SET: u8 = 1;
const DEL: u8 = 2;
const CLEAR: u8 = 3;
const FENCE: u8 = 4;

/// Longest record body accepted when reading (a frame can be 64 MiB; keys add a little).
pub const MAX_RECORD: usize = (64 << 20) + (1 << 20);

fn begin(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 8]);
    at
}

fn finish(out: &mut [u8], at: usize) {
    let body = &out[at + 8..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
}

/// Appends a SET record.
pub fn encode_set(out: &mut Vec<u8>, key: &[u8], codec: Codec, value: &[u8], expire_unix_ms: u64) {
    let at = begin(out);
    out.push(SET);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.push(match codec {
        Codec::Json => 0,
        Codec::MsgPack => 1,
    });
    out.extend_from_slice(&expire_unix_ms.to_be_bytes());
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
    finish(out, at);
}

/// Appends a DEL record.
pub fn encode_del(out: &mut Vec<u8>, key: &[u8]) {
    let at = begin(out);
    out.push(DEL);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    finish(out, at);
}

/// Appends a CLEAR record.
pub fn encode_clear(out: &mut Vec<u8>) {
    let at = begin(out);
    out.push(CLEAR);
    finish(out, at);
}

/// Appends a FENCE record.
pub fn encode_fence(out: &mut Vec<u8>, reserved_to: u64) {
    let at = begin(out);
    out.push(FENCE);
    out.extend_from_slice(&reserved_to.to_be_bytes());
    finish(out, at);
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
}

/// What is wrong at some offset of a log or snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Damage {
    /// The file ends inside a record (a crash mid-write): safe to cut here.
    TornTail,
    /// A complete record fails its checksum or does not parse, with data after it.
    Corrupt(String),
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

fn u32be(b: &mut &[u8]) -> Option<u32> {
    take(b, 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64be(b: &mut &[u8]) -> Option<u64> {
    take(b, 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

fn parse_body(mut b: &[u8]) -> Option<Record<'_>> {
    let tag = *take(&mut b, 1)?.first()?;
    let rec = match tag {
        SET => {
            let kl = u32be(&mut b)? as usize;
            let key = std::str::from_utf8(take(&mut b, kl)?).ok()?;
            let codec = match take(&mut b, 1)?[0] {
                0 => Codec::Json,
                1 => Codec::MsgPack,
                _ => return None,
            };
            let expire_unix_ms = u64be(&mut b)?;
            let vl = u32be(&mut b)? as usize;
            let value = take(&mut b, vl)?;
            Record::Set {
                key,
                codec,
                expire_unix_ms,
                value,
            }
        }
        DEL => {
            let kl = u32be(&mut b)? as usize;
            Record::Del {
                key: std::str::from_utf8(take(&mut b, kl)?).ok()?,
            }
        }
        CLEAR => Record::Clear,
        FENCE => Record::Fence {
            reserved_to: u64be(&mut b)?,
        },
        _ => return None,
    };
    b.is_empty().then_some(rec)
}

/// Decodes the records of `data` in order, calling `f` for each. Returns the offset
/// where valid data ends and, when it ends early, why.
pub fn read_records<'a>(data: &'a [u8], mut f: impl FnMut(Record<'a>)) -> (usize, Option<Damage>) {
    let mut off = 0;
    while off < data.len() {
        let rest = &data[off..];
        if rest.len() < 8 {
            return (off, Some(Damage::TornTail));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_RECORD {
            return (
                off,
                Some(Damage::Corrupt(format!(
                    "record length {len} is impossible"
                ))),
            );
        }
        if rest.len() < 8 + len {
            return (off, Some(Damage::TornTail));
        }
        let body = &rest[8..8 + len];
        let end = off + 8 + len;
        if crc32fast::hash(body) != crc {
            // A bad checksum on the very last record is a torn write, not corruption.
            let damage = if end == data.len() {
                Damage::TornTail
            } else {
                Damage::Corrupt("checksum mismatch".into())
            };
            return (off, Some(damage));
        }
        match parse_body(body) {
            Some(r) => f(r),
            None => return (off, Some(Damage::Corrupt("unreadable record".into()))),
        }
        off = end;
    }
    (off, None)
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
        let file = File::options().create(true).append(true).open(path)?;
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
        match self.file.write_all(buf) {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
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
        let mut b = Vec::new();
        encode_set(&mut b, b"k", Codec::Json, b"[1]", 123);
        encode_del(&mut b, b"k");
        encode_clear(&mut b);
        encode_fence(&mut b, 9);
        b
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let mut got = Vec::new();
        let (end, dmg) = read_records(&b, |r| got.push(format!("{r:?}")));
        assert_eq!((end, dmg), (b.len(), None));
        assert_eq!(got.len(), 4);
        assert!(got[0].contains("expire_unix_ms: 123"));
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
        assert!(matches!(dmg, Some(Damage::Corrupt(_))));
        let mut last = b.clone();
        let n = last.len();
        last[n - 1] ^= 0xff; // the last record: torn, not corrupt
        assert_eq!(read_records(&last, |_| {}).1, Some(Damage::TornTail));
    }
}
