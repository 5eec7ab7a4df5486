//! The envelope of PROTOCOL.md §4: frame kinds and decoding a frame's fields in
//! place.
//!
//! A decoded [`Frame`] borrows every field from the payload as [`Raw`] bytes; values
//! are never decoded into a tree here. Field types are checked by the accessors
//! (`need_str`, `opt_ms`, …), which return a [`DecodeError`] naming the field;
//! `request` builds typed requests from them. The encoders at the end of this file
//! ([`FrameWriter`], [`ok_bool`], [`err`], …) are the pre-`response` API, kept as
//! thin wrappers until every caller has switched, then to be removed.

use std::borrow::Cow;

use crate::codec::{Codec, Raw};
pub use crate::compose::{begin_ok, FrameWriter, PROTOCOL_VERSION};
use crate::num::Num;
use crate::response::{Push, Reply};
use crate::value::for_each_field;
use crate::{DecodeError, ErrorCode};

/// A name of up to 8 bytes packed into one integer: up to 7 bytes with the length in
/// the top byte (so that `"get"` and `"get\0"` differ), 8 bytes as they are unless the
/// last is below 8 (where it could pass for a shorter name's length byte). Other names
/// pack to `u64::MAX`, which no tag or field name (all ASCII) packs to. Tags and field
/// names are compared as these (a switch on one integer).
#[inline]
const fn pack_name(s: &[u8]) -> u64 {
    let n = s.len();
    if n > 8 || (n == 8 && s[7] < 8) {
        return u64::MAX;
    }
    let mut v = if n < 8 { (n as u64) << 56 } else { 0 };
    let mut i = 0;
    while i < n {
        v |= (s[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

/// [`pack_name`] at run time: the bytes read as at most two overlapping word loads
/// rather than one shift per byte (the same value; `packs_names_like_the_const_fn`).
#[inline]
fn pack_name_fast(s: &[u8]) -> u64 {
    let n = s.len();
    let le4 = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]) as u64;
    // The second load ends at the last byte and is shifted to its place; where the
    // loads overlap they carry the same bytes at the same positions.
    let body = match n {
        0 => 0,
        1..=3 => {
            s[0] as u64 | (s[n / 2] as u64) << (8 * (n / 2)) | (s[n - 1] as u64) << (8 * (n - 1))
        }
        4..=7 => le4(0) | le4(n - 4) << (8 * (n - 4)),
        8 if s[7] >= 8 => {
            return u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
        }
        _ => return u64::MAX,
    };
    body | (n as u64) << 56
}

macro_rules! kinds {
    ($($variant:ident = $tag:literal,)*) => {
        /// A frame's type tag `t`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Kind {
            $(#[doc = concat!("`", $tag, "`")] $variant,)*
            /// A tag this protocol does not know.
            Unknown,
        }

        impl Kind {
            /// Every known kind, in a fixed order (stats use it as an index).
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            /// Parses a tag.
            #[inline]
            pub fn parse(tag: &[u8]) -> Kind {
                Kind::parse_bytes(tag)
            }

            /// Parses a tag already known to be a string (no second UTF-8 check).
            #[inline]
            pub fn parse_str(tag: &str) -> Kind {
                Kind::parse_bytes(tag.as_bytes())
            }

            /// Parses a tag from its bytes with no UTF-8 check: every known tag is
            /// ASCII, so bytes that are not UTF-8 are `Unknown` as with [`Kind::parse`].
            /// Compares one packed integer per known tag (which the compiler turns
            /// into a switch) rather than a string per tag.
            #[inline]
            pub fn parse_bytes(tag: &[u8]) -> Kind {
                let p = pack_name_fast(tag);
                $(if p == const { pack_name($tag.as_bytes()) } {
                    return Kind::$variant;
                })*
                Kind::Unknown
            }

            /// The wire tag.
            pub fn tag(self) -> &'static str {
                match self {
                    $(Kind::$variant => $tag,)*
                    Kind::Unknown => "unknown",
                }
            }
        }
    };
}

kinds! {
    Hello = "hello",
    Welcome = "welcome",
    Ping = "ping",
    Pong = "pong",
    Ok = "ok",
    Err = "err",
    Stats = "stats",
    Shutdown = "shutdown",
    Get = "get",
    Set = "set",
    Del = "del",
    Has = "has",
    Keys = "keys",
    Scan = "scan",
    Clear = "clear",
    Mget = "mget",
    Mset = "mset",
    Incr = "incr",
    Decr = "decr",
    Cas = "cas",
    Lock = "lock",
    Unlock = "unlock",
    Fset = "fset",
    Fcas = "fcas",
    Fdel = "fdel",
    Sub = "sub",
    Unsub = "unsub",
    Pub = "pub",
    Msg = "msg",
    Reg = "reg",
    Unreg = "unreg",
    Call = "call",
    Invoke = "invoke",
    Result = "result",
    Track = "track",
    Inv = "inv",
}

impl Kind {
    /// Index of a known kind in [`Kind::ALL`] (`None` for `Unknown`).
    #[inline]
    pub fn index(self) -> Option<usize> {
        // Variants are declared in the order of ALL, so the discriminant is the index.
        match self {
            Kind::Unknown => None,
            k => Some(k as usize),
        }
    }
}

/// One decoded frame: its kind and every field it may carry, borrowed.
#[derive(Debug, Clone, Default)]
#[allow(missing_docs)]
pub struct Frame<'a> {
    pub kind: Option<Kind>,
    /// The raw `t` field (for error messages about unknown kinds).
    pub t: Option<Raw<'a>>,
    pub id: Option<Raw<'a>>,
    pub key: Option<Raw<'a>>,
    pub value: Option<Raw<'a>>,
    pub ttl: Option<Raw<'a>>,
    pub by: Option<Raw<'a>>,
    pub prev: Option<Raw<'a>>,
    pub next: Option<Raw<'a>>,
    pub keys: Option<Raw<'a>>,
    pub entries: Option<Raw<'a>>,
    pub channel: Option<Raw<'a>>,
    pub payload: Option<Raw<'a>>,
    pub acks: Option<Raw<'a>>,
    pub name: Option<Raw<'a>>,
    pub token: Option<Raw<'a>>,
    pub pid: Option<Raw<'a>>,
    pub args: Option<Raw<'a>>,
    pub timeout: Option<Raw<'a>>,
    pub wait: Option<Raw<'a>>,
    pub k: Option<Raw<'a>>,
    pub result: Option<Raw<'a>>,
    pub error: Option<Raw<'a>>,
    pub message: Option<Raw<'a>>,
    pub code: Option<Raw<'a>>,
    pub offset: Option<Raw<'a>>,
    pub version: Option<Raw<'a>>,
    pub broker: Option<Raw<'a>>,
    pub seq: Option<Raw<'a>>,
    /// `welcome`'s list of codecs the broker reads (ours).
    pub codecs: Option<Raw<'a>>,
    pub replay: Option<Raw<'a>>,
    pub since: Option<Raw<'a>>,
    /// `welcome`'s shard index and count (ours).
    pub shard: Option<Raw<'a>>,
    pub shards: Option<Raw<'a>>,
    /// `scan`'s fields (ours).
    pub prefix: Option<Raw<'a>>,
    pub limit: Option<Raw<'a>>,
    pub cursor: Option<Raw<'a>>,
}

impl<'a> Frame<'a> {
    /// Decodes a payload in `codec`. Fields are borrowed from `payload`.
    ///
    /// On error the partially decoded frame is lost; [`Frame::decode_partial`] keeps
    /// the id when it was read before the problem.
    pub fn decode(codec: Codec, payload: &'a [u8]) -> Result<Frame<'a>, DecodeError> {
        let (f, r) = Frame::decode_partial(codec, payload);
        r.map(|_| f)
    }

    /// Like [`Frame::decode`], but returns what was read even when decoding failed,
    /// so that an error reply can carry the request's id.
    pub fn decode_partial(codec: Codec, payload: &'a [u8]) -> (Frame<'a>, Result<(), DecodeError>) {
        let mut f = Frame::default();
        let r = f.decode_in_place(codec, payload);
        (f, r)
    }

    /// Like [`Frame::decode_partial`], into a frame the caller owns (which must be
    /// `Frame::default()`): a `Frame` is some 700 bytes, and the broker's per-request
    /// path decodes into one on its stack rather than have it moved out of a return.
    #[inline]
    pub fn decode_in_place(&mut self, codec: Codec, payload: &'a [u8]) -> Result<(), DecodeError> {
        let f = self;
        // Field names are compared as packed integers (a switch, not a string
        // compare per known field).
        const FIELD_T: u64 = pack_name(b"t");
        const FIELD_ID: u64 = pack_name(b"id");
        const FIELD_KEY: u64 = pack_name(b"key");
        const FIELD_VALUE: u64 = pack_name(b"value");
        const FIELD_TTL: u64 = pack_name(b"ttl");
        const FIELD_BY: u64 = pack_name(b"by");
        const FIELD_PREV: u64 = pack_name(b"prev");
        const FIELD_NEXT: u64 = pack_name(b"next");
        const FIELD_KEYS: u64 = pack_name(b"keys");
        const FIELD_ENTRIES: u64 = pack_name(b"entries");
        const FIELD_CHANNEL: u64 = pack_name(b"channel");
        const FIELD_PAYLOAD: u64 = pack_name(b"payload");
        const FIELD_ACKS: u64 = pack_name(b"acks");
        const FIELD_NAME: u64 = pack_name(b"name");
        const FIELD_TOKEN: u64 = pack_name(b"token");
        const FIELD_PID: u64 = pack_name(b"pid");
        const FIELD_ARGS: u64 = pack_name(b"args");
        const FIELD_TIMEOUT: u64 = pack_name(b"timeout");
        const FIELD_WAIT: u64 = pack_name(b"wait");
        const FIELD_K: u64 = pack_name(b"k");
        const FIELD_RESULT: u64 = pack_name(b"result");
        const FIELD_ERROR: u64 = pack_name(b"error");
        const FIELD_MESSAGE: u64 = pack_name(b"message");
        const FIELD_CODE: u64 = pack_name(b"code");
        const FIELD_OFFSET: u64 = pack_name(b"offset");
        const FIELD_VERSION: u64 = pack_name(b"version");
        const FIELD_BROKER: u64 = pack_name(b"broker");
        const FIELD_SEQ: u64 = pack_name(b"seq");
        const FIELD_CODECS: u64 = pack_name(b"codecs");
        const FIELD_REPLAY: u64 = pack_name(b"replay");
        const FIELD_SINCE: u64 = pack_name(b"since");
        const FIELD_SHARD: u64 = pack_name(b"shard");
        const FIELD_SHARDS: u64 = pack_name(b"shards");
        const FIELD_PREFIX: u64 = pack_name(b"prefix");
        const FIELD_LIMIT: u64 = pack_name(b"limit");
        const FIELD_CURSOR: u64 = pack_name(b"cursor");
        let r = for_each_field(codec, payload, |k, v| {
            let slot = match pack_name_fast(k) {
                FIELD_T => {
                    f.kind = Some(match (v.codec, v.bytes.first()) {
                        // A fixstr, already checked to be UTF-8 by the frame's walk.
                        (Codec::MsgPack, Some(0xa0..=0xbf)) => Kind::parse_bytes(&v.bytes[1..]),
                        _ => match v.as_str() {
                            Some(s) => Kind::parse_str(&s),
                            None => Kind::Unknown,
                        },
                    });
                    &mut f.t
                }
                FIELD_ID => &mut f.id,
                FIELD_KEY => &mut f.key,
                FIELD_VALUE => &mut f.value,
                FIELD_TTL => &mut f.ttl,
                FIELD_BY => &mut f.by,
                FIELD_PREV => &mut f.prev,
                FIELD_NEXT => &mut f.next,
                FIELD_KEYS => &mut f.keys,
                FIELD_ENTRIES => &mut f.entries,
                FIELD_CHANNEL => &mut f.channel,
                FIELD_PAYLOAD => &mut f.payload,
                FIELD_ACKS => &mut f.acks,
                FIELD_NAME => &mut f.name,
                FIELD_TOKEN => &mut f.token,
                FIELD_PID => &mut f.pid,
                FIELD_ARGS => &mut f.args,
                FIELD_TIMEOUT => &mut f.timeout,
                FIELD_WAIT => &mut f.wait,
                FIELD_K => &mut f.k,
                FIELD_RESULT => &mut f.result,
                FIELD_ERROR => &mut f.error,
                FIELD_MESSAGE => &mut f.message,
                FIELD_CODE => &mut f.code,
                FIELD_OFFSET => &mut f.offset,
                FIELD_VERSION => &mut f.version,
                FIELD_BROKER => &mut f.broker,
                FIELD_SEQ => &mut f.seq,
                FIELD_CODECS => &mut f.codecs,
                FIELD_REPLAY => &mut f.replay,
                FIELD_SINCE => &mut f.since,
                FIELD_SHARD => &mut f.shard,
                FIELD_SHARDS => &mut f.shards,
                FIELD_PREFIX => &mut f.prefix,
                FIELD_LIMIT => &mut f.limit,
                FIELD_CURSOR => &mut f.cursor,
                _ => return,
            };
            *slot = Some(v);
        });
        let r = r.and_then(|_| match f.kind {
            Some(_) => Ok(()),
            None => Err(DecodeError::new("frame has no type tag `t`")),
        });
        // A JSON `undefined` is expressed by omission; treat an explicit null id as none.
        if f.id.is_some_and(|i| i.is_nil()) {
            f.id = None;
        }
        r
    }

    /// The frame's kind (`Unknown` when `t` was missing or not a string).
    #[inline]
    pub fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::Unknown)
    }
}

/// A required string field.
#[inline]
pub fn need_str<'a>(v: Option<Raw<'a>>, name: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    match v {
        Some(r) => r
            .as_str()
            .ok_or_else(|| DecodeError::new(format!("field `{name}` must be a string"))),
        None => Err(DecodeError::new(format!("missing field `{name}`"))),
    }
}

/// An optional string field (absent or null is `None`).
#[inline]
pub fn opt_str<'a>(
    v: Option<Raw<'a>>,
    name: &'static str,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match v {
        Some(r) if !r.is_nil() => need_str(Some(r), name).map(Some),
        _ => Ok(None),
    }
}

/// A required value field.
#[inline]
pub fn need_value<'a>(v: Option<Raw<'a>>, name: &'static str) -> Result<Raw<'a>, DecodeError> {
    v.ok_or_else(|| DecodeError::new(format!("missing field `{name}`")))
}

/// An optional number field.
#[inline]
pub fn opt_num(v: Option<Raw<'_>>, name: &'static str) -> Result<Option<Num>, DecodeError> {
    match v {
        Some(r) if !r.is_nil() => match r.as_num() {
            Some(n) => Ok(Some(n)),
            None => Err(DecodeError::new(format!("field `{name}` must be a number"))),
        },
        _ => Ok(None),
    }
}

/// An optional non-negative duration in milliseconds (absent/null → `None`;
/// negative or non-finite values are rejected; fractions are truncated).
#[inline]
pub fn opt_ms(v: Option<Raw<'_>>, name: &'static str) -> Result<Option<u64>, DecodeError> {
    match opt_num(v, name)? {
        None => Ok(None),
        Some(Num::Int(i)) if i >= 0 => Ok(Some(i as u64)),
        Some(Num::UInt(u)) => Ok(Some(u)),
        Some(Num::Float(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
        Some(_) => Err(DecodeError::new(format!(
            "field `{name}` must be a non-negative number of milliseconds"
        ))),
    }
}

/// An optional unsigned integer field (for tokens and invoke ids).
#[inline]
pub fn opt_u64(v: Option<Raw<'_>>, name: &'static str) -> Result<Option<u64>, DecodeError> {
    match opt_num(v, name)? {
        None => Ok(None),
        Some(Num::Int(i)) if i >= 0 => Ok(Some(i as u64)),
        Some(Num::UInt(u)) => Ok(Some(u)),
        Some(Num::Float(f)) if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => Ok(Some(f as u64)),
        Some(_) => Err(DecodeError::new(format!(
            "field `{name}` must be a non-negative integer"
        ))),
    }
}

// The builders below predate `response` and are kept as thin wrappers until every
// caller has switched to `response::{Reply, Push, ok_value, ok_with, ...}`.

/// `{"t":"ok","id":ID,"value":true|false}` (see [`Reply::Bool`]).
#[inline]
pub fn ok_bool(codec: Codec, out: &mut Vec<u8>, id: Raw<'_>, v: bool) {
    Reply::Bool(v).encode_into(codec, Some(id), out);
}

/// `{"t":"ok","id":ID}` (value absent; see [`Reply::Ok`]).
#[inline]
pub fn ok_empty(codec: Codec, out: &mut Vec<u8>, id: Raw<'_>) {
    Reply::Ok.encode_into(codec, Some(id), out);
}

/// `{"t":"err","id":ID,"message":TEXT,"code":CODE}`; without an id when `id` is None
/// (see [`Reply::Err`]).
pub fn err(codec: Codec, out: &mut Vec<u8>, id: Option<Raw<'_>>, code: ErrorCode, message: &str) {
    Reply::Err { code, message }.encode_into(codec, id, out);
}

/// Like [`err`], with a code string chosen by a peer (see [`Reply::ErrCode`]).
pub fn err_with_code_str(
    codec: Codec,
    out: &mut Vec<u8>,
    id: Option<Raw<'_>>,
    code: &str,
    message: &str,
) {
    Reply::ErrCode { code, message }.encode_into(codec, id, out);
}

/// `{"t":"pong","id":ID}` (see [`Reply::Pong`]).
pub fn pong(codec: Codec, out: &mut Vec<u8>, id: Option<Raw<'_>>) {
    Reply::Pong.encode_into(codec, id, out);
}

/// `{"t":"ping"}` (a broker heartbeat; see [`Push::Ping`]).
pub fn ping(codec: Codec, out: &mut Vec<u8>) {
    let _ = Push::Ping.encode_into(codec, out);
}

/// `{"t":"welcome","id":ID,"version":4,"broker":NAME,"pid":PID}` (see [`Reply::Welcome`]).
pub fn welcome(codec: Codec, out: &mut Vec<u8>, id: Option<Raw<'_>>, broker: &str, pid: &str) {
    Reply::Welcome {
        broker,
        pid,
        codecs: &[],
        shard: None,
    }
    .encode_into(codec, id, out);
}

/// `{"t":"msg","channel":CH,"payload":P}` (see [`Push::Msg`]).
pub fn msg(
    codec: Codec,
    out: &mut Vec<u8>,
    channel: &str,
    payload: Raw<'_>,
) -> Result<(), DecodeError> {
    Push::Msg {
        channel,
        payload,
        offset: None,
    }
    .encode_into(codec, out)
}

/// `{"t":"invoke","id":N,"name":NAME,"args":ARGS}` (see [`Push::Invoke`]).
pub fn invoke(
    codec: Codec,
    out: &mut Vec<u8>,
    id: u64,
    name: &str,
    args: Raw<'_>,
) -> Result<(), DecodeError> {
    Push::Invoke { id, name, args }.encode_into(codec, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::validate;

    fn json_frame(out: &[u8]) -> &str {
        assert_eq!(
            u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize,
            out.len() - 4
        );
        std::str::from_utf8(&out[4..]).unwrap()
    }

    #[test]
    fn packs_names_like_the_const_fn() {
        let s: Vec<u8> = (1..=20u8).map(|b| b.wrapping_mul(37) | 1).collect();
        for n in 0..=s.len() {
            for start in 0..s.len() - n.min(s.len()) + 1 {
                let name = &s[start..start + n];
                assert_eq!(pack_name_fast(name), pack_name(name), "{name:?}");
            }
        }
        assert_ne!(pack_name_fast(b"get"), pack_name_fast(b"get\0"));
        assert_ne!(pack_name_fast(b"get"), pack_name_fast(b"get\0\0\0\0\x03"));
        assert_eq!(pack_name_fast(b"get\0\0\0\0\x03"), u64::MAX);
        assert_ne!(pack_name_fast(b"shutdown"), u64::MAX);
        assert_ne!(pack_name_fast(b""), pack_name_fast(b"\0"));
    }

    #[test]
    fn kind_parse_bytes_matches_only_exact_tags() {
        for &k in Kind::ALL {
            assert_eq!(Kind::parse_bytes(k.tag().as_bytes()), k);
            assert_eq!(Kind::parse_str(k.tag()), k);
            let mut padded = k.tag().as_bytes().to_vec();
            padded.push(0);
            assert_eq!(Kind::parse_bytes(&padded), Kind::Unknown, "{k:?} + NUL");
            assert_eq!(
                Kind::parse_bytes(&padded[..padded.len() - 2]),
                Kind::Unknown
            );
        }
        assert_eq!(Kind::parse_bytes(b""), Kind::Unknown);
        assert_eq!(Kind::parse_bytes(b"GET"), Kind::Unknown);
        assert_eq!(Kind::parse_bytes(b"shutdownshutdown"), Kind::Unknown);
        assert_eq!(Kind::parse(&[0xff, 0xfe]), Kind::Unknown);
    }

    #[test]
    fn msgpack_frame_fields_decode_by_name_and_reject_bad_utf8() {
        // {"t":"get","id":7,"key":"k\u00e9y","since":null,"x":1}
        let mut p = vec![
            0x85, 0xa1, b't', 0xa3, b'g', b'e', b't', 0xa2, b'i', b'd', 7,
        ];
        p.extend_from_slice(&[0xa3, b'k', b'e', b'y', 0xa4, b'k', 0xc3, 0xa9, b'y']);
        p.extend_from_slice(&[0xa5, b's', b'i', b'n', b'c', b'e', 0xc0]);
        p.extend_from_slice(&[0xa1, b'x', 1]);
        let f = Frame::decode(Codec::MsgPack, &p).unwrap();
        assert_eq!(f.kind(), Kind::Get);
        assert_eq!(f.id.unwrap().bytes, [7]);
        assert_eq!(need_str(f.key, "key").unwrap(), "k\u{e9}y");
        assert!(f.since.unwrap().is_nil());
        // The same frame with a lone continuation byte in the key, and in a long key.
        let mut bad = p.clone();
        bad[17] = 0x80;
        let e = Frame::decode(Codec::MsgPack, &bad).unwrap_err();
        assert_eq!(e.message(), "MessagePack string is not valid UTF-8");
        let mut long = vec![
            0x82, 0xa1, b't', 0xa3, b'g', b'e', b't', 0xa3, b'k', b'e', b'y',
        ];
        long.push(0xb4);
        long.extend_from_slice(b"0123456789abcdef012");
        long.push(0xc3); // truncated two-byte sequence at the end
        assert_eq!(
            Frame::decode(Codec::MsgPack, &long).unwrap_err().message(),
            "MessagePack string is not valid UTF-8"
        );
        let n = long.len();
        long[n - 1] = b'!';
        let f = Frame::decode(Codec::MsgPack, &long).unwrap();
        assert_eq!(need_str(f.key, "key").unwrap(), "0123456789abcdef012!");
        // A tag in a str8 header and an unknown tag.
        let s8 = [0x81, 0xa1, b't', 0xd9, 3, b's', b'e', b't'];
        assert_eq!(
            Frame::decode(Codec::MsgPack, &s8).unwrap().kind(),
            Kind::Set
        );
        let unk = [0x81, 0xa1, b't', 0xa3, b'g', b'e', b'T'];
        assert_eq!(
            Frame::decode(Codec::MsgPack, &unk).unwrap().kind(),
            Kind::Unknown
        );
    }

    #[test]
    fn decodes_request_fields_in_place() {
        let p = br#"{"t":"set","id":9,"key":"k","value":{"a":[1,2]},"ttl":100,"extra":1}"#;
        let f = Frame::decode(Codec::Json, p).unwrap();
        assert_eq!(f.kind(), Kind::Set);
        assert_eq!(f.id.unwrap().bytes, b"9");
        assert_eq!(need_str(f.key, "key").unwrap(), "k");
        assert_eq!(f.value.unwrap().bytes, br#"{"a":[1,2]}"#);
        assert_eq!(opt_ms(f.ttl, "ttl").unwrap(), Some(100));
    }

    #[test]
    fn wrong_field_types_name_the_field() {
        let f = Frame::decode(Codec::Json, br#"{"t":"get","id":1,"key":5,"ttl":-1}"#).unwrap();
        assert!(need_str(f.key, "key")
            .unwrap_err()
            .message()
            .contains("`key`"));
        assert!(opt_ms(f.ttl, "ttl").is_err());
        assert!(Frame::decode(Codec::Json, br#"{"id":1}"#).is_err());
        assert!(Frame::decode(Codec::Json, b"[1]").is_err());
        let (partial, r) = Frame::decode_partial(Codec::Json, br#"{"id":4,"t":"get","key":}"#);
        assert!(r.is_err());
        assert_eq!(partial.id.unwrap().bytes, b"4");
    }

    #[test]
    fn kind_index_matches_all() {
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(k.index(), Some(i));
        }
        assert_eq!(Kind::Unknown.index(), None);
    }

    #[test]
    fn unknown_kind() {
        let f = Frame::decode(Codec::Json, br#"{"t":"frobnicate","id":1}"#).unwrap();
        assert_eq!(f.kind(), Kind::Unknown);
        let f = Frame::decode(Codec::Json, br#"{"t":5,"id":1}"#).unwrap();
        assert_eq!(f.kind(), Kind::Unknown);
    }

    #[test]
    fn golden_replies() {
        let id = validate(Codec::Json, b"12").unwrap();
        let mut out = Vec::new();
        ok_bool(Codec::Json, &mut out, id, true);
        assert_eq!(json_frame(&out), r#"{"t":"ok","id":12,"value":true}"#);
        out.clear();
        ok_empty(Codec::Json, &mut out, id);
        assert_eq!(json_frame(&out), r#"{"t":"ok","id":12}"#);
        out.clear();
        err(
            Codec::Json,
            &mut out,
            Some(id),
            ErrorCode::NotNumber,
            "key `a` is not a number",
        );
        assert_eq!(
            json_frame(&out),
            r#"{"t":"err","id":12,"message":"key `a` is not a number","code":"ENOTNUMBER"}"#
        );
        out.clear();
        welcome(Codec::Json, &mut out, Some(id), "default", "p1");
        assert_eq!(
            json_frame(&out),
            r#"{"t":"welcome","id":12,"version":4,"broker":"default","pid":"p1"}"#
        );
        out.clear();
        let payload = validate(Codec::Json, br#"{"n":1}"#).unwrap();
        msg(Codec::MsgPack, &mut out, "c", payload).unwrap();
        let back: serde_json::Value = rmp_serde::from_slice(&out[4..]).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"t":"msg","channel":"c","payload":{"n":1}})
        );
    }

    #[test]
    fn msgpack_request_decodes() {
        #[derive(serde::Serialize)]
        struct Req<'a> {
            t: &'a str,
            id: u32,
            key: &'a str,
            by: f64,
        }
        let bytes = rmp_serde::to_vec_named(&Req {
            t: "incr",
            id: 3,
            key: "n",
            by: 2.5,
        })
        .unwrap();
        let f = Frame::decode(Codec::MsgPack, &bytes).unwrap();
        assert_eq!(f.kind(), Kind::Incr);
        assert_eq!(opt_num(f.by, "by").unwrap(), Some(Num::Float(2.5)));
        assert_eq!(f.id.unwrap().as_i64(), Some(3));
    }

    fn val(codec: Codec, json: &str) -> Vec<u8> {
        let mut out = Vec::new();
        crate::value::transcode(
            validate(Codec::Json, json.as_bytes()).unwrap(),
            codec,
            &mut out,
        )
        .unwrap();
        out
    }

    #[test]
    fn old_message_builders_write_the_same_bytes() {
        for c in [Codec::Json, Codec::MsgPack] {
            let idb = val(c, "\"req-1\"");
            let id = Raw::new(c, &idb);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            ok_bool(c, &mut a, id, false);
            let mut f = begin_ok(c, &mut b, id, true);
            f.w().bool(false);
            f.finish();
            assert_eq!(a, b);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            ok_empty(c, &mut a, id);
            begin_ok(c, &mut b, id, false).finish();
            assert_eq!(a, b);
        }
    }
}
