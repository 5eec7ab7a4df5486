//! Encoded values kept as bytes: validation, scalar access, structure, equality.
//!
//! Owns what a [`Raw`] means: a validated slice holding exactly one value in one
//! codec. The broker stores values as `Raw` bytes and converts them only when a
//! reader's codec differs (`transcode`). Invariants: [`scan`] never reads past its
//! input, never recurses deeper than [`MAX_DEPTH`], and accepts only what
//! [`transcode`] can convert, so a stored value can always be served to a client
//! of either codec.
//!
//! `Raw`, `Num`, `MAX_DEPTH` and `transcode` live in `codec`, `num` and
//! `transcode`; they are re-exported here under their old paths.

use std::borrow::Cow;

use crate::codec::Codec;
pub use crate::codec::{Raw, MAX_DEPTH};
use crate::json::{json_number, json_unescape, skip_ws, JsonParser};
use crate::msgpack::{mp_head, mp_skip, MpHead};
pub use crate::num::Num;
pub use crate::transcode::transcode;
use crate::DecodeError;

/// Checks that `buf[pos..]` starts with one complete valid value and returns the
/// position just past it.
pub fn scan(codec: Codec, buf: &[u8], pos: usize) -> Result<usize, DecodeError> {
    match codec {
        Codec::Json => {
            let mut p = JsonParser { b: buf, i: pos };
            p.ws();
            p.skip_value(0)?;
            Ok(p.i)
        }
        Codec::MsgPack => mp_skip(buf, pos, 0),
    }
}

/// Validates a whole payload as one value (trailing whitespace allowed in JSON).
pub fn validate(codec: Codec, buf: &[u8]) -> Result<Raw<'_>, DecodeError> {
    if codec == Codec::Json {
        std::str::from_utf8(buf).map_err(|_| DecodeError::new("payload is not valid UTF-8"))?;
    }
    let mut end = scan(codec, buf, 0)?;
    if codec == Codec::Json {
        end = skip_ws(buf, end);
    }
    if end != buf.len() {
        return Err(DecodeError::new("trailing bytes after the value"));
    }
    Ok(Raw {
        codec,
        bytes: trim_json(codec, buf),
    })
}

fn trim_json(codec: Codec, b: &[u8]) -> &[u8] {
    if codec != Codec::Json {
        return b;
    }
    let s = skip_ws(b, 0);
    let mut e = b.len();
    while e > s && matches!(b[e - 1], b' ' | b'\t' | b'\n' | b'\r') {
        e -= 1;
    }
    &b[s..e]
}

impl<'a> Raw<'a> {
    /// True for a string (checked without unescaping or copying it).
    #[inline]
    pub fn is_str(&self) -> bool {
        match self.codec {
            Codec::Json => self.bytes.first() == Some(&b'"'),
            Codec::MsgPack => matches!(mp_head(self.bytes, 0), Ok((MpHead::Str { .. }, _))),
        }
    }

    /// The value as a boolean, if it is one.
    #[inline]
    pub fn as_bool(&self) -> Option<bool> {
        match (self.codec, self.bytes) {
            (Codec::Json, b"true") | (Codec::MsgPack, [0xc3]) => Some(true),
            (Codec::Json, b"false") | (Codec::MsgPack, [0xc2]) => Some(false),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    #[inline]
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        match self.codec {
            Codec::Json => {
                if self.bytes.first() == Some(&b'"') {
                    Some(json_unescape(self.bytes))
                } else {
                    None
                }
            }
            Codec::MsgPack => crate::msgpack::mp_as_str(self.bytes).map(Cow::Borrowed),
        }
    }

    /// The value as a number, if it is one.
    #[inline]
    pub fn as_num(&self) -> Option<Num> {
        match self.codec {
            Codec::Json => match self.bytes.first() {
                Some(b'-' | b'0'..=b'9') => Some(json_number(self.bytes)),
                _ => None,
            },
            Codec::MsgPack => match mp_head(self.bytes, 0).ok()?.0 {
                MpHead::Int(i) => Some(Num::Int(i)),
                MpHead::UInt(u) => Some(Num::UInt(u)),
                MpHead::Float(f) => Some(Num::Float(f)),
                _ => None,
            },
        }
    }

    /// The value as an `i64`, if it is an integer (or an integral float) in range.
    #[inline]
    pub fn as_i64(&self) -> Option<i64> {
        match self.as_num()? {
            Num::Int(i) => Some(i),
            Num::UInt(_) => None,
            Num::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(f as i64),
            Num::Float(_) => None,
        }
    }

    /// The elements of an array, if the value is one.
    pub fn array(&self) -> Option<Items<'a>> {
        match self.codec {
            Codec::Json => {
                if self.bytes.first() != Some(&b'[') {
                    return None;
                }
                Some(Items {
                    raw: *self,
                    pos: 1,
                    left: usize::MAX,
                    map: false,
                })
            }
            Codec::MsgPack => match mp_head(self.bytes, 0).ok()? {
                (MpHead::Array { n }, p) => Some(Items {
                    raw: *self,
                    pos: p,
                    left: n,
                    map: false,
                }),
                _ => None,
            },
        }
    }

    /// The entries of a map, if the value is one.
    pub fn map(&self) -> Option<Entries<'a>> {
        match self.codec {
            Codec::Json => {
                if self.bytes.first() != Some(&b'{') {
                    return None;
                }
                Some(Entries(Items {
                    raw: *self,
                    pos: 1,
                    left: usize::MAX,
                    map: true,
                }))
            }
            Codec::MsgPack => match mp_head(self.bytes, 0).ok()? {
                (MpHead::Map { n }, p) => Some(Entries(Items {
                    raw: *self,
                    pos: p,
                    left: n.saturating_mul(2),
                    map: true,
                })),
                _ => None,
            },
        }
    }

    /// Decodes into an owned [`Value`] tree.
    pub fn to_value(&self) -> Value {
        match self.codec {
            Codec::MsgPack => match mp_head(self.bytes, 0) {
                Ok((h, _)) => match h {
                    MpHead::Nil | MpHead::Ext => Value::Null,
                    MpHead::Bool(b) => Value::Bool(b),
                    MpHead::Int(i) => Value::Num(Num::Int(i)),
                    MpHead::UInt(u) => Value::Num(Num::UInt(u)),
                    MpHead::Float(f) => Value::Num(Num::Float(f)),
                    MpHead::Str { at, len } => {
                        Value::Str(String::from_utf8_lossy(&self.bytes[at..at + len]).into_owned())
                    }
                    MpHead::Bin { at, len } => Value::Array(
                        self.bytes[at..at + len]
                            .iter()
                            .map(|&b| Value::Num(Num::Int(b as i64)))
                            .collect(),
                    ),
                    MpHead::Array { .. } => self.array_values(),
                    MpHead::Map { .. } => self.map_values(),
                },
                Err(_) => Value::Null,
            },
            Codec::Json => match self.bytes.first() {
                Some(b'{') => self.map_values(),
                Some(b'[') => self.array_values(),
                Some(b'"') => Value::Str(json_unescape(self.bytes).into_owned()),
                Some(b't') => Value::Bool(true),
                Some(b'f') => Value::Bool(false),
                Some(b'-' | b'0'..=b'9') => Value::Num(json_number(self.bytes)),
                _ => Value::Null,
            },
        }
    }

    fn array_values(&self) -> Value {
        Value::Array(
            self.array()
                .map(|it| it.map(|r| r.to_value()).collect())
                .unwrap_or_default(),
        )
    }

    fn map_values(&self) -> Value {
        Value::Map(
            self.map()
                .map(|it| it.map(|(k, v)| (k.into_owned(), v.to_value())).collect())
                .unwrap_or_default(),
        )
    }

    /// Structural equality: map key order and `1` vs `1.0` do not matter, and the
    /// two sides may be in different codecs.
    pub fn structurally_eq(&self, other: &Raw<'_>) -> bool {
        if self.codec == other.codec && self.bytes == other.bytes {
            return true;
        }
        // A top-level bin is compared in place: as a `Value` tree each of its bytes
        // would cost a whole `Value` (~64x the bin's size, issue 12 #15).
        match (self.bin(), other.bin()) {
            (Some(a), Some(b)) => return a == b,
            (Some(a), None) => return other.eq_byte_array(a),
            (None, Some(b)) => return self.eq_byte_array(b),
            (None, None) => {}
        }
        self.to_value() == other.to_value()
    }

    /// The bytes of a MessagePack bin.
    fn bin(&self) -> Option<&'a [u8]> {
        match (self.codec, mp_head(self.bytes, 0)) {
            (Codec::MsgPack, Ok((MpHead::Bin { at, len }, _))) => Some(&self.bytes[at..at + len]),
            _ => None,
        }
    }

    /// Whether this is an array of the numbers `bytes` (how a bin compares).
    fn eq_byte_array(&self, bytes: &[u8]) -> bool {
        let Some(mut items) = self.array() else {
            return false;
        };
        for &b in bytes {
            match items.next().and_then(|r| r.as_num()) {
                Some(n) if n.as_f64() == f64::from(b) => {}
                _ => return false,
            }
        }
        items.next().is_none()
    }
}

/// Iterator over the elements of an array (or, with `map`, keys and values of a map).
#[derive(Debug, Clone)]
pub struct Items<'a> {
    raw: Raw<'a>,
    pos: usize,
    left: usize,
    map: bool,
}

impl<'a> Iterator for Items<'a> {
    type Item = Raw<'a>;

    fn next(&mut self) -> Option<Raw<'a>> {
        if self.left == 0 {
            return None;
        }
        let b = self.raw.bytes;
        let start = match self.raw.codec {
            Codec::MsgPack => self.pos,
            Codec::Json => {
                let mut i = skip_ws(b, self.pos);
                if matches!(b.get(i), Some(b']' | b'}')) {
                    self.left = 0;
                    return None;
                }
                if b.get(i) == Some(&b',') || b.get(i) == Some(&b':') {
                    i = skip_ws(b, i + 1);
                }
                i
            }
        };
        let end = match self.raw.codec {
            Codec::MsgPack => mp_skip(b, start, 0).ok()?,
            Codec::Json => {
                let mut p = JsonParser { b, i: start };
                p.skip_value(0).ok()?;
                p.i
            }
        };
        self.pos = end;
        self.left -= 1;
        let _ = self.map;
        Some(Raw {
            codec: self.raw.codec,
            bytes: &b[start..end],
        })
    }
}

/// Iterator over the entries of a map.
#[derive(Debug, Clone)]
pub struct Entries<'a>(Items<'a>);

impl<'a> Iterator for Entries<'a> {
    type Item = (Cow<'a, str>, Raw<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let k = self.0.next()?;
        let v = self.0.next()?;
        let key = match k.as_str() {
            Some(s) => s,
            None => Cow::Owned(match k.as_num()? {
                Num::Int(i) => i.to_string(),
                Num::UInt(u) => u.to_string(),
                Num::Float(f) => f.to_string(),
            }),
        };
        Some((key, v))
    }
}

/// An owned decoded value, used where structure matters (cas equality, tooling).
#[derive(Debug, Clone)]
pub enum Value {
    /// null (and MessagePack extension types, which have no JSON form).
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Num(Num),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Value>),
    /// A map, in wire order.
    Map(Vec<(String, Value)>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Num(a), Value::Num(b)) => match (a, b) {
                (Num::Int(x), Num::Int(y)) => x == y,
                (Num::UInt(x), Num::UInt(y)) => x == y,
                _ => a.as_f64() == b.as_f64(),
            },
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::Map(a), Value::Map(b)) => {
                if a.len() != b.len() {
                    return false;
                }
                let mut a: Vec<_> = a.iter().collect();
                let mut b: Vec<_> = b.iter().collect();
                a.sort_by(|x, y| x.0.cmp(&y.0));
                b.sort_by(|x, y| x.0.cmp(&y.0));
                a.iter()
                    .zip(b.iter())
                    .all(|(x, y)| x.0 == y.0 && x.1 == y.1)
            }
            _ => false,
        }
    }
}

/// Walks the top-level map of a payload, calling `f(key, value)` per entry.
///
/// Validates the whole payload on the way; JSON keys without escapes are handed
/// over as they are (quotes stripped), which is the overwhelmingly common case and
/// costs no allocation.
pub fn for_each_field<'a>(
    codec: Codec,
    buf: &'a [u8],
    f: impl FnMut(&[u8], Raw<'a>),
) -> Result<(), DecodeError> {
    match codec {
        Codec::MsgPack => crate::msgpack::for_each_field(buf, f),
        Codec::Json => crate::json::for_each_field(buf, f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::MAX_DEPTH;
    use proptest::prelude::*;

    fn j(s: &str) -> Raw<'_> {
        validate(Codec::Json, s.as_bytes()).unwrap()
    }

    fn to_mp(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        transcode(j(s), Codec::MsgPack, &mut out).unwrap();
        out
    }

    fn to_json(m: &[u8]) -> String {
        let mut out = Vec::new();
        transcode(validate(Codec::MsgPack, m).unwrap(), Codec::Json, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_round_trips_through_msgpack() {
        for s in [
            r#"{"a":1,"b":[true,false,null],"c":"x\"y","d":-2.5,"e":{}}"#,
            r#"[1,18446744073709551615,-9223372036854775808,1e300]"#,
            r#""é\u00e9😀""#,
            "0",
        ] {
            let m = to_mp(s);
            let back = to_json(&m);
            assert!(j(s).structurally_eq(&j(&back)), "{s} -> {back}");
            let via: serde_json::Value = rmp_serde::from_slice(&m).unwrap();
            let orig: serde_json::Value = serde_json::from_str(s).unwrap();
            assert_eq!(via, orig, "{s}");
        }
    }

    #[test]
    fn escapes_decode() {
        assert_eq!(
            j(r#""a\nb\u0041\ud83d\ude00""#).as_str().unwrap(),
            "a\nbA😀"
        );
    }

    #[test]
    fn structural_equality_ignores_key_order_and_int_float() {
        assert!(j(r#"{"a":1,"b":[2]}"#).structurally_eq(&j(r#"{"b":[2.0],"a":1.0}"#)));
        assert!(!j(r#"{"a":1}"#).structurally_eq(&j(r#"{"a":"1"}"#)));
        assert!(!j("[1,2]").structurally_eq(&j("[2,1]")));
        let m = to_mp(r#"{"x":[1,{"y":null}]}"#);
        let mr = validate(Codec::MsgPack, &m).unwrap();
        assert!(mr.structurally_eq(&j(r#"{"x":[1.0,{"y":null}]}"#)));
    }

    #[test]
    fn rejects_bad_json() {
        for s in [
            "{",
            "[1,]",
            "{\"a\"}",
            "01x",
            "\"\u{1}\"",
            "tru",
            "[1] x",
            "\"\\q\"",
            "-",
            "1.",
        ] {
            assert!(validate(Codec::Json, s.as_bytes()).is_err(), "{s}");
        }
    }

    #[test]
    fn rejects_deep_nesting_without_overflowing_the_stack() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(validate(Codec::Json, deep.as_bytes()).is_err());
        let mut m = vec![0x91; 100_000];
        m.push(0xc0);
        assert!(validate(Codec::MsgPack, &m).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(validate(Codec::Json, ok.as_bytes()).is_ok());
    }

    #[test]
    fn rejects_impossible_msgpack_counts() {
        assert!(validate(Codec::MsgPack, &[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(validate(Codec::MsgPack, &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']).is_err());
        assert!(validate(Codec::MsgPack, &[0xa2, 0xff, 0xfe]).is_err());
    }

    #[test]
    fn fields_of_both_codecs() {
        let mut seen = Vec::new();
        for_each_field(
            Codec::Json,
            br#" {"t":"get","id":3,"k\u0065y":"a"} "#,
            |k, v| seen.push((String::from_utf8(k.to_vec()).unwrap(), v.bytes.to_vec())),
        )
        .unwrap();
        assert_eq!(seen[2].0, "key");
        assert_eq!(seen[1].1, b"3");
        let m = to_mp(r#"{"t":"get","id":3,"key":"a"}"#);
        let mut n = 0;
        for_each_field(Codec::MsgPack, &m, |k, v| {
            n += 1;
            if k == b"key" {
                assert_eq!(v.as_str().unwrap(), "a");
            }
        })
        .unwrap();
        assert_eq!(n, 3);
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|i| serde_json::json!(i)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::json!(f)),
            ".*".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(".*", inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn transcoding_preserves_values(v in arb_json()) {
            let text = serde_json::to_string(&v).unwrap();
            let m = to_mp(&text);
            let via: serde_json::Value = rmp_serde::from_slice(&m).unwrap();
            prop_assert!(j(&text).structurally_eq(&validate(Codec::MsgPack, &m).unwrap()));
            let back = to_json(&m);
            prop_assert!(j(&text).structurally_eq(&j(&back)), "{} -> {}", text, back);
            let _ = via;
        }

        #[test]
        fn validate_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            for codec in [Codec::Json, Codec::MsgPack] {
                if let Ok(r) = validate(codec, &bytes) {
                    let mut out = Vec::new();
                    let other = if codec == Codec::Json { Codec::MsgPack } else { Codec::Json };
                    prop_assert!(transcode(r, other, &mut out).is_ok());
                    prop_assert!(validate(other, &out).is_ok());
                }
                let _ = for_each_field(codec, &bytes, |_, v| { let _ = v.to_value(); });
            }
        }
    }
}
