//! Opt-in durability: a snapshot plus an append-only log of effects.
//!
//! `persistence` owns the files in the persistence directory and the fsync policy;
//! the store and lock table only hand it records. Invariants:
//! - the log holds effects (absolute sets with absolute expiry, deletes, clears, fence
//!   reservations), so replaying any suffix twice changes nothing;
//! - with `always`, the writes dispatched in one loop turn share one fsync, and their
//!   replies leave only after it (the durability gate, [`gate`], calls
//!   [`Persistence::commit`] before the core flushes);
//! - a write the log refuses has no effect: its records are dropped (never retried),
//!   the gate undoes the turn's cache writes and retracts their replies;
//! - only a real tail is cut: damage with a valid frame after it is refused, or with
//!   `--repair` moved to `<segment>.damaged-<offset>` while the rest is kept;
//! - a fencing token is never visible to a client before a FENCE record covering it is
//!   durable, so tokens issued before a crash are below the floor after it;
//! - recovery (snapshot, then segments in order) finishes before the socket is bound.
//!
//! Layout of the directory: `LOCK` (flock held while a broker uses it), `snapshot.bin`,
//! `aof-<seq>.log` segments.

pub mod aof;
pub mod gate;
pub mod snapshot;

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use procmesh_proto::Raw;

use self::aof::{AppendLog, Damage, Record};
use self::snapshot::Snapshot;
use crate::dedup::Dedup;
use crate::retain::{Retain, Retained};
use crate::store::{EffectSink, Store};

/// When written data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// The OS decides.
    No,
    /// A background thread syncs once a second: at most ~1 s of acknowledged writes
    /// can be lost on power failure, none on a clean stop.
    EverySec,
    /// Every loop turn's writes are synced before their replies are sent.
    Always,
}

impl FsyncMode {
    /// Parses `no`, `everysec` or `always`.
    pub fn parse(s: &str) -> Option<FsyncMode> {
        match s {
            "no" => Some(FsyncMode::No),
            "everysec" => Some(FsyncMode::EverySec),
            "always" => Some(FsyncMode::Always),
            _ => None,
        }
    }

    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            FsyncMode::No => "no",
            FsyncMode::EverySec => "everysec",
            FsyncMode::Always => "always",
        }
    }
}

/// Persistence settings.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// The directory (created if missing).
    pub dir: PathBuf,
    /// Fsync policy.
    pub fsync: FsyncMode,
    /// Start a snapshot once the log has grown by this many bytes since the last one.
    pub compact_bytes: u64,
    /// Cut the log at mid-file corruption instead of refusing to start.
    pub repair: bool,
}

impl PersistConfig {
    /// Defaults for `dir`: everysec, compaction at 64 MiB, no repair.
    pub fn new(dir: impl Into<PathBuf>) -> PersistConfig {
        PersistConfig {
            dir: dir.into(),
            fsync: FsyncMode::EverySec,
            compact_bytes: 64 << 20,
            repair: false,
        }
    }
}

/// How many fencing tokens one FENCE record reserves.
pub const FENCE_BLOCK: u64 = 1000;
/// How often a failing log is probed (with a harmless FENCE record) while no writes
/// are admitted, to find out that it takes writes again.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Entries a snapshot writes per loop turn.
const SNAPSHOT_BUDGET: usize = 20_000;

/// Current wall-clock time in Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn segment_name(seq: u64) -> String {
    format!("aof-{seq:010}.log")
}

fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_prefix("aof-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse().ok())
        {
            v.push((seq, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Live keys loaded.
    pub keys: usize,
    /// The highest fencing reservation seen (every earlier token is below it).
    pub fence_reserved: u64,
    /// Torn tails cut and similar notes, for the operator.
    pub warnings: Vec<String>,
}

struct SyncThread {
    dirty: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl SyncThread {
    /// Lets the thread make a final sync of its segment and exit, without waiting
    /// for it (the loop must not block on an fsync).
    fn retire(mut self) -> Option<std::thread::JoinHandle<()>> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take()?;
        h.thread().unpark();
        Some(h)
    }
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// A thread that fsyncs `file` once a second when it was written to. With `after`,
/// it first waits for that (retired) thread's final sync, so a newer segment is never
/// made durable before the older one: a power loss loses a suffix, never a middle.
fn spawn_sync(file: File, after: Option<std::thread::JoinHandle<()>>) -> SyncThread {
    let dirty = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let error = Arc::new(Mutex::new(None));
    let (d, s, e) = (dirty.clone(), stop.clone(), error.clone());
    let handle = std::thread::Builder::new()
        .name("procmesh-fsync".into())
        .spawn(move || {
            if let Some(prev) = after {
                let _ = prev.join();
            }
            loop {
                let stopping = s.load(Ordering::Relaxed);
                if !stopping {
                    std::thread::park_timeout(Duration::from_secs(1));
                }
                // A stopping thread still syncs what was written to its segment.
                if d.swap(false, Ordering::AcqRel) {
                    let r = file.sync_data();
                    if let Ok(mut slot) = e.lock() {
                        *slot = r.err().map(|err| format!("fsync failed: {err}"));
                    }
                }
                if stopping {
                    break;
                }
            }
        })
        .ok();
    SyncThread {
        dirty,
        stop,
        error,
        handle,
    }
}

/// An open persistence directory.
pub struct Persistence {
    cfg: PersistConfig,
    _lock: File,
    log: AppendLog,
    seq: u64,
    sync: Option<SyncThread>,
    snapshot: Option<Snapshot>,
    finishing: Option<mpsc::Receiver<io::Result<u64>>>,
    bytes_at_snapshot: u64,
    reserved_to: u64,
    unix_base_ms: u64,
    last_probe: std::time::Instant,
    /// Size of the last frame the log refused: a probe must fit as much.
    probe_len: usize,
    /// The last error writing the log, if the log is failing now.
    pub error: Option<String>,
    /// Log write or sync failures since start.
    pub error_count: u64,
    /// Snapshots completed since start.
    pub snapshots: u64,
}

/// Why recovery refused to start.
pub type RecoveryError = String;

impl Persistence {
    /// Locks the directory, loads the snapshot and replays the log into `store`.
    /// `unix_base_ms` is the wall-clock time of the store's time 0. Retained pub/sub
    /// and dedup records are read and dropped: use [`Persistence::open_with`] to keep
    /// them.
    pub fn open<E: EffectSink>(
        cfg: PersistConfig,
        store: &mut Store<E>,
        unix_base_ms: u64,
    ) -> Result<(Persistence, Recovered), RecoveryError> {
        let mut retain = Retain::new(crate::retain::RetainConfig {
            retention: 0,
            ..Default::default()
        });
        let mut dedup = Dedup::new(crate::dedup::DedupConfig {
            max: 1,
            ..Default::default()
        });
        Persistence::open_with(cfg, store, unix_base_ms, &mut retain, &mut dedup)
    }

    /// [`Persistence::open`], also restoring retained messages, the offset reservation
    /// (`retain`) and accepted idempotent seqs (`dedup`).
    pub fn open_with<E: EffectSink>(
        cfg: PersistConfig,
        store: &mut Store<E>,
        unix_base_ms: u64,
        retain: &mut Retain,
        dedup: &mut Dedup,
    ) -> Result<(Persistence, Recovered), RecoveryError> {
        let dir = &cfg.dir;
        let ctx = |what: &str, e: io::Error| format!("{what} in {}: {e}", dir.display());
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| ctx("cannot create the persistence directory", e))?;
        }
        let lock = private_file()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(|e| ctx("cannot open LOCK (a symbolic link is not followed)", e))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "{} is in use by another broker (its LOCK is held)",
                dir.display()
            ));
        }
        let mut rec = Recovered {
            warnings: exposure_warnings(dir),
            ..Recovered::default()
        };
        let now_unix = unix_ms();
        let mut apply = |store: &mut Store<E>, r: Record<'_>, rec: &mut Recovered| match r {
            Record::Set {
                key,
                codec,
                expire_unix_ms,
                value,
            } => {
                if expire_unix_ms != 0 && expire_unix_ms <= now_unix {
                    store.del(key, 0);
                } else {
                    let deadline = if expire_unix_ms == 0 {
                        0
                    } else {
                        expire_unix_ms.saturating_sub(unix_base_ms).max(1)
                    };
                    store.set_with_deadline(key, Raw::new(codec, value), deadline);
                }
            }
            Record::Del { key } => {
                store.del(key, 0);
            }
            Record::Clear => store.clear(),
            Record::Fence { reserved_to } => {
                rec.fence_reserved = rec.fence_reserved.max(reserved_to)
            }
            Record::Pub {
                channel,
                offset,
                ts_unix_ms,
                idem,
                codec,
                payload,
            } => {
                if let Some((pid, seq)) = idem {
                    dedup.observe(pid, channel, seq, 0);
                }
                let msg = Retained {
                    offset,
                    ts: ts_unix_ms,
                    codec,
                    payload: payload.into(),
                };
                retain.restore(channel, msg, now_unix);
            }
            Record::Dedup { pid, channel, seq } => {
                dedup.observe(pid, channel, seq, 0);
            }
            Record::Offset { reserved_to } => {
                retain.reserved_to = retain.reserved_to.max(reserved_to);
            }
        };
        // Snapshot.
        let snap_path = dir.join(snapshot::SNAPSHOT);
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut progress = crate::log::Progress::new(
            size(&snap_path)
                + list_segments(dir)
                    .unwrap_or_default()
                    .iter()
                    .map(|(_, p)| size(p))
                    .sum::<u64>(),
        );
        let mut base_seq = 0;
        if let Ok(data) = std::fs::read(&snap_path) {
            if data.len() < 16 || &data[..8] != snapshot::MAGIC {
                return Err(format!(
                    "{} is not a procmesh snapshot",
                    snap_path.display()
                ));
            }
            base_seq = u64::from_be_bytes(data[8..16].try_into().unwrap_or([0; 8]));
            let (end, dmg) = aof::read_records(&data[16..], |r| {
                progress.record();
                apply(store, r, &mut rec)
            });
            progress.file_done(data.len() as u64);
            if let Some(d) = dmg {
                // Snapshots are renamed into place only when complete: any damage is real.
                return Err(format!(
                    "{} is damaged at offset {}: {:?}",
                    snap_path.display(),
                    end + 16,
                    d
                ));
            }
        }
        // Log segments at or after the snapshot's base; older ones are superseded.
        let segments = list_segments(dir).map_err(|e| ctx("cannot list the log", e))?;
        let mut last_seq = base_seq;
        for (seq, path) in &segments {
            if *seq < base_seq {
                let _ = std::fs::remove_file(path);
                continue;
            }
            last_seq = *seq;
            let data = std::fs::read(path).map_err(|e| ctx("cannot read the log", e))?;
            // Frames are applied in order; mid-file damage either stops recovery or,
            // with --repair, is skipped (and kept aside) up to the next valid frame.
            let mut pos = 0;
            let mut damaged: Vec<(usize, usize, String)> = Vec::new();
            let kept_end = loop {
                let (n, dmg) = aof::read_records(&data[pos..], |r| {
                    progress.record();
                    apply(store, r, &mut rec)
                });
                let end = pos + n;
                match dmg {
                    None => break end,
                    Some(Damage::TornTail) => {
                        rec.warnings.push(format!(
                            "{}: torn record at offset {end} (a crash mid-write); truncated {} bytes",
                            path.display(),
                            data.len() - end
                        ));
                        break end;
                    }
                    Some(Damage::Corrupt { why, resume }) if cfg.repair => {
                        damaged.push((end, pos + resume, why));
                        pos += resume;
                    }
                    Some(Damage::Corrupt { why, resume }) => {
                        return Err(format!(
                            "{}: damaged record at offset {end} ({why}) with valid records \
                             from offset {} on; refusing to start. Restart with --repair to \
                             move the damaged bytes aside (to {}.damaged-{end}) and keep the rest",
                            path.display(),
                            pos + resume,
                            path.display()
                        ));
                    }
                }
            };
            progress.file_done(data.len() as u64);
            if damaged.is_empty() {
                if kept_end < data.len() {
                    truncate(path, kept_end as u64)
                        .map_err(|e| ctx("cannot truncate the torn log tail", e))?;
                }
            } else {
                let note = repair(path, &data, &damaged, kept_end)
                    .map_err(|e| ctx("cannot repair the log", e))?;
                rec.warnings.push(note);
            }
        }
        retain.recovered();
        rec.keys = store.len();
        let log = AppendLog::open(&dir.join(segment_name(last_seq)))
            .map_err(|e| ctx("cannot open the log", e))?;
        let sync = match cfg.fsync {
            FsyncMode::EverySec => Some(spawn_sync(
                log.try_clone().map_err(|e| ctx("cannot open the log", e))?,
                None,
            )),
            _ => None,
        };
        let reserved_to = rec.fence_reserved;
        Ok((
            Persistence {
                cfg,
                _lock: lock,
                log,
                seq: last_seq,
                sync,
                snapshot: None,
                finishing: None,
                bytes_at_snapshot: 0,
                reserved_to,
                unix_base_ms,
                last_probe: std::time::Instant::now(),
                probe_len: 0,
                error: None,
                error_count: 0,
                snapshots: 0,
            },
            rec,
        ))
    }

    /// The fsync policy.
    pub fn mode(&self) -> FsyncMode {
        self.cfg.fsync
    }

    /// Bytes in the current log segment.
    pub fn log_bytes(&self) -> u64 {
        self.log.len
    }

    /// True while a snapshot is being written.
    pub fn snapshot_running(&self) -> bool {
        self.snapshot.is_some() || self.finishing.is_some()
    }

    /// Writes this turn's records (`buf`, then cleared) and applies the fsync policy.
    /// `force_sync` makes even `no`/`everysec` sync now (fence reservations).
    ///
    /// On failure the records are dropped, not retried (the log was cut back to its
    /// last whole frame): the gate undoes the turn's writes, so a failed write never
    /// reaches the disk later. While the log is failing, an idle turn probes it every
    /// [`PROBE_EVERY`] with a FENCE record (idempotent) to notice its recovery.
    pub fn commit(&mut self, buf: &mut Vec<u8>, force_sync: bool) -> Result<(), String> {
        if buf.is_empty() && !force_sync {
            if self.error.is_none() || self.last_probe.elapsed() < PROBE_EVERY {
                return Ok(());
            }
            self.last_probe = std::time::Instant::now();
            // As large as the refused frame (a smaller one might squeeze into the
            // last bytes of a full disk), at most 1 MiB.
            aof::encode_fence(buf, self.reserved_to);
            while buf.len() < self.probe_len.min(1 << 20) {
                aof::encode_fence(buf, self.reserved_to);
            }
        }
        let sync_now = self.cfg.fsync == FsyncMode::Always || force_sync;
        // One frame for the whole turn; a due sync goes out with the write (under
        // io_uring one submission, the fsync linked after the write).
        let (r, synced) = if aof::seal(buf) {
            let (w, s) = self.log.append(buf, sync_now);
            let w = w.map_err(|e| format!("writing {} failed: {e}", self.log.path().display()));
            (w, s)
        } else {
            (Ok(()), None)
        };
        match r {
            Ok(()) => self.probe_len = 0,
            Err(_) => self.probe_len = self.probe_len.max(buf.len()),
        }
        buf.clear();
        let r = r.and_then(|_| {
            if sync_now {
                synced
                    .unwrap_or_else(|| self.log.sync())
                    .map_err(|e| format!("fsync of {} failed: {e}", self.log.path().display()))
            } else {
                if let Some(s) = &self.sync {
                    s.dirty.store(true, Ordering::Release);
                }
                Ok(())
            }
        });
        match r {
            Ok(()) => {
                if let Some(s) = &self.sync {
                    if let Ok(e) = s.error.lock() {
                        self.error = e.clone();
                    }
                } else {
                    self.error = None;
                }
                Ok(())
            }
            Err(e) => {
                self.error_count += 1;
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Notes a FENCE reservation to write with this turn's records.
    pub fn reserve(&mut self, buf: &mut Vec<u8>, reserved_to: u64) {
        self.reserved_to = reserved_to;
        aof::encode_fence(buf, reserved_to);
    }

    /// Starts, advances or completes a snapshot (called once per loop turn). When a
    /// snapshot starts, `carry` writes the state kept outside the store (retained
    /// messages, offset reservation, dedup) into the new segment, so it survives the
    /// removal of the old ones.
    pub fn tick<E: EffectSink>(
        &mut self,
        store: &Store<E>,
        now: u64,
        carry: impl FnOnce(&mut Vec<u8>),
    ) {
        if let Some(rx) = &self.finishing {
            match rx.try_recv() {
                Ok(Ok(_)) => {
                    self.finishing = None;
                    self.snapshots += 1;
                }
                Ok(Err(e)) => {
                    self.finishing = None;
                    self.error_count += 1;
                    self.error = Some(format!("snapshot failed: {e}"));
                }
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => self.finishing = None,
            }
        }
        if self.snapshot.is_none() {
            let grown = self.log.len.saturating_sub(self.bytes_at_snapshot);
            if grown < self.cfg.compact_bytes {
                return;
            }
            if let Err(e) = self.start_snapshot(carry) {
                self.error_count += 1;
                self.error = Some(format!("cannot start a snapshot: {e}"));
                // Do not retry every turn: wait for as much growth again.
                self.bytes_at_snapshot = self.log.len;
                return;
            }
        }
        let Some(snap) = self.snapshot.as_mut() else {
            return;
        };
        match snap.step(store, now, self.unix_base_ms, SNAPSHOT_BUDGET) {
            Ok(false) => {}
            Ok(true) => {
                let snap = self
                    .snapshot
                    .take()
                    .expect("invariant: snapshot is running");
                let base = snap.base_seq();
                let old: Vec<PathBuf> = list_segments(&self.cfg.dir)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(s, _)| *s < base)
                    .map(|(_, p)| p)
                    .collect();
                self.finishing = Some(snap.finish(self.reserved_to, old));
            }
            Err(e) => {
                self.snapshot = None;
                self.error_count += 1;
                self.error = Some(format!("snapshot failed: {e}"));
            }
        }
    }

    /// Rotates the log to a new segment and begins a snapshot continuing in it.
    fn start_snapshot(&mut self, carry: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let seq = self.seq + 1;
        let log = AppendLog::open(&self.cfg.dir.join(segment_name(seq)))?;
        let snap = Snapshot::begin(&self.cfg.dir, seq)?;
        // The old segment keeps the durability of its policy without stalling the
        // loop: `always` synced every turn already, `everysec`'s thread makes a final
        // sync on its way out, `no` leaves it to the OS. Until the snapshot is
        // complete, recovery still reads the old segment.
        let retired = self.sync.take().and_then(SyncThread::retire);
        if self.cfg.fsync == FsyncMode::EverySec {
            self.sync = Some(spawn_sync(log.try_clone()?, retired));
        }
        self.log = log;
        self.seq = seq;
        // A new segment starts with the current reservation so it stands alone.
        let mut fence = Vec::new();
        aof::encode_fence(&mut fence, self.reserved_to);
        carry(&mut fence);
        aof::seal(&mut fence);
        self.log.write(&fence)?;
        self.bytes_at_snapshot = 0;
        self.snapshot = Some(snap);
        Ok(())
    }

    /// Makes everything written durable (clean shutdown).
    /// Fails (the broker then exits non-zero) when that sync fails, or when an earlier
    /// background fsync failed: acknowledged writes may not be on disk.
    pub fn close(&mut self) -> Result<(), String> {
        self.log
            .sync()
            .map_err(|e| format!("final fsync of {} failed: {e}", self.log.path().display()))?;
        if let Some(Some(e)) = self
            .sync
            .as_ref()
            .and_then(|s| s.error.lock().ok().map(|e| e.clone()))
        {
            return Err(format!("acknowledged writes may be lost: an earlier {e}"));
        }
        if let Some(rx) = self.finishing.take() {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
        Ok(())
    }
}

/// Options for a file of the persistence directory: created 0600 (the directory is
/// 0700 when the broker creates it), never through a symbolic link, close-on-exec.
/// Persisted values are the users' data: nobody else may read them.
pub(crate) fn private_file() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = File::options();
    o.mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

/// Warnings for a persistence directory, or files in it, that other users may read
/// or change. The broker does not change modes it did not set (the operator may
/// share the directory with a group on purpose); it says so at every start.
fn exposure_warnings(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mode = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.permissions().mode() & 0o777);
    if let Ok(m) = mode(dir) {
        if m & 0o077 != 0 {
            out.push(format!(
                "the persistence directory {} is accessible to other users (mode {m:03o}): \
                 persisted values are readable by them; `chmod 700 {}` unless shared on purpose",
                dir.display(),
                dir.display()
            ));
        }
    }
    let exposed: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == "LOCK" || name.starts_with("snapshot") || name.starts_with("aof-")
        })
        .filter_map(|e| {
            let m = mode(&e.path()).ok()?;
            (m & 0o077 != 0).then(|| format!("{} ({m:03o})", e.file_name().to_string_lossy()))
        })
        .collect();
    if !exposed.is_empty() {
        out.push(format!(
            "files in {} are readable by other users: {} (new files are created 0600); \
             `chmod 600` them unless shared on purpose",
            dir.display(),
            exposed.join(", ")
        ));
    }
    out
}

/// Rewrites the segment at `path` without its `damaged` byte ranges (and without the
/// torn tail from `kept_end`), after saving each range to `<path>.damaged-<offset>`.
/// The new segment replaces the old one atomically (written aside, synced, renamed).
fn repair(
    path: &Path,
    data: &[u8],
    damaged: &[(usize, usize, String)],
    kept_end: usize,
) -> io::Result<String> {
    use std::io::Write as _;
    let side = |at: usize| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".damaged-{at}"));
        PathBuf::from(name)
    };
    let mut kept = Vec::with_capacity(data.len());
    let mut from = 0;
    let mut dropped = 0;
    let mut sides = Vec::new();
    for (a, b, why) in damaged {
        let (a, b) = (*a, *b);
        kept.extend_from_slice(&data[from..a]);
        let p = side(a);
        let mut f = private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)?;
        f.write_all(&data[a..b])?;
        f.sync_all()?;
        sides.push(format!("offset {a}: {why}, moved to {}", p.display()));
        dropped += b - a;
        from = b;
    }
    kept.extend_from_slice(&data[from..kept_end]);
    let tmp = {
        let mut name = path.as_os_str().to_owned();
        name.push(".repair");
        PathBuf::from(name)
    };
    let mut f = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(&kept)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(format!(
        "{}: --repair dropped {} damaged frame(s), {dropped} bytes ({}), and kept the {} \
         bytes of valid records around them{}",
        path.display(),
        damaged.len(),
        sides.join("; "),
        kept.len(),
        if kept_end < data.len() {
            format!("; cut a torn tail of {} bytes", data.len() - kept_end)
        } else {
            String::new()
        }
    ))
}

fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let f = File::options().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}
