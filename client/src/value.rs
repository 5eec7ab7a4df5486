//! Serde values to and from the wire codecs.
//!
//! Owns the mapping between user types and encoded bytes: MessagePack through
//! `rmp_serde`'s named encoding (structs become maps, as a JSON peer expects) and
//! JSON through `serde_json`. Encoded bytes are embedded into request frames as
//! they are; replies are decoded straight from the reply's bytes.

use procmesh_proto::{Codec, Raw};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ClientError, Result};

/// First capacity of an encoded value: most values fit, and a larger one
/// grows from here instead of from 8 bytes (`rmp_serde::to_vec_named` starts
/// empty).
const VALUE_CAPACITY: usize = 128;

/// Encodes `v` as one value in `codec`.
pub(crate) fn encode<T: Serialize + ?Sized>(codec: Codec, v: &T) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(VALUE_CAPACITY);
    match codec {
        Codec::Json => {
            serde_json::to_writer(&mut bytes, v).map_err(|e| ClientError::Encode(e.to_string()))?
        }
        Codec::MsgPack => rmp_serde::encode::write_named(&mut bytes, v)
            .map_err(|e| ClientError::Encode(e.to_string()))?,
    }
    // The broker accepts only values both codecs can carry (no MessagePack ext,
    // string map keys); check here so the error names the cause, not the broker.
    procmesh_proto::value::validate(codec, &bytes)
        .map_err(|e| ClientError::Encode(e.message().to_owned()))?;
    Ok(bytes)
}

/// Decodes one value into `T`.
pub(crate) fn decode<T: DeserializeOwned>(raw: Raw<'_>) -> Result<T> {
    match raw.codec {
        Codec::Json => {
            serde_json::from_slice(raw.bytes).map_err(|e| ClientError::Decode(e.to_string()))
        }
        Codec::MsgPack => {
            rmp_serde::from_slice(raw.bytes).map_err(|e| ClientError::Decode(e.to_string()))
        }
    }
}

/// Encoded null in `codec`.
pub(crate) fn null(codec: Codec) -> Raw<'static> {
    match codec {
        Codec::Json => Raw::new(Codec::Json, b"null"),
        Codec::MsgPack => Raw::new(Codec::MsgPack, &[0xc0]),
    }
}

/// Encoded empty array in `codec` (an absent argument list).
pub(crate) fn empty_array(codec: Codec) -> Raw<'static> {
    match codec {
        Codec::Json => Raw::new(Codec::Json, b"[]"),
        Codec::MsgPack => Raw::new(Codec::MsgPack, &[0x90]),
    }
}

/// Encodes RPC arguments as an array: a value that serializes to an array (a
/// tuple, `Vec`, slice) is the argument list; `()` is no arguments; anything
/// else is the one argument.
pub(crate) fn encode_args<A: Serialize + ?Sized>(codec: Codec, args: &A) -> Result<Vec<u8>> {
    let bytes = encode(codec, args)?;
    let raw = Raw::new(codec, &bytes);
    if raw.array().is_some() {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 2);
    let mut w = procmesh_proto::Writer::new(codec, &mut out);
    if raw.is_nil() {
        w.begin_array(0);
    } else {
        w.begin_array(1);
        w.raw_same(&bytes);
    }
    w.end_array();
    Ok(out)
}

/// Decodes an RPC argument array into a handler's `A`: the whole array when
/// that fits `A` (tuples, `Vec`), else its only element, else `()`-like null
/// for an empty list.
pub(crate) fn decode_args<A: DeserializeOwned>(args: Raw<'_>) -> Result<A> {
    let whole = decode::<A>(args);
    if whole.is_ok() {
        return whole;
    }
    if let Some(mut items) = args.array() {
        match (items.next(), items.next()) {
            (Some(one), None) => {
                if let Ok(v) = decode::<A>(one) {
                    return Ok(v);
                }
            }
            (None, _) => {
                if let Ok(v) = decode::<A>(null(args.codec)) {
                    return Ok(v);
                }
            }
            _ => {}
        }
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct User {
        name: String,
        age: u32,
        tags: Vec<String>,
    }

    #[test]
    fn structs_are_maps_in_both_codecs() {
        let u = User {
            name: "ann".into(),
            age: 7,
            tags: vec!["a".into()],
        };
        for codec in [Codec::Json, Codec::MsgPack] {
            let b = encode(codec, &u).unwrap();
            let raw = Raw::new(codec, &b);
            assert!(raw.map().is_some(), "{codec:?}");
            assert_eq!(decode::<User>(raw).unwrap(), u);
            // A value written in one codec reads back in the other after transcoding.
            let other = if codec == Codec::Json {
                Codec::MsgPack
            } else {
                Codec::Json
            };
            let mut t = Vec::new();
            procmesh_proto::value::transcode(raw, other, &mut t).unwrap();
            assert_eq!(decode::<User>(Raw::new(other, &t)).unwrap(), u);
        }
    }

    #[test]
    fn args_are_always_an_array() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let two = encode_args(codec, &(1, "x")).unwrap();
            assert_eq!(
                decode::<(i32, String)>(Raw::new(codec, &two)).unwrap(),
                (1, "x".into())
            );
            let one = encode_args(codec, &5).unwrap();
            assert_eq!(decode::<Vec<i32>>(Raw::new(codec, &one)).unwrap(), vec![5]);
            let none = encode_args(codec, &()).unwrap();
            assert_eq!(
                decode::<Vec<i32>>(Raw::new(codec, &none)).unwrap(),
                Vec::<i32>::new()
            );
            // Handlers: a tuple takes the list, a plain type takes the one element,
            // () takes the empty list.
            assert_eq!(
                decode_args::<(i32, String)>(Raw::new(codec, &two)).unwrap(),
                (1, "x".into())
            );
            assert_eq!(decode_args::<i32>(Raw::new(codec, &one)).unwrap(), 5);
            decode_args::<()>(Raw::new(codec, &none)).unwrap();
            assert!(decode_args::<String>(Raw::new(codec, &two)).is_err());
        }
    }

    #[test]
    fn json_text_matches_node() {
        let b = encode(Codec::Json, &serde_json::json!({"a": [1, 2.5, null]})).unwrap();
        assert_eq!(b, br#"{"a":[1,2.5,null]}"#);
    }
}
