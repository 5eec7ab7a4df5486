//! The two codecs (PROTOCOL.md §3) and [`Raw`], a value's bytes in one of them.
//!
//! Owns codec detection and naming, and the nesting limit both codecs share. It
//! knows nothing about reading or writing bytes: `json` and `msgpack` do that,
//! `transcode` converts between them, `writer` encodes either, `value` reads
//! scalars and structure out of a [`Raw`]. Depends on nothing in this crate.

/// Deepest container nesting accepted inside one value.
pub const MAX_DEPTH: usize = 100;

/// A wire codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// UTF-8 JSON text (the Node.js package's default).
    Json,
    /// MessagePack with string-keyed maps.
    MsgPack,
}

impl Codec {
    /// Detects the codec from the first byte of a connection's first payload:
    /// `{` is JSON; `0x80..=0x8f`, `0xde`, `0xdf` begin a MessagePack map.
    #[inline]
    pub fn detect(first: u8) -> Option<Codec> {
        match first {
            b'{' => Some(Codec::Json),
            0x80..=0x8f | 0xde | 0xdf => Some(Codec::MsgPack),
            _ => None,
        }
    }

    /// Detects a connection's dialect from its first payload: what [`Codec::detect`] accepts,
    /// plus a msgpackr record (`d4 72 …`, how procmesh-js with `codec: 'msgpack'` writes every
    /// object) as MessagePack with records. Read such a peer's frames through
    /// `msgpackr::Normalizer` and write to it through `msgpackr::Encoder`.
    #[inline]
    pub fn detect_payload(payload: &[u8]) -> Option<Dialect> {
        match payload {
            [0xd4, 0x72, _, ..] => Some(Dialect::MSGPACKR),
            [first, ..] => Codec::detect(*first).map(|codec| Dialect {
                codec,
                records: false,
            }),
            [] => None,
        }
    }

    /// The codec's name as used in options (`"json"`, `"msgpack"`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        }
    }

    /// Parses a codec name (`json`, `msgpack`).
    pub fn from_name(name: &str) -> Option<Codec> {
        match name {
            "json" => Some(Codec::Json),
            "msgpack" | "msgpackr" => Some(Codec::MsgPack),
            _ => None,
        }
    }
}

/// How a peer encodes frames on the wire: a [`Codec`] and, for MessagePack, whether it is
/// msgpackr's record dialect (maps as record extensions, `undefined`, structured-clone
/// references). Inside procmesh values are always plain [`Codec`] bytes; the dialect only
/// says how to convert at the connection's edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dialect {
    /// The codec of the frames once normalised.
    pub codec: Codec,
    /// True for msgpackr records (only with [`Codec::MsgPack`]).
    pub records: bool,
}

impl Dialect {
    /// JSON text.
    pub const JSON: Dialect = Dialect {
        codec: Codec::Json,
        records: false,
    };
    /// Plain MessagePack (maps are maps).
    pub const MSGPACK: Dialect = Dialect {
        codec: Codec::MsgPack,
        records: false,
    };
    /// msgpackr as procmesh-js writes it (`new Packr({ structuredClone: true })`).
    pub const MSGPACKR: Dialect = Dialect {
        codec: Codec::MsgPack,
        records: true,
    };

    /// The dialect's name: `"json"`, `"msgpack"`, `"msgpackr"`.
    pub fn name(self) -> &'static str {
        if self.records {
            "msgpackr"
        } else {
            self.codec.name()
        }
    }
}

impl From<Codec> for Dialect {
    fn from(codec: Codec) -> Dialect {
        Dialect {
            codec,
            records: false,
        }
    }
}

/// One encoded value: its codec and exactly its bytes.
///
/// Accessors (`as_str`, `array`, `structurally_eq`, …) are in `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a> {
    /// The codec of `bytes`.
    pub codec: Codec,
    /// The value's bytes, validated by `value::scan`.
    pub bytes: &'a [u8],
}

impl<'a> Raw<'a> {
    /// Wraps bytes known to hold exactly one valid value (for example bytes taken
    /// from a store that validated them on the way in).
    #[inline]
    pub fn new(codec: Codec, bytes: &'a [u8]) -> Self {
        Raw { codec, bytes }
    }

    /// True for null.
    #[inline]
    pub fn is_nil(&self) -> bool {
        match self.codec {
            Codec::Json => self.bytes == b"null",
            Codec::MsgPack => self.bytes == [0xc0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_codecs() {
        assert_eq!(Codec::detect(b'{'), Some(Codec::Json));
        assert_eq!(Codec::detect(0x82), Some(Codec::MsgPack));
        assert_eq!(Codec::detect(0xde), Some(Codec::MsgPack));
        assert_eq!(Codec::detect(b'['), None);
        assert_eq!(Codec::detect(0x92), None);
    }

    #[test]
    fn detects_dialects() {
        let hello = [0xd4, 0x72, 0x40, 0x93, 0xa1, b't'];
        assert_eq!(Codec::detect_payload(&hello), Some(Dialect::MSGPACKR));
        assert_eq!(Codec::detect_payload(b"{}"), Some(Dialect::JSON));
        assert_eq!(Codec::detect_payload(&[0x81]), Some(Dialect::MSGPACK));
        assert_eq!(Codec::detect_payload(&[0xd4, 0x72]), None);
        assert_eq!(Codec::detect_payload(&[0xd4, 0x00, 0x00]), None);
        assert_eq!(Codec::detect_payload(&[]), None);
        assert_eq!(Dialect::MSGPACKR.name(), "msgpackr");
        assert_eq!(Dialect::from(Codec::Json), Dialect::JSON);
    }

    #[test]
    fn names() {
        for c in [Codec::Json, Codec::MsgPack] {
            assert_eq!(Codec::from_name(c.name()), Some(c));
        }
        assert_eq!(Codec::from_name("msgpackr"), Some(Codec::MsgPack));
        assert_eq!(Codec::from_name("xml"), None);
    }
}
