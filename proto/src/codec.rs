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
    fn names() {
        for c in [Codec::Json, Codec::MsgPack] {
            assert_eq!(Codec::from_name(c.name()), Some(c));
        }
        assert_eq!(Codec::from_name("msgpackr"), Some(Codec::MsgPack));
        assert_eq!(Codec::from_name("xml"), None);
    }
}
