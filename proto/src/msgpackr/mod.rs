//! msgpackr, the MessagePack dialect procmesh-js writes (`new Packr({ structuredClone: true })`),
//! converted to and from plain MessagePack at the edge of a connection.
//!
//! Owns the dialect's byte forms and nothing else: inside the broker every value stays
//! self-contained plain MessagePack (a record may reference a structure defined earlier in
//! the same frame, so its bytes mean nothing alone). Both directions work on one whole frame
//! payload, run in linear time, recurse at most [`MAX_DEPTH`](crate::value::MAX_DEPTH) containers deep and append to a
//! caller's buffer; the scratch state lives in a reusable [`Normalizer`] / [`Encoder`], so a
//! connection that keeps one of each allocates nothing per frame once warm.
//!
//! Reading ([`Normalizer`], msgpackr → plain):
//! - `d4 72 id` + key array + values: a record definition (id `0x40..=0x7f`); it fills the slot
//!   `id`, replacing an earlier definition of the same slot. It becomes a plain map.
//! - a bare byte `0x40..=0x7f`: a reference to the record in that slot, followed by its values;
//!   with the slot empty it is the integer itself (as msgpackr reads it).
//! - `d4 00 xx` (undefined): as a map value the field is omitted (absent); elsewhere `nil`.
//!   (A map of 16 or more keys that loses fields keeps its map16/map32 header: still valid
//!   MessagePack, and nothing after it has to move.)
//! - `d6 69 id` + value (structured-clone object id) and `d6 70 id` (a pointer to it): the value
//!   is copied at every pointer. The output may not exceed the caller's limit, so a small frame
//!   cannot expand into a huge one; a pointer into its own object (a cycle) is an error.
//! - `cc XX` with XX < 0x80 becomes the one-byte integer (plain MessagePack's form); timestamp
//!   extensions (type −1, JavaScript `Date`) stay as they are.
//! - anything else msgpackr-specific (two-byte record ids, `Set`, `Error`, `RegExp`, typed
//!   arrays, big integers beyond 64 bits, unknown extensions) is a [`DecodeError`](crate::DecodeError) naming it.
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
//! Files: `read.rs` (the [`Normalizer`]), `write.rs` (the [`Encoder`]); both directions are
//! tested together here.
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

mod read;
mod write;

pub use read::{normalize, Normalizer};
pub use write::{encode, Encoder};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::MAX_DEPTH;
    use crate::DecodeError;

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
