//! Durability under a failing log (issue 12 items 2 and 3): nothing failed takes
//! effect, nothing acknowledged is lost. A full disk is simulated with RLIMIT_FSIZE
//! (with SIGXFSZ ignored, an oversize write fails with EFBIG as ENOSPC would).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::support::{Codec, TestClient, BIN};

/// Kills a child process on drop (no orphan broker after a failed assertion).
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` on `sock` with `data` and `fsync`; with `fsize_limit`, the log
/// cannot grow past that many bytes. Returns once it is serving.
fn serve(sock: &Path, data: &Path, fsync: &str, fsize_limit: Option<u64>) -> Broker {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--heartbeat", "0", "--fsync", fsync, "--socket"])
        .arg(sock)
        .arg("--persist-dir")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(limit) = fsize_limit {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    }
    let mut child = Broker(cmd.spawn().unwrap());
    let err = std::io::BufReader::new(child.0.stderr.take().unwrap());
    let mut lines = std::io::BufRead::lines(err);
    assert!(lines.any(|l| l.unwrap().contains("serving at")));
    // Keep draining stderr so the broker never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mesh.sock");
    let data = dir.path().join("data");
    (dir, sock, data)
}

/// Incrs `n` until the log refuses one; returns how many were acknowledged and the
/// refusal.
fn incr_until_refused(c: &mut TestClient) -> (u64, serde_json::Value) {
    let mut acked = 0;
    loop {
        let r = c.request(json!({"t":"incr","key":"n"}));
        if r["t"] == "err" {
            return (acked, r);
        }
        acked += 1;
        assert_eq!(r["value"], acked);
        assert!(acked < 10_000, "the file-size limit never bit");
    }
}

/// `fsync always`, full disk: the incr answered "write not persisted" has no effect
/// (no other client sees it, it never reaches the disk), so a retry counts once.
#[test]
fn a_write_not_persisted_has_no_effect_and_a_retried_incr_counts_once() {
    let (_dir, sock, data) = dirs();
    let broker = serve(&sock, &data, "always", Some(2048));
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    let (acked, failure) = incr_until_refused(&mut c);
    assert_eq!(failure["code"], "EBROKER");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("not persisted"),
        "{failure}"
    );
    let mut other = TestClient::hello(&sock, Codec::MsgPack, None);
    assert_eq!(
        other.ok(json!({"t":"get","key":"n"})),
        json!(acked),
        "the failed incr is not visible"
    );
    drop(other);
    drop(c);
    drop(broker);
    // Space again: the failed incr did not reach the disk, the retry counts once.
    let _broker = serve(&sock, &data, "always", None);
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    assert_eq!(c.ok(json!({"t":"get","key":"n"})), json!(acked));
    assert_eq!(c.ok(json!({"t":"incr","key":"n"})), json!(acked + 1));
}

/// `fsync everysec`, full disk: the write whose log write failed is not acknowledged
/// (and not applied); everything acknowledged survives a clean stop, which exits 0.
#[test]
fn everysec_does_not_acknowledge_a_write_the_log_refused() {
    let (_dir, sock, data) = dirs();
    let mut broker = serve(&sock, &data, "everysec", Some(2048));
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    let (acked, failure) = incr_until_refused(&mut c);
    assert_eq!(failure["code"], "EBROKER");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("not persisted"),
        "{failure}"
    );
    let mut other = TestClient::hello(&sock, Codec::MsgPack, None);
    assert_eq!(other.ok(json!({"t":"get","key":"n"})), json!(acked));
    drop(other);
    drop(c);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(broker.0.id() as i32, libc::SIGTERM) };
    let status = broker.0.wait().unwrap();
    assert!(status.success(), "the final sync succeeded: {status:?}");
    let _broker = serve(&sock, &data, "everysec", None);
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    assert_eq!(
        c.ok(json!({"t":"get","key":"n"})),
        json!(acked),
        "every acknowledged incr survived, the refused one did not"
    );
}

/// Reads pipelined behind writes in the turn whose commit fails never show the
/// undone writes: the failing turn's replies are retracted (the writes answered
/// "not persisted", the connection closed), and the store shows acked writes only.
#[test]
fn a_read_in_the_turn_of_a_failed_write_never_shows_it() {
    let (_dir, sock, data) = dirs();
    let _broker = serve(&sock, &data, "always", Some(2048));
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    let mut value = 0u64;
    let mut failed = 0;
    let mut i = 0u64;
    'stream: while i < 10_000 {
        let mut batch = Vec::new();
        for j in i..i + 8 {
            batch.extend(crate::support::encode(
                Codec::Json,
                &json!({"t":"incr","id":2 * j,"key":"n"}),
            ));
            batch.extend(crate::support::encode(
                Codec::Json,
                &json!({"t":"get","id":2 * j + 1,"key":"n"}),
            ));
        }
        if c.send_raw(&batch).is_err() {
            break;
        }
        for _ in 0..16 {
            let Some(r) = c.read_frame() else {
                break 'stream;
            };
            let id = r["id"].as_u64().unwrap();
            if id % 2 == 0 {
                if r["t"] == "ok" {
                    assert_eq!(failed, 0, "no write acknowledged after a failure: {r}");
                    value += 1;
                    assert_eq!(r["value"], value, "{r}");
                } else {
                    assert_eq!(r["code"], "EBROKER", "{r}");
                    failed += 1;
                }
            } else {
                assert_eq!(r["t"], "ok", "{r}");
                assert_eq!(
                    r["value"], value,
                    "a read shows only acknowledged incrs: {r}"
                );
            }
        }
        i += 8;
    }
    assert!(failed > 0, "the log never failed");
    let mut c = TestClient::hello(&sock, Codec::Json, None);
    assert_eq!(c.ok(json!({"t":"get","key":"n"})), json!(value));
}
