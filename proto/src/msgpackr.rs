//! msgpackr, the MessagePack dialect procmesh-js writes (`new Packr({ structuredClone: true })`),
//! converted to and from plain MessagePack at the edge of a connection.
//!
//! Owns the dialect's byte forms and nothing else: inside the broker every value stays
//! self-contained plain MessagePack (a record may reference a structure defined earlier in
//! the same frame, so its bytes mean nothing alone). Both directions work on one whole frame
//! payload, run in linear time, recurse at most [`MAX_DEPTH`] containers deep and append to a
//! caller's buffer; the scratch state lives in a reusable [`Normalizer`] / [`Encoder`], so a
//! connection that keeps one of each allocates nothing per frame once warm.
//!
//! Reading ([`Normalizer`], msgpackr → plain):
//! - `d4 72 id` + key array + values: a record definition (id `0x40..=0x7f`); it fills the slot
//!   `id`, replacing an earlier definition of the same slot. It becomes a plain map.
//! - a bare byte `0x40..=0x7f`: a reference to the record in that slot, followed by its values;
//!   with the slot empty it is the integer itself (as msgpackr reads it).
//! - `d4 00 xx` (undefined): as a map value the field is omitted (absent); elsewhere `nil`.
//! - `d6 69 id` + value (structured-clone object id) and `d6 70 id` (a pointer to it): the value
//!   is copied at every pointer. The output may not exceed the caller's limit, so a small frame
//!   cannot expand into a huge one; a pointer into its own object (a cycle) is an error.
//! - `cc XX` with XX < 0x80 becomes the one-byte integer (plain MessagePack's form); timestamp
//!   extensions (type −1, JavaScript `Date`) stay as they are.
//! - anything else msgpackr-specific (two-byte record ids, `Set`, `Error`, `RegExp`, typed
//!   arrays, big integers beyond 64 bits, unknown extensions) is a [`DecodeError`] naming it.
//!
//! Writing ([`Encoder`], plain → msgpackr), so that msgpackr decodes objects, not `Map`s:
//! - every map becomes a record: a definition the first time a key list appears in the frame,
//!   a one-byte reference after; 64 slots used round robin, as msgpackr does.
//! - integers `0x40..=0x7f` as `cc XX` (a bare byte would be a record reference); integers
//!   outside the 32-bit ranges as float64, as msgpackr writes every such JavaScript number
//!   (the nearest double when not exactly representable, which is what `JSON.parse` gives a
//!   procmesh-js JSON client; `d3`/`cf` would decode as `BigInt`, which procmesh-js cannot
//!   serialise). Integer map keys stay integers (msgpackr turns record keys into strings).
//! - extensions other than timestamps become `nil` (msgpackr throws on unknown extension types,
//!   and would read its own types as something else); JSON gets `null` for them too.

//!
//! # Example
//! ```
//! use procmesh_proto::msgpackr::{Encoder, Normalizer};
//! use procmesh_proto::{frame, Codec, Dialect, Frame, Reply};
//!
//! // procmesh-js's `{t:'hello',id:1,name:'x'}`: the first frame marks the connection msgpackr.
//! let hello = b"\xd4\x72\x40\x93\xa1t\xa2id\xa4name\xa5hello\x01\xa1x";
//! assert_eq!(Codec::detect_payload(hello), Some(Dialect::MSGPACKR));
//! // Keep one of each per connection (or per loop) and reuse their buffers.
//! let (mut reader, mut writer) = (Normalizer::new(), Encoder::new());
//! let mut plain = Vec::new();
//! reader.normalize_into(hello, frame::MAX_FRAME_LEN, &mut plain)?;
//! let f = Frame::decode(Codec::MsgPack, &plain)?;
//! // Replies are built in plain MessagePack as for any client, then converted on the way out.
//! let mut replies = Vec::new();
//! Reply::Pong.encode_into(Codec::MsgPack, f.id, &mut replies);
//! let mut wire = Vec::new();
//! assert_eq!(writer.encode_frames_into(&replies, &mut wire)?, replies.len());
//! assert_eq!(&wire[4..], b"\xd4\x72\x40\x92\xa1t\xa2id\xa4pong\x01");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::codec::MAX_DEPTH;
use crate::msgpack::{mp_head, mp_len, need, MpHead};
use crate::DecodeError;

/// Number of one-byte record slots (`0x40..=0x7f`).
const RECORD_SLOTS: usize = 64;
/// First record id.
const RECORD_BASE: u8 = 0x40;
/// msgpackr's record-definition extension type (`"r"`).
const EXT_RECORD: u8 = 0x72;
/// msgpackr's `undefined` (extension type 0).
const EXT_UNDEFINED: u8 = 0x00;
/// Structured clone: the id of an object referenced again later in the frame (`"i"`).
const EXT_OBJECT_ID: u8 = 0x69;
/// Structured clone: a pointer to an object marked with [`EXT_OBJECT_ID`] (`"p"`).
const EXT_POINTER: u8 = 0x70;
/// MessagePack's timestamp extension (type −1).
const EXT_TIMESTAMP: u8 = 0xff;

/// True when a payload starts with a msgpackr record definition (`d4 72`): the sender writes
/// records, and needs records back.
#[inline]
pub fn starts_with_record(payload: &[u8]) -> bool {
    payload.len() >= 3 && payload[0] == 0xd4 && payload[1] == EXT_RECORD
}

/// Normalises msgpackr payloads to plain MessagePack; keep one per connection (or per broker
/// loop) and reuse it.
#[derive(Debug)]
pub struct Normalizer {
    /// Key spans (start, end) in the input, for every definition of this frame.
    keys: Vec<(u32, u32)>,
    /// Per slot: (first index into `keys`, key count, total key bytes), or `None`.
    slots: [Option<(u32, u32, u32)>; RECORD_SLOTS],
    /// Structured-clone ids: (id, start in `out`, end in `out` or `u32::MAX` while open,
    /// nesting height of the value).
    refs: Vec<Mark>,
    /// Object id → index in `refs` + 1 (0: not marked in this frame). Ids are bounded by the
    /// payload's length (msgpackr numbers them 1, 2, …), so this stays linear in the input.
    by_id: Vec<u32>,
    /// Where this frame's output begins in `out`, and the most it may grow.
    base: usize,
    limit: usize,
}

/// A structured-clone object id marked in this frame and where its value is in the output.
#[derive(Debug, Clone, Copy)]
struct Mark {
    id: u32,
    /// Start and end relative to the frame's output (`end` is `u32::MAX` while being read).
    start: u32,
    end: u32,
    /// Nesting height of the value.
    height: u8,
    /// The earlier mark of the same id (index + 1, or 0), restored when this one is dropped.
    prev: u32,
}

/// What reading one value produced.
struct Read {
    end: usize,
    undefined: bool,
    height: usize,
}

impl Default for Normalizer {
    fn default() -> Self {
        Normalizer {
            keys: Vec::new(),
            slots: [None; RECORD_SLOTS],
            refs: Vec::new(),
            by_id: Vec::new(),
            base: 0,
            limit: 0,
        }
    }
}

impl Normalizer {
    /// A normaliser with empty scratch state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the plain MessagePack form of one msgpackr payload to `out`.
    ///
    /// `payload` must hold exactly one value. The bytes appended may not exceed `max_len`
    /// (use the frame limit); on error `out` is left as it was.
    pub fn normalize_into(
        &mut self,
        payload: &[u8],
        max_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), DecodeError> {
        if payload.len() > u32::MAX as usize || max_len > u32::MAX as usize {
            return Err(DecodeError::new("msgpackr frame too large"));
        }
        self.keys.clear();
        for r in &self.refs {
            self.by_id[r.id as usize] = 0;
        }
        self.refs.clear();
        self.slots = [None; RECORD_SLOTS];
        self.base = out.len();
        self.limit = max_len;
        let r = match self.value(payload, 0, out, 0) {
            Ok(r) => r,
            Err(e) => {
                out.truncate(self.base);
                return Err(e);
            }
        };
        if r.undefined {
            out.push(0xc0);
        }
        if r.end != payload.len() {
            out.truncate(self.base);
            return Err(DecodeError::new("trailing bytes after the msgpackr value"));
        }
        if out.len() - self.base > self.limit {
            out.truncate(self.base);
            return Err(Self::too_big());
        }
        Ok(())
    }

    fn too_big() -> DecodeError {
        DecodeError::new("msgpackr frame expands beyond the frame size limit")
    }

    #[inline]
    fn room(&self, out: &[u8], more: usize) -> Result<(), DecodeError> {
        if out.len() - self.base + more > self.limit {
            return Err(Self::too_big());
        }
        Ok(())
    }

    /// Reads the value at `pos`, appending its plain form (nothing for `undefined`).
    fn value(
        &mut self,
        b: &[u8],
        pos: usize,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<Read, DecodeError> {
        let c = *b
            .get(pos)
            .ok_or_else(|| DecodeError::new("truncated msgpackr value"))?;
        match c {
            0x40..=0x7f => match self.slots[(c - RECORD_BASE) as usize] {
                Some(slot) => self.record(b, pos + 1, slot, out, depth),
                None => {
                    out.push(c);
                    Ok(Read {
                        end: pos + 1,
                        undefined: false,
                        height: 0,
                    })
                }
            },
            0xd4 => {
                let end = need(b, pos, 3)?;
                match b[pos + 1] {
                    EXT_RECORD => self.definition(b, pos, out, depth),
                    EXT_UNDEFINED => Ok(Read {
                        end,
                        undefined: true,
                        height: 0,
                    }),
                    t => Err(Self::unsupported(t)),
                }
            }
            0xd5 => {
                need(b, pos, 4)?;
                match b[pos + 1] {
                    EXT_RECORD => Err(DecodeError::new(
                        "msgpackr two-byte record ids (shared structures) are not supported",
                    )),
                    t => Err(Self::unsupported(t)),
                }
            }
            0xd6 => {
                let end = need(b, pos, 6)?;
                let id = u32::from_be_bytes([b[pos + 2], b[pos + 3], b[pos + 4], b[pos + 5]]);
                match b[pos + 1] {
                    EXT_OBJECT_ID => self.marked(b, end, id, out, depth),
                    EXT_POINTER => self.pointer(id, out, depth, end),
                    EXT_TIMESTAMP => self.copy(b, pos, end, out),
                    t => Err(Self::unsupported(t)),
                }
            }
            0xd7 | 0xd8 | 0xc7..=0xc9 => {
                let (_, end) = mp_head(b, pos)?;
                let t = match c {
                    0xd7 | 0xd8 => b[pos + 1],
                    _ => b[pos + 1 + (1 << (c - 0xc7))],
                };
                if t == EXT_TIMESTAMP {
                    self.copy(b, pos, end, out)
                } else {
                    Err(Self::unsupported(t))
                }
            }
            _ => {
                let (h, body) = mp_head(b, pos)?;
                match h {
                    MpHead::Array { n } => {
                        if depth >= MAX_DEPTH {
                            return Err(DecodeError::new("value nested too deeply"));
                        }
                        if n > b.len() - body {
                            return Err(DecodeError::new("truncated msgpackr value"));
                        }
                        out.extend_from_slice(&b[pos..body]);
                        let mut p = body;
                        let mut height = 0;
                        for _ in 0..n {
                            let r = self.value(b, p, out, depth + 1)?;
                            if r.undefined {
                                out.push(0xc0);
                            }
                            height = height.max(r.height);
                            p = r.end;
                        }
                        Ok(Read {
                            end: p,
                            undefined: false,
                            height: height + 1,
                        })
                    }
                    MpHead::Map { n } => self.plain_map(b, body, n, out, depth),
                    MpHead::Str { at, len } => {
                        std::str::from_utf8(&b[at..at + len]).map_err(|_| {
                            DecodeError::new("MessagePack string is not valid UTF-8")
                        })?;
                        self.copy(b, pos, body, out)
                    }
                    // msgpackr writes 64..=127 as `cc XX`; plain MessagePack's form is one byte,
                    // so a value reads the same bytes whichever client stored it.
                    MpHead::Int(i) if c == 0xcc && i < 0x80 => {
                        out.push(i as u8);
                        Ok(Read {
                            end: body,
                            undefined: false,
                            height: 0,
                        })
                    }
                    _ => self.copy(b, pos, body, out),
                }
            }
        }
    }

    fn unsupported(t: u8) -> DecodeError {
        let what = match t {
            0x73 => "Set",
            0x65 => "Error",
            0x78 => "RegExp",
            0x74 => "typed array",
            0x42 => "BigInt beyond 64 bits",
            0x62 => "ArrayBuffer",
            _ => "unknown",
        };
        DecodeError::new(format!(
            "unsupported msgpackr extension type 0x{t:02x} ({what}): only JSON-like values are accepted"
        ))
    }

    #[inline]
    fn copy(
        &mut self,
        b: &[u8],
        pos: usize,
        end: usize,
        out: &mut Vec<u8>,
    ) -> Result<Read, DecodeError> {
        out.extend_from_slice(&b[pos..end]);
        Ok(Read {
            end,
            undefined: false,
            height: 0,
        })
    }

    /// `d4 72 id` at `pos`: the key array, then the values.
    fn definition(
        &mut self,
        b: &[u8],
        pos: usize,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<Read, DecodeError> {
        let id = b[pos + 2];
        if !(RECORD_BASE..RECORD_BASE + RECORD_SLOTS as u8).contains(&id) {
            return Err(DecodeError::new(format!(
                "msgpackr record id 0x{id:02x} is outside 0x40..=0x7f"
            )));
        }
        let (h, mut p) = mp_head(b, pos + 3)?;
        let MpHead::Array { n } = h else {
            return Err(DecodeError::new(
                "msgpackr record definition without a key array",
            ));
        };
        if n > b.len() - p {
            return Err(DecodeError::new("truncated msgpackr value"));
        }
        let first = self.keys.len() as u32;
        let mut total = 0usize;
        for _ in 0..n {
            let (kh, end) = mp_head(b, p)?;
            match kh {
                MpHead::Str { at, len } => {
                    std::str::from_utf8(&b[at..at + len])
                        .map_err(|_| DecodeError::new("MessagePack string is not valid UTF-8"))?;
                }
                MpHead::Int(_) | MpHead::UInt(_) => {}
                _ => return Err(DecodeError::new("msgpackr record key is not a string")),
            }
            self.keys.push((p as u32, end as u32));
            total += end - p;
            p = end;
        }
        let slot = (first, n as u32, total as u32);
        self.slots[(id - RECORD_BASE) as usize] = Some(slot);
        self.record(b, p, slot, out, depth)
    }

    /// The values of a record with the keys of `slot`, from `pos`.
    fn record(
        &mut self,
        b: &[u8],
        mut pos: usize,
        (first, n, total): (u32, u32, u32),
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<Read, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::new("value nested too deeply"));
        }
        let n = n as usize;
        if n > b.len() - pos {
            return Err(DecodeError::new("truncated msgpackr value"));
        }
        // Keys are copied once per record: bound that amplification too.
        self.room(out, total as usize)?;
        let head = out.len();
        mp_len(out, n, 0x80, 0x0f, 0xde, 0xdf);
        let mut kept = 0;
        let mut height = 0;
        for i in 0..n {
            let (ks, ke) = self.keys[first as usize + i];
            let before = out.len();
            out.extend_from_slice(&b[ks as usize..ke as usize]);
            let r = self.value(b, pos, out, depth + 1)?;
            pos = r.end;
            if r.undefined {
                self.drop_field(out, before);
            } else {
                kept += 1;
                height = height.max(r.height);
            }
        }
        patch_map_len(out, head, n, kept);
        Ok(Read {
            end: pos,
            undefined: false,
            height: height + 1,
        })
    }

    /// A plain map (msgpackr writes one for a JavaScript `Map`): keys and values normalised.
    fn plain_map(
        &mut self,
        b: &[u8],
        mut pos: usize,
        n: usize,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<Read, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::new("value nested too deeply"));
        }
        if n.saturating_mul(2) > b.len() - pos {
            return Err(DecodeError::new("truncated msgpackr value"));
        }
        let head = out.len();
        mp_len(out, n, 0x80, 0x0f, 0xde, 0xdf);
        let mut kept = 0;
        let mut height = 0;
        for _ in 0..n {
            let before = out.len();
            let k = self.value(b, pos, out, depth + 1)?;
            if k.undefined {
                return Err(DecodeError::new("map key is undefined"));
            }
            match mp_head(out, before)?.0 {
                MpHead::Str { .. } | MpHead::Int(_) | MpHead::UInt(_) => {}
                _ => return Err(DecodeError::new("map key is not a string")),
            }
            let v = self.value(b, k.end, out, depth + 1)?;
            pos = v.end;
            if v.undefined {
                self.drop_field(out, before);
            } else {
                kept += 1;
                height = height.max(v.height);
            }
        }
        patch_map_len(out, head, n, kept);
        Ok(Read {
            end: pos,
            undefined: false,
            height: height + 1,
        })
    }

    /// Removes a field whose value was `undefined` (its key is at `before`), and any object ids
    /// marked inside the key, whose bytes go with it.
    fn drop_field(&mut self, out: &mut Vec<u8>, before: usize) {
        out.truncate(before);
        let rel = (before - self.base) as u32;
        while self.refs.last().is_some_and(|r| r.start >= rel) {
            if let Some(r) = self.refs.pop() {
                self.by_id[r.id as usize] = r.prev;
            }
        }
    }

    /// `d6 69 id` then the value it names.
    fn marked(
        &mut self,
        b: &[u8],
        pos: usize,
        id: u32,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<Read, DecodeError> {
        let start = (out.len() - self.base) as u32;
        if id as usize > b.len() {
            return Err(DecodeError::new(format!(
                "msgpackr object id {id} is out of range for this frame"
            )));
        }
        if self.by_id.len() <= id as usize {
            self.by_id.resize(id as usize + 1, 0);
        }
        let at = self.refs.len();
        self.refs.push(Mark {
            id,
            start,
            end: u32::MAX,
            height: 0,
            prev: self.by_id[id as usize],
        });
        self.by_id[id as usize] = at as u32 + 1;
        let r = self.value(b, pos, out, depth)?;
        if r.undefined {
            return Err(DecodeError::new("msgpackr object id marks undefined"));
        }
        self.refs[at].end = (out.len() - self.base) as u32;
        self.refs[at].height = r.height.min(u8::MAX as usize) as u8;
        Ok(r)
    }

    /// `d6 70 id`: a copy of the value marked `id`.
    fn pointer(
        &mut self,
        id: u32,
        out: &mut Vec<u8>,
        depth: usize,
        end: usize,
    ) -> Result<Read, DecodeError> {
        // The latest mark of an id wins (ids are unique in what msgpackr writes).
        let found = match self.by_id.get(id as usize) {
            Some(&i) if i > 0 => Some(self.refs[i as usize - 1]),
            _ => None,
        };
        let Some(Mark {
            start: s,
            end: e,
            height: h,
            ..
        }) = found
        else {
            return Err(DecodeError::new(format!(
                "msgpackr pointer to unknown object id {id}"
            )));
        };
        if e == u32::MAX {
            return Err(DecodeError::new(
                "msgpackr pointer into its own object (a cycle has no plain form)",
            ));
        }
        let height = h as usize;
        if depth + height > MAX_DEPTH {
            return Err(DecodeError::new("value nested too deeply"));
        }
        let (s, e) = (self.base + s as usize, self.base + e as usize);
        self.room(out, e - s)?;
        out.extend_from_within(s..e);
        Ok(Read {
            end,
            undefined: false,
            height,
        })
    }
}

/// Rewrites the count of a map header written at `head` for `n` entries to `kept` (≤ `n`),
/// keeping the header's width so that nothing after it moves (spans recorded for pointers stay
/// valid): a map16/map32 with a small count is still valid MessagePack.
fn patch_map_len(out: &mut [u8], head: usize, n: usize, kept: usize) {
    if kept == n {
        return;
    }
    if n <= 0x0f {
        out[head] = 0x80 | kept as u8;
    } else if n <= u16::MAX as usize {
        out[head + 1..head + 3].copy_from_slice(&(kept as u16).to_be_bytes());
    } else {
        out[head + 1..head + 5].copy_from_slice(&(kept as u32).to_be_bytes());
    }
}

/// Normalises one msgpackr payload into `out` with a throwaway [`Normalizer`] (tests, tools;
/// a connection should keep its own).
pub fn normalize(payload: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    Normalizer::new().normalize_into(payload, max_len, out)
}

// ---------------------------------------------------------------- writing

/// One map of the input, in pre-order.
#[derive(Debug, Clone, Copy)]
struct MapInfo {
    /// First key in `Encoder::keys` (a linked list through `next`), `u32::MAX` if none.
    first: u32,
    n: u32,
    hash: u64,
}

/// One key of a map: its span in the input and the next key of the same map.
#[derive(Debug, Clone, Copy)]
struct KeyRef {
    start: u32,
    end: u32,
    next: u32,
}

/// Converts plain MessagePack payloads into msgpackr's form; keep one per writer and reuse it.
#[derive(Debug)]
pub struct Encoder {
    maps: Vec<MapInfo>,
    keys: Vec<KeyRef>,
    /// Per slot: the index in `maps` of the map whose key list it holds.
    slots: [Option<u32>; RECORD_SLOTS],
    next_slot: usize,
    /// Pass 2: the next map in pre-order.
    cursor: usize,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            maps: Vec::new(),
            keys: Vec::new(),
            slots: [None; RECORD_SLOTS],
            next_slot: 0,
            cursor: 0,
        }
    }
}

impl Encoder {
    /// An encoder with empty scratch state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the msgpackr form of one plain MessagePack payload (one value, typically a
    /// whole frame as our writer produced it) to `out`. On error `out` is left as it was.
    pub fn encode_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        if plain.len() > u32::MAX as usize {
            return Err(DecodeError::new("MessagePack frame too large"));
        }
        self.maps.clear();
        self.keys.clear();
        self.slots = [None; RECORD_SLOTS];
        self.next_slot = 0;
        self.cursor = 0;
        let end = self.collect(plain, 0, 0)?;
        if end != plain.len() {
            return Err(DecodeError::new(
                "trailing bytes after the MessagePack value",
            ));
        }
        let base = out.len();
        if let Err(e) = self.write(plain, 0, out) {
            out.truncate(base);
            return Err(e);
        }
        Ok(())
    }

    /// Converts a run of whole plain frames (prefix and payload each, as the reply builders
    /// append them to an output buffer) into msgpackr frames appended to `out`. Returns how
    /// many bytes of `frames` were converted: all of them, unless the run ends in a partial
    /// frame. On error `out` keeps the frames converted before the bad one.
    pub fn encode_frames_into(
        &mut self,
        frames: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, DecodeError> {
        let mut pos = 0;
        while let Ok(Some((start, end))) = crate::frame::try_decode(&frames[pos..], usize::MAX) {
            let at = crate::frame::begin(out);
            if let Err(e) = self.encode_into(&frames[pos + start..pos + end], out) {
                out.truncate(at);
                return Err(e);
            }
            crate::frame::finish(out, at);
            pos += end;
        }
        Ok(pos)
    }

    /// Pass 1: records every map's key spans, in pre-order.
    fn collect(&mut self, b: &[u8], pos: usize, depth: usize) -> Result<usize, DecodeError> {
        let (h, mut p) = mp_head(b, pos)?;
        match h {
            MpHead::Array { n } => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError::new("value nested too deeply"));
                }
                if n > b.len() - p {
                    return Err(DecodeError::new("truncated MessagePack value"));
                }
                for _ in 0..n {
                    p = self.collect(b, p, depth + 1)?;
                }
            }
            MpHead::Map { n } => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError::new("value nested too deeply"));
                }
                if n.saturating_mul(2) > b.len() - p {
                    return Err(DecodeError::new("truncated MessagePack value"));
                }
                let me = self.maps.len();
                self.maps.push(MapInfo {
                    first: u32::MAX,
                    n: n as u32,
                    hash: 0,
                });
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                let mut last = u32::MAX;
                for _ in 0..n {
                    let (kh, kend) = mp_head(b, p)?;
                    match kh {
                        MpHead::Str { at, len } => {
                            std::str::from_utf8(&b[at..at + len]).map_err(|_| {
                                DecodeError::new("MessagePack string is not valid UTF-8")
                            })?;
                        }
                        MpHead::Int(_) | MpHead::UInt(_) => {}
                        _ => return Err(DecodeError::new("map key is not a string")),
                    }
                    for &byte in &b[p..kend] {
                        hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
                    }
                    hash = (hash ^ 0xff).wrapping_mul(0x0100_0000_01b3);
                    let k = self.keys.len() as u32;
                    self.keys.push(KeyRef {
                        start: p as u32,
                        end: kend as u32,
                        next: u32::MAX,
                    });
                    if last == u32::MAX {
                        self.maps[me].first = k;
                    } else {
                        self.keys[last as usize].next = k;
                    }
                    last = k;
                    p = self.collect(b, kend, depth + 1)?;
                }
                self.maps[me].hash = hash;
            }
            MpHead::Str { at, len } => {
                std::str::from_utf8(&b[at..at + len])
                    .map_err(|_| DecodeError::new("MessagePack string is not valid UTF-8"))?;
            }
            _ => {}
        }
        Ok(p)
    }

    fn same_keys(&self, b: &[u8], x: MapInfo, y: MapInfo) -> bool {
        if x.n != y.n || x.hash != y.hash {
            return false;
        }
        let (mut i, mut j) = (x.first, y.first);
        while i != u32::MAX && j != u32::MAX {
            let (ki, kj) = (self.keys[i as usize], self.keys[j as usize]);
            if b[ki.start as usize..ki.end as usize] != b[kj.start as usize..kj.end as usize] {
                return false;
            }
            i = ki.next;
            j = kj.next;
        }
        i == j
    }

    /// Pass 2: writes the msgpackr form of the value at `pos`; returns its end.
    fn write(&mut self, b: &[u8], pos: usize, out: &mut Vec<u8>) -> Result<usize, DecodeError> {
        let (h, mut p) = mp_head(b, pos)?;
        match h {
            MpHead::Int(i) => write_int(out, i),
            MpHead::UInt(u) => {
                out.push(0xcb);
                out.extend_from_slice(&(u as f64).to_be_bytes());
            }
            MpHead::Array { n } => {
                out.extend_from_slice(&b[pos..p]);
                for _ in 0..n {
                    p = self.write(b, p, out)?;
                }
            }
            MpHead::Map { n } => {
                let me = self.cursor;
                self.cursor += 1;
                let info = self.maps[me];
                let hit = self.slots.iter().position(|s| match s {
                    Some(m) => self.same_keys(b, self.maps[*m as usize], info),
                    None => false,
                });
                match hit {
                    Some(slot) => out.push(RECORD_BASE + slot as u8),
                    None => {
                        let slot = self.next_slot;
                        self.next_slot = (slot + 1) % RECORD_SLOTS;
                        self.slots[slot] = Some(me as u32);
                        out.extend_from_slice(&[0xd4, EXT_RECORD, RECORD_BASE + slot as u8]);
                        mp_len(out, n, 0x90, 0x0f, 0xdc, 0xdd);
                        let mut k = info.first;
                        while k != u32::MAX {
                            let kr = self.keys[k as usize];
                            let key = &b[kr.start as usize..kr.end as usize];
                            match mp_head(key, 0)?.0 {
                                MpHead::Int(i) => write_int(out, i),
                                MpHead::UInt(u) => {
                                    out.push(0xcb);
                                    out.extend_from_slice(&(u as f64).to_be_bytes());
                                }
                                _ => out.extend_from_slice(key),
                            }
                            k = kr.next;
                        }
                    }
                }
                let mut k = info.first;
                while k != u32::MAX {
                    let kr = self.keys[k as usize];
                    p = self.write(b, kr.end as usize, out)?;
                    k = kr.next;
                }
            }
            MpHead::Ext => {
                let c = b[pos];
                let t = match c {
                    0xd4..=0xd8 => b[pos + 1],
                    _ => b[pos + 1 + (1 << (c - 0xc7))],
                };
                if t == EXT_TIMESTAMP {
                    out.extend_from_slice(&b[pos..p]);
                } else {
                    out.push(0xc0);
                }
            }
            _ => out.extend_from_slice(&b[pos..p]),
        }
        Ok(p)
    }
}

/// Appends an integer as msgpackr writes a JavaScript number of that value.
#[inline]
fn write_int(out: &mut Vec<u8>, v: i64) {
    if (0..0x40).contains(&v) || (-32..0).contains(&v) {
        out.push(v as u8);
    } else if (0x40..=0xff).contains(&v) {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if (0x100..=0xffff).contains(&v) {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if (0x1_0000..=0xffff_ffff).contains(&v) {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else if (-0x80..0).contains(&v) {
        out.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if (-0x8000..0).contains(&v) {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if (i32::MIN as i64..0).contains(&v) {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xcb);
        out.extend_from_slice(&(v as f64).to_be_bytes());
    }
}

/// Converts one plain MessagePack payload to msgpackr's form with a throwaway [`Encoder`].
pub fn encode(plain: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    Encoder::new().encode_into(plain, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(b: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        normalize(b, 1 << 20, &mut out).map(|_| out)
    }

    fn enc(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(b, &mut out).unwrap();
        out
    }

    #[test]
    fn the_issue_example() {
        let b = [
            0xd4, 0x72, 0x40, 0x93, 0xa1, b't', 0xa2, b'i', b'd', 0xa4, b'n', b'a', b'm', b'e',
            0xa5, b'h', b'e', b'l', b'l', b'o', 0x01, 0xa1, b'x',
        ];
        let want = [
            0x83, 0xa1, b't', 0xa5, b'h', b'e', b'l', b'l', b'o', 0xa2, b'i', b'd', 0x01, 0xa4,
            b'n', b'a', b'm', b'e', 0xa1, b'x',
        ];
        assert_eq!(norm(&b).unwrap(), want);
        assert_eq!(enc(&want), b);
        assert!(starts_with_record(&b));
        assert!(!starts_with_record(&want));
    }

    #[test]
    fn references_undefined_and_unknown_slots() {
        // [{a:1}, {a:undefined}, 0x41 (no slot: the integer 65)]
        let b = [
            0x93, 0xd4, 0x72, 0x40, 0x91, 0xa1, b'a', 0x01, 0x40, 0xd4, 0x00, 0x00, 0x41,
        ];
        assert_eq!(
            norm(&b).unwrap(),
            [0x93, 0x81, 0xa1, b'a', 0x01, 0x80, 0x41]
        );
        // undefined inside an array is nil; at top level too.
        assert_eq!(norm(&[0x91, 0xd4, 0x00, 0x00]).unwrap(), [0x91, 0xc0]);
        assert_eq!(norm(&[0xd4, 0x00, 0x00]).unwrap(), [0xc0]);
    }

    #[test]
    fn redefinition_replaces_the_slot() {
        // [{a:1}, redefine 0x40 as {b}, 0x40 → {b}]
        let b = [
            0x93, 0xd4, 0x72, 0x40, 0x91, 0xa1, b'a', 0x01, 0xd4, 0x72, 0x40, 0x91, 0xa1, b'b',
            0x02, 0x40, 0x03,
        ];
        assert_eq!(
            norm(&b).unwrap(),
            [0x93, 0x81, 0xa1, b'a', 0x01, 0x81, 0xa1, b'b', 0x02, 0x81, 0xa1, b'b', 0x03]
        );
    }

    #[test]
    fn pointers_expand_within_the_limit() {
        // [ id 1: [7], ptr 1, ptr 1 ]
        let mut b = vec![0x93, 0xd6, 0x69, 0, 0, 0, 1, 0x91, 0x07];
        b.extend_from_slice(&[0xd6, 0x70, 0, 0, 0, 1, 0xd6, 0x70, 0, 0, 0, 1]);
        assert_eq!(
            norm(&b).unwrap(),
            [0x93, 0x91, 0x07, 0x91, 0x07, 0x91, 0x07]
        );
        let mut out = vec![0xee];
        let e = normalize(&b, 6, &mut out).unwrap_err();
        assert!(e.message().contains("limit"), "{}", e.message());
        assert_eq!(out, [0xee], "output restored on error");
        // A pointer into its own object.
        let cyc = [0xd6, 0x69, 0, 0, 0, 1, 0x91, 0xd6, 0x70, 0, 0, 0, 1];
        assert!(norm(&cyc).unwrap_err().message().contains("cycle"));
        // An id marked inside a plain-map key whose value is undefined goes with the field.
        let gone = [
            0x92, 0x81, 0xd6, 0x69, 0, 0, 0, 1, 0xa1, b'k', 0xd4, 0x00, 0x00, 0xd6, 0x70, 0, 0, 0,
            1,
        ];
        assert!(norm(&gone)
            .unwrap_err()
            .message()
            .contains("unknown object id"));
        // A pointer to nothing.
        assert!(norm(&[0xd6, 0x70, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn doubling_pointers_cannot_blow_up() {
        // [ id0:[1], id1:[p0,p0], id2:[p1,p1], … ]: 2^40 elements if unbounded.
        const LEVELS: u32 = 40;
        let mut b = vec![0xdc, 0x00, LEVELS as u8];
        b.extend_from_slice(&[0xd6, 0x69, 0, 0, 0, 0, 0x91, 0x01]);
        for i in 1..LEVELS {
            b.extend_from_slice(&[0xd6, 0x69]);
            b.extend_from_slice(&i.to_be_bytes());
            b.push(0x92);
            for _ in 0..2 {
                b.extend_from_slice(&[0xd6, 0x70]);
                b.extend_from_slice(&(i - 1).to_be_bytes());
            }
        }
        let e = norm(&b).unwrap_err();
        assert!(e.message().contains("limit"), "{}", e.message());
    }

    #[test]
    fn refuses_what_has_no_plain_form() {
        for b in [
            &[0xd4, 0x73, 0x00, 0x90][..],             // Set
            &[0xd4, 0x65, 0x00, 0x90][..],             // Error
            &[0xd5, 0x72, 0x60, 0x01, 0x90][..],       // two-byte record id
            &[0xd4, 0x72, 0x20, 0x90][..],             // record id out of range
            &[0xd4, 0x72, 0x40, 0xa1, b'a'][..],       // definition without key array
            &[0xd4, 0x72, 0x40, 0x91, 0xa1, b'a'][..], // truncated values
            &[0x91][..],
            &[0x01, 0x02][..], // trailing bytes
        ] {
            assert!(norm(b).is_err(), "{b:02x?}");
        }
        // Timestamps stay.
        let ts = [0xd6, 0xff, 0, 0, 0, 1];
        assert_eq!(norm(&ts).unwrap(), ts);
    }

    #[test]
    fn depth_is_bounded() {
        let mut deep = vec![0x91; MAX_DEPTH];
        deep.push(0x01);
        assert!(norm(&deep).is_ok());
        let mut deeper = vec![0x91; MAX_DEPTH + 1];
        deeper.push(0x01);
        assert!(norm(&deeper).is_err());
        let mut rec = vec![0xd4, 0x72, 0x40, 0x91, 0xa1, b'a'];
        rec.extend(std::iter::repeat_n(0x40, MAX_DEPTH));
        rec.push(0x01);
        assert!(norm(&rec).unwrap_err().message().contains("deeply"));
    }

    #[test]
    fn encoder_integers() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (63, &[0x3f]),
            (64, &[0xcc, 0x40]),
            (127, &[0xcc, 0x7f]),
            (255, &[0xcc, 0xff]),
            (256, &[0xcd, 0x01, 0x00]),
            (65536, &[0xce, 0x00, 0x01, 0x00, 0x00]),
            (-1, &[0xff]),
            (-32, &[0xe0]),
            (-33, &[0xd0, 0xdf]),
            (-129, &[0xd1, 0xff, 0x7f]),
            (-32769, &[0xd2, 0xff, 0xff, 0x7f, 0xff]),
            (1 << 32, &[0xcb, 0x41, 0xf0, 0, 0, 0, 0, 0, 0]),
            (
                (1 << 53) - 1,
                &[0xcb, 0x43, 0x3f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for &(v, want) in cases {
            let mut plain = Vec::new();
            crate::msgpack::mp_int(&mut plain, v);
            assert_eq!(enc(&plain), want, "{v}");
        }
        // u64 beyond i64: nearest double.
        let mut plain = vec![0xcf];
        plain.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(enc(&plain)[0], 0xcb);
        // Other extensions become nil; timestamps stay.
        assert_eq!(enc(&[0xd4, 0x73, 0x00]), [0xc0]);
        assert_eq!(enc(&[0xd6, 0xff, 0, 0, 0, 1]), [0xd6, 0xff, 0, 0, 0, 1]);
    }

    #[test]
    fn encoder_converts_runs_of_frames() {
        let mut plain = Vec::new();
        crate::frame::encode_into(
            &[0x81, 0xa1, b't', 0xa4, b'p', b'o', b'n', b'g'],
            &mut plain,
        );
        crate::frame::encode_into(&[0x81, 0xa1, b'a', 0x40], &mut plain);
        plain.extend_from_slice(&[0, 0, 0, 9, 0x81]); // a partial frame stays
        let mut out = vec![0xee];
        let used = Encoder::new().encode_frames_into(&plain, &mut out).unwrap();
        assert_eq!(used, plain.len() - 5);
        let mut want = vec![0xee];
        crate::frame::encode_into(
            &[
                0xd4, 0x72, 0x40, 0x91, 0xa1, b't', 0xa4, b'p', b'o', b'n', b'g',
            ],
            &mut want,
        );
        crate::frame::encode_into(&[0xd4, 0x72, 0x40, 0x91, 0xa1, b'a', 0xcc, 0x40], &mut want);
        assert_eq!(out, want);
    }

    #[test]
    fn encoder_reuses_and_cycles_slots() {
        // [{a:1},{a:2},{}]: one definition, one reference, another definition.
        let plain = [0x93, 0x81, 0xa1, b'a', 0x01, 0x81, 0xa1, b'a', 0x02, 0x80];
        assert_eq!(
            enc(&plain),
            [0x93, 0xd4, 0x72, 0x40, 0x91, 0xa1, b'a', 0x01, 0x40, 0x02, 0xd4, 0x72, 0x41, 0x90]
        );
        // 70 distinct shapes then the first again: the slots wrap, and it round-trips.
        let mut plain = vec![0xdc, 0x00, 71];
        for i in 0..70u8 {
            plain.extend_from_slice(&[0x81, 0xa2, b'k', b'0' + (i % 10), 0xa1, b'a' + i / 10]);
        }
        plain.extend_from_slice(&[0x81, 0xa2, b'k', b'0', 0x01]);
        // Keys k0..k9 with 7 letter groups: 10 distinct shapes only; make them distinct:
        let mut distinct = vec![0xdc, 0x00, 71];
        for i in 0..70u8 {
            distinct.extend_from_slice(&[0x81, 0xa2, b'A' + i / 26, b'a' + i % 26, i & 0x3f]);
        }
        distinct.extend_from_slice(&[0x81, 0xa2, b'A', b'a', 0x05]);
        for p in [plain, distinct] {
            let e = enc(&p);
            assert_eq!(norm(&e).unwrap(), p);
        }
    }
}
