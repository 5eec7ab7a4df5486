//! The pub/sub family (PROTOCOL.md §8): `sub unsub pub`, and the fan-out of `msg`
//! frames to matching subscribers.
//!
//! Owns no state; `pubsub` owns the subscriptions. A `msg` is encoded once per codec,
//! not once per subscriber. Best-effort messages past a subscriber's high-water mark
//! are dropped (counted); before dropping, bytes queued this turn are offered to the
//! socket through the driver's [`Transport`] — except on connections whose replies
//! the durability gate holds for this turn's fsync.

use procmesh_proto::{Acks, Codec, ErrorCode, Push, Raw, Reply, REPLAY_ALL};

use super::{reply, Fail, Res};
use crate::connection::{Closing, ConnId, Conns, Transport};
use crate::dedup::Verdict;
use crate::events::{BrokerEvent, ConnSerial};
use crate::mesh::{Mesh, FANOUT_RECORDS};
use crate::persistence::aof;
use crate::retain::DurableAcks;
use crate::retain::Retained;

/// `sub` (at most `maxSubscriptions` per connection): registers, then writes the
/// retained backlog `replay`/`since` ask for (oldest first, each with its offset, not
/// droppable), then the reply with the offset high-water — all in this turn, so no live
/// message can fall between backlog and subscription (no gap, no duplicate at the seam).
pub(super) fn sub(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    channel: &str,
    replay: Option<u64>,
    since: Option<u64>,
) -> Res {
    let cap = m.cfg.limits.max_subscriptions;
    if m.pubsub.subscriptions_of(from) >= cap && !m.pubsub.has_subscription(from, channel) {
        return Err(Fail::new(
            procmesh_proto::ErrorCode::Broker,
            format!("subscription limit reached (maxSubscriptions {cap} per connection)"),
        ));
    }
    m.pubsub.subscribe(from, channel);
    if m.retain.enabled() && (since.is_some() || replay.is_some()) {
        let now = m.epoch0 + m.now;
        let backlog = m
            .retain
            .backlog(channel, since, replay.unwrap_or(REPLAY_ALL), now);
        if out.get(from).is_some() {
            // Through `send`, so a msgpackr peer gets records.
            out.send(
                from,
                |codec, o| -> Result<(), procmesh_proto::DecodeError> {
                    for (ch, r) in backlog {
                        Push::Msg {
                            channel: ch,
                            payload: r.raw(),
                            offset: Some(r.offset),
                        }
                        .encode_into(codec, o)?;
                    }
                    Ok(())
                },
            )?;
        }
    }
    reply(
        out,
        from,
        id,
        Reply::Sub {
            offset: m.retain.last_offset,
        },
    );
    Ok(())
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
///
/// With `idem` (pid, seq) and dedup on, a seq already accepted for (pid, channel) is
/// answered null and delivered to nobody. With retention on, the message gets the next
/// offset and is retained (and logged) before the fan-out.
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
    idem: Option<(&str, u64)>,
) -> Res {
    let idem = idem.filter(|_| m.dedup.enabled());
    // With persistence, what this publish logs must be admitted first (refused while
    // the log is failing; with `always` the reply waits for the fsync).
    let logged = m.gate.is_active() && (m.retain.enabled() || idem.is_some());
    if logged {
        if let Err(msg) = m.gate.admit(from, id, || out[from].out_len()) {
            return Err(Fail::new(ErrorCode::Broker, msg));
        }
    }
    if let Some((pid, seq)) = idem {
        if m.dedup.check(pid, channel, seq, m.now) == Verdict::Duplicate {
            if acks.wants_reply() {
                reply(out, from, id, Reply::Null);
            }
            return Ok(());
        }
    }
    let src_codec = out[from].codec();
    let null: &[u8] = if src_codec == Codec::Json {
        b"null"
    } else {
        &[0xc0]
    };
    let payload = payload.unwrap_or(Raw::new(src_codec, null));
    let droppable = acks.is_droppable();
    let offset = if m.retain.enabled() {
        let offset = m.retain.mint();
        let now = m.epoch0 + m.now;
        let msg = Retained {
            offset,
            ts: now,
            codec: payload.codec,
            payload: payload.bytes.into(),
        };
        if logged {
            let durable = durable(m.retain.cfg().durable_acks, acks);
            let reservation = m.retain.reserve(offset);
            if let Some(buf) = m.store.effects_mut().log_mut().map(|e| e.buf()) {
                if let Some(r) = reservation {
                    aof::encode_offset(buf, r);
                }
                aof::encode_pub(buf, channel, offset, now, idem, msg.codec, &msg.payload);
            }
            if reservation.is_some() {
                m.gate.sync_this_turn();
            }
            if durable {
                // The reply was held by `admit` above; make this turn's commit fsync it.
                m.gate.sync_this_turn();
            }
        }
        m.retain.retain(channel, msg, now);
        Some(offset)
    } else {
        if let (true, Some((pid, seq))) = (logged, idem) {
            if let Some(buf) = m.store.effects_mut().log_mut().map(|e| e.buf()) {
                aof::encode_dedup(buf, pid, channel, seq);
            }
        }
        None
    };
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
        let d = conn.dialect();
        let codec = d.codec;
        let plain = codec as usize;
        if enc[plain].is_empty() {
            let msg = Push::Msg {
                channel,
                payload,
                offset,
            };
            if let Err(e) = msg.encode_into(codec, &mut enc[plain]) {
                failed = Some(e.into());
                break;
            }
        }
        let slot = if d.records {
            // Converted once per publish, like the other dialects.
            if enc[FANOUT_RECORDS].is_empty() {
                let (plain_msg, rec) = enc.split_at_mut(FANOUT_RECORDS);
                if let Err(e) = m.mpr_enc.encode_frames_into(&plain_msg[plain], &mut rec[0]) {
                    failed = Some(e.into());
                    break;
                }
            }
            FANOUT_RECORDS
        } else {
            plain
        };
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
        // The global output cap (maxOutputBytes): best-effort frames drop past it.
        if droppable && out.over_output_cap(enc[slot].len()) {
            m.stats.dropped += 1;
            continue;
        }
        out[c].out().extend_from_slice(&enc[slot]);
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

/// Whether a publish with `acks` is acknowledged only after its record is fsynced
/// (procmesh-js: rank `"all"` = 2, `1` = 1, `0` = 0; durable iff rank(acks) ≥
/// rank(durableAcks), never with `durableAcks: false`).
fn durable(policy: DurableAcks, acks: Acks) -> bool {
    let rank = |a: Acks| match a {
        Acks::All => 2,
        Acks::One => 1,
        Acks::None => 0,
    };
    match policy {
        DurableAcks::Off => false,
        DurableAcks::All => rank(acks) >= 2,
        DurableAcks::One => rank(acks) >= 1,
    }
}
