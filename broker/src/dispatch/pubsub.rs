//! The pub/sub family (PROTOCOL.md §8): `sub unsub pub`, and the fan-out of `msg`
//! frames to matching subscribers.
//!
//! Owns no state; `pubsub` owns the subscriptions. A `msg` is encoded once per codec,
//! not once per subscriber. Best-effort messages past a subscriber's high-water mark
//! are dropped (counted); before dropping, bytes queued this turn are offered to the
//! socket through the driver's [`Transport`] — except on connections whose replies
//! the durability gate holds for this turn's fsync.

use procmesh_proto::{Acks, Codec, Push, Raw, Reply};

use super::{reply, Fail, Res};
use crate::connection::{Closing, ConnId, Conns, Transport};
use crate::events::{BrokerEvent, ConnSerial};
use crate::mesh::Mesh;

/// `sub`.
pub(super) fn sub(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>, channel: &str) {
    m.pubsub.subscribe(from, channel);
    reply(out, from, id, Reply::Sub { offset: 0 });
}

/// `unsub`.
pub(super) fn unsub(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    channel: &str,
) {
    m.pubsub.unsubscribe(from, channel);
    reply(out, from, id, Reply::Bool(true));
}

/// `pub`: fans `payload` (null when absent) out to every matching open connection.
#[allow(clippy::too_many_arguments)]
pub(super) fn publish<T: Transport>(
    m: &mut Mesh,
    out: &mut Conns,
    io: &mut T,
    from: ConnId,
    id: Option<Raw<'_>>,
    channel: &str,
    payload: Option<Raw<'_>>,
    acks: Acks,
) -> Res {
    let src_codec = out[from].codec();
    let null: &[u8] = if src_codec == Codec::Json {
        b"null"
    } else {
        &[0xc0]
    };
    let payload = payload.unwrap_or(Raw::new(src_codec, null));
    let droppable = acks.is_droppable();
    // Encode the message once per codec.
    let mut enc = std::mem::take(&mut m.fanout);
    for e in enc.iter_mut() {
        e.clear();
    }
    let mut targets = std::mem::take(&mut m.targets);
    targets.clear();
    m.pubsub.for_each_match(channel, |c| targets.push(c));
    let mut delivered = 0u64;
    let mut failed: Option<Fail> = None;
    let hwm = m.cfg.send_hwm;
    for &c in &targets {
        let Some(conn) = out.get_mut(c) else {
            continue;
        };
        if conn.closing != Closing::No {
            continue;
        }
        let codec = conn.codec();
        let slot = codec as usize;
        if enc[slot].is_empty() {
            if let Err(e) = (Push::Msg { channel, payload }).encode_into(codec, &mut enc[slot]) {
                failed = Some(e.into());
                break;
            }
        }
        if droppable && conn.queued() > hwm {
            // Bytes queued this turn are not yet offered to the socket: offer them
            // now, so only what the peer's socket does not take counts against the
            // mark (as with Node's writableLength). Replies to writes awaiting an
            // `fsync always` commit must not leave early, so such connections wait.
            if !m.gate.holds(c) && !io.flush(c, conn) {
                out.close_later(c, Closing::Now);
                continue;
            }
        }
        if droppable && conn.queued() > hwm {
            m.stats.dropped += 1;
            let serial = ConnSerial(conn.serial);
            m.events.emit(|| BrokerEvent::Drop {
                channel: channel.to_string(),
                conn: serial,
            });
            continue;
        }
        conn.out().extend_from_slice(&enc[slot]);
        delivered += 1;
        out.wrote(c);
    }
    m.fanout = enc;
    m.targets = targets;
    if let Some(e) = failed {
        return Err(e);
    }
    if acks.wants_reply() {
        reply(out, from, id, Reply::UInt(delivered));
    }
    Ok(())
}
