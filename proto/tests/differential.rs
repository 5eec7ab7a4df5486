//! Differential tests of the hand-written codecs against serde_json, rmp and
//! rmp-serde: accept/reject agreement, number and string equality, and every
//! MessagePack form (nil, bool, fixint, int8..64, uint8..64 including u64 above
//! i64::MAX, f32, f64, fixstr/str8/16/32, bin8/16/32, fixarray/array16/32,
//! fixmap/map16/32, fixext/ext8/16/32).
//!
//! Known, intended differences from serde_json, excluded from agreement checks:
//! a `\u` escape of a lone surrogate (accepted, as `JSON.parse` does, read as
//! U+FFFD) and a number beyond the f64 range (accepted as infinity, as JavaScript
//! does; serde_json rejects both). Nesting is compared within our limit of
//! [`MAX_DEPTH`] (serde_json's is 128).

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value as J;

use procmesh_proto::value::{transcode, validate, MAX_DEPTH};
use procmesh_proto::{Codec, Num, Raw};

/// Default case count, unless `PROPTEST_CASES` says otherwise (scripts/fuzz.sh).
fn cfg(cases: u32) -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c
}

/// Floats equal within a few units in the last place: serde_json without its
/// `float_roundtrip` feature may round the last digit differently (ours reads
/// numbers exactly, with `str::parse`), also for subnormals.
fn close(x: f64, y: f64) -> bool {
    x == y
        || (x.is_sign_negative() == y.is_sign_negative() && x.to_bits().abs_diff(y.to_bits()) <= 4)
}

/// Equality of decoded trees, floats compared with [`close`], ints equal to equal floats.
fn same(a: &J, b: &J) -> bool {
    match (a, b) {
        (J::Number(x), J::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                return x == y;
            }
            if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                return x == y;
            }
            close(x.as_f64().unwrap(), y.as_f64().unwrap())
        }
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn to_json(r: Raw<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    transcode(r, Codec::Json, &mut out).expect("a validated value transcodes");
    out
}

fn to_mp(r: Raw<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    transcode(r, Codec::MsgPack, &mut out).expect("a validated value transcodes");
    out
}

// ---------------------------------------------------------------- JSON

fn arb_json(depth: u32) -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<u64>().prop_map(J::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(J::from),
        any::<String>().prop_map(J::String),
        "[\\\\\"\\x00-\\x1f/a-z\u{e9}\u{1F600}]{0,12}".prop_map(J::String),
    ];
    leaf.prop_recursive(depth, 256, 10, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..10).prop_map(J::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..10)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}

/// Mutations that keep text close to JSON, so both parsers get to disagree deep inside.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    let byte = prop::sample::select(
        b"{}[],:\"\\0123456789-+.eEtrufalsn \t\nxu\x01\x7f\xc3\xa9\xff".to_vec(),
    );
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &mut Vec<u8>, e: &Edit) {
    let n = text.len();
    match *e {
        Edit::Replace(i, b) if n > 0 => text[i % n] = b,
        Edit::Insert(i, b) => text.insert(i % (n + 1), b),
        Edit::Delete(i) if n > 0 => {
            text.remove(i % n);
        }
        Edit::Truncate(i) => text.truncate(i % (n + 1)),
        _ => {}
    }
}

fn depth_of(text: &[u8]) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0, false, false);
    for &c in text {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Whether a disagreement on `text` is one of the documented differences.
fn known_difference(text: &[u8], serde_err: Option<&serde_json::Error>) -> bool {
    let lone_surrogate = text.windows(3).any(|w| {
        w[0] == b'u'
            && matches!(w[1], b'd' | b'D')
            && matches!(w[2], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
    });
    let out_of_range = serde_err.is_some_and(|e| e.to_string().contains("out of range"));
    lone_surrogate || out_of_range || depth_of(text) > MAX_DEPTH
}

fn check_accept_reject(text: &[u8]) -> Result<(), TestCaseError> {
    let ours = validate(Codec::Json, text);
    // Into a tree: skipping (IgnoredAny) does not check UTF-8 inside strings.
    let theirs = serde_json::from_slice::<J>(text);
    if ours.is_ok() != theirs.is_ok() && !known_difference(text, theirs.as_ref().err()) {
        return Err(TestCaseError::fail(format!(
            "ours {:?}, serde_json {:?} on {:?}",
            ours.map(|_| ()),
            theirs.map(|_| ()),
            String::from_utf8_lossy(text)
        )));
    }
    Ok(())
}

/// Walks our reading of a JSON value next to serde_json's: scalars must agree.
fn check_leaves(r: Raw<'_>, j: &J) -> Result<(), TestCaseError> {
    match j {
        J::Null => prop_assert!(r.is_nil()),
        J::Bool(b) => prop_assert_eq!(r.as_bool(), Some(*b)),
        J::String(s) => prop_assert_eq!(r.as_str().map(|c| c.into_owned()), Some(s.clone())),
        J::Number(n) => {
            let ours = r.as_num().expect("a number");
            match (ours, n.as_i64(), n.as_u64()) {
                (Num::Int(i), Some(t), _) => prop_assert_eq!(i, t),
                (Num::UInt(u), _, Some(t)) => prop_assert_eq!(u, t),
                (ours, _, _) => {
                    let t = n.as_f64().unwrap();
                    let o = ours.as_f64();
                    prop_assert!(close(o, t), "{:?} vs {}", ours, n);
                }
            }
        }
        J::Array(items) => {
            let ours: Vec<Raw<'_>> = r.array().expect("an array").collect();
            prop_assert_eq!(ours.len(), items.len());
            for (o, t) in ours.iter().zip(items) {
                check_leaves(*o, t)?;
            }
        }
        J::Object(m) => {
            let ours: Vec<_> = r.map().expect("a map").collect();
            prop_assert_eq!(ours.len(), m.len());
            for (k, v) in ours {
                check_leaves(v, m.get(k.as_ref()).expect("same keys"))?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn json_valid_text_agrees_with_serde_json(v in arb_json(5), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
        let r = validate(Codec::Json, &text).expect("serde_json's output is valid JSON");
        check_leaves(r, &v)?;
        // Through MessagePack and rmp-serde: the same value.
        let m = to_mp(r);
        let back: J = rmp_serde::from_slice(&m).unwrap();
        prop_assert!(same(&back, &v), "{} vs {}", back, v);
        let again: J = serde_json::from_slice(&to_json(validate(Codec::MsgPack, &m).unwrap())).unwrap();
        prop_assert!(same(&again, &v));
    }

    #[test]
    fn json_accept_reject_agrees_with_serde_json(
        v in arb_json(4),
        edits in prop::collection::vec(arb_edit(), 1..6),
    ) {
        let mut text = serde_json::to_vec(&v).unwrap();
        for e in &edits {
            apply(&mut text, e);
            check_accept_reject(&text)?;
        }
    }

    #[test]
    fn json_accept_reject_on_arbitrary_text(text in "[ \\[\\]{}:,\"\\\\0-9.eE+\\-truefalsn]{0,40}") {
        check_accept_reject(text.as_bytes())?;
    }

    #[test]
    fn json_numbers_agree_with_serde_json(
        text in prop_oneof![
            any::<i64>().prop_map(|i| i.to_string()),
            any::<u64>().prop_map(|u| u.to_string()),
            "-?(0|[1-9][0-9]{0,25})",
            "-?(0|[1-9][0-9]{0,5})\\.[0-9]{1,20}",
            "-?[1-9][0-9]{0,3}(\\.[0-9]{1,8})?[eE][+-]?[0-9]{1,3}",
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        ]
    ) {
        let theirs: Result<J, _> = serde_json::from_str(&text);
        match theirs {
            Ok(j) => check_leaves(validate(Codec::Json, text.as_bytes()).unwrap(), &j)?,
            Err(e) => {
                prop_assert!(e.to_string().contains("out of range"), "{}: {}", text, e);
                // Ours reads an out-of-range float as infinity, like JavaScript.
                let n = validate(Codec::Json, text.as_bytes()).unwrap().as_num().unwrap();
                prop_assert!(n.as_f64().is_infinite());
            }
        }
    }

    #[test]
    fn json_strings_agree_with_serde_json(s in any::<String>(), escape_all in any::<bool>()) {
        // serde_json's escaping, or every char as \uXXXX (surrogate pairs included).
        let text = if escape_all {
            let mut t = String::from("\"");
            for u in s.encode_utf16() {
                t.push_str(&format!("\\u{u:04x}"));
            }
            t.push('"');
            t
        } else {
            serde_json::to_string(&s).unwrap()
        };
        let r = validate(Codec::Json, text.as_bytes()).unwrap();
        prop_assert_eq!(r.as_str().map(|c| c.into_owned()), Some(s.clone()));
        let m = to_mp(r);
        let back: String = rmp_serde::from_slice(&m).unwrap();
        prop_assert_eq!(back, s);
    }
}

#[test]
fn json_nesting_limit_in_both_directions() {
    for d in [0, 1, 99, MAX_DEPTH, MAX_DEPTH + 1, 127, 500] {
        let arr = "[".repeat(d) + "1" + &"]".repeat(d);
        let obj = "{\"a\":".repeat(d) + "1" + &"}".repeat(d);
        for text in [arr, obj] {
            assert_eq!(
                validate(Codec::Json, text.as_bytes()).is_ok(),
                d <= MAX_DEPTH,
                "{d}"
            );
            if d <= MAX_DEPTH {
                assert!(serde_json::from_str::<J>(&text).is_ok());
            }
        }
    }
}

#[test]
fn documented_json_differences() {
    // A lone surrogate reads as U+FFFD (JSON.parse keeps it; Rust strings cannot).
    let r = validate(Codec::Json, br#""\ud800x""#).unwrap();
    assert_eq!(r.as_str().unwrap(), "\u{fffd}x");
    assert!(serde_json::from_str::<J>(r#""\ud800x""#).is_err());
    let r = validate(Codec::Json, b"1e400").unwrap();
    assert_eq!(r.as_num(), Some(Num::Float(f64::INFINITY)));
    // …and writes back as null, as JSON.stringify(Infinity) does.
    assert_eq!(
        to_json(validate(Codec::MsgPack, &to_mp(r)).unwrap()),
        b"null"
    );
}

// ---------------------------------------------------------------- MessagePack

/// Which encoding of a length a string, binary, array or map uses.
#[derive(Debug, Clone, Copy)]
enum Width {
    Fix,
    W8,
    W16,
    W32,
}

/// One MessagePack value, with the exact form to write it in.
#[derive(Debug, Clone)]
enum Mp {
    Nil,
    Bool(bool),
    PFix(u8),
    NFix(i8),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Str(String, Width),
    Bin(Vec<u8>, Width),
    Ext(i8, Vec<u8>, Width),
    Array(Vec<Mp>, Width),
    Map(Vec<(Key, Mp)>, Width),
}

#[derive(Debug, Clone)]
enum Key {
    Str(String, Width),
    Int(i64),
}

fn arb_width() -> impl Strategy<Value = Width> {
    prop_oneof![
        Just(Width::Fix),
        Just(Width::W8),
        Just(Width::W16),
        Just(Width::W32)
    ]
}

fn arb_mp() -> impl Strategy<Value = Mp> {
    let leaf = prop_oneof![
        Just(Mp::Nil),
        any::<bool>().prop_map(Mp::Bool),
        (0u8..=127).prop_map(Mp::PFix),
        (-32i8..=-1).prop_map(Mp::NFix),
        any::<u8>().prop_map(Mp::U8),
        any::<u16>().prop_map(Mp::U16),
        any::<u32>().prop_map(Mp::U32),
        any::<u64>().prop_map(Mp::U64),
        (i64::MAX as u64..=u64::MAX).prop_map(Mp::U64),
        any::<i8>().prop_map(Mp::I8),
        any::<i16>().prop_map(Mp::I16),
        any::<i32>().prop_map(Mp::I32),
        any::<i64>().prop_map(Mp::I64),
        any::<f32>().prop_map(Mp::F32),
        any::<f64>().prop_map(Mp::F64),
        (any::<String>(), arb_width()).prop_map(|(s, w)| Mp::Str(s, w)),
        (".{0,300}", arb_width()).prop_map(|(s, w)| Mp::Str(s, w)),
        (prop::collection::vec(any::<u8>(), 0..300), arb_width()).prop_map(|(b, w)| Mp::Bin(b, w)),
        (
            any::<i8>(),
            prop::collection::vec(any::<u8>(), 0..40),
            arb_width()
        )
            .prop_map(|(t, b, w)| Mp::Ext(t, b, w)),
    ];
    let key = prop_oneof![
        4 => (".{0,20}", arb_width()).prop_map(|(s, w)| Key::Str(s, w)),
        1 => any::<i64>().prop_map(Key::Int),
    ];
    leaf.prop_recursive(4, 200, 20, move |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..20), arb_width())
                .prop_map(|(v, w)| Mp::Array(v, w)),
            (
                prop::collection::vec((key.clone(), inner), 0..20),
                arb_width()
            )
                .prop_map(|(v, w)| Mp::Map(v, w)),
        ]
    })
}

/// Writes a length with the wished width, widened when it does not fit.
fn len(
    out: &mut Vec<u8>,
    n: usize,
    w: Width,
    fix: Option<(u8, usize)>,
    m8: Option<u8>,
    m16: u8,
    m32: u8,
) {
    let mut w = w;
    let fits_fix = matches!(fix, Some((_, max)) if n <= max);
    if matches!(w, Width::Fix) && !fits_fix {
        w = Width::W8;
    }
    if matches!(w, Width::W8) && (m8.is_none() || n > 255) {
        w = Width::W16;
    }
    if matches!(w, Width::W16) && n > 65535 {
        w = Width::W32;
    }
    match w {
        Width::Fix => {
            let (f, _) = fix.unwrap();
            out.push(f | n as u8);
        }
        Width::W8 => out.extend_from_slice(&[m8.unwrap(), n as u8]),
        Width::W16 => {
            out.push(m16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        Width::W32 => {
            out.push(m32);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str, w: Width) {
    len(out, s.len(), w, Some((0xa0, 31)), Some(0xd9), 0xda, 0xdb);
    out.extend_from_slice(s.as_bytes());
}

fn encode(v: &Mp, out: &mut Vec<u8>) {
    use rmp::encode as e;
    match v {
        Mp::Nil => e::write_nil(out).unwrap(),
        Mp::Bool(b) => e::write_bool(out, *b).unwrap(),
        Mp::PFix(u) => e::write_pfix(out, *u).unwrap(),
        Mp::NFix(i) => e::write_nfix(out, *i).unwrap(),
        Mp::U8(u) => e::write_u8(out, *u).unwrap(),
        Mp::U16(u) => e::write_u16(out, *u).unwrap(),
        Mp::U32(u) => e::write_u32(out, *u).unwrap(),
        Mp::U64(u) => e::write_u64(out, *u).unwrap(),
        Mp::I8(i) => e::write_i8(out, *i).unwrap(),
        Mp::I16(i) => e::write_i16(out, *i).unwrap(),
        Mp::I32(i) => e::write_i32(out, *i).unwrap(),
        Mp::I64(i) => e::write_i64(out, *i).unwrap(),
        Mp::F32(f) => e::write_f32(out, *f).unwrap(),
        Mp::F64(f) => e::write_f64(out, *f).unwrap(),
        Mp::Str(s, w) => write_str(out, s, *w),
        Mp::Bin(b, w) => {
            len(out, b.len(), *w, None, Some(0xc4), 0xc5, 0xc6);
            out.extend_from_slice(b);
        }
        Mp::Ext(t, b, w) => {
            let fix = match (w, b.len()) {
                (Width::Fix, 1) => Some(0xd4),
                (Width::Fix, 2) => Some(0xd5),
                (Width::Fix, 4) => Some(0xd6),
                (Width::Fix, 8) => Some(0xd7),
                (Width::Fix, 16) => Some(0xd8),
                _ => None,
            };
            match fix {
                Some(m) => out.push(m),
                None => len(out, b.len(), *w, None, Some(0xc7), 0xc8, 0xc9),
            }
            out.push(*t as u8);
            out.extend_from_slice(b);
        }
        Mp::Array(items, w) => {
            len(out, items.len(), *w, Some((0x90, 15)), None, 0xdc, 0xdd);
            for i in items {
                encode(i, out);
            }
        }
        Mp::Map(entries, w) => {
            len(out, entries.len(), *w, Some((0x80, 15)), None, 0xde, 0xdf);
            for (k, v) in entries {
                match k {
                    Key::Str(s, w) => write_str(out, s, *w),
                    Key::Int(i) => e::write_sint(out, *i).map(|_| ()).unwrap(),
                }
                encode(v, out);
            }
        }
    }
}

fn float(f: f64) -> J {
    serde_json::Number::from_f64(f).map_or(J::Null, J::Number)
}

/// What the value means in JSON, by our documented mapping.
fn expected(v: &Mp) -> J {
    match v {
        Mp::Nil | Mp::Ext(..) => J::Null,
        Mp::Bool(b) => J::Bool(*b),
        Mp::PFix(u) | Mp::U8(u) => J::from(*u),
        Mp::U16(u) => J::from(*u),
        Mp::U32(u) => J::from(*u),
        Mp::U64(u) => J::from(*u),
        Mp::NFix(i) | Mp::I8(i) => J::from(*i),
        Mp::I16(i) => J::from(*i),
        Mp::I32(i) => J::from(*i),
        Mp::I64(i) => J::from(*i),
        Mp::F32(f) => float(*f as f64),
        Mp::F64(f) => float(*f),
        Mp::Str(s, _) => J::String(s.clone()),
        Mp::Bin(b, _) => J::Array(b.iter().map(|&x| J::from(x)).collect()),
        Mp::Array(items, _) => J::Array(items.iter().map(expected).collect()),
        Mp::Map(entries, _) => J::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let k = match k {
                        Key::Str(s, _) => s.clone(),
                        Key::Int(i) => i.to_string(),
                    };
                    (k, expected(v))
                })
                .collect(),
        ),
    }
}

/// Whether rmp-serde can read the value into a serde_json tree (no binary, no
/// extension, no integer keys, no duplicate keys, only finite floats).
fn serde_readable(v: &Mp) -> bool {
    match v {
        Mp::Bin(..) | Mp::Ext(..) => false,
        Mp::F32(f) => f.is_finite(),
        Mp::F64(f) => f.is_finite(),
        Mp::Array(items, _) => items.iter().all(serde_readable),
        Mp::Map(entries, _) => {
            let mut keys = std::collections::HashSet::new();
            entries.iter().all(|(k, v)| {
                matches!(k, Key::Str(s, _) if keys.insert(s.clone())) && serde_readable(v)
            })
        }
        _ => true,
    }
}

fn no_duplicate_keys(v: &Mp) -> bool {
    match v {
        Mp::Array(items, _) => items.iter().all(no_duplicate_keys),
        Mp::Map(entries, _) => {
            let mut keys = std::collections::HashSet::new();
            entries.iter().all(|(k, v)| {
                let k = match k {
                    Key::Str(s, _) => s.clone(),
                    Key::Int(i) => i.to_string(),
                };
                keys.insert(k) && no_duplicate_keys(v)
            })
        }
        _ => true,
    }
}

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn msgpack_every_form_reads_as_rmp_wrote_it(v in arb_mp()) {
        let mut bytes = Vec::new();
        encode(&v, &mut bytes);
        let r = validate(Codec::MsgPack, &bytes).expect("rmp's bytes are valid MessagePack");
        prop_assert_eq!(r.bytes.len(), bytes.len());
        let want = expected(&v);
        // Scalars read directly.
        match &v {
            Mp::Str(s, _) => prop_assert_eq!(r.as_str().map(|c| c.into_owned()), Some(s.clone())),
            Mp::U64(u) => prop_assert_eq!(r.as_num(), Some(if *u > i64::MAX as u64 { Num::UInt(*u) } else { Num::Int(*u as i64) })),
            Mp::I64(i) => prop_assert_eq!(r.as_num(), Some(Num::Int(*i))),
            Mp::F32(f) if f.is_finite() => prop_assert_eq!(r.as_num(), Some(Num::Float(*f as f64))),
            Mp::Nil => prop_assert!(r.is_nil()),
            _ => {}
        }
        // Transcoded to JSON: valid for us and for serde_json, and the mapped value.
        let json = to_json(r);
        let jr = validate(Codec::Json, &json).expect("our JSON output is valid JSON");
        let theirs: J = serde_json::from_slice(&json).unwrap();
        if no_duplicate_keys(&v) {
            prop_assert!(same(&theirs, &want), "{} vs {}", theirs, want);
        }
        // And back: structurally the same as the JSON.
        let back = to_mp(jr);
        prop_assert!(validate(Codec::MsgPack, &back).unwrap().structurally_eq(&jr));
        if serde_readable(&v) {
            let via: J = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert!(same(&via, &want), "{} vs {}", via, want);
        }
        // No strict prefix is a value.
        let n = bytes.len();
        for cut in [0, 1, n / 3, n / 2, n.saturating_sub(2), n.saturating_sub(1)] {
            if cut < n {
                prop_assert!(validate(Codec::MsgPack, &bytes[..cut]).is_err(), "prefix {}", cut);
            }
        }
    }
}

#[test]
fn msgpack_forms_golden() {
    // One of each form, by hand, against what rmp reads.
    let cases: &[(&[u8], J)] = &[
        (&[0xc0], J::Null),
        (&[0xc3], J::Bool(true)),
        (&[0x7f], J::from(127)),
        (&[0xe0], J::from(-32)),
        (&[0xcc, 0xff], J::from(255)),
        (&[0xcd, 0x01, 0x00], J::from(256)),
        (&[0xce, 0, 1, 0, 0], J::from(65536)),
        (
            &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            J::from(u64::MAX),
        ),
        (&[0xd0, 0x80], J::from(-128)),
        (&[0xd1, 0x80, 0x00], J::from(-32768)),
        (&[0xd2, 0x80, 0, 0, 0], J::from(i32::MIN)),
        (&[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0], J::from(i64::MIN)),
        (&[0xca, 0x3f, 0xc0, 0, 0], J::from(1.5)),
        (&[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0], J::from(1.5)),
        (&[0xa1, b'a'], J::from("a")),
        (&[0xd9, 1, b'a'], J::from("a")),
        (&[0xda, 0, 1, b'a'], J::from("a")),
        (&[0xdb, 0, 0, 0, 1, b'a'], J::from("a")),
        (&[0x91, 1], serde_json::json!([1])),
        (&[0xdc, 0, 1, 1], serde_json::json!([1])),
        (&[0xdd, 0, 0, 0, 1, 1], serde_json::json!([1])),
        (&[0x81, 0xa1, b'k', 1], serde_json::json!({"k": 1})),
        (&[0xde, 0, 1, 0xa1, b'k', 1], serde_json::json!({"k": 1})),
        (
            &[0xdf, 0, 0, 0, 1, 0xa1, b'k', 1],
            serde_json::json!({"k": 1}),
        ),
    ];
    for (bytes, want) in cases {
        let r = validate(Codec::MsgPack, bytes).unwrap();
        let ours: J = serde_json::from_slice(&to_json(r)).unwrap();
        assert_eq!(&ours, want, "{bytes:02x?}");
        let rmp: J = rmp_serde::from_slice(bytes).unwrap();
        assert_eq!(&rmp, want, "{bytes:02x?}");
    }
    // bin and ext have no JSON form of their own: bytes, and null.
    for (bytes, want) in [
        (&[0xc4, 2, 7, 8][..], serde_json::json!([7, 8])),
        (&[0xc5, 0, 1, 7], serde_json::json!([7])),
        (&[0xc6, 0, 0, 0, 1, 7], serde_json::json!([7])),
        (&[0xd4, 0x72, 0x40], J::Null),
        (&[0xd5, 1, 0, 0], J::Null),
        (&[0xd6, 1, 0, 0, 0, 0], J::Null),
        (&[0xd7, 1, 0, 0, 0, 0, 0, 0, 0, 0], J::Null),
        (
            &[0xd8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            J::Null,
        ),
        (&[0xc7, 1, 5, 0], J::Null),
        (&[0xc8, 0, 1, 5, 0], J::Null),
        (&[0xc9, 0, 0, 0, 1, 5, 0], J::Null),
    ] {
        let r = validate(Codec::MsgPack, bytes).unwrap();
        let ours: J = serde_json::from_slice(&to_json(r)).unwrap();
        assert_eq!(ours, want, "{bytes:02x?}");
    }
    // Rejected: the never-used byte, invalid UTF-8, a non-string map key, truncation.
    for bad in [
        &[0xc1][..],
        &[0xa2, 0xff, 0xfe],
        &[0x81, 0xc0, 1],
        &[0x81, 0x91, 1, 1],
        &[0xcd, 0x01],
        &[0xd9],
        &[0x92, 1],
    ] {
        assert!(validate(Codec::MsgPack, bad).is_err(), "{bad:02x?}");
    }
}

// ---------------------------------------------------------------- deep values (issue 12 #9)

/// A value nested `depth` deep (containers of 1..4 elements, maps and arrays mixed),
/// with the chain through the first element of each level and leaves beside it.
fn arb_deep() -> impl Strategy<Value = J> {
    (
        (MAX_DEPTH - 8)..=MAX_DEPTH,
        prop::collection::vec(
            (
                any::<bool>(),
                0usize..4,
                any::<i64>(),
                "[a-z\u{e9}\"\\\\]{0,6}",
            ),
            MAX_DEPTH,
        ),
    )
        .prop_map(|(depth, levels)| {
            let mut v = J::Null;
            for (map, siblings, n, s) in levels.into_iter().take(depth) {
                let mut items = vec![v];
                for i in 0..siblings {
                    items.push(if i % 2 == 0 {
                        J::from(n)
                    } else {
                        J::from(s.clone())
                    });
                }
                v = if map {
                    J::Object(
                        items
                            .into_iter()
                            .enumerate()
                            .map(|(i, x)| (format!("k{i}{s}"), x))
                            .collect(),
                    )
                } else {
                    J::Array(items)
                };
            }
            v
        })
}

proptest! {
    #![proptest_config(cfg(64))]

    #[test]
    fn deep_values_transcode_both_ways_as_serde_json_and_rmp_read_them(v in arb_deep(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
        let r = validate(Codec::Json, &text).expect("within the nesting limit");
        check_leaves(r, &v)?;
        let m = to_mp(r);
        let back: J = rmp_serde::from_slice(&m).unwrap();
        prop_assert!(same(&back, &v));
        let again: J = serde_json::from_slice(&to_json(validate(Codec::MsgPack, &m).unwrap())).unwrap();
        prop_assert!(same(&again, &v));
    }
}
