//! Request encoding and reply parsing: [`Procmesh`] frames (either codec, through
//! `procmesh-proto`) and [`Resp`] for Redis.
//!
//! Owns nothing but the byte formats. Procmesh replies carry the request id (they may
//! come back in any order); RESP replies come back in request order.

use std::cell::RefCell;

use procmesh_proto::message::{Frame, Kind};
use procmesh_proto::{frame, Acks, Codec, Num, Raw, Request, Writer};

thread_local! {
    /// The encoded value of the request being built (reused: no allocation per request).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One request of a workload; strings borrow the generator's scratch buffers.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// `get key`.
    Get(&'a str),
    /// `set key value`.
    Set(&'a str, &'a str),
    /// `incr key`.
    Incr(&'a str),
    /// `lock key` (procmesh: default ttl, no wait; Redis: `SET key 1 NX PX 30000`).
    Lock(&'a str),
    /// `unlock key` (Redis: `DEL key`).
    Unlock(&'a str),
    /// `pub channel payload` (Redis: `PUBLISH`).
    Pub(&'a str, &'a str),
    /// `call name [arg]` (procmesh only).
    Call(&'a str, &'a str),
    /// `sub channel` (Redis: `SUBSCRIBE`).
    Sub(&'a str),
    /// `reg name` (procmesh only).
    Reg(&'a str),
}

/// What a parsed frame was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyKind {
    /// A successful reply to a request.
    Ok,
    /// An error reply, with its message.
    Err(String),
    /// A pub/sub delivery.
    Msg,
    /// A server heartbeat that wants a pong (procmesh `ping` without id).
    Ping,
    /// Anything else that is not a reply (ignored).
    Other,
}

/// One parsed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request id (procmesh), `None` for RESP and for unsolicited frames.
    pub id: Option<u64>,
    /// What it was.
    pub kind: ReplyKind,
    /// An integer result, when the reply was one (e.g. a publish's delivered count).
    pub int: Option<i64>,
}

/// A protocol the generator speaks.
pub trait Wire: Send {
    /// Whether replies come back in request order (ids are then ignored).
    const ORDERED: bool;
    /// Whether the protocol can express `op`.
    fn supports(op: &Op<'_>) -> bool;
    /// Appends one request.
    fn encode(&self, op: &Op<'_>, id: u64, out: &mut Vec<u8>);
    /// Parses one frame at the start of `buf`: `Ok(None)` when incomplete, else its
    /// length and what it was.
    fn decode(&self, buf: &[u8]) -> Result<Option<(usize, Reply)>, String>;
    /// Appends the answer to a server heartbeat.
    fn pong(&self, out: &mut Vec<u8>);
    /// How many operations one windowed request stands for (see [`ACKS0_BATCH`]).
    fn ops_per_request(&self) -> u64 {
        1
    }
    /// This wire as used by request connection `conn` (a connection's own producer id).
    fn for_connection(self, _conn: usize) -> Self
    where
        Self: Sized,
    {
        self
    }
}

/// Appends `s` (or `[s]` when `in_array`) as one encoded value: string values and
/// arguments travel as values.
#[inline]
fn encode_str(codec: Codec, out: &mut Vec<u8>, s: &str, in_array: bool) {
    let mut w = Writer::new(codec, out);
    if in_array {
        w.begin_array(1);
        w.str(s);
        w.end_array();
    } else {
        w.str(s);
    }
}

/// Publishes per windowed request with `--acks 0`: an acks-0 `pub` has no reply, so
/// one request is this many of them (no id) followed by a `ping` with the request's
/// id, whose `pong` says the broker has processed them (a connection's frames are
/// handled in order). Latencies are then per batch.
pub const ACKS0_BATCH: u64 = 16;

/// The procmesh protocol in one codec.
#[derive(Debug, Clone, Copy)]
pub struct Procmesh {
    /// Codec of the connection.
    pub codec: Codec,
    /// `acks` of the `publish` workload's publishes.
    pub acks: Acks,
    /// Idempotent publishes: `Some` with this connection's producer number, see
    /// [`Procmesh::producer_id`].
    pub producer: Option<u32>,
}

impl Procmesh {
    /// A connection in `codec` that publishes with `acks`, not idempotently.
    pub fn new(codec: Codec, acks: Acks) -> Procmesh {
        Procmesh {
            codec,
            acks,
            producer: None,
        }
    }

    /// The producer id `bench-<os pid>-<n>` written into `buf`: unique per run and
    /// connection, so a persisted broker's dedup state of an earlier run never
    /// takes this run's publishes for duplicates.
    fn producer_id(n: u32, buf: &mut [u8; 40]) -> &str {
        let mut a = itoa::Buffer::new();
        let mut b = itoa::Buffer::new();
        let parts = [
            b"bench-" as &[u8],
            a.format(std::process::id()).as_bytes(),
            b"-",
            b.format(n).as_bytes(),
        ];
        let mut len = 0;
        for p in parts {
            buf[len..len + p.len()].copy_from_slice(p);
            len += p.len();
        }
        std::str::from_utf8(&buf[..len]).expect("invariant: ascii")
    }
}

impl Wire for Procmesh {
    const ORDERED: bool = false;

    fn supports(_: &Op<'_>) -> bool {
        true
    }

    #[inline]
    fn encode(&self, op: &Op<'_>, id: u64, out: &mut Vec<u8>) {
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            let mut pid_buf = [0u8; 40];
            let codec = self.codec;
            let req = match *op {
                Op::Get(k) => Request::Get { key: k.into() },
                Op::Set(k, v) => {
                    encode_str(codec, scratch, v, false);
                    Request::Set {
                        key: k.into(),
                        value: Raw::new(codec, scratch),
                        ttl_ms: None,
                    }
                }
                Op::Incr(k) => Request::Incr {
                    key: k.into(),
                    by: Num::Int(1),
                },
                Op::Lock(k) => Request::Lock {
                    key: k.into(),
                    ttl_ms: None,
                    wait_ms: None,
                },
                Op::Unlock(k) => Request::Unlock { key: k.into() },
                Op::Pub(ch, p) => {
                    encode_str(codec, scratch, p, false);
                    let batch = self.ops_per_request();
                    let pid = self.producer.map(|n| Self::producer_id(n, &mut pid_buf));
                    // Ids are unique per stream: as sequence numbers (from 1) they are
                    // never taken for duplicates (out of order only within the window).
                    let publish = |i: u64| Request::Pub {
                        channel: ch.into(),
                        payload: Some(Raw::new(codec, scratch)),
                        acks: self.acks,
                        pid: pid.map(Into::into),
                        seq: pid.map(|_| id * batch + i + 1),
                    };
                    if self.acks == Acks::None {
                        for i in 0..batch {
                            publish(i)
                                .encode_into(codec, None, out)
                                .expect("invariant: values are encoded in the connection's codec");
                        }
                        Request::Ping
                    } else {
                        publish(0)
                    }
                }
                Op::Call(name, arg) => {
                    encode_str(codec, scratch, arg, true);
                    Request::Call {
                        name: name.into(),
                        args: Some(Raw::new(codec, scratch)),
                        timeout_ms: None,
                    }
                }
                Op::Sub(ch) => Request::Sub {
                    channel: ch.into(),
                    replay: None,
                    since: None,
                },
                Op::Reg(name) => Request::Reg { name: name.into() },
            };
            req.encode_into(codec, Some(id), out)
                .expect("invariant: values are encoded in the connection's codec");
        })
    }

    fn ops_per_request(&self) -> u64 {
        if self.acks == Acks::None {
            ACKS0_BATCH
        } else {
            1
        }
    }

    fn for_connection(self, conn: usize) -> Self {
        Procmesh {
            producer: self.producer.map(|_| conn as u32),
            ..self
        }
    }

    #[inline]
    fn decode(&self, buf: &[u8]) -> Result<Option<(usize, Reply)>, String> {
        let Some((start, end)) =
            frame::try_decode(buf, frame::MAX_FRAME_LEN).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let f = Frame::decode(self.codec, &buf[start..end]).map_err(|e| e.to_string())?;
        let id = f.id.and_then(|r| r.as_i64()).map(|i| i as u64);
        let kind = match f.kind() {
            Kind::Ok | Kind::Welcome | Kind::Pong => ReplyKind::Ok,
            Kind::Err => ReplyKind::Err(
                f.message
                    .and_then(|m| m.as_str())
                    .map_or_else(|| "error without message".to_string(), |m| m.into_owned()),
            ),
            Kind::Msg => ReplyKind::Msg,
            Kind::Ping => ReplyKind::Ping,
            _ => ReplyKind::Other,
        };
        let int = f.value.and_then(|v| v.as_i64());
        Ok(Some((end, Reply { id, kind, int })))
    }

    fn pong(&self, out: &mut Vec<u8>) {
        Request::Pong
            .encode_into(self.codec, None, out)
            .expect("invariant: pong has no values");
    }
}

/// RESP2, as `redis-benchmark` speaks it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resp;

impl Resp {
    #[inline]
    fn command(out: &mut Vec<u8>, parts: &[&[u8]]) {
        out.push(b'*');
        out.extend_from_slice(itoa::Buffer::new().format(parts.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        for p in parts {
            out.push(b'$');
            out.extend_from_slice(itoa::Buffer::new().format(p.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// End of the line starting at `pos` (index of its `\r`), if complete.
#[inline]
fn line_end(buf: &[u8], pos: usize) -> Option<usize> {
    let nl = pos + memchr::memchr(b'\n', &buf[pos..])?;
    if nl == pos || buf[nl - 1] != b'\r' {
        return None;
    }
    Some(nl - 1)
}

fn parse_int(s: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("bad RESP integer {:?}", String::from_utf8_lossy(s)))
}

/// Skips one RESP value at `pos`; returns the position after it, or `None` if incomplete.
fn skip_value(buf: &[u8], pos: usize, depth: usize) -> Result<Option<usize>, String> {
    if pos >= buf.len() {
        return Ok(None);
    }
    if depth > 16 {
        return Err("RESP nesting too deep".into());
    }
    let Some(eol) = line_end(buf, pos) else {
        return Ok(None);
    };
    let after = eol + 2;
    match buf[pos] {
        b'+' | b'-' | b':' => Ok(Some(after)),
        b'$' => {
            let n = parse_int(&buf[pos + 1..eol])?;
            if n < 0 {
                return Ok(Some(after));
            }
            let end = after + n as usize + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        b'*' => {
            let n = parse_int(&buf[pos + 1..eol])?;
            let mut p = after;
            for _ in 0..n.max(0) {
                match skip_value(buf, p, depth + 1)? {
                    Some(q) => p = q,
                    None => return Ok(None),
                }
            }
            Ok(Some(p))
        }
        c => Err(format!("unexpected RESP type byte {c:#04x}")),
    }
}

impl Wire for Resp {
    const ORDERED: bool = true;

    fn supports(op: &Op<'_>) -> bool {
        !matches!(op, Op::Call(..) | Op::Reg(_))
    }

    #[inline]
    fn encode(&self, op: &Op<'_>, _id: u64, out: &mut Vec<u8>) {
        match *op {
            Op::Get(k) => Resp::command(out, &[b"GET", k.as_bytes()]),
            Op::Set(k, v) => Resp::command(out, &[b"SET", k.as_bytes(), v.as_bytes()]),
            Op::Incr(k) => Resp::command(out, &[b"INCR", k.as_bytes()]),
            Op::Lock(k) => {
                Resp::command(out, &[b"SET", k.as_bytes(), b"1", b"NX", b"PX", b"30000"])
            }
            Op::Unlock(k) => Resp::command(out, &[b"DEL", k.as_bytes()]),
            Op::Pub(ch, p) => Resp::command(out, &[b"PUBLISH", ch.as_bytes(), p.as_bytes()]),
            Op::Sub(ch) => Resp::command(out, &[b"SUBSCRIBE", ch.as_bytes()]),
            // `supports` keeps these out; an unknown command makes Redis answer an error.
            Op::Call(name, _) | Op::Reg(name) => {
                Resp::command(out, &[b"PROCMESH-ONLY", name.as_bytes()])
            }
        }
    }

    #[inline]
    fn decode(&self, buf: &[u8]) -> Result<Option<(usize, Reply)>, String> {
        let Some(end) = skip_value(buf, 0, 0)? else {
            return Ok(None);
        };
        let mut int = None;
        let kind = match buf[0] {
            b'-' => ReplyKind::Err(String::from_utf8_lossy(&buf[1..end - 2]).into_owned()),
            b':' => {
                int = Some(parse_int(&buf[1..end - 2])?);
                ReplyKind::Ok
            }
            b'*' if buf.starts_with(b"*3\r\n$7\r\nmessage\r\n") => ReplyKind::Msg,
            _ => ReplyKind::Ok,
        };
        Ok(Some((
            end,
            Reply {
                id: None,
                kind,
                int,
            },
        )))
    }

    fn pong(&self, _out: &mut Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_publishes_carry_the_connections_producer_id_and_the_id_as_seq() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let p = Procmesh {
                producer: Some(0),
                ..Procmesh::new(codec, Acks::All)
            }
            .for_connection(3);
            let mut out = Vec::new();
            p.encode(&Op::Pub("bench", "x"), 41, &mut out);
            let (s, e) = frame::try_decode(&out, frame::MAX_FRAME_LEN)
                .unwrap()
                .unwrap();
            let f = Frame::decode(codec, &out[s..e]).unwrap();
            let pid = format!("bench-{}-3", std::process::id());
            assert_eq!(f.pid.unwrap().as_str().unwrap(), pid.as_str());
            assert_eq!(f.seq.unwrap().as_i64(), Some(42));
            assert_eq!(f.acks.unwrap().as_str().unwrap(), "all");
            // Not idempotent: no producer fields.
            let mut out = Vec::new();
            Procmesh::new(codec, Acks::One).for_connection(3).encode(
                &Op::Pub("bench", "x"),
                41,
                &mut out,
            );
            let f = Frame::decode(codec, &out[4..]).unwrap();
            assert!(f.pid.is_none() && f.seq.is_none());
        }
    }

    #[test]
    fn an_acks0_request_is_a_batch_of_idless_publishes_and_a_ping() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let p = Procmesh::new(codec, Acks::None);
            assert_eq!(p.ops_per_request(), ACKS0_BATCH);
            let mut out = Vec::new();
            p.encode(&Op::Pub("bench", "x"), 9, &mut out);
            let mut frames = Vec::new();
            let mut at = 0;
            while at < out.len() {
                let (s, e) = frame::try_decode(&out[at..], frame::MAX_FRAME_LEN)
                    .unwrap()
                    .unwrap();
                let f = Frame::decode(codec, &out[at + s..at + e]).unwrap();
                frames.push((
                    f.kind(),
                    f.id.and_then(|i| i.as_i64()),
                    f.acks.and_then(|a| a.as_i64()),
                ));
                at += e;
            }
            let mut want = vec![(Kind::Pub, None, Some(0)); ACKS0_BATCH as usize];
            want.push((Kind::Ping, Some(9), None));
            assert_eq!(frames, want);
        }
    }

    #[test]
    fn procmesh_round_trip_both_codecs() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let p = Procmesh::new(codec, Acks::One);
            let mut out = Vec::new();
            p.encode(&Op::Set("key:000000000001", "xxx"), 77, &mut out);
            let (s, e) = frame::try_decode(&out, frame::MAX_FRAME_LEN)
                .unwrap()
                .unwrap();
            let f = Frame::decode(codec, &out[s..e]).unwrap();
            assert_eq!(f.kind(), Kind::Set);
            assert_eq!(f.id.unwrap().as_i64(), Some(77));
            assert_eq!(f.value.unwrap().as_str().unwrap(), "xxx");

            let mut reply = Vec::new();
            procmesh_proto::Reply::UInt(3).encode_into(codec, f.id, &mut reply);
            reply.extend_from_slice(&[0, 0]); // the start of the next frame
            let (len, r) = p.decode(&reply).unwrap().unwrap();
            assert_eq!(len, reply.len() - 2);
            assert_eq!(
                r,
                Reply {
                    id: Some(77),
                    kind: ReplyKind::Ok,
                    int: Some(3)
                }
            );
            assert_eq!(p.decode(&reply[..len - 1]).unwrap(), None);
        }
    }

    #[test]
    fn resp_replies() {
        let r = Resp;
        let mut out = Vec::new();
        r.encode(&Op::Set("k", "vv"), 0, &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n");
        let ok = |b: &[u8]| r.decode(b).unwrap().unwrap();
        assert_eq!(ok(b"+OK\r\n").0, 5);
        assert_eq!(ok(b"$-1\r\n").0, 5);
        assert_eq!(ok(b"$3\r\nxxx\r\n+OK").0, 9);
        assert_eq!(ok(b":42\r\n").1.int, Some(42));
        assert!(matches!(ok(b"-ERR nope\r\n").1.kind, ReplyKind::Err(m) if m == "ERR nope"));
        let msg = b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$3\r\nabc\r\n";
        assert_eq!(
            ok(msg),
            (
                msg.len(),
                Reply {
                    id: None,
                    kind: ReplyKind::Msg,
                    int: None
                }
            )
        );
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n";
        assert_eq!(ok(sub).1.kind, ReplyKind::Ok);
        for cut in 0..msg.len() {
            assert_eq!(r.decode(&msg[..cut]).unwrap(), None, "cut at {cut}");
        }
    }
}
