//! Broker→client frames (PROTOCOL.md §4–§9), written straight into an output buffer.
//!
//! Owns the shapes of replies ([`Reply`] and the streaming builders [`ok_value`],
//! [`ok_with`], [`keys`], [`MgetReply`]) and of the frames the broker sends unasked
//! ([`Push`]: heartbeat `ping`, pub/sub `msg`, RPC `invoke`). It knows nothing about
//! connections or state. Invariants: every function appends exactly one complete
//! frame (length prefix included) or, when a value cannot be converted to `codec`,
//! nothing at all; a reply echoes the request's `id` bytes unchanged when the codec
//! matches.
//!
//! ```text
//! {"t":"ok","id":ID}                          value absent
//! {"t":"ok","id":ID,"value":V}                V: bool, number, null, value, or a map below
//!     {"acquired":B,"token":N|null}           lock
//!     {"ok":true,"offset":N}                  sub
//!     {"values":[V|null,...],"found":[B,...]} mget
//! {"t":"err","id":ID,"message":M,"code":C}
//! {"t":"welcome","id":ID,"version":4,"broker":NAME,"pid":PID}
//! {"t":"pong","id":ID}
//! {"t":"ping"}  {"t":"msg","channel":CH,"payload":P}  {"t":"invoke","id":N,"name":S,"args":A}
//! ```
//! A reply whose request had no `id` has none either (only `err`, `welcome` and
//! `pong` are sent that way).

use crate::compose::{MapEnc, PROTOCOL_VERSION};
use crate::{Codec, DecodeError, ErrorCode, Num, Raw, Writer};

/// A reply to one request, in a shape known in advance.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Reply<'a> {
    /// `ok` with the value absent.
    Ok,
    /// `ok` with value `null`.
    Null,
    /// `ok` with a boolean.
    Bool(bool),
    /// `ok` with an unsigned integer (a count).
    UInt(u64),
    /// `ok` with a number (an `incr` result).
    Num(Num),
    /// `ok` with the lock reply `{"acquired":…,"token":…}`; acquired iff a token.
    Lock {
        /// The fencing token of the grant, `None` when not acquired.
        token: Option<u64>,
    },
    /// `ok` with the sub reply `{"ok":true,"offset":N}`.
    Sub {
        /// The offset high-water mark.
        offset: u64,
    },
    /// `err` with one of our codes.
    Err {
        /// The code.
        code: ErrorCode,
        /// What happened.
        message: &'a str,
    },
    /// `err` with a code string chosen by a peer (an RPC worker's own code).
    ErrCode {
        /// The code string, as the worker sent it.
        code: &'a str,
        /// What happened.
        message: &'a str,
    },
    /// `welcome` (answers `hello`).
    Welcome {
        /// The mesh name of the broker.
        broker: &'a str,
        /// The producer id of the connection.
        pid: &'a str,
        /// The codecs the broker reads, as `"codecs":[…]` (ours: a broker that lists
        /// them re-detects the codec from the frame after `welcome`); omitted when empty.
        codecs: &'a [&'a str],
        /// `(index, count)` of a broker told its place in a sharded mesh, as
        /// `"shard":I,"shards":N` (ours; procmesh-js ignores both); `None` omits them.
        shard: Option<(u32, u32)>,
    },
    /// `pong` (answers `ping`).
    Pong,
}

impl Reply<'_> {
    /// Appends the reply frame; `id` is the request's, echoed (omitted when `None`).
    ///
    /// Inlined: the `ok` shapes (every hot reply) are written with `t` and the keys
    /// known at the call site; `err`, `welcome` and `pong` go out of line.
    #[inline]
    pub fn encode_into(&self, codec: Codec, id: Option<Raw<'_>>, out: &mut Vec<u8>) {
        let mut m = match self {
            Reply::Err { .. } | Reply::ErrCode { .. } | Reply::Welcome { .. } | Reply::Pong => {
                return self.encode_other(codec, id, out)
            }
            _ => MapEnc::begin(codec, out, "ok"),
        };
        m.id(id);
        match *self {
            Reply::Null => m.key("value").nil(),
            Reply::Bool(b) => m.key("value").bool(b),
            Reply::UInt(u) => m.key("value").uint(u),
            Reply::Num(n) => n.write(m.key("value")),
            Reply::Lock { token } => {
                let w = m.key("value");
                w.begin_map(2);
                w.key("acquired");
                w.bool(token.is_some());
                w.key("token");
                match token {
                    Some(t) => w.uint(t),
                    None => w.nil(),
                }
                w.end_map();
            }
            Reply::Sub { offset } => {
                let w = m.key("value");
                w.begin_map(2);
                w.key("ok");
                w.bool(true);
                w.key("offset");
                w.uint(offset);
                w.end_map();
            }
            _ => {}
        }
        m.finish();
    }

    /// The replies that are not `ok`.
    #[inline(never)]
    fn encode_other(&self, codec: Codec, id: Option<Raw<'_>>, out: &mut Vec<u8>) {
        let t = match self {
            Reply::Welcome { .. } => "welcome",
            Reply::Pong => "pong",
            _ => "err",
        };
        let mut m = MapEnc::begin(codec, out, t);
        m.id(id);
        match *self {
            Reply::Err { code, message } => {
                m.key("message").str(message);
                m.key("code").str(code.as_str());
            }
            Reply::ErrCode { code, message } => {
                m.key("message").str(message);
                m.key("code").str(code);
            }
            Reply::Welcome {
                broker,
                pid,
                codecs,
                shard,
            } => {
                m.key("version").int(PROTOCOL_VERSION);
                m.key("broker").str(broker);
                m.key("pid").str(pid);
                if !codecs.is_empty() {
                    let w = m.key("codecs");
                    w.begin_array(codecs.len());
                    for c in codecs {
                        w.str(c);
                    }
                    w.end_array();
                }
                if let Some((index, count)) = shard {
                    m.key("shard").int(i64::from(index));
                    m.key("shards").int(i64::from(count));
                }
            }
            _ => {}
        }
        m.finish();
    }
}

/// `{"t":"ok","id":ID,"value":V}` with an encoded value, transcoded when `v.codec`
/// differs; on a conversion failure nothing is appended.
#[inline]
pub fn ok_value(
    codec: Codec,
    id: Option<Raw<'_>>,
    v: Raw<'_>,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let mut m = MapEnc::begin(codec, out, "ok");
    m.id(id);
    match m.raw("value", v) {
        Ok(()) => {
            m.finish();
            Ok(())
        }
        Err(e) => {
            m.abort();
            Err(e)
        }
    }
}

/// `{"t":"ok","id":ID,"value":…}` where `f` writes exactly one value (for example
/// the stats map).
pub fn ok_with(
    codec: Codec,
    id: Option<Raw<'_>>,
    out: &mut Vec<u8>,
    f: impl FnOnce(&mut Writer<'_>),
) {
    let mut m = MapEnc::begin(codec, out, "ok");
    m.id(id);
    f(m.key("value"));
    m.finish();
}

/// `{"t":"ok","id":ID,"value":[K,...]}`: the `keys` reply.
pub fn keys<'k>(
    codec: Codec,
    id: Option<Raw<'_>>,
    keys: impl ExactSizeIterator<Item = &'k str>,
    out: &mut Vec<u8>,
) {
    ok_with(codec, id, out, |w| {
        w.begin_array(keys.len());
        for k in keys {
            w.str(k);
        }
        w.end_array();
    })
}

/// The `mget` reply `{"values":[...],"found":[...]}`, written one key at a time so
/// that each value can be borrowed from the store only while it is written.
///
/// ```
/// # use procmesh_proto::{response::MgetReply, value::validate, Codec};
/// let mut out = Vec::new();
/// let v = validate(Codec::Json, b"1").unwrap();
/// let mut r = MgetReply::begin(Codec::Json, None, 2, &mut out);
/// r.push(Some(v)).unwrap();
/// r.push(None).unwrap();
/// r.finish();
/// assert_eq!(&out[4..], br#"{"t":"ok","value":{"values":[1,null],"found":[true,false]}}"#);
/// ```
pub struct MgetReply<'o> {
    m: Option<MapEnc<'o>>,
    n: usize,
    i: usize,
    /// Found flags of the first 128 keys, then of the rest.
    found: u128,
    more: Vec<bool>,
}

impl<'o> MgetReply<'o> {
    /// Begins the reply to an `mget` of `n` keys.
    pub fn begin(codec: Codec, id: Option<Raw<'_>>, n: usize, out: &'o mut Vec<u8>) -> Self {
        let mut m = MapEnc::begin(codec, out, "ok");
        m.id(id);
        let w = m.key("value");
        w.begin_map(2);
        w.key("values");
        w.begin_array(n);
        MgetReply {
            m: Some(m),
            n,
            i: 0,
            found: 0,
            more: Vec::new(),
        }
    }

    /// Appends the next key's value (`None`: missing). On a conversion failure the
    /// whole reply is removed from the output and later calls do nothing.
    pub fn push(&mut self, v: Option<Raw<'_>>) -> Result<(), DecodeError> {
        let Some(m) = self.m.as_mut() else {
            return Ok(());
        };
        if self.i >= self.n {
            debug_assert!(false, "invariant: at most n values in an mget reply");
            return Ok(());
        }
        match v {
            Some(v) => {
                if let Err(e) = m.w().raw(v) {
                    if let Some(m) = self.m.take() {
                        m.abort();
                    }
                    return Err(e);
                }
                self.set_found(true);
            }
            None => {
                m.w().nil();
                self.set_found(false);
            }
        }
        self.i += 1;
        Ok(())
    }

    fn set_found(&mut self, b: bool) {
        if self.i < 128 {
            self.found |= (b as u128) << self.i;
        } else {
            self.more.push(b);
        }
    }

    fn was_found(&self, i: usize) -> bool {
        if i < 128 {
            self.found >> i & 1 == 1
        } else {
            self.more[i - 128]
        }
    }

    /// Bytes of the reply written so far (0 once aborted): the broker's reply-size
    /// budget checks it after each value, so a reply never grows far past it.
    #[inline]
    pub fn written(&self) -> usize {
        self.m.as_ref().map_or(0, |m| m.written())
    }

    /// Drops the reply begun, leaving the output as it was before [`MgetReply::begin`].
    pub fn abort(mut self) {
        if let Some(m) = self.m.take() {
            m.abort();
        }
    }

    /// Completes the reply (keys not pushed count as missing).
    pub fn finish(mut self) {
        if self.m.is_none() {
            return;
        }
        while self.i < self.n {
            let _ = self.push(None);
        }
        let Some(mut m) = self.m.take() else {
            return;
        };
        let w = m.w();
        w.end_array();
        w.key("found");
        w.begin_array(self.n);
        for i in 0..self.n {
            w.bool(self.was_found(i));
        }
        w.end_array();
        w.end_map();
        m.finish();
    }
}

/// A frame the broker sends without being asked.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Push<'a> {
    /// `{"t":"ping"}`: the heartbeat.
    Ping,
    /// `{"t":"msg","channel":CH,"payload":P}`: a pub/sub delivery.
    Msg {
        /// The channel published on.
        channel: &'a str,
        /// The payload.
        payload: Raw<'a>,
        /// The retained message's offset (`pubsub.persist`); absent otherwise.
        offset: Option<u64>,
    },
    /// `{"t":"invoke","id":N,"name":S,"args":A}`: an RPC call for a worker.
    Invoke {
        /// The broker-chosen call id the `result` must carry.
        id: u64,
        /// The procedure.
        name: &'a str,
        /// Its arguments.
        args: Raw<'a>,
    },
}

impl Push<'_> {
    /// Appends the frame; on a conversion failure of the payload or args nothing is
    /// appended.
    pub fn encode_into(&self, codec: Codec, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let (t, r) = match *self {
            Push::Ping => {
                MapEnc::begin(codec, out, "ping").finish();
                return Ok(());
            }
            Push::Msg {
                channel,
                payload,
                offset,
            } => {
                let mut m = MapEnc::begin(codec, out, "msg");
                m.key("channel").str(channel);
                let r = m.raw("payload", payload);
                if let Some(o) = offset {
                    m.key("offset").uint(o);
                }
                (m, r)
            }
            Push::Invoke { id, name, args } => {
                let mut m = MapEnc::begin(codec, out, "invoke");
                m.key("id").uint(id);
                m.key("name").str(name);
                let r = m.raw("args", args);
                (m, r)
            }
        };
        match r {
            Ok(()) => {
                t.finish();
                Ok(())
            }
            Err(e) => {
                t.abort();
                Err(e)
            }
        }
    }
}

/// The near-cache invalidation push (ours, docs/protocol.md "Near-cache tracking"),
/// sent only to connections that sent `track`: `keys` changed and are no longer
/// tracked for this connection.
///
/// ```text
/// {"t":"inv","keys":["a","b"]}
/// 0x82 a1 "t" a3 "inv" a4 "keys" 0x92 a1 "a" a1 "b"
/// ```
pub fn inv_keys<'k, I>(codec: Codec, keys: I, out: &mut Vec<u8>)
where
    I: ExactSizeIterator<Item = &'k str>,
{
    let mut m = MapEnc::begin(codec, out, "inv");
    let w = m.key("keys");
    w.begin_array(keys.len());
    for k in keys {
        w.str(k);
    }
    w.end_array();
    m.finish();
}

/// The near-cache "everything changed" push (ours): every key this connection
/// tracked is invalid (after `clear`, or when its tracking state was dropped).
///
/// ```text
/// {"t":"inv","keys":null}
/// 0x82 a1 "t" a3 "inv" a4 "keys" c0
/// ```
pub fn inv_all(codec: Codec, out: &mut Vec<u8>) {
    let mut m = MapEnc::begin(codec, out, "inv");
    m.key("keys").nil();
    m.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{transcode, validate};

    fn val(codec: Codec, json: &str) -> Vec<u8> {
        let j = validate(Codec::Json, json.as_bytes()).unwrap();
        let mut out = Vec::new();
        transcode(j, codec, &mut out).unwrap();
        out
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Every builder, writing one frame in `c` with the request id `12`.
    fn frames(c: Codec) -> Vec<(Vec<u8>, &'static str)> {
        let idb = val(c, "12");
        let id = Some(Raw::new(c, &idb));
        let v = val(c, r#"{"a":[1,"x"]}"#);
        let v = Raw::new(c, &v);
        let mut all = Vec::new();
        let mut one = |f: &dyn Fn(&mut Vec<u8>), json: &'static str| {
            let mut out = Vec::new();
            f(&mut out);
            all.push((out, json));
        };
        one(
            &|o| Reply::Ok.encode_into(c, id, o),
            r#"{"t":"ok","id":12}"#,
        );
        one(
            &|o| Reply::Null.encode_into(c, id, o),
            r#"{"t":"ok","id":12,"value":null}"#,
        );
        one(
            &|o| Reply::Bool(true).encode_into(c, id, o),
            r#"{"t":"ok","id":12,"value":true}"#,
        );
        one(
            &|o| Reply::UInt(300).encode_into(c, id, o),
            r#"{"t":"ok","id":12,"value":300}"#,
        );
        one(
            &|o| Reply::Num(Num::Int(-7)).encode_into(c, id, o),
            r#"{"t":"ok","id":12,"value":-7}"#,
        );
        one(
            &|o| Reply::Num(Num::Float(0.5)).encode_into(c, id, o),
            r#"{"t":"ok","id":12,"value":0.5}"#,
        );
        one(
            &|o| Reply::Num(Num::UInt(u64::MAX)).encode_into(c, id, o),
            r#"{"t":"ok","id":12,"value":18446744073709551615}"#,
        );
        one(
            &|o| Reply::Lock { token: Some(5) }.encode_into(c, id, o),
            r#"{"t":"ok","id":12,"value":{"acquired":true,"token":5}}"#,
        );
        one(
            &|o| Reply::Lock { token: None }.encode_into(c, id, o),
            r#"{"t":"ok","id":12,"value":{"acquired":false,"token":null}}"#,
        );
        one(
            &|o| Reply::Sub { offset: 0 }.encode_into(c, id, o),
            r#"{"t":"ok","id":12,"value":{"ok":true,"offset":0}}"#,
        );
        one(
            &|o| {
                Reply::Err {
                    code: ErrorCode::NotNumber,
                    message: "key `a` is not a number",
                }
                .encode_into(c, id, o)
            },
            r#"{"t":"err","id":12,"message":"key `a` is not a number","code":"ENOTNUMBER"}"#,
        );
        one(
            &|o| {
                Reply::Err {
                    code: ErrorCode::Broker,
                    message: "bad",
                }
                .encode_into(c, None, o)
            },
            r#"{"t":"err","message":"bad","code":"EBROKER"}"#,
        );
        one(
            &|o| {
                Reply::ErrCode {
                    code: "EMINE",
                    message: "worker says no",
                }
                .encode_into(c, id, o)
            },
            r#"{"t":"err","id":12,"message":"worker says no","code":"EMINE"}"#,
        );
        one(
            &|o| {
                Reply::Welcome {
                    broker: "default",
                    pid: "p1",
                    codecs: &[],
                    shard: None,
                }
                .encode_into(c, id, o)
            },
            r#"{"t":"welcome","id":12,"version":4,"broker":"default","pid":"p1"}"#,
        );

        one(
            &|o| Reply::Pong.encode_into(c, id, o),
            r#"{"t":"pong","id":12}"#,
        );
        one(&|o| Reply::Pong.encode_into(c, None, o), r#"{"t":"pong"}"#);
        one(
            &|o| ok_value(c, id, v, o).unwrap(),
            r#"{"t":"ok","id":12,"value":{"a":[1,"x"]}}"#,
        );
        one(
            &|o| {
                ok_with(c, id, o, |w| {
                    w.begin_map(1);
                    w.key("uptimeMs");
                    w.uint(9);
                    w.end_map();
                })
            },
            r#"{"t":"ok","id":12,"value":{"uptimeMs":9}}"#,
        );
        one(
            &|o| keys(c, id, ["a", "b"].into_iter(), o),
            r#"{"t":"ok","id":12,"value":["a","b"]}"#,
        );
        one(
            &|o| keys(c, id, std::iter::empty(), o),
            r#"{"t":"ok","id":12,"value":[]}"#,
        );
        one(
            &|o| {
                let mut r = MgetReply::begin(c, id, 3, o);
                r.push(Some(v)).unwrap();
                r.push(None).unwrap();
                r.push(Some(v)).unwrap();
                r.finish();
            },
            r#"{"t":"ok","id":12,"value":{"values":[{"a":[1,"x"]},null,{"a":[1,"x"]}],"found":[true,false,true]}}"#,
        );
        one(
            &|o| Push::Ping.encode_into(c, o).unwrap(),
            r#"{"t":"ping"}"#,
        );
        one(
            &|o| {
                Push::Msg {
                    channel: "news",
                    payload: v,
                    offset: None,
                }
                .encode_into(c, o)
                .unwrap()
            },
            r#"{"t":"msg","channel":"news","payload":{"a":[1,"x"]}}"#,
        );
        one(
            &|o| {
                Push::Msg {
                    channel: "news",
                    payload: v,
                    offset: Some(42),
                }
                .encode_into(c, o)
                .unwrap()
            },
            r#"{"t":"msg","channel":"news","payload":{"a":[1,"x"]},"offset":42}"#,
        );
        one(
            &|o| Reply::Sub { offset: 7 }.encode_into(c, id, o),
            r#"{"t":"ok","id":12,"value":{"ok":true,"offset":7}}"#,
        );
        one(
            &|o| {
                Push::Invoke {
                    id: 3,
                    name: "add",
                    args: v,
                }
                .encode_into(c, o)
                .unwrap()
            },
            r#"{"t":"invoke","id":3,"name":"add","args":{"a":[1,"x"]}}"#,
        );
        all
    }

    #[test]
    fn inv_pushes_are_golden() {
        let mut o = Vec::new();
        inv_keys(Codec::Json, ["a", "b\"c"].into_iter(), &mut o);
        assert_eq!(&o[4..], br#"{"t":"inv","keys":["a","b\"c"]}"#);
        o.clear();
        inv_all(Codec::Json, &mut o);
        assert_eq!(&o[4..], br#"{"t":"inv","keys":null}"#);
        o.clear();
        inv_keys(Codec::MsgPack, ["a", "b"].into_iter(), &mut o);
        assert_eq!(
            &o[4..],
            &[
                0x82, 0xa1, b't', 0xa3, b'i', b'n', b'v', 0xa4, b'k', b'e', b'y', b's', 0x92, 0xa1,
                b'a', 0xa1, b'b'
            ][..]
        );
        o.clear();
        inv_all(Codec::MsgPack, &mut o);
        assert_eq!(
            &o[4..],
            &[0x82, 0xa1, b't', 0xa3, b'i', b'n', b'v', 0xa4, b'k', b'e', b'y', b's', 0xc0][..]
        );
    }

    #[rustfmt::skip]
    const MSGPACK: &[&str] = &[
    "82a174a26f6ba269640c",
    "83a174a26f6ba269640ca576616c7565c0",
    "83a174a26f6ba269640ca576616c7565c3",
    "83a174a26f6ba269640ca576616c7565cd012c",
    "83a174a26f6ba269640ca576616c7565f9",
    "83a174a26f6ba269640ca576616c7565cb3fe0000000000000",
    "83a174a26f6ba269640ca576616c7565cfffffffffffffffff",
    "83a174a26f6ba269640ca576616c756582a86163717569726564c3a5746f6b656e05",
    "83a174a26f6ba269640ca576616c756582a86163717569726564c2a5746f6b656ec0",
    "83a174a26f6ba269640ca576616c756582a26f6bc3a66f666673657400",
    "84a174a3657272a269640ca76d657373616765b76b657920606160206973206e6f742061206e756d626572a4636f6465aa454e4f544e554d424552",
    "83a174a3657272a76d657373616765a3626164a4636f6465a74542524f4b4552",
    "84a174a3657272a269640ca76d657373616765ae776f726b65722073617973206e6fa4636f6465a5454d494e45",
    "85a174a777656c636f6d65a269640ca776657273696f6e04a662726f6b6572a764656661756c74a3706964a27031",
    "82a174a4706f6e67a269640c",
    "81a174a4706f6e67",
    "83a174a26f6ba269640ca576616c756581a1619201a178",
    "83a174a26f6ba269640ca576616c756581a8757074696d654d7309",
    "83a174a26f6ba269640ca576616c756592a161a162",
    "83a174a26f6ba269640ca576616c756590",
    "83a174a26f6ba269640ca576616c756582a676616c7565739381a1619201a178c081a1619201a178a5666f756e6493c3c2c3",
    "81a174a470696e67",
    "83a174a36d7367a76368616e6e656ca46e657773a77061796c6f616481a1619201a178",
    "84a174a36d7367a76368616e6e656ca46e657773a77061796c6f616481a1619201a178a66f66667365742a",
    "83a174a26f6ba269640ca576616c756582a26f6bc3a66f666673657407",
    "84a174a6696e766f6b65a2696403a46e616d65a3616464a46172677381a1619201a178",
    ];

    fn payload(out: &[u8]) -> &[u8] {
        let (s, e) = crate::frame::try_decode(out, crate::frame::MAX_FRAME_LEN)
            .unwrap()
            .unwrap();
        assert_eq!(e, out.len(), "exactly one frame");
        &out[s..e]
    }

    #[test]
    fn golden_replies_json() {
        for (out, want) in frames(Codec::Json) {
            let p = payload(&out);
            assert_eq!(std::str::from_utf8(p).unwrap(), want);
            assert!(validate(Codec::Json, p).is_ok());
        }
    }

    #[test]
    fn welcome_announces_the_shard_only_when_told() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let mut out = Vec::new();
            Reply::Welcome {
                broker: "m#2",
                pid: "p1",
                codecs: &[],
                shard: Some((2, 8)),
            }
            .encode_into(codec, None, &mut out);
            let p = payload(&out);
            let v: serde_json::Value = match codec {
                Codec::Json => serde_json::from_slice(p).unwrap(),
                _ => rmp_serde::from_slice(p).unwrap(),
            };
            assert_eq!(
                v,
                serde_json::json!({"t":"welcome","version":PROTOCOL_VERSION,"broker":"m#2",
                    "pid":"p1","shard":2,"shards":8})
            );
        }
    }

    #[test]
    fn golden_replies_msgpack() {
        let mut got = Vec::new();
        for (out, want) in frames(Codec::MsgPack) {
            let p = payload(&out);
            let via: serde_json::Value = rmp_serde::from_slice(p).unwrap();
            assert_eq!(
                via,
                serde_json::from_str::<serde_json::Value>(want).unwrap()
            );
            // Our own reader sees the same message as in the JSON golden.
            let ours = validate(Codec::MsgPack, p).unwrap();
            assert!(ours.structurally_eq(&validate(Codec::Json, want.as_bytes()).unwrap()));
            got.push(hex(p));
        }
        assert_eq!(got.len(), MSGPACK.len());
        for (g, w) in got.iter().zip(MSGPACK) {
            assert_eq!(g, w);
        }
    }

    #[test]
    fn failed_conversions_append_nothing() {
        let bad = Raw::new(Codec::MsgPack, &[0xc1]);
        let mut out = vec![1, 2];
        assert!(ok_value(Codec::Json, None, bad, &mut out).is_err());
        assert!(Push::Msg {
            channel: "c",
            payload: bad,
            offset: None,
        }
        .encode_into(Codec::Json, &mut out)
        .is_err());
        assert!(Push::Invoke {
            id: 1,
            name: "f",
            args: bad
        }
        .encode_into(Codec::Json, &mut out)
        .is_err());
        let mut r = MgetReply::begin(Codec::Json, None, 2, &mut out);
        r.push(None).unwrap();
        assert!(r.push(Some(bad)).is_err());
        r.finish();
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn mget_reply_of_many_keys() {
        let one = val(Codec::MsgPack, "1");
        let one = Raw::new(Codec::MsgPack, &one);
        let mut out = Vec::new();
        let n = 300;
        let mut r = MgetReply::begin(Codec::MsgPack, None, n, &mut out);
        for i in 0..n {
            r.push((i % 3 == 0).then_some(one)).unwrap();
        }
        r.finish();
        let back: serde_json::Value = rmp_serde::from_slice(payload(&out)).unwrap();
        let found = back["value"]["found"].as_array().unwrap();
        assert_eq!(found.len(), n);
        for (i, f) in found.iter().enumerate() {
            assert_eq!(f.as_bool(), Some(i % 3 == 0));
            assert_eq!(back["value"]["values"][i].is_null(), i % 3 != 0);
        }
    }
}
