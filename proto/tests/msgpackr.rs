//! msgpackr interop: the golden frames procmesh-js 0.1.1 writes (tests/fixtures/msgpackr/, made
//! by scripts/node-interop/make-msgpackr-fixtures.mjs with msgpackr 1.12.1) read through
//! `msgpackr::Normalizer`, and our `msgpackr::Encoder` checked against the same bytes, against
//! committed golden output (tests/fixtures/msgpackr-out/) and, when Node.js and the script's
//! node_modules are there, against msgpackr itself.

use std::path::{Path, PathBuf};

use procmesh_proto::msgpackr::{self, Encoder, Normalizer};
use procmesh_proto::response::{ok_value, Push, Reply};
use procmesh_proto::transcode::transcode;
use procmesh_proto::value::validate;
use procmesh_proto::{frame, Codec, Dialect, Frame, Num, Raw, Value};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/msgpackr")
}

struct Fixture {
    name: String,
    direction: String,
    features: Vec<String>,
    bin: Vec<u8>,
    json: Vec<u8>,
}

fn load() -> Vec<Fixture> {
    let dir = fixtures();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let list = manifest["fixtures"].as_array().unwrap();
    assert!(list.len() >= 80, "manifest lists {} fixtures", list.len());
    list.iter()
        .map(|f| {
            let name = f["name"].as_str().unwrap().to_string();
            Fixture {
                bin: std::fs::read(dir.join(format!("{name}.bin"))).unwrap(),
                json: std::fs::read(dir.join(format!("{name}.json"))).unwrap(),
                direction: f["direction"].as_str().unwrap().to_string(),
                features: f["features"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
                name,
            }
        })
        .collect()
}

/// The fixture JSON as a value, `{"$bin": hex}` read as the bytes (which is how a MessagePack
/// binary compares: an array of byte values).
fn json_value(json: &[u8]) -> Value {
    fn unbin(v: Value) -> Value {
        match v {
            Value::Map(m) if m.len() == 1 && m[0].0 == "$bin" => match &m[0].1 {
                Value::Str(hex) => Value::Array(
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| {
                            Value::Num(Num::Int(i64::from_str_radix(&hex[i..i + 2], 16).unwrap()))
                        })
                        .collect(),
                ),
                _ => Value::Map(m),
            },
            Value::Map(m) => Value::Map(m.into_iter().map(|(k, v)| (k, unbin(v))).collect()),
            Value::Array(a) => Value::Array(a.into_iter().map(unbin).collect()),
            v => v,
        }
    }
    unbin(validate(Codec::Json, json).unwrap().to_value())
}

fn to_plain(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    transcode(
        validate(Codec::Json, json).unwrap(),
        Codec::MsgPack,
        &mut out,
    )
    .unwrap();
    out
}

#[test]
fn every_fixture_normalises_to_its_json() {
    let mut n = Normalizer::new();
    let mut out = Vec::new();
    for f in load() {
        out.clear();
        n.normalize_into(&f.bin, frame::MAX_FRAME_LEN, &mut out)
            .unwrap_or_else(|e| panic!("{}: {}", f.name, e.message()));
        let plain = validate(Codec::MsgPack, &out).unwrap_or_else(|e| {
            panic!(
                "{}: output is not plain MessagePack: {}",
                f.name,
                e.message()
            )
        });
        assert_eq!(plain.to_value(), json_value(&f.json), "{}", f.name);
        // Every envelope reads as a frame of our own.
        let fr = Frame::decode(Codec::MsgPack, &out)
            .unwrap_or_else(|e| panic!("{}: {}", f.name, e.message()));
        let want_t = json_value(&f.json);
        let Value::Map(m) = want_t else {
            panic!("{}", f.name)
        };
        let t = m.iter().find(|(k, _)| k == "t").map(|(_, v)| v.clone());
        assert_eq!(
            t,
            Some(Value::Str(fr.t.unwrap().as_str().unwrap().into_owned())),
            "{}",
            f.name
        );
        // The first frame of either direction is recognised as msgpackr.
        assert_eq!(
            Codec::detect_payload(&f.bin),
            Some(Dialect::MSGPACKR),
            "{}",
            f.name
        );
    }
}

/// More `name.bin` + `name.json` pairs from msgpackr (for example thousands of random frames
/// made with Node.js) in the directory `PROCMESH_MSGPACKR_PAIRS`, checked like the fixtures and
/// re-encoded: skipped when the variable is unset. With `PROCMESH_MSGPACKR_PAIRS_OUT` set too, the
/// re-encodings are written there beside their JSON, for check-msgpackr-decode.mjs.
#[test]
fn extra_pairs_normalise_to_their_json() {
    let Some(dir) = std::env::var_os("PROCMESH_MSGPACKR_PAIRS") else {
        eprintln!("SKIP extra_pairs_normalise_to_their_json: PROCMESH_MSGPACKR_PAIRS is not set");
        return;
    };
    let out_dir = std::env::var_os("PROCMESH_MSGPACKR_PAIRS_OUT");
    let (mut n, mut e) = (Normalizer::new(), Encoder::new());
    let (mut out, mut wire, mut back) = (Vec::new(), Vec::new(), Vec::new());
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "bin") {
            continue;
        }
        let json = std::fs::read(path.with_extension("json")).unwrap();
        let bin = std::fs::read(&path).unwrap();
        out.clear();
        n.normalize_into(&bin, frame::MAX_FRAME_LEN, &mut out)
            .unwrap_or_else(|err| panic!("{}: {}", path.display(), err.message()));
        let v = validate(Codec::MsgPack, &out).unwrap();
        assert_eq!(v.to_value(), json_value(&json), "{}", path.display());
        wire.clear();
        back.clear();
        e.encode_into(&out, &mut wire).unwrap();
        n.normalize_into(&wire, frame::MAX_FRAME_LEN, &mut back)
            .unwrap();
        assert!(
            validate(Codec::MsgPack, &back).unwrap().structurally_eq(&v),
            "{}",
            path.display()
        );
        if let Some(to) = &out_dir {
            let name = path.file_name().unwrap();
            std::fs::write(Path::new(to).join(name), &wire).unwrap();
            std::fs::write(Path::new(to).join(name).with_extension("json"), &json).unwrap();
        }
        checked += 1;
    }
    assert!(checked > 0, "no pairs in {dir:?}");
}

#[test]
fn undefined_fields_are_absent() {
    let by_name = |name: &str| load().into_iter().find(|f| f.name == name).unwrap();
    for (name, field) in [
        ("set-no-ttl", "ttl"),
        ("get-reply-miss", "value"),
        ("cas-absent-prev", "prev"),
        ("sub", "replay"),
        ("result-undefined", "result"),
    ] {
        let f = by_name(name);
        assert!(f.features.iter().any(|x| x == "undefined"), "{name}");
        let mut out = Vec::new();
        msgpackr::normalize(&f.bin, frame::MAX_FRAME_LEN, &mut out).unwrap();
        Frame::decode(Codec::MsgPack, &out).unwrap();
        let mut seen = false;
        procmesh_proto::value::for_each_field(Codec::MsgPack, &out, |k, _| {
            seen |= k == field.as_bytes();
        })
        .unwrap();
        assert!(!seen, "{name}: `{field}` should be absent");
    }
}

/// Fixtures whose bytes our encoder must reproduce exactly from their JSON: everything but
/// what JSON cannot say (`undefined`, shared references, binary).
fn reproducible(f: &Fixture) -> bool {
    !f.features.iter().any(|x| {
        matches!(
            x.as_str(),
            "undefined" | "ext-0x69-id" | "ext-0x70-pointer" | "bin8" | "bin16"
        )
    })
}

#[test]
fn encoder_writes_what_msgpackr_writes() {
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    let mut checked = 0;
    let mut b2c = 0;
    for f in load().iter().filter(|f| reproducible(f)) {
        out.clear();
        enc.encode_into(&to_plain(&f.json), &mut out).unwrap();
        assert!(
            out == f.bin,
            "{}: ours {:02x?}\nmsgpackr {:02x?}",
            f.name,
            &out[..out.len().min(64)],
            &f.bin[..f.bin.len().min(64)]
        );
        checked += 1;
        b2c += (f.direction == "b2c") as usize;
    }
    assert!(checked >= 50 && b2c >= 15, "checked {checked}, b2c {b2c}");
}

/// Our broker's frames, built by the reply builders, in msgpackr form: byte-equal to what the
/// Node.js broker sends for the same frame.
fn our_frames() -> Vec<(&'static str, Vec<u8>)> {
    let id = |n: u8| Raw::new(Codec::MsgPack, std::slice::from_ref(Box::leak(Box::new(n))));
    let strip = |v: Vec<u8>| v[frame::PREFIX_LEN..].to_vec();
    let mut frames = Vec::new();
    let mut out = Vec::new();
    Reply::Welcome {
        broker: "default",
        pid: "p1733000000000_1",
        codecs: &[],
        shard: None,
    }
    .encode_into(Codec::MsgPack, Some(id(1)), &mut out);
    frames.push(("welcome", strip(std::mem::take(&mut out))));
    let nested = load()
        .into_iter()
        .find(|f| f.name == "get-reply-nested")
        .unwrap();
    let value_json = {
        let v = validate(Codec::Json, &nested.json).unwrap();
        v.map()
            .unwrap()
            .find(|(k, _)| k == "value")
            .unwrap()
            .1
            .bytes
            .to_vec()
    };
    let value = to_plain(&value_json);
    ok_value(
        Codec::MsgPack,
        Some(id(2)),
        Raw::new(Codec::MsgPack, &value),
        &mut out,
    )
    .unwrap();
    frames.push(("get-reply-nested", strip(std::mem::take(&mut out))));
    let payload = to_plain(br#"{"id":7,"total":99.5}"#);
    Push::Msg {
        channel: "orders",
        payload: Raw::new(Codec::MsgPack, &payload),
        offset: None,
    }
    .encode_into(Codec::MsgPack, &mut out)
    .unwrap();
    frames.push(("msg", strip(std::mem::take(&mut out))));
    let args = to_plain(br#"[800,600,{"fit":"cover"}]"#);
    Push::Invoke {
        id: 1,
        name: "resize",
        args: Raw::new(Codec::MsgPack, &args),
    }
    .encode_into(Codec::MsgPack, &mut out)
    .unwrap();
    frames.push(("invoke", strip(std::mem::take(&mut out))));
    frames
}

#[test]
fn our_frames_match_the_node_broker_and_the_golden_bytes() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/msgpackr-out");
    for (name, plain) in our_frames() {
        let mut out = Vec::new();
        msgpackr::encode(&plain, &mut out).unwrap();
        let node = std::fs::read(fixtures().join(format!("{name}.bin"))).unwrap();
        assert_eq!(out, node, "{name}: differs from procmesh-js's broker frame");
        if std::env::var_os("PROCMESH_BLESS").is_some() {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(golden.join(format!("{name}.bin")), &out).unwrap();
        }
        let committed = std::fs::read(golden.join(format!("{name}.bin"))).unwrap();
        assert_eq!(
            out, committed,
            "{name}: differs from the committed golden bytes"
        );
        let mut back = Vec::new();
        msgpackr::normalize(&out, frame::MAX_FRAME_LEN, &mut back).unwrap();
        assert_eq!(back, plain, "{name}");
    }
}

/// Writes our encodings of every fixture (and of our own frames) with their JSON to a temp dir
/// and runs scripts/node-interop/check-msgpackr-decode.mjs on it. Skipped, with the reason
/// printed, without Node.js or the script's node_modules; `PROCMESH_MSGPACKR_CHECK` may name
/// another copy of the script (one with node_modules beside it).
#[test]
fn msgpackr_decodes_our_encodings() {
    let script = std::env::var_os("PROCMESH_MSGPACKR_CHECK")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../scripts/node-interop/check-msgpackr-decode.mjs")
        });
    let modules = script.parent().unwrap().join("node_modules/msgpackr");
    if !modules.exists() {
        eprintln!(
            "SKIP msgpackr_decodes_our_encodings: {} is missing (npm ci in scripts/node-interop)",
            modules.display()
        );
        return;
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP msgpackr_decodes_our_encodings: node is not on PATH");
        return;
    }
    let dir = std::env::temp_dir().join(format!("procmesh-msgpackr-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut n = 0;
    for f in load()
        .iter()
        .filter(|f| !f.features.iter().any(|x| x.starts_with("bin")))
    {
        let mut out = Vec::new();
        msgpackr::encode(&to_plain(&f.json), &mut out).unwrap();
        std::fs::write(dir.join(format!("{}.bin", f.name)), &out).unwrap();
        std::fs::write(dir.join(format!("{}.json", f.name)), &f.json).unwrap();
        n += 1;
    }
    for (name, plain) in our_frames() {
        let mut out = Vec::new();
        msgpackr::encode(&plain, &mut out).unwrap();
        let mut json = Vec::new();
        transcode(
            validate(Codec::MsgPack, &plain).unwrap(),
            Codec::Json,
            &mut json,
        )
        .unwrap();
        std::fs::write(dir.join(format!("ours-{name}.bin")), &out).unwrap();
        std::fs::write(dir.join(format!("ours-{name}.json")), &json).unwrap();
        n += 1;
    }
    let run = std::process::Command::new("node")
        .arg(&script)
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains(&format!("SUMMARY checked={n} failed=0")),
        "{stdout}"
    );
}

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        (i32::MIN as i64..=u32::MAX as i64).prop_map(serde_json::Value::from),
        (-200i64..200).prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "[a-z]{0,3}|.{0,40}".prop_map(serde_json::Value::from),
    ]
}

fn json_tree(
    leaf: impl Strategy<Value = serde_json::Value> + 'static,
) -> impl Strategy<Value = serde_json::Value> {
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            // Few key names, so that key lists repeat and records get referenced.
            prop::collection::vec(("[abt]{1,2}", inner), 0..6)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// normalise(encode(plain)) == plain, byte for byte, for values whose integers fit 32 bits.
    #[test]
    fn round_trip_is_exact(v in json_tree(json_leaf())) {
        let plain = to_plain(v.to_string().as_bytes());
        let mut enc = Encoder::new();
        let mut wire = Vec::new();
        enc.encode_into(&plain, &mut wire).unwrap();
        let mut back = Vec::new();
        Normalizer::new().normalize_into(&wire, frame::MAX_FRAME_LEN, &mut back).unwrap();
        prop_assert_eq!(back, plain);
    }

    /// With any 64-bit integer the round trip is equal as a value (outside 32 bits msgpackr
    /// gets a float64, as it would write itself).
    #[test]
    fn round_trip_is_equal(v in json_tree(prop_oneof![json_leaf(), any::<i64>().prop_map(serde_json::Value::from), any::<u64>().prop_map(serde_json::Value::from)])) {
        let plain = to_plain(v.to_string().as_bytes());
        let mut wire = Vec::new();
        msgpackr::encode(&plain, &mut wire).unwrap();
        let mut back = Vec::new();
        msgpackr::normalize(&wire, frame::MAX_FRAME_LEN, &mut back).unwrap();
        let (a, b) = (validate(Codec::MsgPack, &back).unwrap(), validate(Codec::MsgPack, &plain).unwrap());
        prop_assert!(a.structurally_eq(&b));
    }

    /// Fixtures with a few bytes changed never panic the normaliser either.
    #[test]
    fn mutated_fixtures_never_panic(which in 0usize..84, edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let fixtures = load();
        let mut b = fixtures[which % fixtures.len()].bin.clone();
        for (at, byte) in edits {
            let i = at % b.len();
            b[i] = byte;
        }
        let mut out = Vec::new();
        if msgpackr::normalize(&b, 1 << 20, &mut out).is_ok() {
            prop_assert!(validate(Codec::MsgPack, &out).is_ok());
        }
    }

    /// Arbitrary bytes never panic the normaliser, and what it accepts is valid MessagePack.
    #[test]
    fn normalise_never_panics(b in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut out = Vec::new();
        if msgpackr::normalize(&b, 1 << 16, &mut out).is_ok() {
            prop_assert!(validate(Codec::MsgPack, &out).is_ok(), "{:02x?} → {:02x?}", b, out);
        }
    }
}
