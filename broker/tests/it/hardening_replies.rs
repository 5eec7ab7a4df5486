//! Issue 12 hardening of replies over real sockets: a deep large JSON value read by
//! a MessagePack client (linear transcoding), the reply budget checked before the
//! copy, `incr` overflowing to infinity, and the refusal counters in `stats`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{encode, Codec, TestBroker};

/// `levels` maps nested in one another, the innermost holding `bulk` bytes of string.
fn deep_value(levels: usize, bulk: usize) -> Value {
    let mut v = json!("x".repeat(bulk));
    for i in 0..levels {
        v = json!({"n": i, "a": [true, null], "c": v});
    }
    v
}

#[test]
fn a_deep_large_json_value_read_by_a_msgpack_client_is_answered_without_freezing_the_broker() {
    // 20 MiB nested 98 deep: converting it once cost depth × size (30 s in a
    // release build, the whole broker frozen meanwhile).
    let b = TestBroker::start(&[]);
    let mut w = b.client();
    let v = deep_value(98, 20 << 20);
    assert_eq!(w.ok(json!({"t":"set","key":"deep","value":v})), json!(true));
    let mut r = b.client_with(Codec::MsgPack);
    let mut other = b.client();
    let id = r.send_request(json!({"t":"get","key":"deep"}));
    // The other client is served as soon as the broker's turn ends (one turn is
    // a few linear passes over 20 MiB; the read timeout of 20 s bounds it).
    assert_eq!(other.request(json!({"t":"ping"}))["t"], "pong");
    let got = r.reply_to(id);
    assert_eq!(got["t"], "ok", "{}", got["t"]);
    assert!(got["value"] == v, "the value read back differs");
}

#[test]
fn a_get_for_a_reader_near_its_hard_limit_is_refused_etoobig_not_closed() {
    // Three pipelined gets of 3 MiB with an 8 MiB hard limit and nothing read: the
    // third reply would pass the connection's room. It used to be built (copied)
    // and then the connection was closed as a slow consumer, unanswered.
    let b = TestBroker::start(&["--send-hard-limit", "8MiB"]);
    let mut c = b.client();
    let v = "v".repeat(3 << 20);
    assert_eq!(c.ok(json!({"t":"set","key":"k","value":v})), json!(true));
    let mut batch = Vec::new();
    for id in 100..103 {
        batch.extend(encode(Codec::Json, &json!({"t":"get","id":id,"key":"k"})));
    }
    c.send_raw(&batch).unwrap();
    let r1 = c.reply_to(100);
    let r2 = c.reply_to(101);
    let r3 = c.reply_to(102);
    assert_eq!(
        (r1["t"].as_str(), r2["t"].as_str()),
        (Some("ok"), Some("ok"))
    );
    assert_eq!(r3["code"], "ETOOBIG", "{r3}");
    assert!(
        r3["message"].as_str().unwrap().contains("unread output"),
        "{r3}"
    );
    // Still served, and counted.
    assert_eq!(c.ok(json!({"t":"get","key":"k"})), json!(v));
    let s = c.stats();
    assert_eq!(s["tooBig"], 1, "{s}");
    assert_eq!(s["slowClosed"], 0, "{s}");
}

#[test]
fn incr_overflowing_to_infinity_is_refused_and_stores_nothing() {
    let b = TestBroker::start(&[]);
    let mut c = b.client();
    let max = f64::MAX;
    assert_eq!(c.ok(json!({"t":"incr","key":"n","by":max})), json!(max));
    let r = c.request(json!({"t":"incr","key":"n","by":max}));
    assert_eq!(r["code"], "EBROKER", "{r}");
    assert!(r["message"].as_str().unwrap().contains("infinity"), "{r}");
    assert_eq!(c.ok(json!({"t":"get","key":"n"})), json!(max));
    assert_eq!(c.ok(json!({"t":"decr","key":"n","by":max})), json!(0));
    let r = c.request(json!({"t":"decr","key":"n","by":max}));
    assert_eq!(r["t"], "ok", "{r}");
    assert_eq!(
        c.request(json!({"t":"decr","key":"n","by":max}))["code"],
        "EBROKER"
    );
    assert_eq!(c.ok(json!({"t":"get","key":"n"})), json!(-max));
}

#[test]
fn refusal_counters_are_in_stats_and_metrics() {
    // One connection allowed: the second is refused and counted.
    let b = TestBroker::start(&["--max-connections", "1"]);
    let mut c = b.client();
    assert_eq!(c.request(json!({"t":"ping"}))["t"], "pong");
    let mut refused = b.client();
    let f = refused.read_frame().expect("a refusal frame");
    assert_eq!(f["code"], "EBROKER", "{f}");
    let s = c.stats();
    assert_eq!(s["refused"], 1, "{s}");
    assert_eq!(s["handshakeClosed"], 0, "{s}");
    assert_eq!(s["tooBig"], 0, "{s}");
    // The CLI needs the one slot: free it (the CLI's tries while the close is in
    // flight are refused too, so the count is at least 1).
    drop((c, refused));
    let mut text = String::new();
    crate::support::wait_until(Duration::from_secs(10), "the CLI gets a slot", || {
        let out = std::process::Command::new(crate::support::BIN)
            .args(["stats", "--format", "prometheus", "--socket"])
            .arg(&b.path)
            .output()
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("procmesh_conn_refused_total"))
        .collect();
    assert!(
        refused.len() == 1 && !refused[0].ends_with(" 0"),
        "{refused:?} in:\n{text}"
    );
    for line in [
        "procmesh_conn_handshake_closed_total 0",
        "procmesh_conn_reply_too_big_total 0",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(line.split(' ').next().unwrap())
                    && l.ends_with(line.split(' ').nth(1).unwrap())),
            "{line} missing from:\n{text}"
        );
    }
}
