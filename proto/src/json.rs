//! JSON: the reader (validation by skipping, strings, numbers) and the writer
//! primitives, side by side.
//!
//! Owns the JSON grammar procmesh accepts: RFC 8259 text, UTF-8, at most
//! [`MAX_DEPTH`] nested containers, no trailing bytes. The reader never reads past
//! its input and never recurses deeper than the limit; a number is read as an
//! integer when it has no fraction or exponent and fits `i64`/`u64`.

use std::borrow::Cow;

use crate::codec::{Codec, Raw, MAX_DEPTH};
use crate::num::Num;
use crate::DecodeError;

#[cfg(test)]
thread_local! {
    /// Bytes the reader's primitives stepped over (tests only): the work measure of
    /// `transcode`'s linear-cost test, counted where the scanning happens.
    pub(crate) static STEPPED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts `n` bytes stepped over (tests only; nothing in other builds).
#[inline(always)]
fn stepped(n: usize) {
    #[cfg(test)]
    STEPPED.with(|c| c.set(c.get() + n));
    #[cfg(not(test))]
    let _ = n;
}

#[inline]
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    let start = i;
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    stepped(i - start);
    i
}

pub(crate) struct JsonParser<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) i: usize,
}

impl<'a> JsonParser<'a> {
    #[inline]
    pub(crate) fn ws(&mut self) {
        self.i = skip_ws(self.b, self.i);
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    pub(crate) fn err<T>(&self, what: &str) -> Result<T, DecodeError> {
        Err(DecodeError::new(format!(
            "invalid JSON at byte {}: {what}",
            self.i
        )))
    }

    pub(crate) fn expect(&mut self, c: u8) -> Result<(), DecodeError> {
        if self.peek() == Some(c) {
            self.i += 1;
            stepped(1);
            Ok(())
        } else {
            self.err(&format!("expected '{}'", c as char))
        }
    }

    pub(crate) fn skip_value(&mut self, depth: usize) -> Result<(), DecodeError> {
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

    pub(crate) fn lit(&mut self, w: &[u8]) -> Result<(), DecodeError> {
        if self.b[self.i..].starts_with(w) {
            self.i += w.len();
            stepped(w.len());
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    pub(crate) fn digits(&mut self) -> usize {
        let s = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        stepped(self.i - s);
        self.i - s
    }

    pub(crate) fn skip_number(&mut self) -> Result<(), DecodeError> {
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
    pub(crate) fn skip_string(&mut self) -> Result<(), DecodeError> {
        self.skip_string_esc().map(|_| ())
    }

    pub(crate) fn skip_string_esc(&mut self) -> Result<bool, DecodeError> {
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
            stepped(off + 1);
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
pub(crate) fn json_unescape(lit: &[u8]) -> Cow<'_, str> {
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

pub(crate) fn json_number(text: &[u8]) -> Num {
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

/// Walks the top-level map of a JSON payload (see `value::for_each_field`).
pub(crate) fn for_each_field<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(&[u8], Raw<'a>),
) -> Result<(), DecodeError> {
    // Invalid UTF-8 still fails the frame, but only after the walk: fields that are
    // valid UTF-8 themselves (the `id` above all) are still seen, so the sender gets
    // an error reply (issue 12 #15). The per-field check runs only on that bad path.
    let utf8 = std::str::from_utf8(buf).is_ok();
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
                codec: Codec::Json,
                bytes: &buf[vs..p.i],
            };
            if !utf8
                && (std::str::from_utf8(&buf[ks..ke]).is_err()
                    || std::str::from_utf8(v.bytes).is_err())
            {
                // Skipped: the frame fails below.
            } else if escaped {
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
    if !utf8 {
        return Err(DecodeError::new("payload is not valid UTF-8"));
    }
    Ok(())
}

// ---------------------------------------------------------------- writing

/// Appends a JSON number for a float (`null` when not finite).
#[inline]
pub(crate) fn json_float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        // Integral floats print without a fraction, as JavaScript does.
        if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
            out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
        } else {
            out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
        }
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends a JSON string literal with the escapes JSON requires.
#[inline]
pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&b[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(c >> 4) as usize],
                    HEX[(c & 15) as usize],
                ]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}
