//! Conversion of a value between the two codecs.
//!
//! Owns the mapping: MessagePack binary becomes an array of byte values in JSON,
//! extension types become null, non-finite floats become null (as
//! `JSON.stringify` does), integer map keys become strings. Invariant: whatever
//! `value::scan` accepts converts without error, and converting back gives a
//! structurally equal value.

use crate::codec::{Codec, Raw, MAX_DEPTH};
use crate::json::{json_float, json_number, json_str, json_unescape, JsonParser};
use crate::msgpack::{mp_head, mp_int, mp_len, mp_str, MpHead};
use crate::num::Num;
use crate::DecodeError;

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
            let mut counts = Counts::new();
            let mut first = JsonParser { b: v.bytes, i: 0 };
            json_counts(&mut first, &mut counts)?;
            first.ws();
            if first.i != v.bytes.len() {
                return Err(DecodeError::new("trailing bytes after the JSON value"));
            }
            let mut p = JsonParser { b: v.bytes, i: 0 };
            json_to_mp(&mut p, &counts, &mut 0, out, 0)
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

/// Element counts of a JSON value's containers in document (pre-)order.
///
/// MessagePack puts a container's count before its elements, JSON does not say it
/// until the closing bracket; counting each container by skipping its elements made
/// the conversion cost depth × size (issue 12 #9). One validating pass collects every
/// count, the writing pass takes them in order: the input is read twice in all.
///
/// Bound: one `u32` per container (at most one per two input bytes); the first
/// [`Counts::INLINE`] live on the stack, so small values convert without allocating.
struct Counts {
    inline: [u32; Counts::INLINE],
    heap: Vec<u32>,
    len: usize,
}

impl Counts {
    const INLINE: usize = 32;

    fn new() -> Self {
        Counts {
            inline: [0; Counts::INLINE],
            heap: Vec::new(),
            len: 0,
        }
    }

    fn push(&mut self) -> usize {
        if self.len == Counts::INLINE {
            self.heap.extend_from_slice(&self.inline);
        }
        if self.len >= Counts::INLINE {
            self.heap.push(0);
        }
        self.len += 1;
        self.len - 1
    }

    fn slot(&mut self, i: usize) -> &mut u32 {
        if self.len > Counts::INLINE {
            &mut self.heap[i]
        } else {
            &mut self.inline[i]
        }
    }

    fn get(&self, i: usize) -> usize {
        let n = if self.len > Counts::INLINE {
            self.heap[i]
        } else {
            self.inline[i]
        };
        n as usize
    }
}

/// Validates the JSON value at `p` (the grammar of `JsonParser::skip_value`, with
/// an explicit stack instead of recursion) and records each container's count.
fn json_counts(p: &mut JsonParser<'_>, counts: &mut Counts) -> Result<(), DecodeError> {
    // Open containers: (index into `counts`, is a map).
    let mut stack = [(0usize, false); MAX_DEPTH];
    let mut depth = 0;
    'value: loop {
        p.ws();
        match p.peek() {
            Some(c @ (b'{' | b'[')) => {
                if depth >= MAX_DEPTH {
                    return p.err("value nested too deeply");
                }
                let map = c == b'{';
                let idx = counts.push();
                stack[depth] = (idx, map);
                depth += 1;
                p.i += 1;
                p.ws();
                let close = if map { b'}' } else { b']' };
                if p.peek() == Some(close) {
                    p.i += 1;
                    depth -= 1;
                } else {
                    if map {
                        json_key(p)?;
                    }
                    *counts.slot(idx) = 1;
                    continue 'value;
                }
            }
            Some(b'"') => p.skip_string()?,
            Some(b't') => p.lit(b"true")?,
            Some(b'f') => p.lit(b"false")?,
            Some(b'n') => p.lit(b"null")?,
            Some(b'-' | b'0'..=b'9') => p.skip_number()?,
            Some(_) => return p.err("unexpected character"),
            None => return p.err("unexpected end"),
        }
        // A value ended: continue or close the containers around it.
        while depth > 0 {
            let (idx, map) = stack[depth - 1];
            p.ws();
            match p.peek() {
                Some(b',') => {
                    p.i += 1;
                    p.ws();
                    if map {
                        json_key(p)?;
                    }
                    let n = counts.slot(idx);
                    *n = n
                        .checked_add(1)
                        .ok_or_else(|| DecodeError::new("container has too many elements"))?;
                    continue 'value;
                }
                Some(b'}') if map => {
                    p.i += 1;
                    depth -= 1;
                }
                Some(b']') if !map => {
                    p.i += 1;
                    depth -= 1;
                }
                _ if map => return p.err("expected ',' or '}'"),
                _ => return p.err("expected ',' or ']'"),
            }
        }
        return Ok(());
    }
}

/// Skips a map key and its colon (the value is next).
fn json_key(p: &mut JsonParser<'_>) -> Result<(), DecodeError> {
    p.skip_string()?;
    p.ws();
    p.expect(b':')?;
    p.ws();
    Ok(())
}

/// Writes the JSON value at `p` as MessagePack; its containers' counts are
/// `counts[*next..]` in document order (from [`json_counts`] over the same text).
fn json_to_mp(
    p: &mut JsonParser<'_>,
    counts: &Counts,
    next: &mut usize,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return p.err("value nested too deeply");
    }
    p.ws();
    match p.peek() {
        Some(b'{') | Some(b'[') => {
            let map = p.peek() == Some(b'{');
            let n = counts.get(*next);
            *next += 1;
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
                json_to_mp(p, counts, next, out, depth + 1)?;
            }
            p.ws();
            p.i += 1; // closing bracket, validated by json_counts
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::STEPPED;
    use crate::msgpack::HEADS;

    /// `levels` maps nested in one another, each with a short field, the innermost
    /// holding `bulk` bytes of string: the shape of issue 12 #9.
    fn deep_json(levels: usize, bulk: usize) -> Vec<u8> {
        let mut t = Vec::with_capacity(bulk + levels * 32);
        for i in 0..levels {
            t.extend_from_slice(format!("{{\"n\":{i},\"a\":[true,null],\"c\":").as_bytes());
        }
        t.push(b'"');
        t.extend(std::iter::repeat_n(b'x', bulk));
        t.push(b'"');
        t.extend(std::iter::repeat_n(b'}', levels));
        t
    }

    fn stepped_by(f: impl FnOnce()) -> usize {
        let before = STEPPED.with(|c| c.get());
        f();
        STEPPED.with(|c| c.get()) - before
    }

    fn heads_by(f: impl FnOnce()) -> usize {
        let before = HEADS.with(|c| c.get());
        f();
        HEADS.with(|c| c.get()) - before
    }

    #[test]
    fn json_to_msgpack_of_a_deep_large_value_reads_its_input_twice_at_most() {
        // 20 MiB nested 98 deep: the old converter stepped over ~98 × 2 × 20 MiB.
        let text = deep_json(98, 20 << 20);
        let v = Raw::new(Codec::Json, &text);
        let mut mp = Vec::new();
        let work = stepped_by(|| transcode(v, Codec::MsgPack, &mut mp).unwrap());
        assert!(
            work <= 2 * text.len(),
            "stepped over {work} bytes for a {}-byte value",
            text.len()
        );
        // And back: one header read per item, plus a second look at each map key.
        let mut back = Vec::new();
        let heads =
            heads_by(|| transcode(Raw::new(Codec::MsgPack, &mp), Codec::Json, &mut back).unwrap());
        assert_eq!(back, text, "the round trip gives the same text");
        let items = 98 * (1 + 3 + 4 + 1) + 1; // map, its 3 keys, n + array of 2, c
        assert!(heads <= 2 * items, "{heads} headers read for {items} items");
    }

    #[test]
    fn json_to_msgpack_cost_does_not_grow_with_depth() {
        // Same size, depth 1 versus depth 98 (the nesting limit is 100).
        let bulk = 1 << 20;
        let (shallow, deep) = (deep_json(1, bulk), deep_json(98, bulk));
        let cost = |t: &[u8]| {
            stepped_by(|| {
                transcode(Raw::new(Codec::Json, t), Codec::MsgPack, &mut Vec::new()).unwrap()
            })
        };
        let (a, b) = (cost(&shallow), cost(&deep));
        // The deep text is longer by its 98 headers; the work grows by as much, no more.
        assert!(b - a <= 2 * (deep.len() - shallow.len()), "{a} vs {b}");
    }

    #[test]
    fn many_containers_spill_the_counts_to_the_heap_in_order() {
        // More containers than fit inline, with counts that differ, nested and not.
        let mut t = String::from("[");
        for i in 0..200 {
            if i > 0 {
                t.push(',');
            }
            let inner: Vec<String> = (0..i % 20).map(|k| k.to_string()).collect();
            t.push_str(&format!("{{\"k{i}\":[{}],\"e\":{{}}}}", inner.join(",")));
        }
        t.push(']');
        let mut mp = Vec::new();
        transcode(Raw::new(Codec::Json, t.as_bytes()), Codec::MsgPack, &mut mp).unwrap();
        let mut back = Vec::new();
        transcode(Raw::new(Codec::MsgPack, &mp), Codec::Json, &mut back).unwrap();
        assert_eq!(String::from_utf8(back).unwrap(), t);
    }

    #[test]
    fn invalid_json_is_refused_not_misread() {
        for bad in [
            "[1,]",
            "{\"a\":1,}",
            "[1 2]",
            "{\"a\" 1}",
            "{1:2}",
            "[",
            "[[]",
            "{\"a\":1]",
            "[}",
            "[tru]",
            "[\"x]",
            // Trailing bytes after a whole value (found by fuzz_deep_values_transcode_or_refuse).
            "0[[]]",
            "[1] 2",
            "{} x",
        ] {
            let mut out = Vec::new();
            assert!(
                transcode(
                    Raw::new(Codec::Json, bad.as_bytes()),
                    Codec::MsgPack,
                    &mut out
                )
                .is_err(),
                "{bad}"
            );
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        let mut out = Vec::new();
        assert!(transcode(
            Raw::new(Codec::Json, deep.as_bytes()),
            Codec::MsgPack,
            &mut out
        )
        .is_err());
        assert!(transcode(
            Raw::new(Codec::Json, ok.as_bytes()),
            Codec::MsgPack,
            &mut out
        )
        .is_ok());
    }
}
