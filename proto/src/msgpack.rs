//! MessagePack: the reader (value headers, validation by skipping) and the writer
//! primitives, side by side.
//!
//! Owns the byte layout of every MessagePack form procmesh reads or writes. Reading
//! never goes past its input, refuses element counts that cannot fit in what is
//! left, and nests at most [`MAX_DEPTH`] containers. Extension types (msgpackr
//! records included) are skipped as opaque values here.

use crate::codec::{Codec, Raw, MAX_DEPTH};
use crate::DecodeError;

#[inline]
pub(crate) fn need(buf: &[u8], pos: usize, n: usize) -> Result<usize, DecodeError> {
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
pub(crate) enum MpHead {
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

#[cfg(test)]
thread_local! {
    /// Headers read by [`mp_head`] (tests only): the work measure of `transcode`'s
    /// linear-cost test.
    pub(crate) static HEADS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Reads the header at `pos`; returns it and the position of its body.
#[inline]
pub(crate) fn mp_head(b: &[u8], pos: usize) -> Result<(MpHead, usize), DecodeError> {
    #[cfg(test)]
    HEADS.with(|c| c.set(c.get() + 1));
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

pub(crate) fn mp_skip(b: &[u8], pos: usize, depth: usize) -> Result<usize, DecodeError> {
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

/// Walks the top-level map of a MessagePack payload (see `value::for_each_field`).
pub(crate) fn for_each_field<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(&[u8], Raw<'a>),
) -> Result<(), DecodeError> {
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
                codec: Codec::MsgPack,
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

// ---------------------------------------------------------------- writing

/// Appends a MessagePack container header: fix form up to `fixmax`, then 16/32-bit.
#[inline]
pub(crate) fn mp_len(out: &mut Vec<u8>, n: usize, fix: u8, fixmax: usize, m16: u8, m32: u8) {
    if n <= fixmax {
        out.push(fix | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(m16);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(m32);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// Appends a MessagePack string (always inlined: most strings written are
/// constants, whose header and bytes then fold into a few stores).
#[inline(always)]
pub(crate) fn mp_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= u8::MAX as usize {
        out.push(0xd9);
        out.push(n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// Appends a MessagePack integer in its smallest form.
#[inline]
pub(crate) fn mp_int(out: &mut Vec<u8>, v: i64) {
    if (0..=0x7f).contains(&v) {
        out.push(v as u8);
    } else if (-32..0).contains(&v) {
        out.push(v as i8 as u8);
    } else if v >= 0 {
        if v <= u8::MAX as i64 {
            out.push(0xcc);
            out.push(v as u8);
        } else if v <= u16::MAX as i64 {
            out.push(0xcd);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= u32::MAX as i64 {
            out.push(0xce);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&(v as u64).to_be_bytes());
        }
    } else if v >= i8::MIN as i64 {
        out.push(0xd0);
        out.push(v as i8 as u8);
    } else if v >= i16::MIN as i64 {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i32::MIN as i64 {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}
