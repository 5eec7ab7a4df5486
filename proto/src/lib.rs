//! `procmesh-proto`: the procmesh wire format, with no I/O and no threads.
//!
//! Every frame is a 4-byte big-endian length and one encoded map, in JSON or
//! MessagePack (see `docs/protocol.md`). Values travel as bytes: a [`Raw`] is a
//! validated slice that the broker stores as is and converts only when a reader
//! speaks the other codec.
//!
//! # Layout
//! - [`frame`]: length prefix and size limit.
//! - [`codec`]: the two codecs, detection, and the [`Writer`] that encodes either.
//! - [`value`]: validation, scalar access, transcoding and structural equality of raw values.
//! - [`message`]: frame kinds and in-place decoding of a frame's fields (the envelope).
//! - [`request`]: typed client→broker messages ([`Request`]): decode from a frame, encode a frame.
//! - [`response`]: broker→client frames ([`Reply`], [`Push`] and streaming reply builders).
//! - [`error`]: the stable error codes and [`DecodeError`].
//! - [`hash`]: FNV-1a over UTF-16 code units, exactly as the Node.js package.
//! - [`topic`]: channel pattern matching.
//! - [`addr`]: socket addresses of meshes and shards.
//!
//! # Example
//! ```
//! use procmesh_proto::{frame, message::{Frame, Kind, need_str}, Codec};
//!
//! let mut buf = Vec::new();
//! frame::encode_into(br#"{"t":"get","id":1,"key":"user:1"}"#, &mut buf);
//! let (start, end) = frame::try_decode(&buf, frame::MAX_FRAME_LEN).unwrap().unwrap();
//! let payload = &buf[start..end];
//! let codec = Codec::detect(payload[0]).unwrap();
//! let f = Frame::decode(codec, payload).unwrap();
//! assert_eq!(f.kind(), Kind::Get);
//! assert_eq!(need_str(f.key, "key").unwrap(), "user:1");
//! assert_eq!(procmesh_proto::hash::fnv1a("a"), 0xe40c292c);
//! ```
#![deny(missing_docs)]

pub mod addr;
pub mod codec;
pub mod error;
pub mod frame;
pub mod hash;
pub mod message;
pub mod request;
pub mod response;
pub mod topic;
pub mod value;

pub use codec::{Codec, Writer};
pub use error::{DecodeError, ErrorCode};
pub use message::{Frame, Kind};
pub use request::{Acks, Request};
pub use response::{Push, Reply};
pub use value::{Num, Raw, Value};
