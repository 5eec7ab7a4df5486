//! msgpackr → plain MessagePack: the [`Normalizer`] (see the module above for the forms).

use super::{
    EXT_OBJECT_ID, EXT_POINTER, EXT_RECORD, EXT_TIMESTAMP, EXT_UNDEFINED, RECORD_BASE, RECORD_SLOTS,
};
use crate::codec::MAX_DEPTH;
use crate::msgpack::{mp_head, mp_len, need, MpHead};
use crate::DecodeError;

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
