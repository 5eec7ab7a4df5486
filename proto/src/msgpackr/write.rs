//! plain MessagePack → msgpackr: the [`Encoder`] (see the module above for the forms).

use super::{EXT_RECORD, EXT_TIMESTAMP, RECORD_BASE, RECORD_SLOTS};
use crate::codec::MAX_DEPTH;
use crate::msgpack::{mp_head, mp_len, MpHead};
use crate::DecodeError;

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
