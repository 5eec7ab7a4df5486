//! Conversion of a value between the two codecs.
//!
//! Owns the mapping: MessagePack binary becomes an array of byte values in JSON,
//! extension types become null, non-finite floats become null (as
//! `JSON.stringify` does), integer map keys become strings. Invariant: whatever
//! `value::scan` accepts converts without error, and converting back gives a
//! structurally equal value.

use crate::codec::{Codec, Raw, MAX_DEPTH};
use crate::json::{count_elements, json_float, json_number, json_str, json_unescape, JsonParser};
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
            let n = count_elements(p.b, start, depth)?;
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
