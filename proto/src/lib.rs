//! `procmesh-proto`: the procmesh wire format, with no I/O, no threads, no
//! environment reads and no `unsafe`.
//!
//! Every frame is a 4-byte big-endian length and one encoded map, in JSON or
//! MessagePack (see `docs/protocol.md`). Values travel as bytes: a [`Raw`] is a
//! validated slice that the broker stores as is and converts only when a reader
//! speaks the other codec.
//!
//! # Layout
//! Files import one way: `codec`, `num`, `error`, `frame` import nothing of ours;
//! the readers and writers of each format build on them; messages on top.
//! - [`frame`]: length prefix and size limit.
//! - [`codec`]: the two codecs, detection, and [`Raw`] (a value's bytes in one).
//! - `json`, `msgpack` (private): reader and writer primitives of each format.
//! - [`msgpackr`]: procmesh-js's MessagePack dialect (records, `undefined`, structured-clone
//!   references) to and from plain MessagePack, at a connection's edge.
//! - [`transcode`]: conversion of a value between the codecs.
//! - [`value`]: validation, scalar access, structure and equality of raw values.
//! - [`num`]: [`Num`] and its JavaScript-compatible arithmetic.
//! - [`writer`]: [`Writer`], which encodes either codec.
//! - [`message`]: the envelope: frame kinds and in-place decoding of a frame's fields.
//! - [`request`]: typed client→broker messages ([`Request`]): decode from a frame, encode a frame.
//! - [`response`]: broker→client frames ([`Reply`], [`Push`] and streaming reply builders).
//! - [`error`]: the stable error codes and [`DecodeError`].
//! - [`hash`]: FNV-1a over UTF-16 code units, exactly as the Node.js package.
//! - [`topic`]: channel pattern matching.
//! - [`addr`]: socket addresses of meshes and shards, from an environment passed in.
//!
//! # Example
//! ```
//! use procmesh_proto::{frame, Codec, Frame, Reply, Request};
//!
//! // A client encodes a request…
//! let mut buf = Vec::new();
//! Request::Get { key: "user:1".into() }.encode_into(Codec::Json, Some(1), &mut buf)?;
//! // …the broker takes one frame off its read buffer, decodes the envelope, then the request…
//! let (start, end) = frame::try_decode(&buf, frame::MAX_FRAME_LEN)?.unwrap();
//! let payload = &buf[start..end];
//! let codec = Codec::detect(payload[0]).unwrap();
//! let f = Frame::decode(codec, payload)?;
//! let req = Request::from_frame(f.kind(), &f)?;
//! assert_eq!(req, Request::Get { key: "user:1".into() });
//! // …and answers with a reply builder, echoing the id.
//! let mut out = Vec::new();
//! Reply::Ok.encode_into(codec, f.id, &mut out);
//! assert_eq!(&out[4..], br#"{"t":"ok","id":1}"#);
//! assert_eq!(procmesh_proto::hash::fnv1a("a"), 0xe40c292c);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod addr;
pub mod codec;
mod compose;
pub mod error;
pub mod frame;
pub mod hash;
mod json;
pub mod message;
mod msgpack;
pub mod msgpackr;
pub mod num;
pub mod request;
pub mod response;
pub mod stats;
pub mod topic;
pub mod transcode;
pub mod value;
pub mod writer;

pub use codec::{Codec, Dialect, Raw};
pub use error::{DecodeError, ErrorCode};
pub use message::{Frame, Kind};
pub use num::Num;
pub use request::{Acks, Request, REPLAY_ALL};
pub use response::{Push, Reply};
pub use value::Value;
pub use writer::Writer;
