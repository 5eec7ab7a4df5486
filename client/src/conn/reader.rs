//! The reader thread of one [`Conn`]: reads every inbound frame and routes it.
//!
//! Owns liveness (pings when the broker is quiet, a deadline for any inbound
//! byte) and the routing of frames: a reply goes to its request's slot in
//! `pending`, `msg` to the matching subscriptions (on the dispatch thread),
//! `invoke` to the handler pool, `inv` to the near cache (applied here, in order
//! with the replies: see `near`), a broker `ping` is answered at once. Each
//! frame is decoded once, here: a waiting caller receives only the reply's
//! `value` bytes ([`Reply`]), never the frame to parse again. When the socket
//! dies, `link` fails what is in flight and reconnects, and reading resumes on
//! the new socket.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use procmesh_proto::message::{opt_str, opt_u64};
use procmesh_proto::msgpackr::Normalizer;
use procmesh_proto::{frame as wire_frame, Codec, DecodeError, Frame, Kind, Raw, Request, Writer};

use super::buf::ReadBuf;
use super::Conn;
use crate::dispatch::Message;
use crate::error::{ClientError, HandlerError};
use crate::event::Event;
use crate::pending::{lock, Pending, Reply};

/// The reader thread's body: read until the socket dies, then let `link`
/// reconnect; exit when the connection is closed for good.
pub(super) fn run(conn: Arc<Conn>, mut stream: UnixStream, mut buf: ReadBuf) {
    loop {
        let generation = lock(&conn.io).generation;
        let reason = conn.read_loop(&mut stream, &mut buf, generation);
        let _ = stream.shutdown(Shutdown::Both);
        match conn.after_disconnect(reason) {
            Some((s, b)) => {
                stream = s;
                buf = b;
            }
            None => return,
        }
    }
}

impl Conn {
    /// Reads and handles frames until the connection dies; returns why.
    fn read_loop(
        self: &Arc<Self>,
        s: &mut UnixStream,
        buf: &mut ReadBuf,
        generation: u64,
    ) -> String {
        let interval = self.shared.settings.ping_interval.filter(|d| !d.is_zero());
        let _ = s.set_read_timeout(interval.map(|d| (d / 2).max(Duration::from_millis(1))));
        let mut last_inbound = Instant::now();
        let mut ping_sent = false;
        let mut records = Records::default();
        loop {
            loop {
                match buf.next_frame() {
                    Ok(Some(payload)) => self.handle(payload, generation, &mut records),
                    Ok(None) => break,
                    Err(e) => return format!("bad frame from the broker: {e}"),
                }
            }
            match buf.fill_from(s) {
                Ok(0) => return "the broker closed the connection".into(),
                Ok(_) => {
                    last_inbound = Instant::now();
                    ping_sent = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let Some(iv) = interval else { continue };
                    let idle = last_inbound.elapsed();
                    if idle >= iv * 2 {
                        return format!("no answer from the broker for {} ms", idle.as_millis());
                    }
                    if idle >= iv && !ping_sent {
                        // Any inbound frame proves liveness; the pong itself is ignored.
                        self.request_nowait(&Request::Ping);
                        ping_sent = true;
                    }
                }
                Err(e) => return format!("read error: {e}"),
            }
        }
    }

    /// Handles one inbound frame.
    fn handle(self: &Arc<Self>, payload: &[u8], generation: u64, records: &mut Records) {
        let (codec, f) = match records.decode(payload) {
            Ok(f) => f,
            Err(e) => {
                self.emit(Event::Error {
                    shard: self.shard,
                    message: format!("undecodable frame: {e}"),
                });
                return;
            }
        };
        match f.kind() {
            Kind::Ok | Kind::Err | Kind::Pong | Kind::Welcome => {
                let Some(id) = f.id.and_then(|r| opt_u64(Some(r), "id").ok().flatten()) else {
                    if f.kind() == Kind::Err {
                        self.emit(Event::Error {
                            shard: self.shard,
                            message: ClientError::from_err_frame(&f).to_string(),
                        });
                    }
                    return;
                };
                let p = lock(&self.pending).remove(&id);
                match p {
                    Some(Pending::Waiter(slot)) => slot.fill(if f.kind() == Kind::Err {
                        Err(ClientError::from_err_frame(&f))
                    } else {
                        Ok(Reply::new(codec, f.value))
                    }),
                    Some(Pending::Background(what)) if f.kind() == Kind::Err => {
                        self.emit(Event::Error {
                            shard: self.shard,
                            message: format!("{what}: {}", ClientError::from_err_frame(&f)),
                        })
                    }
                    Some(Pending::Resubscribe(pattern)) => {
                        if f.kind() == Kind::Err {
                            self.emit(Event::Error {
                                shard: self.shard,
                                message: format!(
                                    "resubscribe: {}",
                                    ClientError::from_err_frame(&f)
                                ),
                            });
                        } else {
                            // Here, before any later frame: a live message after the
                            // reply is judged against the updated watermark.
                            let offset =
                                crate::pubsub::sub_reply_offset(&Reply::new(codec, f.value));
                            lock(&self.subs).confirmed(&pattern, offset, true);
                        }
                    }
                    _ => {}
                }
            }
            Kind::Ping => {
                self.write_oneway(&Request::Pong, None);
            }
            Kind::Msg => self.on_msg(&f, codec),
            Kind::Inv => {
                if let Some(near) = &self.shared.near {
                    near.on_inv(f.keys);
                }
            }
            Kind::Invoke => self.on_invoke(&f, codec, generation),
            _ => {}
        }
    }

    fn on_msg(&self, f: &Frame<'_>, codec: Codec) {
        let Ok(Some(channel)) = opt_str(f.channel, "channel") else {
            return;
        };
        let offset = opt_u64(f.offset, "offset").ok().flatten();
        // Skips what a subscription already saw (retention offsets), see `Subs::deliver`.
        let handlers = lock(&self.subs).deliver(&channel, offset);
        if handlers.is_empty() {
            return;
        }
        let payload = f
            .payload
            .unwrap_or(crate::value::null(codec))
            .bytes
            .to_vec();
        self.shared.dispatch.msg(
            handlers,
            Message::new(channel.into_owned(), payload, codec, offset),
        );
    }

    fn on_invoke(self: &Arc<Self>, f: &Frame<'_>, codec: Codec, generation: u64) {
        // Handlers return values in the client's codec; the request transcodes them.
        let vcodec = self.shared.settings.codec;
        // The broker numbers its invokes; a `result` must carry that number.
        let Ok(Some(id)) = opt_u64(f.id, "id") else {
            return;
        };
        let name = match opt_str(f.name, "name") {
            Ok(Some(n)) => n.into_owned(),
            _ => return,
        };
        let args = f.args.map(|a| a.bytes.to_vec());
        let handler = lock(&self.regs).get(&name).cloned();
        let (Some(handler), Some(pool)) = (handler, self.shared.pool_if_started()) else {
            let e = HandlerError::new(format!("no handler for `{name}` on this client"))
                .with_code(procmesh_proto::ErrorCode::NoHandler.as_str());
            let (e, mut scratch) = (Err(e), Vec::new());
            let result = result_request(vcodec, id, &e, &mut scratch);
            self.write_oneway(&result, Some(generation));
            return;
        };
        let conn = self.clone();
        pool.submit(Box::new(move || {
            let args = match &args {
                Some(a) => Raw::new(codec, a),
                None => crate::value::empty_array(codec),
            };
            let r = crate::pool::run_handler(&handler, args);
            let mut scratch = Vec::new();
            let result = result_request(vcodec, id, &r, &mut scratch);
            conn.write_oneway(&result, Some(generation));
        }));
    }
}

/// Decodes inbound frames in whichever dialect each is written (the first bytes tell:
/// a JSON object, a MessagePack map, or a msgpackr record), so frames a broker sent
/// before a negotiated switch still read. Records are normalised into `plain` (reused;
/// bounded by the frame limit).
#[derive(Default)]
pub(super) struct Records {
    norm: Option<Box<Normalizer>>,
    plain: Vec<u8>,
}

impl Records {
    /// The frame of one payload, and the codec its values are in.
    pub(super) fn decode<'a>(
        &'a mut self,
        payload: &'a [u8],
    ) -> std::result::Result<(Codec, Frame<'a>), DecodeError> {
        match Codec::detect_payload(payload) {
            Some(d) if d.records => {
                self.plain.clear();
                self.norm
                    .get_or_insert_with(Default::default)
                    .normalize_into(payload, wire_frame::MAX_FRAME_LEN, &mut self.plain)?;
                ints_from_js(&mut self.plain, 0, 0)?;
                if self.plain.capacity() > 1 << 20 && self.plain.len() < 1 << 16 {
                    self.plain.shrink_to(1 << 16);
                }
                Ok((Codec::MsgPack, Frame::decode(Codec::MsgPack, &self.plain)?))
            }
            Some(d) => Ok((d.codec, Frame::decode(d.codec, payload)?)),
            None => Err(DecodeError::new(
                "frame is not a JSON object or a MessagePack map",
            )),
        }
    }
}

/// msgpackr writes every JavaScript number beyond the 32-bit ranges as a float64; a
/// safe integer among them (|v| < 2^53, no fraction) is the integer JSON would have
/// carried, so it is rewritten in place as one (`cb` + 8 bytes → `d3`/`cf` + 8 bytes:
/// the same length). Walks one plain value starting at `pos`; returns its end.
fn ints_from_js(b: &mut [u8], pos: usize, depth: usize) -> std::result::Result<usize, DecodeError> {
    let bad = || DecodeError::new("truncated MessagePack value");
    if depth > procmesh_proto::codec::MAX_DEPTH {
        return Err(DecodeError::new("value nested too deeply"));
    }
    let c = *b.get(pos).ok_or_else(bad)?;
    let be = |b: &[u8], at: usize, n: usize| -> std::result::Result<usize, DecodeError> {
        let s = b.get(at..at + n).ok_or_else(bad)?;
        Ok(s.iter().fold(0usize, |a, &x| (a << 8) | x as usize))
    };
    let p = pos + 1;
    let (skip, items) = match c {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (p, 0),
        0x80..=0x8f => (p, 2 * (c as usize & 0x0f)),
        0x90..=0x9f => (p, c as usize & 0x0f),
        0xa0..=0xbf => (p + (c as usize & 0x1f), 0),
        0xcc | 0xd0 => (p + 1, 0),
        0xcd | 0xd1 => (p + 2, 0),
        0xca | 0xce | 0xd2 => (p + 4, 0),
        0xcf | 0xd3 => (p + 8, 0),
        0xcb => {
            let bits = b.get(p..p + 8).ok_or_else(bad)?;
            let v = f64::from_be_bytes(bits.try_into().expect("8 bytes"));
            if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
                let (tag, bytes) = if v < 0.0 {
                    (0xd3, (v as i64).to_be_bytes())
                } else {
                    (0xcf, (v as u64).to_be_bytes())
                };
                b[pos] = tag;
                b[p..p + 8].copy_from_slice(&bytes);
            }
            (p + 8, 0)
        }
        0xc4 | 0xd9 => (p + 1 + be(b, p, 1)?, 0),
        0xc5 | 0xda => (p + 2 + be(b, p, 2)?, 0),
        0xc6 | 0xdb => (p + 4 + be(b, p, 4)?, 0),
        0xd4 => (p + 2, 0),
        0xd5 => (p + 3, 0),
        0xd6 => (p + 5, 0),
        0xd7 => (p + 9, 0),
        0xd8 => (p + 17, 0),
        0xc7 => (p + 2 + be(b, p, 1)?, 0),
        0xc8 => (p + 3 + be(b, p, 2)?, 0),
        0xc9 => (p + 5 + be(b, p, 4)?, 0),
        0xdc => (p + 2, be(b, p, 2)?),
        0xdd => (p + 4, be(b, p, 4)?),
        0xde => (p + 2, 2 * be(b, p, 2)?),
        0xdf => (p + 4, 2 * be(b, p, 4)?),
        0xc1 => return Err(DecodeError::new("reserved MessagePack byte 0xc1")),
    };
    if skip > b.len() || items > b.len() {
        return Err(bad());
    }
    let mut at = skip;
    for _ in 0..items {
        at = ints_from_js(b, at, depth + 1)?;
    }
    Ok(at)
}

/// The `result` answering invoke `id`: `{"t":"result","id":ID,"result":R}` or
/// `{"t":"result","id":ID,"error":{"message":M,"code":C}}`. An error's map is
/// encoded into `scratch`.
fn result_request<'a>(
    codec: Codec,
    id: u64,
    r: &'a Result<Vec<u8>, HandlerError>,
    scratch: &'a mut Vec<u8>,
) -> Request<'a> {
    match r {
        Ok(bytes) => Request::Result {
            id,
            result: Some(Raw::new(codec, bytes)),
            error: None,
        },
        Err(e) => {
            let mut w = Writer::new(codec, scratch);
            w.begin_map(2);
            w.key("message");
            w.str(e.message());
            w.key("code");
            w.str(e.code());
            w.end_map();
            let scratch: &'a Vec<u8> = scratch;
            Request::Result {
                id,
                result: None,
                error: Some(Raw::new(codec, scratch)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(&b[4..]).unwrap()
    }

    fn result_frame(codec: Codec, id: u64, r: Result<Vec<u8>, HandlerError>) -> Vec<u8> {
        let mut scratch = Vec::new();
        super::super::frame(codec, &result_request(codec, id, &r, &mut scratch), None).unwrap()
    }

    #[test]
    fn msgpackr_safe_integers_read_as_integers() {
        // {"a":[2^40 as float64, -2^40 as float64, 1.5]}
        let mut b = vec![0x81, 0xa1, b'a', 0x93, 0xcb];
        b.extend_from_slice(&((1u64 << 40) as f64).to_be_bytes());
        b.push(0xcb);
        b.extend_from_slice(&(-((1i64 << 40) as f64)).to_be_bytes());
        b.push(0xcb);
        b.extend_from_slice(&1.5f64.to_be_bytes());
        let end = ints_from_js(&mut b, 0, 0).unwrap();
        assert_eq!(end, b.len());
        let v: serde_json::Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": [1u64 << 40, -(1i64 << 40), 1.5]})
        );
    }

    #[test]
    fn result_frames_match_the_protocol() {
        let ok = result_frame(Codec::Json, 12, Ok(b"[1,2]".to_vec()));
        assert_eq!(
            json(&ok),
            serde_json::json!({"t":"result","id":12,"result":[1,2]})
        );
        let e = HandlerError::new("nope").with_code("EINVAL");
        let err = result_frame(Codec::Json, 3, Err(e));
        assert_eq!(
            json(&err),
            serde_json::json!({"t":"result","id":3,"error":{"message":"nope","code":"EINVAL"}})
        );
        let mp = result_frame(Codec::MsgPack, 5, Ok(vec![0xc3]));
        let v: serde_json::Value = rmp_serde::from_slice(&mp[4..]).unwrap();
        assert_eq!(v, serde_json::json!({"t":"result","id":5,"result":true}));
    }
}
