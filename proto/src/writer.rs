//! [`Writer`]: appends values in either codec.
//!
//! Owns the encoding of every type the broker and client produce (through the
//! `json` and `msgpack` primitives) and JSON's separators. It does not own message
//! shapes (`request`, `response`). Invariant: the output is always a complete,
//! valid value in its codec once every container begun has been ended.

use crate::codec::{Codec, Raw};
use crate::json::{json_float, json_str};
use crate::msgpack::{mp_int, mp_len, mp_str};
use crate::num::Num;
use crate::transcode::transcode;
use crate::DecodeError;

const MAX_NEST: usize = 64;

/// Appends values in one codec to a byte vector.
///
/// MessagePack containers need their element count up front (`begin_map(n)`);
/// JSON containers get their separators from the writer. Callers pair every
/// `begin_*` with an `end_*` and, inside a map, write a `key` before each value.
pub struct Writer<'a> {
    codec: Codec,
    out: &'a mut Vec<u8>,
    // JSON only: per open container, whether the next element needs a comma.
    need_comma: [bool; MAX_NEST],
    depth: usize,
    after_key: bool,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`.
    #[inline]
    pub fn new(codec: Codec, out: &'a mut Vec<u8>) -> Self {
        Writer {
            codec,
            out,
            need_comma: [false; MAX_NEST],
            depth: 0,
            after_key: false,
        }
    }

    /// A writer appending to `out` inside a map whose opening (`{` in JSON; the
    /// MessagePack header is the caller's) and first entry the caller has written
    /// already: the next call is a `key`.
    #[inline]
    pub(crate) fn in_map(codec: Codec, out: &'a mut Vec<u8>) -> Self {
        let mut need_comma = [false; MAX_NEST];
        need_comma[0] = true;
        Writer {
            codec,
            out,
            need_comma,
            depth: 1,
            after_key: false,
        }
    }

    /// Gives back the output vector.
    #[inline]
    pub fn into_out(self) -> &'a mut Vec<u8> {
        self.out
    }

    /// Bytes in the output vector so far (a reply-size budget checks it while
    /// building).
    #[inline]
    pub fn out_len(&self) -> usize {
        self.out.len()
    }

    /// The codec written.
    #[inline]
    pub fn codec(&self) -> Codec {
        self.codec
    }

    #[inline(always)]
    fn sep(&mut self) {
        if self.codec == Codec::Json {
            if self.after_key {
                self.after_key = false;
            } else if self.depth > 0 {
                let d = self.depth - 1;
                if self.need_comma[d] {
                    self.out.push(b',');
                }
                self.need_comma[d] = true;
            }
        }
    }

    /// Begins a map of `n` entries.
    #[inline]
    pub fn begin_map(&mut self, n: usize) {
        self.sep();
        match self.codec {
            Codec::Json => self.open(b'{'),
            Codec::MsgPack => mp_len(self.out, n, 0x80, 0x0f, 0xde, 0xdf),
        }
    }

    /// Ends the innermost map.
    #[inline]
    pub fn end_map(&mut self) {
        if self.codec == Codec::Json {
            self.close(b'}');
        }
    }

    /// Begins an array of `n` elements.
    #[inline]
    pub fn begin_array(&mut self, n: usize) {
        self.sep();
        match self.codec {
            Codec::Json => self.open(b'['),
            Codec::MsgPack => mp_len(self.out, n, 0x90, 0x0f, 0xdc, 0xdd),
        }
    }

    /// Ends the innermost array.
    #[inline]
    pub fn end_array(&mut self) {
        if self.codec == Codec::Json {
            self.close(b']');
        }
    }

    fn open(&mut self, c: u8) {
        self.out.push(c);
        // Deeper nesting than MAX_NEST is never produced by procmesh itself; clamp so
        // a bug shows as a malformed separator, not a panic.
        if self.depth < MAX_NEST {
            self.need_comma[self.depth] = false;
        }
        self.depth += 1;
    }

    fn close(&mut self, c: u8) {
        self.out.push(c);
        self.depth = self.depth.saturating_sub(1);
    }

    /// Writes a map key; the next call writes its value.
    #[inline(always)]
    pub fn key(&mut self, k: &str) {
        self.str(k);
        if self.codec == Codec::Json {
            self.out.push(b':');
            self.after_key = true;
        }
    }

    /// Writes a string.
    #[inline(always)]
    pub fn str(&mut self, s: &str) {
        self.sep();
        match self.codec {
            Codec::Json => json_str(self.out, s),
            Codec::MsgPack => mp_str(self.out, s),
        }
    }

    /// Writes a signed integer.
    #[inline]
    pub fn int(&mut self, v: i64) {
        self.sep();
        match self.codec {
            Codec::Json => self
                .out
                .extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
            Codec::MsgPack => mp_int(self.out, v),
        }
    }

    /// Writes an unsigned integer.
    #[inline]
    pub fn uint(&mut self, v: u64) {
        if let Ok(i) = i64::try_from(v) {
            return self.int(i);
        }
        self.sep();
        match self.codec {
            Codec::Json => self
                .out
                .extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
            Codec::MsgPack => {
                self.out.push(0xcf);
                self.out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    /// Writes a float; a non-finite float is written as null (as `JSON.stringify` does).
    #[inline]
    pub fn float(&mut self, v: f64) {
        self.sep();
        match self.codec {
            Codec::Json => json_float(self.out, v),
            Codec::MsgPack => {
                self.out.push(0xcb);
                self.out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    /// Writes a boolean.
    #[inline]
    pub fn bool(&mut self, v: bool) {
        self.sep();
        match self.codec {
            Codec::Json => self
                .out
                .extend_from_slice(if v { b"true" } else { b"false" }),
            Codec::MsgPack => self.out.push(if v { 0xc3 } else { 0xc2 }),
        }
    }

    /// Writes null.
    #[inline]
    pub fn nil(&mut self) {
        self.sep();
        match self.codec {
            Codec::Json => self.out.extend_from_slice(b"null"),
            Codec::MsgPack => self.out.push(0xc0),
        }
    }

    /// Writes an already-encoded value, transcoding it when its codec differs.
    #[inline]
    pub fn raw(&mut self, v: Raw<'_>) -> Result<(), DecodeError> {
        self.sep();
        transcode(v, self.codec, self.out)
    }

    /// Writes a number (integers stay integers).
    #[inline]
    pub fn num(&mut self, n: Num) {
        match n {
            Num::Int(i) => self.int(i),
            Num::UInt(u) => self.uint(u),
            Num::Float(f) => self.float(f),
        }
    }

    /// Writes bytes that are already one complete value in this writer's codec.
    ///
    /// The caller guarantees the bytes are valid in `self.codec()`.
    #[inline]
    pub fn raw_same(&mut self, bytes: &[u8]) {
        self.sep();
        self.out.extend_from_slice(bytes);
    }
}

impl Num {
    /// Writes the number in the writer's codec (same as [`Writer::num`]).
    #[inline]
    pub fn write(self, w: &mut Writer<'_>) {
        w.num(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(f: impl Fn(&mut Writer)) -> (String, Vec<u8>) {
        let mut j = Vec::new();
        f(&mut Writer::new(Codec::Json, &mut j));
        let mut m = Vec::new();
        f(&mut Writer::new(Codec::MsgPack, &mut m));
        (String::from_utf8(j).unwrap(), m)
    }

    #[test]
    fn golden_nested_map() {
        let (j, m) = both(|w| {
            w.begin_map(3);
            w.key("t");
            w.str("ok");
            w.key("id");
            w.int(7);
            w.key("value");
            w.begin_array(3);
            w.bool(true);
            w.nil();
            w.float(1.5);
            w.end_array();
            w.end_map();
        });
        assert_eq!(j, r#"{"t":"ok","id":7,"value":[true,null,1.5]}"#);
        let mut want = vec![0x83, 0xa1, b't', 0xa2, b'o', b'k', 0xa2, b'i', b'd', 7];
        want.extend_from_slice(&[0xa5, b'v', b'a', b'l', b'u', b'e', 0x93, 0xc3, 0xc0, 0xcb]);
        want.extend_from_slice(&1.5f64.to_be_bytes());
        assert_eq!(m, want);
    }

    #[test]
    fn json_escapes_and_numbers() {
        let (j, _) = both(|w| {
            w.begin_array(5);
            w.str("a\"b\\c\n\u{1}é");
            w.float(2.0);
            w.float(f64::NAN);
            w.int(-42);
            w.uint(u64::MAX);
            w.end_array();
        });
        assert_eq!(
            j,
            "[\"a\\\"b\\\\c\\n\\u0001é\",2,null,-42,18446744073709551615]"
        );
    }

    #[test]
    fn msgpack_int_forms_roundtrip_through_rmp() {
        for v in [
            0i64,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            i64::MIN,
            i64::MAX,
            1 << 40,
        ] {
            let mut m = Vec::new();
            Writer::new(Codec::MsgPack, &mut m).int(v);
            let back: i64 = rmp_serde::from_slice(&m).unwrap();
            assert_eq!(back, v);
        }
    }
}
