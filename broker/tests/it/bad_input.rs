//! Bad input: the broker answers or disconnects the one peer, never panics, and
//! everyone else keeps being served.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;

use crate::support::{Codec, TestBroker, TestClient};

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn malformed_frames_get_clear_errors_and_the_connection_survives() {
    let b = TestBroker::start(&[]);
    let mut c = TestClient::hello(&b.path, Codec::Json, None);
    let cases: &[(&[u8], &str)] = &[
        (br#"{"t":"get","id":1,"key":5}"#, "`key` must be a string"),
        (br#"{"t":"set","id":2,"key":"a"}"#, "missing field `value`"),
        (
            br#"{"t":"set","id":3,"key":"a","value":1,"ttl":"soon"}"#,
            "`ttl`",
        ),
        (br#"{"id":4,"key":"a"}"#, "`t`"),
        (br#"{"t":"get","id":5,"key":"a",}"#, "malformed"),
        (br#"{"t":"incr","id":6,"key":"a","by":"x"}"#, "`by`"),
        (br#"{"t":"lock","id":7,"key":"a","wait":-1}"#, "`wait`"),
    ];
    for (payload, want) in cases {
        c.send_raw(&frame(payload)).unwrap();
        let r = c.read_frame().expect("an answer, not a disconnect");
        assert_eq!(r["t"], "err", "{r}");
        assert_eq!(r["code"], "EBROKER");
        assert!(
            r["message"].as_str().unwrap().contains(want),
            "{r} should mention {want}"
        );
    }
    // Not a map, no id: nothing to answer, but the connection stays usable.
    c.send_raw(&frame(b"[1,2]")).unwrap();
    c.send_raw(&frame(b"{\"t\":")).unwrap();
    assert_eq!(c.ok(json!({"t":"set","key":"ok","value":1})), json!(true));
}

#[test]
fn oversize_frame_disconnects_only_that_peer() {
    let b = TestBroker::start(&["--max-frame", "1024"]);
    let mut good = TestClient::hello(&b.path, Codec::MsgPack, None);
    let mut bad = TestClient::hello(&b.path, Codec::Json, None);
    bad.send_raw(&u32::MAX.to_be_bytes()).unwrap();
    let r = bad.read_frame().expect("an error before the close");
    assert_eq!(r["code"], "ETOOBIG");
    assert!(bad.closed_within(Duration::from_secs(5)));
    // A frame just over the limit is refused the same way.
    let mut bad2 = TestClient::hello(&b.path, Codec::Json, None);
    let big = format!(
        r#"{{"t":"set","id":1,"key":"k","value":"{}"}}"#,
        "x".repeat(1100)
    );
    let _ = bad2.send_raw(&frame(big.as_bytes()));
    assert!(bad2.closed_within(Duration::from_secs(5)));
    assert_eq!(good.request(json!({"t":"ping"}))["t"], "pong");
}

#[test]
fn undetectable_codec_is_answered_and_closed() {
    let b = TestBroker::start(&[]);
    let mut c = TestClient::connect(&b.path, Codec::Json);
    c.send_raw(&frame(b"hello there")).unwrap();
    let r = c.read_frame().expect("an explanation");
    assert_eq!(r["code"], "EBROKER");
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn deep_nesting_is_refused_without_crashing() {
    let b = TestBroker::start(&[]);
    let mut c = TestClient::hello(&b.path, Codec::Json, None);
    let deep = "[".repeat(50_000) + &"]".repeat(50_000);
    let payload = format!(r#"{{"t":"set","id":1,"key":"d","value":{deep}}}"#);
    c.send_raw(&frame(payload.as_bytes())).unwrap();
    let r = c.read_frame().unwrap();
    assert_eq!(r["code"], "EBROKER");
    let mut m = TestClient::hello(&b.path, Codec::MsgPack, None);
    let mut mp = vec![
        0x84, 0xa2, b'i', b'd', 0x01, 0xa1, b't', 0xa3, b's', b'e', b't', 0xa3, b'k', b'e', b'y',
        0xa1, b'd',
    ];
    mp.extend_from_slice(&[0xa5, b'v', b'a', b'l', b'u', b'e']);
    mp.extend(std::iter::repeat_n(0x91, 50_000));
    mp.push(0xc0);
    m.send_raw(&frame(&mp)).unwrap();
    assert_eq!(c.ok(json!({"t":"has","key":"d"})), json!(false));
    let r = m.read_frame().unwrap();
    assert_eq!(r["code"], "EBROKER", "{r}");
    assert_eq!(m.request(json!({"t":"ping"}))["t"], "pong");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    // Random bytes, random frames and truncations thrown at a live broker: it answers
    // or disconnects that peer, and a bystander is served throughout.
    #[test]
    fn random_input_never_hurts_other_clients(
        chunks in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                prop::collection::vec(any::<u8>(), 0..64).prop_map(|p| frame(&p)),
                prop::collection::vec(any::<u8>(), 1..64).prop_map(|mut p| { p[0] = b'{'; frame(&p) }),
                prop::collection::vec(any::<u8>(), 1..64).prop_map(|mut p| { p[0] = 0x83; frame(&p) }),
                "[a-z{}\\[\\]\":,0-9 ]{0,60}".prop_map(|s| frame(s.as_bytes())),
            ],
            1..16,
        )
    ) {
        thread_local! {
            static BROKER: TestBroker = TestBroker::start(&["--max-frame", "4096"]);
        }
        BROKER.with(|b| {
            let mut bystander = TestClient::hello(&b.path, Codec::MsgPack, None);
            let mut attacker = TestClient::connect(&b.path, Codec::Json);
            attacker.stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            for c in &chunks {
                if attacker.send_raw(c).is_err() {
                    break;
                }
            }
            drop(attacker);
            let r = bystander.request(json!({"t":"ping"}));
            assert_eq!(r["t"], "pong");
            assert!(bystander.ok(json!({"t":"incr","key":"alive"})).is_number());
        });
    }
}
