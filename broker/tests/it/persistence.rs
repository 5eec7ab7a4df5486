//! Persistence: crash survival with real processes, TTL and fencing across restarts,
//! torn tails and mid-file corruption, compaction, the directory lock.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{spawn_serve, Codec, TestClient, BIN};

/// A broker process on a fixed socket and persistence directory, restartable.
struct Durable {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    data: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Durable {
    fn new(fsync: &str, extra: &[&str]) -> Durable {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("mesh.sock");
        let data = dir.path().join("data");
        let mut args = vec![
            "--fsync".to_string(),
            fsync.to_string(),
            "--persist-dir".into(),
            data.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Durable {
            _dir: dir,
            sock,
            data,
            args,
            child: None,
        };
        d.start();
        d
    }

    fn start(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = Some(spawn_serve(&self.sock, &args));
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            assert!(c.wait().unwrap().success());
        }
    }

    fn client(&self) -> TestClient {
        TestClient::hello(&self.sock, Codec::MsgPack, None)
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("aof-"))
            .collect();
        v.sort();
        v
    }

    /// Runs `procmesh serve` expecting it to refuse; returns its exit code and stderr.
    fn refused(&self, extra: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(BIN)
            .args(["serve", "--heartbeat", "0", "--socket"])
            .arg(&self.sock)
            .args(&self.args)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Kills a child process on drop, so a failed assertion never leaves a broker behind
/// (an orphan holding the test's pipes would hang the test runner).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rounds() -> usize {
    std::env::var("PROCMESH_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// Acknowledged writes survive SIGKILL at a random moment (`fsync always`), and what
/// survives is a prefix of what was issued.
#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut d = Durable::new("always", &[]);
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9;
    for round in 0..rounds() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(30 + seed % 250);
        let sock = d.sock.clone();
        let (first_ack, acked) = std::sync::mpsc::channel::<()>();
        // The writer pipelines sets and incrs, recording what was acknowledged.
        let writer = std::thread::spawn(move || {
            let mut c = TestClient::hello(&sock, Codec::MsgPack, None);
            let mut acked_sets = 0u64;
            let mut acked_incrs = 0u64;
            let mut i = 0u64;
            loop {
                let mut batch = Vec::new();
                for j in 0..8 {
                    let k = i + j;
                    batch.extend(crate::support::encode(
                        Codec::MsgPack,
                        &json!({"t":"set","id":2 * k,"key":format!("r{round}-k{k}"),"value":k}),
                    ));
                    batch.extend(crate::support::encode(
                        Codec::MsgPack,
                        &json!({"t":"incr","id":2 * k + 1,"key":format!("r{round}-counter")}),
                    ));
                }
                if c.send_raw(&batch).is_err() {
                    // Part of the batch may have reached the broker before it died.
                    return (acked_sets, acked_incrs, i + 8);
                }
                for _ in 0..16 {
                    let Some(r) = c.read_frame() else {
                        return (acked_sets, acked_incrs, i + 8);
                    };
                    assert_eq!(r["t"], "ok", "{r}");
                    let _ = first_ack.send(());
                    let id = r["id"].as_u64().unwrap();
                    if id % 2 == 0 {
                        assert_eq!(id / 2, acked_sets, "replies in order");
                        acked_sets += 1;
                    } else {
                        acked_incrs += 1;
                        assert_eq!(r["value"], acked_incrs);
                    }
                }
                i += 8;
            }
        });
        // The crash lands at a random point of the stream, after the first
        // acknowledgement (under load the broker may otherwise die before its first
        // fsync, and the round would check nothing).
        acked
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer got a first acknowledgement");
        std::thread::sleep(run_for);
        d.kill9();
        let (acked_sets, acked_incrs, issued) = writer.join().unwrap();
        d.start();
        let mut c = d.client();
        for k in 0..acked_sets {
            assert_eq!(
                c.ok(json!({"t":"get","key":format!("r{round}-k{k}")})),
                json!(k),
                "round {round}: acked key {k} lost"
            );
        }
        // A prefix: no gap after the first missing key.
        let mut present = acked_sets;
        while present < issued
            && c.ok(json!({"t":"has","key":format!("r{round}-k{present}")})) == json!(true)
        {
            present += 1;
        }
        for k in present..issued + 8 {
            assert_eq!(
                c.ok(json!({"t":"has","key":format!("r{round}-k{k}")})),
                json!(false),
                "round {round}: gap before {k}"
            );
        }
        let counter = c.ok(json!({"t":"get","key":format!("r{round}-counter")}));
        let counter = counter.as_u64().unwrap_or(0);
        assert!(
            counter >= acked_incrs && counter <= issued + 8,
            "round {round}: counter {counter}, acked {acked_incrs}"
        );
        assert!(
            acked_sets > 0,
            "round {round}: the writer got nothing acknowledged"
        );
    }
}

#[test]
fn ttl_keeps_running_across_a_crash() {
    let mut d = Durable::new("always", &[]);
    let t0 = Instant::now();
    d.client()
        .ok(json!({"t":"set","key":"ttl","value":"v","ttl":2000}));
    d.client()
        .ok(json!({"t":"set","key":"forever","value":"v"}));
    d.kill9();
    std::thread::sleep(Duration::from_millis(300)); // downtime counts against the TTL
    d.start();
    let mut c = d.client();
    assert_eq!(c.ok(json!({"t":"get","key":"ttl"})), json!("v"));
    let wait_until = |at: u64| {
        let at = Duration::from_millis(at);
        if let Some(left) = at.checked_sub(t0.elapsed()) {
            std::thread::sleep(left);
        }
    };
    wait_until(1700);
    assert_eq!(
        c.ok(json!({"t":"has","key":"ttl"})),
        json!(true),
        "expired too early"
    );
    wait_until(2300);
    assert_eq!(
        c.ok(json!({"t":"has","key":"ttl"})),
        json!(false),
        "the TTL restarted instead of continuing"
    );
    assert_eq!(c.ok(json!({"t":"has","key":"forever"})), json!(true));
}

/// Issue 12.4: a ttl near 2^64 ms overflowed the absolute expiry in the log, so the
/// key vanished at restart; it saturates (the key stays far-future).
#[test]
fn a_huge_ttl_survives_restart_instead_of_overflowing_the_expiry() {
    let mut d = Durable::new("always", &[]);
    let mut c = d.client();
    for (i, ttl) in [
        u64::MAX,
        u64::MAX - 1,
        1u64 << 63,
        u64::MAX - 1_000_000_000_000,
    ]
    .into_iter()
    .enumerate()
    {
        c.ok(json!({"t":"set","key":format!("huge{i}"),"value":i,"ttl":ttl}));
    }
    drop(c);
    d.kill9();
    d.start();
    let mut c = d.client();
    for i in 0..4 {
        assert_eq!(
            c.ok(json!({"t":"get","key":format!("huge{i}")})),
            json!(i),
            "huge{i} vanished at restart"
        );
    }
}

#[test]
fn fencing_tokens_from_before_a_crash_are_fenced_and_locks_released() {
    let mut d = Durable::new("everysec", &[]);
    let mut c = d.client();
    let old = c.ok(json!({"t":"lock","key":"job","ttl":60000}));
    let old_token = old["token"].as_u64().unwrap();
    assert_eq!(
        c.ok(json!({"t":"fset","key":"job","token":old_token,"k":"out","value":1})),
        json!(true)
    );
    drop(c);
    d.kill9();
    d.start();
    let mut c = d.client();
    assert_eq!(
        c.err_code(json!({"t":"fset","key":"job","token":old_token,"k":"out","value":2})),
        "EFENCED"
    );
    // Locks are released by a restart; the new grant's token is above every old one.
    let new = c.ok(json!({"t":"lock","key":"job"}));
    assert_eq!(new["acquired"], true);
    let new_token = new["token"].as_u64().unwrap();
    assert!(new_token > old_token);
    assert_eq!(
        c.ok(json!({"t":"fset","key":"job","token":new_token,"k":"out","value":3})),
        json!(true)
    );
    assert_eq!(c.ok(json!({"t":"get","key":"out"})), json!(3));
    // And again: tokens keep increasing across a second crash.
    drop(c);
    d.kill9();
    d.start();
    let t3 = d.client().ok(json!({"t":"lock","key":"other"}))["token"]
        .as_u64()
        .unwrap();
    assert!(t3 > new_token);
}

fn write_keys(d: &Durable, n: usize) {
    let mut c = d.client();
    for i in 0..n {
        c.ok(json!({"t":"set","key":format!("k{i}"),"value":i}));
    }
}

#[test]
fn torn_tail_is_cut_with_a_warning() {
    let mut d = Durable::new("always", &[]);
    write_keys(&d, 10);
    d.stop();
    let seg = d.segments().pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    // Cut the last record in half, as a crash mid-write would.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--heartbeat", "0", "--socket"])
            .arg(&d.sock)
            .args(&d.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = std::io::BufReader::new(child.0.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut err, &mut first).unwrap();
    assert!(
        first.contains("warning") && first.contains("torn"),
        "{first}"
    );
    let mut serving = String::new();
    std::io::BufRead::read_line(&mut err, &mut serving).unwrap();
    assert!(serving.contains("serving at"));
    let mut c = d.client();
    for i in 0..9 {
        assert_eq!(c.ok(json!({"t":"get","key":format!("k{i}")})), json!(i));
    }
    assert_eq!(
        c.ok(json!({"t":"has","key":"k9"})),
        json!(false),
        "the torn record is gone"
    );
    // The log is usable again: new writes survive another restart.
    c.ok(json!({"t":"set","key":"after","value":1}));
    drop(child);
    d.start();
    assert_eq!(d.client().ok(json!({"t":"get","key":"after"})), json!(1));
}

#[test]
fn mid_file_corruption_refuses_to_start_unless_repaired() {
    let mut d = Durable::new("always", &[]);
    write_keys(&d, 10);
    d.stop();
    let seg = d.segments().pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Flip a byte inside the fourth record's body (records here are equal-sized).
    let rec = bytes.len() / 10;
    bytes[3 * rec + 12] ^= 0x55;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, err) = d.refused(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&*seg.to_string_lossy()),
        "names the file: {err}"
    );
    assert!(
        err.contains(&format!("offset {}", 3 * rec)),
        "names the offset: {err}"
    );
    assert!(err.contains("--repair"));
    assert!(!d.sock.exists(), "nothing was served");
    d.args.push("--repair".into());
    d.start();
    let mut c = d.client();
    for i in 0..3 {
        assert_eq!(c.ok(json!({"t":"get","key":format!("k{i}")})), json!(i));
    }
    assert_eq!(
        c.ok(json!({"t":"has","key":"k3"})),
        json!(false),
        "the damaged record is dropped"
    );
    for i in 4..10 {
        assert_eq!(
            c.ok(json!({"t":"get","key":format!("k{i}")})),
            json!(i),
            "repair keeps the valid records after the damage"
        );
    }
}

/// Offsets of the frames of a log segment (walking the length fields).
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut off = 0;
    while off + 8 <= bytes.len() {
        v.push(off);
        off += 8 + u32::from_be_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
    }
    v
}

/// Starts the broker with `extra` flags; returns it and its stderr up to "serving at".
fn serve_logged(d: &Durable, extra: &[&str]) -> (KillOnDrop, Vec<String>) {
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--heartbeat", "0", "--socket"])
            .arg(&d.sock)
            .args(&d.args)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = std::io::BufReader::new(child.0.stderr.take().unwrap());
    let mut lines = Vec::new();
    for l in std::io::BufRead::lines(err) {
        let l = l.unwrap();
        let done = l.contains("serving at");
        lines.push(l);
        if done {
            break;
        }
    }
    assert!(
        lines.last().is_some_and(|l| l.contains("serving at")),
        "{lines:?}"
    );
    (child, lines)
}

/// A log of `n` single-set frames (one set per loop turn), stopped cleanly.
fn log_of_frames(n: usize) -> (Durable, PathBuf, Vec<u8>, Vec<usize>) {
    let mut d = Durable::new("no", &[]);
    write_keys(&d, n);
    d.stop();
    let seg = d.segments().pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let frames = frame_offsets(&bytes);
    assert_eq!(frames.len(), n, "one frame per set");
    (d, seg, bytes, frames)
}

/// Issue 12.1: damage to a length field in the middle of the log is not a torn tail:
/// the broker refuses to start, naming the file and the offset, and cuts nothing.
#[test]
fn a_corrupted_length_mid_log_is_refused_not_cut_as_a_torn_tail() {
    let (d, seg, bytes, frames) = log_of_frames(2000);
    // A one-bit flip in frame 315's length; `00 10` written over frame 100's.
    for (frame, at, with) in [
        (315, 0, [bytes[frames[315]] ^ 0x01, bytes[frames[315] + 1]]),
        (100, 0, [0x00, 0x10]),
    ] {
        let mut bad = bytes.clone();
        bad[frames[frame] + at..frames[frame] + at + 2].copy_from_slice(&with);
        std::fs::write(&seg, &bad).unwrap();
        let (code, err) = d.refused(&[]);
        assert_eq!(code, Some(1), "frame {frame}: {err}");
        assert!(
            err.contains(&*seg.to_string_lossy()),
            "names the file: {err}"
        );
        assert!(
            err.contains(&format!("offset {}", frames[frame])),
            "names the offset: {err}"
        );
        assert!(err.contains("--repair"), "{err}");
        assert!(!err.contains("torn"), "not taken for a torn tail: {err}");
        assert_eq!(std::fs::read(&seg).unwrap(), bad, "nothing was cut");
        assert!(!d.sock.exists(), "nothing was served");
    }
}

/// Issue 16.6: `--repair` moves only the damaged bytes to a side file, says what it
/// dropped, and keeps every valid record after the damage.
#[test]
fn repair_moves_only_the_damaged_frame_aside_and_keeps_the_rest() {
    let (d, seg, bytes, frames) = log_of_frames(400);
    let mut bad = bytes.clone();
    bad[frames[100]..frames[100] + 2].copy_from_slice(&[0x00, 0x10]);
    std::fs::write(&seg, &bad).unwrap();
    let (child, lines) = serve_logged(&d, &["--repair"]);
    let note = lines.join("\n");
    assert!(
        note.contains("dropped 1 damaged frame")
            && note.contains(&format!("offset {}", frames[100])),
        "says what it dropped: {note}"
    );
    let side = PathBuf::from(format!("{}.damaged-{}", seg.display(), frames[100]));
    assert_eq!(
        std::fs::read(&side).unwrap(),
        &bad[frames[100]..frames[101]],
        "the damaged bytes are kept aside"
    );
    let mut c = d.client();
    assert_eq!(c.stats()["cacheSize"], 399);
    assert_eq!(c.ok(json!({"t":"has","key":"k100"})), json!(false));
    for i in [0, 99, 101, 250, 399] {
        assert_eq!(c.ok(json!({"t":"get","key":format!("k{i}")})), json!(i));
    }
    c.ok(json!({"t":"set","key":"after","value":1}));
    drop(c);
    drop(child);
    // The repaired log starts cleanly, without --repair.
    let (_child, lines) = serve_logged(&d, &[]);
    assert_eq!(lines.len(), 1, "no warnings after the repair: {lines:?}");
    let mut c = d.client();
    assert_eq!(c.ok(json!({"t":"get","key":"after"})), json!(1));
    assert_eq!(c.ok(json!({"t":"get","key":"k399"})), json!(399));
}

/// Issue 16 (opening): a damaged *first* frame made `--repair` cut the whole log.
#[test]
fn repair_of_a_damaged_first_frame_does_not_cut_the_whole_log() {
    let (d, seg, bytes, frames) = log_of_frames(300);
    let mut bad = bytes.clone();
    bad[frames[0] + 10] ^= 0x40;
    std::fs::write(&seg, &bad).unwrap();
    let (code, err) = d.refused(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("offset 0"), "{err}");
    let (_child, lines) = serve_logged(&d, &["--repair"]);
    assert!(
        lines.join("\n").contains("dropped 1 damaged frame"),
        "{lines:?}"
    );
    let side = PathBuf::from(format!("{}.damaged-0", seg.display()));
    assert_eq!(std::fs::read(&side).unwrap(), &bad[..frames[1]]);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len() as usize,
        bytes.len() - frames[1],
        "only the damaged frame left the log"
    );
    let mut c = d.client();
    assert_eq!(c.stats()["cacheSize"], 299);
    assert_eq!(c.ok(json!({"t":"has","key":"k0"})), json!(false));
    assert_eq!(c.ok(json!({"t":"get","key":"k1"})), json!(1));
    assert_eq!(c.ok(json!({"t":"get","key":"k299"})), json!(299));
}

#[test]
fn a_directory_serves_one_broker() {
    let d = Durable::new("everysec", &[]);
    let other = d.sock.with_file_name("other.sock");
    let out = Command::new(BIN)
        .args(["serve", "--heartbeat", "0", "--socket"])
        .arg(&other)
        .args(["--persist-dir"])
        .arg(&d.data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    assert!(!other.exists());
}

#[test]
fn snapshots_compact_the_log_and_restore_everything() {
    let mut d = Durable::new("no", &["--compact-bytes", "20000"]);
    let mut c = d.client();
    let big = "x".repeat(100);
    for i in 0..2000 {
        c.ok(json!({"t":"set","key":format!("k{i}"),"value":{"i":i,"pad":big}}));
    }
    for i in 0..500 {
        c.ok(json!({"t":"del","key":format!("k{i}")}));
    }
    c.ok(json!({"t":"incr","key":"n","by":41}));
    // Wait (bounded) for the snapshot the log growth triggered to complete.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = c.stats()["persistence"].clone();
        if p["snapshots"].as_u64().unwrap() >= 1 && p["snapshotRunning"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot completed: {p}");
        // Each request is a loop turn, which advances the snapshot.
        c.ok(json!({"t":"has","key":"tick"}));
    }
    c.ok(json!({"t":"incr","key":"n"}));
    assert!(d.data.join("snapshot.bin").exists());
    let segs = d.segments();
    assert!(segs.len() <= 2, "old segments are removed: {segs:?}");
    drop(c);
    d.kill9();
    d.start();
    let mut c = d.client();
    assert_eq!(c.stats()["cacheSize"], 1501);
    for i in (0..2000).step_by(97) {
        let v = c.request(json!({"t":"get","key":format!("k{i}")}));
        if i < 500 {
            assert!(v.get("value").is_none(), "deleted k{i} came back");
        } else {
            assert_eq!(v["value"]["i"], i);
        }
    }
    assert_eq!(c.ok(json!({"t":"get","key":"n"})), json!(42));
}

#[test]
fn everysec_loses_nothing_on_a_clean_stop() {
    let mut d = Durable::new("everysec", &[]);
    write_keys(&d, 200);
    d.stop();
    d.start();
    let mut c = d.client();
    assert_eq!(c.stats()["cacheSize"], 200);
    assert_eq!(c.ok(json!({"t":"get","key":"k199"})), json!(199));
}

#[test]
fn no_persist_flag_and_env_dir() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let data = dir.path().join("d");
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--heartbeat", "0", "--no-persist", "--socket"])
            .arg(&sock)
            .env("PROCMESH_PERSIST_DIR", &data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    assert_eq!(c.stats()["persistence"], Value::Null);
    assert!(!data.exists());
}

/// A log that cannot be written (here: the file-size limit, as a full disk would)
/// fails the affected `always` writes with a clear error, refuses further writes,
/// reports the error in stats, and keeps serving reads.
#[test]
fn log_write_failures_fail_writes_instead_of_acknowledging_them() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mesh.sock");
    let data = dir.path().join("data");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--heartbeat", "0", "--fsync", "always", "--socket"])
        .arg(&sock)
        .arg("--persist-dir")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec: setrlimit and
    // signal. Ignoring SIGXFSZ makes an oversize write fail with EFBIG instead of
    // killing the process; the limit then behaves like a full disk for the log.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let mut err = std::io::BufRead::lines(std::io::BufReader::new(child.0.stderr.take().unwrap()));
    assert!(err.next().unwrap().unwrap().contains("serving at"));
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    let pad = "x".repeat(100);
    let mut acked = 0;
    let failure = loop {
        let r = c.request(json!({"t":"set","key":format!("k{acked}"),"value":pad}));
        if r["t"] == "err" {
            break r;
        }
        acked += 1;
        assert!(acked < 1000, "the file-size limit never bit");
    };
    assert_eq!(failure["code"], "EBROKER");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("not persisted"),
        "{failure}"
    );
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "the failed writer's connection is closed"
    );
    let line = err.next().unwrap().unwrap();
    assert!(
        line.contains("persistence error"),
        "a log line says so: {line}"
    );
    let mut other = TestClient::hello(&sock, Codec::MsgPack, None);
    let refused = other.request(json!({"t":"incr","key":"n"}));
    assert_eq!(refused["code"], "EBROKER");
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains("persistence is failing"));
    assert_eq!(
        other.ok(json!({"t":"get","key":"k0"})),
        json!(pad),
        "reads still work"
    );
    let p = other.stats()["persistence"].clone();
    assert!(
        p["error"].is_string() && p["errors"].as_u64().unwrap() >= 1,
        "{p}"
    );
    drop(other);
    drop(child);
    // Every acknowledged write is on disk.
    let mut again = KillOnDrop({
        let mut c = Command::new(BIN);
        c.args(["serve", "--heartbeat", "0", "--socket"])
            .arg(&sock)
            .arg("--persist-dir")
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    });
    let mut err = std::io::BufRead::lines(std::io::BufReader::new(again.0.stderr.take().unwrap()));
    assert!(err.any(|l| l.unwrap().contains("serving at")));
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    for k in 0..acked {
        assert_eq!(
            c.ok(json!({"t":"get","key":format!("k{k}")})),
            json!(pad),
            "acked k{k} lost"
        );
    }
}
