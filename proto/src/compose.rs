//! Writing a frame: length prefix, the map, `t`, an echoed `id`, and the entry count.
//!
//! Owns the frame-level encoding shared by `request` and `response` ([`MapEnc`]
//! counts its own entries, so no caller passes a field count) and the older
//! [`FrameWriter`] that takes the count up front. It knows no message shapes.

use crate::codec::{Codec, Raw};
use crate::frame;
use crate::json::json_str;
use crate::msgpack::mp_str;
use crate::writer::Writer;
use crate::DecodeError;

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: i64 = 4;

/// A frame being written: prefix reserved, map begun. Write the remaining fields
/// with [`FrameWriter::w`], then call [`FrameWriter::finish`].
pub struct FrameWriter<'o> {
    w: Writer<'o>,
    at: usize,
}

impl<'o> FrameWriter<'o> {
    /// Begins a frame whose map has `fields` entries (including `t`) and writes `t`.
    #[inline]
    pub fn begin(codec: Codec, out: &'o mut Vec<u8>, fields: usize, t: &str) -> Self {
        let at = frame::begin(out);
        let mut w = Writer::new(codec, out);
        w.begin_map(fields);
        w.key("t");
        w.str(t);
        FrameWriter { w, at }
    }

    /// The writer, positioned for the next key.
    #[inline]
    pub fn w(&mut self) -> &mut Writer<'o> {
        &mut self.w
    }

    /// Ends the map and writes the length prefix.
    #[inline]
    pub fn finish(mut self) {
        self.w.end_map();
        let at = self.at;
        let out = self.w.into_out();
        frame::finish(out, at);
    }
}

/// A frame whose map counts its own entries: the MessagePack map header is a
/// placeholder patched by [`MapEnc::finish`] (every procmesh frame has at most 15
/// entries, so the header is always the one-byte fixmap form).
pub(crate) struct MapEnc<'o> {
    w: Writer<'o>,
    at: usize,
    n: usize,
}

/// Most entries a [`MapEnc`] frame can hold (a MessagePack fixmap).
const MAP_ENC_MAX: usize = 15;

impl<'o> MapEnc<'o> {
    /// Begins a frame and writes `t`.
    ///
    /// The prefix placeholder, the map opening and the `t` key go out as one constant
    /// (the same bytes `frame::begin`, `begin_map` and `key("t")` write), so that a
    /// reply's head costs a store or two instead of one push per byte.
    #[inline(always)]
    pub(crate) fn begin(codec: Codec, out: &'o mut Vec<u8>, t: &str) -> Self {
        let at = out.len();
        match codec {
            Codec::MsgPack => {
                out.extend_from_slice(&[0, 0, 0, 0, 0x80 | MAP_ENC_MAX as u8, 0xa1, b't']);
                mp_str(out, t);
            }
            Codec::Json => {
                out.extend_from_slice(b"\0\0\0\0{\"t\":");
                json_str(out, t);
            }
        }
        MapEnc {
            w: Writer::in_map(codec, out),
            at,
            n: 1,
        }
    }

    /// Writes key `k`; the caller then writes exactly one value with the writer.
    #[inline]
    pub(crate) fn key(&mut self, k: &str) -> &mut Writer<'o> {
        self.n += 1;
        debug_assert!(
            self.n <= MAP_ENC_MAX,
            "invariant: frames have at most 15 fields"
        );
        self.w.key(k);
        &mut self.w
    }

    /// Writes `id` when present.
    #[inline]
    pub(crate) fn id(&mut self, id: Option<Raw<'_>>) {
        if let Some(id) = id {
            write_id(self.key("id"), id);
        }
    }

    /// The writer, positioned for the next value of a value begun by the caller.
    #[inline]
    pub(crate) fn w(&mut self) -> &mut Writer<'o> {
        &mut self.w
    }

    /// Writes an already-encoded value under `k`, transcoding when needed.
    #[inline]
    pub(crate) fn raw(&mut self, k: &str, v: Raw<'_>) -> Result<(), DecodeError> {
        self.key(k).raw(v)
    }

    /// Ends the map, patches its entry count and writes the length prefix.
    #[inline]
    pub(crate) fn finish(mut self) {
        self.w.end_map();
        let codec = self.w.codec();
        let (at, n) = (self.at, self.n);
        let out = self.w.into_out();
        if codec == Codec::MsgPack {
            out[at + frame::PREFIX_LEN] = 0x80 | n as u8;
        }
        frame::finish(out, at);
    }

    /// Bytes written since [`MapEnc::begin`] (prefix included).
    #[inline]
    pub(crate) fn written(&self) -> usize {
        self.w.out_len() - self.at
    }

    /// Drops the frame begun, leaving `out` as it was before [`MapEnc::begin`].
    #[inline]
    pub(crate) fn abort(self) {
        let at = self.at;
        self.w.into_out().truncate(at);
    }
}

/// `{"t":"ok","id":ID,"value":…}`: begins an ok reply; when `has_value`, the
/// caller writes exactly one value with `w()` before `finish()`.
#[inline]
pub fn begin_ok<'o>(
    codec: Codec,
    out: &'o mut Vec<u8>,
    id: Raw<'_>,
    has_value: bool,
) -> FrameWriter<'o> {
    let mut f = FrameWriter::begin(codec, out, 2 + has_value as usize, "ok");
    f.w.key("id");
    write_id(&mut f.w, id);
    if has_value {
        f.w.key("value");
    }
    f
}

#[inline]
pub(crate) fn write_id(w: &mut Writer<'_>, id: Raw<'_>) {
    if id.codec == w.codec() {
        w.raw_same(id.bytes);
    } else {
        // Ids are numbers or strings in practice; a failed transcode writes null.
        if w.raw(id).is_err() {
            w.nil();
        }
    }
}
