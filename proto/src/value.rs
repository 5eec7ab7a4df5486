//! Encoded values kept as bytes: validation, scalar access, transcoding, equality.
//!
//! Owns everything that reads JSON or MessagePack bytes. A [`Raw`] is a validated
//! slice holding exactly one value in one codec; the broker stores values as `Raw`
//! bytes and converts them only when a reader's codec differs ([`transcode`]).
//! Invariants: [`scan`] never reads past its input, never recurses deeper than
//! [`MAX_DEPTH`], and accepts only what [`transcode`] can convert, so a stored value
//! can always be served to a client of either codec.

use std::borrow::Cow;

use crate::codec::{json_float, json_str, mp_int, mp_len, mp_str, Codec};
use crate::DecodeError;

/// Deepest container nesting accepted inside one value.
pub const MAX_DEPTH: usize = 100;

/// One encoded value: its codec and exactly its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a> {
    /// The codec of `bytes`.
    pub codec: Codec,
    /// The value's bytes, validated by [`scan`].
    pub bytes: &'a [u8],
}

/// A number read from the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// An integer that fits `i64`.
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// Anything else.
    Float(f64),
}

impl Num {
    /// The number as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::UInt(u) => u as f64,
            Num::Float(f) => f,
        }
    }

    /// Writes the number in the writer's codec (integers stay integers).
    #[inline]
    pub fn write(self, w: &mut crate::Writer<'_>) {
        match self {
            Num::Int(i) => w.int(i),
            Num::UInt(u) => w.uint(u),
            Num::Float(f) => w.float(f),
        }
    }
}

/// Addition with JavaScript's number semantics for what it can represent:
/// integers stay integers while they fit `i64`/`u64`, otherwise the result is a
/// float, and an integral float result becomes an integer again (2.5 + 0.5 = 3).
impl std::ops::Add for Num {
    type Output = Num;

    fn add(self, b: Num) -> Num {
        fn int(n: Num) -> Option<i128> {
            match n {
                Num::Int(i) => Some(i as i128),
                Num::UInt(u) => Some(u as i128),
                Num::Float(_) => None,
            }
        }
        match (int(self), int(b)) {
            (Some(x), Some(y)) => {
                let s = x + y;
                if let Ok(i) = i64::try_from(s) {
                    Num::Int(i)
                } else if let Ok(u) = u64::try_from(s) {
                    Num::UInt(u)
                } else {
                    Num::Float(s as f64)
                }
            }
            _ => {
                let f = self.as_f64() + b.as_f64();
                if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                    Num::Int(f as i64)
                } else {
                    Num::Float(f)
                }
            }
        }
    }
}

/// Negation (for `decr`): `-i64::MIN` and any `UInt` become floats.
impl std::ops::Neg for Num {
    type Output = Num;

    fn neg(self) -> Num {
        match self {
            Num::Int(i) => i.checked_neg().map_or(Num::Float(-(i as f64)), Num::Int),
            Num::UInt(u) => Num::Float(-(u as f64)),
            Num::Float(f) => Num::Float(-f),
        }
    }
}

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

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

// ---------------------------------------------------------------- MessagePack

#[inline]
fn need(buf: &[u8], pos: usize, n: usize) -> Result<usize, DecodeError> {
    match pos.checked_add(n) {
        Some(end) if end <= buf.len() => Ok(end),
        _ => Err(DecodeError::new("truncated MessagePack value")),
    }
}

#[inline]
fn be(buf: &[u8], pos: usize, n: usize) -> Result<u64, DecodeError> {
    let end = need(buf, pos, n)?;
    Ok(buf[pos..end].iter().fold(0u64, |a, &b| (a << 8) | b as u64))
}

/// Header of a MessagePack value: what it is and how long.
#[derive(Debug, Clone, Copy)]
enum MpHead {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// String of `len` bytes starting at `at`.
    Str {
        at: usize,
        len: usize,
    },
    Bin {
        at: usize,
        len: usize,
    },
    Ext,
    Array {
        n: usize,
    },
    Map {
        n: usize,
    },
}

/// Reads the header at `pos`; returns it and the position of its body.
#[inline]
fn mp_head(b: &[u8], pos: usize) -> Result<(MpHead, usize), DecodeError> {
    let c = *b
        .get(pos)
        .ok_or_else(|| DecodeError::new("truncated MessagePack value"))?;
    let p = pos + 1;
    let sized = |n: usize, lenbytes: usize| -> Result<(usize, usize), DecodeError> {
        let len = be(b, p, lenbytes)? as usize;
        let at = p + lenbytes;
        need(b, at, len)?;
        let _ = n;
        Ok((at, len))
    };
    Ok(match c {
        0x00..=0x7f => (MpHead::Int(c as i64), p),
        0xe0..=0xff => (MpHead::Int(c as i8 as i64), p),
        0x80..=0x8f => (
            MpHead::Map {
                n: (c & 0x0f) as usize,
            },
            p,
        ),
        0x90..=0x9f => (
            MpHead::Array {
                n: (c & 0x0f) as usize,
            },
            p,
        ),
        0xa0..=0xbf => {
            let len = (c & 0x1f) as usize;
            need(b, p, len)?;
            (MpHead::Str { at: p, len }, p + len)
        }
        0xc0 => (MpHead::Nil, p),
        0xc1 => return Err(DecodeError::new("invalid MessagePack byte 0xc1")),
        0xc2 => (MpHead::Bool(false), p),
        0xc3 => (MpHead::Bool(true), p),
        0xc4..=0xc6 => {
            let (at, len) = sized(0, 1 << (c - 0xc4))?;
            (MpHead::Bin { at, len }, at + len)
        }
        0xc7..=0xc9 => {
            let lb = 1 << (c - 0xc7);
            let len = be(b, p, lb)? as usize;
            let at = p + lb + 1; // skip the ext type byte
            need(b, at, len)?;
            (MpHead::Ext, at + len)
        }
        0xca => (
            MpHead::Float(f32::from_bits(be(b, p, 4)? as u32) as f64),
            p + 4,
        ),
        0xcb => (MpHead::Float(f64::from_bits(be(b, p, 8)?)), p + 8),
        0xcc..=0xcf => {
            let n = 1 << (c - 0xcc);
            let v = be(b, p, n)?;
            let h = match i64::try_from(v) {
                Ok(i) => MpHead::Int(i),
                Err(_) => MpHead::UInt(v),
            };
            (h, p + n)
        }
        0xd0..=0xd3 => {
            let n = 1 << (c - 0xd0);
            let v = be(b, p, n)?;
            let shift = 64 - 8 * n as u32;
            (MpHead::Int(((v << shift) as i64) >> shift), p + n)
        }
        0xd4..=0xd8 => {
            let len = 1usize << (c - 0xd4);
            let at = p + 1;
            need(b, at, len)?;
            (MpHead::Ext, at + len)
        }
        0xd9..=0xdb => {
            let (at, len) = sized(0, 1 << (c - 0xd9))?;
            (MpHead::Str { at, len }, at + len)
        }
        0xdc | 0xdd => {
            let lb = if c == 0xdc { 2 } else { 4 };
            (
                MpHead::Array {
                    n: be(b, p, lb)? as usize,
                },
                p + lb,
            )
        }
        0xde | 0xdf => {
            let lb = if c == 0xde { 2 } else { 4 };
            (
                MpHead::Map {
                    n: be(b, p, lb)? as usize,
                },
                p + lb,
            )
        }
    })
}

fn mp_skip(b: &[u8], pos: usize, depth: usize) -> Result<usize, DecodeError> {
    let (h, mut p) = mp_head(b, pos)?;
    match h {
        MpHead::Str { at, len } => {
            std::str::from_utf8(&b[at..at + len])
                .map_err(|_| DecodeError::new("MessagePack string is not valid UTF-8"))?;
        }
        MpHead::Array { n } | MpHead::Map { n } => {
            if depth >= MAX_DEPTH {
                return Err(DecodeError::new("value nested too deeply"));
            }
            let is_map = matches!(h, MpHead::Map { .. });
            let items = if is_map { n.saturating_mul(2) } else { n };
            // Every element takes at least one byte: refuse impossible counts early.
            if items > b.len() - p {
                return Err(DecodeError::new("truncated MessagePack value"));
            }
            for i in 0..items {
                if is_map && i % 2 == 0 {
                    // Keys must be strings (or integers, which JSON turns into strings).
                    match mp_head(b, p)?.0 {
                        MpHead::Str { .. } | MpHead::Int(_) | MpHead::UInt(_) => {}
                        _ => return Err(DecodeError::new("map key is not a string")),
                    }
                }
                p = mp_skip(b, p, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(p)
}

// ---------------------------------------------------------------- JSON

struct JsonParser<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> JsonParser<'a> {
    #[inline]
    fn ws(&mut self) {
        self.i = skip_ws(self.b, self.i);
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err<T>(&self, what: &str) -> Result<T, DecodeError> {
        Err(DecodeError::new(format!(
            "invalid JSON at byte {}: {what}",
            self.i
        )))
    }

    fn expect(&mut self, c: u8) -> Result<(), DecodeError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected '{}'", c as char))
        }
    }

    fn skip_value(&mut self, depth: usize) -> Result<(), DecodeError> {
        match self.peek() {
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return self.err("value nested too deeply");
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.skip_string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return self.err("value nested too deeply");
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => self.skip_string(),
            Some(b't') => self.lit(b"true"),
            Some(b'f') => self.lit(b"false"),
            Some(b'n') => self.lit(b"null"),
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            Some(_) => self.err("unexpected character"),
            None => self.err("unexpected end"),
        }
    }

    fn lit(&mut self, w: &[u8]) -> Result<(), DecodeError> {
        if self.b[self.i..].starts_with(w) {
            self.i += w.len();
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    fn digits(&mut self) -> usize {
        let s = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - s
    }

    fn skip_number(&mut self) -> Result<(), DecodeError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        Ok(())
    }

    /// Skips a string; returns whether it contains escapes.
    fn skip_string(&mut self) -> Result<(), DecodeError> {
        self.skip_string_esc().map(|_| ())
    }

    fn skip_string_esc(&mut self) -> Result<bool, DecodeError> {
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            let rest = &self.b[self.i..];
            let Some(off) = rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            else {
                return self.err("unterminated string");
            };
            self.i += off;
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            let ok = self.b.len() >= self.i + 4
                                && self.b[self.i..self.i + 4].iter().all(u8::is_ascii_hexdigit);
                            if !ok {
                                return self.err("invalid \\u escape");
                            }
                            self.i += 4;
                        }
                        _ => return self.err("invalid escape"),
                    }
                }
                _ => return self.err("control character in string"),
            }
        }
    }
}

fn hex4(b: &[u8]) -> u32 {
    b.iter()
        .fold(0, |a, &c| (a << 4) | (c as char).to_digit(16).unwrap_or(0))
}

/// Unescapes the JSON string literal `lit` (with its quotes), already validated.
fn json_unescape(lit: &[u8]) -> Cow<'_, str> {
    let inner = &lit[1..lit.len() - 1];
    if !inner.contains(&b'\\') {
        // Validated UTF-8 upstream; a failure here would be a bug, shown as U+FFFD.
        return String::from_utf8_lossy(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        if c != b'\\' {
            let end = inner[i..]
                .iter()
                .position(|&c| c == b'\\')
                .map_or(inner.len(), |o| i + o);
            out.push_str(&String::from_utf8_lossy(&inner[i..end]));
            i = end;
            continue;
        }
        let e = inner[i + 1];
        i += 2;
        let ch = match e {
            b'n' => '\n',
            b't' => '\t',
            b'r' => '\r',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'u' => {
                let hi = hex4(&inner[i..i + 4]);
                i += 4;
                if (0xd800..0xdc00).contains(&hi)
                    && inner.len() >= i + 6
                    && inner[i] == b'\\'
                    && inner[i + 1] == b'u'
                {
                    let lo = hex4(&inner[i + 2..i + 6]);
                    if (0xdc00..0xe000).contains(&lo) {
                        i += 6;
                        let cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                        char::from_u32(cp).unwrap_or('\u{fffd}')
                    } else {
                        '\u{fffd}'
                    }
                } else {
                    char::from_u32(hi).unwrap_or('\u{fffd}')
                }
            }
            other => other as char,
        };
        out.push(ch);
    }
    Cow::Owned(out)
}

fn json_number(text: &[u8]) -> Num {
    // Grammar already validated: ASCII digits, sign, '.', exponent.
    let s = std::str::from_utf8(text).unwrap_or("0");
    if !text.iter().any(|&c| matches!(c, b'.' | b'e' | b'E')) {
        if let Ok(i) = s.parse::<i64>() {
            return Num::Int(i);
        }
        if let Ok(u) = s.parse::<u64>() {
            return Num::UInt(u);
        }
    }
    Num::Float(s.parse::<f64>().unwrap_or(f64::NAN))
}

// ---------------------------------------------------------------- access

impl<'a> Raw<'a> {
    /// Wraps bytes known to hold exactly one valid value (for example bytes taken
    /// from a store that validated them on the way in).
    #[inline]
    pub fn new(codec: Codec, bytes: &'a [u8]) -> Self {
        Raw { codec, bytes }
    }

    /// True for null.
    #[inline]
    pub fn is_nil(&self) -> bool {
        match self.codec {
            Codec::Json => self.bytes == b"null",
            Codec::MsgPack => self.bytes == [0xc0],
        }
    }

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
            Codec::MsgPack => match mp_head(self.bytes, 0).ok()? {
                (MpHead::Str { at, len }, _) => std::str::from_utf8(&self.bytes[at..at + len])
                    .ok()
                    .map(Cow::Borrowed),
                _ => None,
            },
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
        self.to_value() == other.to_value()
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

// ---------------------------------------------------------------- transcoding

/// Appends `v` to `out` in codec `to`, converting when `v.codec != to`.
///
/// MessagePack binary becomes an array of byte values in JSON, extension types
/// become null, and non-finite floats become null (as `JSON.stringify` does).
pub fn transcode(v: Raw<'_>, to: Codec, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    if v.codec == to {
        out.extend_from_slice(v.bytes);
        return Ok(());
    }
    match to {
        Codec::Json => mp_to_json(v.bytes, 0, out, 0).map(|_| ()),
        Codec::MsgPack => {
            let mut p = JsonParser { b: v.bytes, i: 0 };
            p.ws();
            json_to_mp(&mut p, out, 0)
        }
    }
}

fn mp_to_json(b: &[u8], pos: usize, out: &mut Vec<u8>, depth: usize) -> Result<usize, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new("value nested too deeply"));
    }
    let (h, mut p) = mp_head(b, pos)?;
    match h {
        MpHead::Nil | MpHead::Ext => out.extend_from_slice(b"null"),
        MpHead::Bool(v) => out.extend_from_slice(if v { b"true" } else { b"false" }),
        MpHead::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        MpHead::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes()),
        MpHead::Float(f) => json_float(out, f),
        MpHead::Str { at, len } => {
            let s = std::str::from_utf8(&b[at..at + len])
                .map_err(|_| DecodeError::new("MessagePack string is not valid UTF-8"))?;
            json_str(out, s);
        }
        MpHead::Bin { at, len } => {
            out.push(b'[');
            for (i, byte) in b[at..at + len].iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(itoa::Buffer::new().format(*byte).as_bytes());
            }
            out.push(b']');
        }
        MpHead::Array { n } => {
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                p = mp_to_json(b, p, out, depth + 1)?;
            }
            out.push(b']');
        }
        MpHead::Map { n } => {
            out.push(b'{');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                match mp_head(b, p)? {
                    (MpHead::Str { .. }, _) => p = mp_to_json(b, p, out, depth + 1)?,
                    (MpHead::Int(k), next) => {
                        out.push(b'"');
                        out.extend_from_slice(itoa::Buffer::new().format(k).as_bytes());
                        out.push(b'"');
                        p = next;
                    }
                    (MpHead::UInt(k), next) => {
                        out.push(b'"');
                        out.extend_from_slice(itoa::Buffer::new().format(k).as_bytes());
                        out.push(b'"');
                        p = next;
                    }
                    _ => return Err(DecodeError::new("map key is not a string")),
                }
                out.push(b':');
                p = mp_to_json(b, p, out, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(p)
}

fn json_to_mp(p: &mut JsonParser<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return p.err("value nested too deeply");
    }
    match p.peek() {
        Some(b'{') | Some(b'[') => {
            let map = p.peek() == Some(b'{');
            // Count elements first (MessagePack needs the count up front).
            let start = p.i;
            let n = {
                let mut q = JsonParser { b: p.b, i: start };
                q.skip_value(depth)?;
                let raw = Raw {
                    codec: Codec::Json,
                    bytes: &p.b[start..q.i],
                };
                if map {
                    raw.map().map_or(0, |e| e.count())
                } else {
                    raw.array().map_or(0, |e| e.count())
                }
            };
            if map {
                mp_len(out, n, 0x80, 0x0f, 0xde, 0xdf);
            } else {
                mp_len(out, n, 0x90, 0x0f, 0xdc, 0xdd);
            }
            p.i += 1;
            for i in 0..n {
                p.ws();
                if i > 0 {
                    p.expect(b',')?;
                    p.ws();
                }
                if map {
                    let ks = p.i;
                    p.skip_string()?;
                    mp_str(out, &json_unescape(&p.b[ks..p.i]));
                    p.ws();
                    p.expect(b':')?;
                    p.ws();
                }
                json_to_mp(p, out, depth + 1)?;
            }
            p.ws();
            p.i += 1; // closing bracket, validated by skip_value above
            Ok(())
        }
        Some(b'"') => {
            let s = p.i;
            p.skip_string()?;
            mp_str(out, &json_unescape(&p.b[s..p.i]));
            Ok(())
        }
        Some(b't') => p.lit(b"true").map(|_| out.push(0xc3)),
        Some(b'f') => p.lit(b"false").map(|_| out.push(0xc2)),
        Some(b'n') => p.lit(b"null").map(|_| out.push(0xc0)),
        Some(b'-' | b'0'..=b'9') => {
            let s = p.i;
            p.skip_number()?;
            match json_number(&p.b[s..p.i]) {
                Num::Int(i) => mp_int(out, i),
                Num::UInt(u) => {
                    out.push(0xcf);
                    out.extend_from_slice(&u.to_be_bytes());
                }
                Num::Float(f) => {
                    out.push(0xcb);
                    out.extend_from_slice(&f.to_be_bytes());
                }
            }
            Ok(())
        }
        _ => p.err("unexpected character"),
    }
}

// ---------------------------------------------------------------- top-level maps

/// Walks the top-level map of a payload, calling `f(key, value)` per entry.
///
/// Validates the whole payload on the way; keys are handed over raw (with JSON
/// quotes stripped, escapes still in place) when `escaped` is false, which is the
/// overwhelmingly common case and costs no allocation.
pub fn for_each_field<'a>(
    codec: Codec,
    buf: &'a [u8],
    mut f: impl FnMut(&[u8], Raw<'a>),
) -> Result<(), DecodeError> {
    match codec {
        Codec::MsgPack => {
            let (h, mut p) = mp_head(buf, 0)?;
            let MpHead::Map { n } = h else {
                return Err(DecodeError::new("frame is not a map"));
            };
            if n.saturating_mul(2) > buf.len() - p {
                return Err(DecodeError::new("truncated MessagePack value"));
            }
            for _ in 0..n {
                let (kh, vstart) = mp_head(buf, p)?;
                let MpHead::Str { at, len } = kh else {
                    return Err(DecodeError::new("frame map key is not a string"));
                };
                let vend = mp_skip(buf, vstart, 1)?;
                f(
                    &buf[at..at + len],
                    Raw {
                        codec,
                        bytes: &buf[vstart..vend],
                    },
                );
                p = vend;
            }
            if p != buf.len() {
                return Err(DecodeError::new("trailing bytes after the frame's map"));
            }
            Ok(())
        }
        Codec::Json => {
            std::str::from_utf8(buf).map_err(|_| DecodeError::new("payload is not valid UTF-8"))?;
            let mut p = JsonParser { b: buf, i: 0 };
            p.ws();
            if p.peek() != Some(b'{') {
                return Err(DecodeError::new("frame is not a map"));
            }
            p.i += 1;
            p.ws();
            if p.peek() == Some(b'}') {
                p.i += 1;
            } else {
                loop {
                    p.ws();
                    let ks = p.i;
                    let escaped = p.skip_string_esc()?;
                    let ke = p.i;
                    p.ws();
                    p.expect(b':')?;
                    p.ws();
                    let vs = p.i;
                    p.skip_value(1)?;
                    let v = Raw {
                        codec,
                        bytes: &buf[vs..p.i],
                    };
                    if escaped {
                        let k = json_unescape(&buf[ks..ke]);
                        f(k.as_bytes(), v);
                    } else {
                        f(&buf[ks + 1..ke - 1], v);
                    }
                    p.ws();
                    match p.peek() {
                        Some(b',') => p.i += 1,
                        Some(b'}') => {
                            p.i += 1;
                            break;
                        }
                        _ => return p.err("expected ',' or '}'"),
                    }
                }
            }
            p.ws();
            if p.i != buf.len() {
                return Err(DecodeError::new("trailing bytes after the frame's map"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
