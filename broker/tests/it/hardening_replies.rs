//! Issue 12 hardening of replies over real sockets: a deep large JSON value read by
//! a MessagePack client (linear transcoding), the reply budget checked before the
//! copy, `incr` overflowing to infinity, and the refusal counters in `stats`.

use serde_json::{json, Value};

use crate::support::{Codec, TestBroker};

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
