//! Snapshots, written incrementally so a large cache never stalls the loop.
//!
//! ```text
//! file    := magic "PMSNAP01"  base_seq:u64be  record*      (records as in `aof`)
//! ```
//!
//! A snapshot starts by rotating the log to segment `base_seq`; the loop then writes
//! a slice of the store per turn. The result is not a point-in-time image (entries
//! changed mid-way appear in either state), but every change after the start is also
//! in segments ≥ `base_seq`, and replaying those effects over the snapshot gives the
//! exact state. The final fsync, rename and directory fsync run on a helper thread.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::aof;
use crate::store::{EffectSink, Store};

/// File name of the current snapshot.
pub const SNAPSHOT: &str = "snapshot.bin";
const TMP: &str = "snapshot.tmp";
/// Leading magic of a snapshot file.
pub const MAGIC: &[u8; 8] = b"PMSNAP01";

/// A snapshot being written.
pub struct Snapshot {
    w: BufWriter<File>,
    dir: PathBuf,
    next_slot: Option<usize>,
    base_seq: u64,
    scratch: Vec<u8>,
    /// Entries written so far.
    pub entries: u64,
}

impl Snapshot {
    /// Starts a snapshot whose log continues in segment `base_seq`.
    pub fn begin(dir: &Path, base_seq: u64) -> io::Result<Snapshot> {
        let file = super::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(TMP))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(MAGIC)?;
        w.write_all(&base_seq.to_be_bytes())?;
        Ok(Snapshot {
            w,
            dir: dir.to_path_buf(),
            next_slot: Some(0),
            base_seq,
            scratch: Vec::new(),
            entries: 0,
        })
    }

    /// Writes up to `budget` entries. Returns true when every entry has been visited.
    pub fn step<E: EffectSink>(
        &mut self,
        store: &Store<E>,
        now: u64,
        unix_base_ms: u64,
        budget: usize,
    ) -> io::Result<bool> {
        let Some(from) = self.next_slot else {
            return Ok(true);
        };
        self.scratch.clear();
        let mut n = 0u64;
        let scratch = &mut self.scratch;
        self.next_slot = store.visit_slots(from, budget, now, |key, value, expire_at| {
            let unix = if expire_at == 0 {
                0
            } else {
                unix_base_ms.saturating_add(expire_at)
            };
            aof::encode_set(scratch, key.as_bytes(), value.codec, value.bytes, unix);
            n += 1;
        });
        self.entries += n;
        if aof::seal(&mut self.scratch) {
            self.w.write_all(&self.scratch)?;
        }
        Ok(self.next_slot.is_none())
    }

    /// Completes the snapshot on a helper thread: a FENCE record, fsync, rename,
    /// directory fsync, then removal of the segments it replaces. The receiver yields
    /// the outcome.
    pub fn finish(
        mut self,
        reserved_to: u64,
        old_segments: Vec<PathBuf>,
    ) -> mpsc::Receiver<io::Result<u64>> {
        let (tx, rx) = mpsc::channel();
        let mut tail = Vec::new();
        aof::encode_fence(&mut tail, reserved_to);
        let entries = self.entries;
        let _ = std::thread::Builder::new()
            .name("procmesh-snapshot".into())
            .spawn(move || {
                let r = (|| {
                    aof::seal(&mut tail);
                    self.w.write_all(&tail)?;
                    let file = self.w.into_inner().map_err(|e| e.into_error())?;
                    file.sync_all()?;
                    drop(file);
                    std::fs::rename(self.dir.join(TMP), self.dir.join(SNAPSHOT))?;
                    File::open(&self.dir)?.sync_all()?;
                    for seg in old_segments {
                        let _ = std::fs::remove_file(seg);
                    }
                    Ok(entries)
                })();
                let _ = tx.send(r);
            });
        rx
    }

    /// The log segment this snapshot's state continues in.
    pub fn base_seq(&self) -> u64 {
        self.base_seq
    }
}
