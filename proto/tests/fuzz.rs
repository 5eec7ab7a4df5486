//! Structure-aware fuzz properties: decoding never panics and never takes more
//! than its input, for any bytes, split at any points, at realistic sizes.
//!
//! Each property is named `fuzz_*`; `scripts/fuzz.sh` runs them for a fixed time
//! with many more cases (`PROPTEST_CASES`). They assert invariants, not just "no
//! crash": a frame's range lies inside the buffer, every decoded field lies inside
//! the payload and is a valid value on its own, a decoded request re-encodes to a
//! frame that decodes to the same request, and frames come out of a split stream
//! exactly as they went in.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value as J;

use procmesh_proto::frame::{self, FrameError, MAX_FRAME_LEN};
use procmesh_proto::value::{transcode, validate};
use procmesh_proto::{Codec, Frame, Raw, Request};

fn cfg(cases: u32) -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c
}

const TAGS: &[&str] = &[
    "hello",
    "welcome",
    "ping",
    "pong",
    "ok",
    "err",
    "stats",
    "shutdown",
    "get",
    "set",
    "del",
    "has",
    "keys",
    "clear",
    "mget",
    "mset",
    "incr",
    "decr",
    "cas",
    "lock",
    "unlock",
    "fset",
    "fcas",
    "fdel",
    "sub",
    "unsub",
    "pub",
    "msg",
    "reg",
    "unreg",
    "call",
    "invoke",
    "result",
    "frobnicate",
];

const FIELDS: &[&str] = &[
    "id", "key", "value", "ttl", "by", "prev", "next", "keys", "entries", "channel", "payload",
    "acks", "name", "token", "pid", "args", "timeout", "wait", "k", "result", "error", "seq",
    "other", "k\u{e9}y",
];

fn arb_leaf() -> impl Strategy<Value = J> {
    prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        (-3i64..5).prop_map(J::from),
        any::<i64>().prop_map(J::from),
        any::<u64>().prop_map(J::from),
        prop_oneof![Just(0.5), Just(-1.5), Just(2.0), Just(1e300)].prop_map(J::from),
        "[a-z\"\\\\\n\u{e9}]{0,8}".prop_map(J::String),
        Just(J::from("all")),
    ]
}

fn arb_field_value() -> impl Strategy<Value = J> {
    arb_leaf().prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
            prop::collection::vec(("[a-z]{1,3}", inner), 0..4)
                .prop_map(|v| J::Object(v.into_iter().collect())),
        ]
    })
}

/// A map that looks like a request: usually a known tag, fields of any type.
fn arb_request_map() -> impl Strategy<Value = J> {
    (
        prop_oneof![
            8 => prop::sample::select(TAGS).prop_map(J::from),
            1 => arb_leaf(),
        ],
        prop::collection::vec((prop::sample::select(FIELDS), arb_field_value()), 0..7),
        any::<bool>(),
    )
        .prop_map(|(t, fields, with_t)| {
            let mut m = serde_json::Map::new();
            if with_t {
                m.insert("t".into(), t);
            }
            for (k, v) in fields {
                m.insert(k.into(), v);
            }
            J::Object(m)
        })
}

fn encode_map(codec: Codec, v: &J) -> Vec<u8> {
    match codec {
        Codec::Json => serde_json::to_vec(v).unwrap(),
        Codec::MsgPack => rmp_serde::to_vec(v).unwrap(),
    }
}

fn arb_codec() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::Json), Just(Codec::MsgPack)]
}

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

fn fields<'a>(f: &Frame<'a>) -> Vec<Raw<'a>> {
    [
        f.t, f.id, f.key, f.value, f.ttl, f.by, f.prev, f.next, f.keys, f.entries, f.channel,
        f.payload, f.acks, f.name, f.token, f.pid, f.args, f.timeout, f.wait, f.k, f.result,
        f.error, f.message, f.code, f.offset, f.version, f.broker, f.seq,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Decodes one payload the way the broker does and checks every invariant.
fn check_payload(codec: Codec, p: &[u8]) -> Result<(), TestCaseError> {
    let (f, r) = Frame::decode_partial(codec, p);
    for raw in fields(&f) {
        prop_assert!(within(p, raw.bytes), "a field outside its payload");
        prop_assert_eq!(raw.codec, codec);
        prop_assert!(
            validate(codec, raw.bytes).is_ok(),
            "a field that is not a value"
        );
    }
    if r.is_err() {
        return Ok(());
    }
    let Ok(req) = Request::from_frame(f.kind(), &f) else {
        return Ok(());
    };
    // Re-encoding a decoded request gives a frame that decodes to an equal request
    // (after one round: `2.0` may become `2`).
    let mut out = Vec::new();
    req.encode_into(codec, Some(7), &mut out)
        .expect("a decoded request re-encodes in its own codec");
    let (s, e) = frame::try_decode(&out, MAX_FRAME_LEN).unwrap().unwrap();
    prop_assert_eq!(e, out.len());
    let r2 = Request::decode(codec, &out[s..e]).expect("our frame decodes");
    prop_assert_eq!(r2.kind(), req.kind());
    let mut out2 = Vec::new();
    r2.encode_into(codec, Some(7), &mut out2).unwrap();
    let r3 = Request::decode(codec, &out2[4..]).unwrap();
    prop_assert_eq!(&r3, &r2);
    // And in the other codec too (values transcoded).
    let other = if codec == Codec::Json {
        Codec::MsgPack
    } else {
        Codec::Json
    };
    let mut out3 = Vec::new();
    r2.encode_into(other, Some(7), &mut out3).unwrap();
    let r4 = Request::decode(other, &out3[4..]).expect("transcoded frame decodes");
    prop_assert_eq!(r4.kind(), r2.kind());
    Ok(())
}

/// Feeds `stream` to a reader in chunks cut at `cuts`, as a socket would, and
/// returns the payloads taken off, checking the ranges on the way.
fn read_split(stream: &[u8], cuts: &[usize], max: usize) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    let (mut buf, mut got, mut fed) = (Vec::new(), Vec::new(), 0);
    for p in points {
        buf.extend_from_slice(&stream[fed..p]);
        fed = p;
        let mut pos = 0;
        while let Some((s, e)) = frame::try_decode(&buf[pos..], max)? {
            assert_eq!(s, frame::PREFIX_LEN);
            assert!(pos + e <= buf.len(), "a frame past the buffer");
            got.push(buf[pos + s..pos + e].to_vec());
            pos += e;
        }
        buf.drain(..pos);
    }
    assert!(buf.len() < stream.len() + 1);
    Ok(got)
}

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn fuzz_decode_request_like_maps(codec in arb_codec(), v in arb_request_map()) {
        check_payload(codec, &encode_map(codec, &v))?;
    }

    #[test]
    fn fuzz_decode_mutated_frames(
        codec in arb_codec(),
        v in arb_request_map(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let mut p = encode_map(codec, &v);
        for (at, byte, op) in edits {
            let n = p.len();
            match op {
                0 if n > 0 => p[at % n] = byte,
                1 => p.insert(at % (n + 1), byte),
                2 if n > 0 => { p.remove(at % n); }
                _ => p.truncate(at % (n + 1)),
            }
            check_payload(codec, &p)?;
        }
    }

    #[test]
    fn fuzz_decode_arbitrary_bytes(codec in arb_codec(), p in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_payload(codec, &p)?;
        // Any bytes as one value: never panics; an accepted value converts both ways.
        if let Ok(r) = validate(codec, &p) {
            let mut a = Vec::new();
            let other = if codec == Codec::Json { Codec::MsgPack } else { Codec::Json };
            prop_assert!(transcode(r, other, &mut a).is_ok());
            prop_assert!(validate(other, &a).unwrap().structurally_eq(&r));
        }
    }

    #[test]
    fn fuzz_frame_stream_split_anywhere(
        codec in arb_codec(),
        maps in prop::collection::vec(arb_request_map(), 0..12),
        garbage in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut payloads: Vec<Vec<u8>> = maps.iter().map(|m| encode_map(codec, m)).collect();
        payloads.extend(garbage);
        let mut stream = Vec::new();
        for p in &payloads {
            frame::encode_into(p, &mut stream);
        }
        let got = read_split(&stream, &cuts, MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(&got, &payloads);
        for p in &got {
            check_payload(codec, p)?;
        }
        // With a lower limit, the first frame over it is refused, none before it is.
        let max = 20;
        match read_split(&stream, &cuts, max) {
            Ok(g) => prop_assert!(payloads.iter().all(|p| p.len() <= max) && g == payloads),
            Err(FrameError::TooBig { len, max: m }) => {
                prop_assert_eq!(m, max);
                prop_assert_eq!(Some(len), payloads.iter().map(|p| p.len()).find(|&l| l > max));
            }
            Err(e) => prop_assert!(false, "{:?}", e),
        }
    }

    #[test]
    fn fuzz_frame_prefix_of_any_bytes(buf in prop::collection::vec(any::<u8>(), 0..64), max in 0usize..100) {
        match frame::try_decode(&buf, max) {
            Ok(Some((s, e))) => {
                prop_assert_eq!(s, 4);
                prop_assert!(e <= buf.len() && e - s <= max);
            }
            Ok(None) => prop_assert!(buf.len() < 4 || u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize + 4 > buf.len()),
            Err(FrameError::TooBig { len, .. }) => prop_assert!(len > max),
            Err(e) => prop_assert!(false, "{:?}", e),
        }
    }
}

// ---------------------------------------------------------------- realistic sizes

/// A deterministic document of about `target` bytes: records with strings,
/// numbers and nested arrays, like a cached API response.
fn big_doc(target: usize, seed: u64) -> J {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut items = Vec::new();
    let mut size = 0;
    while size < target {
        let n = (rnd() % 200) as usize;
        let text: String = (0..n)
            .map(|i| ['a', 'é', '"', '\\', '\n', '😀', 'z'][(i + rnd() as usize) % 7])
            .collect();
        size += text.len() + 80;
        items.push(serde_json::json!({
            "id": rnd(),
            "score": (rnd() % 10_000) as f64 / 7.0,
            "neg": -((rnd() % 1000) as i64),
            "tags": [text.clone(), "x", {"deep": [[[1, [2, [3, null]]]]]}],
            "text": text,
            "ok": rnd() % 2 == 0,
        }));
    }
    serde_json::json!({"items": items, "count": items.len()})
}

fn check_big(doc: &J, cuts: &[usize]) -> Result<(), TestCaseError> {
    let text = serde_json::to_vec(doc).unwrap();
    let j = validate(Codec::Json, &text).unwrap();
    let mut m = Vec::new();
    transcode(j, Codec::MsgPack, &mut m).unwrap();
    let mr = validate(Codec::MsgPack, &m).unwrap();
    prop_assert!(mr.structurally_eq(&j));
    for value in [j, mr] {
        let codec = value.codec;
        let req = Request::Set {
            key: "big".into(),
            value,
            ttl_ms: Some(1),
        };
        let mut stream = Vec::new();
        for i in 0..3 {
            req.encode_into(codec, Some(i), &mut stream).unwrap();
        }
        let got = read_split(&stream, cuts, MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(got.len(), 3);
        for p in &got {
            prop_assert_eq!(&Request::decode(codec, p).unwrap(), &req);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cfg(4))]

    #[test]
    fn fuzz_realistic_sizes_split_anywhere(
        kb in prop_oneof![1usize..64, 64usize..512],
        seed in any::<u64>(),
        cuts in prop::collection::vec(any::<usize>(), 0..64),
    ) {
        let doc = big_doc(kb * 1024, seed);
        check_big(&doc, &cuts)?;
        let m = rmp_serde::to_vec(&doc).unwrap();
        let ours: J = serde_json::from_slice(&{
            let mut out = Vec::new();
            transcode(validate(Codec::MsgPack, &m).unwrap(), Codec::Json, &mut out).unwrap();
            out
        }).unwrap();
        prop_assert_eq!(ours["count"].as_u64(), doc["count"].as_u64());
    }
}

#[test]
fn a_few_megabytes_of_nested_values() {
    let doc = big_doc(2 << 20, 42);
    check_big(&doc, &[1, 3, 4, 5, 1000, 65_536, 1 << 20, 3 << 20]).unwrap();
}

// ---------------------------------------------------------------- deep values (issue 12 #9)

/// Nested `depth` deep, each level a map or array, with a mutated byte somewhere:
/// what validates transcodes both ways to a structurally equal value, what does not
/// is refused by both paths, and no path panics.
fn deep_text(depth: usize, kinds: &[bool], bulk: usize) -> Vec<u8> {
    let mut t = Vec::new();
    for &map in kinds.iter().cycle().take(depth) {
        t.extend_from_slice(if map {
            b"{\"a\":[1,\"s\"],\"c\":"
        } else {
            b"[null,-2.5e3,"
        });
    }
    t.push(b'"');
    t.extend(std::iter::repeat_n(b'y', bulk));
    t.push(b'"');
    for &map in kinds
        .iter()
        .cycle()
        .take(depth)
        .collect::<Vec<_>>()
        .iter()
        .rev()
    {
        t.push(if *map { b'}' } else { b']' });
    }
    t
}

proptest! {
    #![proptest_config(cfg(64))]

    #[test]
    fn fuzz_deep_values_transcode_or_refuse(
        depth in 90usize..=102,
        kinds in prop::collection::vec(any::<bool>(), 1..8),
        bulk in 0usize..4096,
        edit in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        let mut text = deep_text(depth, &kinds, bulk);
        if let Some((at, byte)) = edit {
            let i = at.index(text.len());
            text[i] = byte;
        }
        match validate(Codec::Json, &text) {
            Ok(j) => {
                let mut m = Vec::new();
                prop_assert!(transcode(j, Codec::MsgPack, &mut m).is_ok());
                let mr = validate(Codec::MsgPack, &m).expect("our MessagePack validates");
                prop_assert!(mr.structurally_eq(&j));
                let mut back = Vec::new();
                prop_assert!(transcode(mr, Codec::Json, &mut back).is_ok());
                prop_assert!(validate(Codec::Json, &back).unwrap().structurally_eq(&j));
            }
            Err(_) => {
                // Not a value: the converter, given the same bytes, refuses too.
                let mut m = Vec::new();
                prop_assert!(transcode(Raw::new(Codec::Json, &text), Codec::MsgPack, &mut m).is_err()
                    || edit.is_some_and(|_| std::str::from_utf8(&text).is_err()));
            }
        }
    }
}

#[test]
fn deep_values_at_the_nesting_limit() {
    for depth in [99, 100] {
        let text = deep_text(depth, &[true, false], 1 << 16);
        let j = validate(Codec::Json, &text).expect("within the limit");
        let mut m = Vec::new();
        transcode(j, Codec::MsgPack, &mut m).unwrap();
        assert!(validate(Codec::MsgPack, &m).unwrap().structurally_eq(&j));
    }
    let text = deep_text(101, &[true, false], 10);
    assert!(validate(Codec::Json, &text).is_err());
    assert!(transcode(
        Raw::new(Codec::Json, &text),
        Codec::MsgPack,
        &mut Vec::new()
    )
    .is_err());
}
