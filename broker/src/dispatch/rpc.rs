//! The RPC family (PROTOCOL.md §9): `reg unreg call result`, and failing calls whose
//! worker vanished or whose deadline passed.
//!
//! Owns no state; `rpc` owns pools and pending calls. A call's reply goes to the
//! caller only while the caller's connection is the same incarnation (serial) that
//! asked: a reused slot never gets someone else's answer.

use procmesh_proto::{Codec, ErrorCode, Push, Raw, Reply};

use super::{clip, reply, write_ok_value, Fail, Res};
use crate::connection::{ConnId, Conns};
use crate::mesh::Mesh;
use crate::rpc::PendingCall;

/// `reg`.
pub(super) fn reg(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    name: &str,
) -> Res {
    let cap = m.cfg.limits.max_registrations;
    if m.rpc.registrations_of(from) >= cap {
        return Err(Fail::new(
            ErrorCode::Broker,
            format!("registration limit reached (maxRegistrations {cap} per connection)"),
        ));
    }
    m.rpc.register(from, name);
    reply(out, from, id, Reply::Bool(true));
    Ok(())
}

/// `unreg`.
pub(super) fn unreg(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>, name: &str) {
    m.rpc.unregister(from, name);
    reply(out, from, id, Reply::Bool(true));
}

/// `call`: picks a worker and sends it an `invoke`; the caller's reply comes with
/// the worker's `result` (or a failure).
pub(super) fn call(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    name: &str,
    args: Option<Raw<'_>>,
    timeout_ms: Option<u64>,
) -> Res {
    let cap = m.cfg.limits.max_pending_calls;
    if m.rpc.calls_of(from) as usize >= cap {
        return Err(Fail::new(
            ErrorCode::Broker,
            format!("too many calls in flight (maxPendingCalls {cap} per caller)"),
        ));
    }
    let caller = &out[from];
    let codec = caller.codec();
    let serial = caller.serial;
    let empty: &[u8] = if codec == Codec::Json { b"[]" } else { &[0x90] };
    let args = args.unwrap_or(Raw::new(codec, empty));
    let timeout = timeout_ms
        .filter(|t| *t > 0)
        .unwrap_or(m.cfg.call_timeout.as_millis() as u64);
    let deadline = m
        .now
        .saturating_add(timeout)
        .saturating_add(m.cfg.call_grace.as_millis() as u64);
    let reply_to = id.map(|id| Box::<[u8]>::from(id.bytes));
    let started = m.rpc.start(
        name,
        |worker| PendingCall {
            caller: from,
            caller_serial: serial,
            reply_to,
            worker,
            name: name.into(),
        },
        deadline,
        &mut m.timers,
    );
    let Some((call_id, worker)) = started else {
        return Err(Fail::new(
            ErrorCode::NoHandler,
            format!("no handler registered for `{}`", clip(name, 200)),
        ));
    };
    let invoke = Push::Invoke {
        id: call_id,
        name,
        args,
    };
    if let Err(e) = out.send(worker, |codec, buf| invoke.encode_into(codec, buf)) {
        m.rpc.expire(call_id);
        return Err(e.into());
    }
    Ok(())
}

/// `result`: a worker's answer, relayed to the caller. Late (reaped) or foreign
/// results are ignored.
pub(super) fn result(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    call_id: u64,
    result: Option<Raw<'_>>,
    error: Option<Raw<'_>>,
) {
    let Some(call) = m.rpc.finish(call_id, from) else {
        return;
    };
    let Some(caller) = out
        .get(call.caller)
        .filter(|c| c.serial == call.caller_serial)
    else {
        return;
    };
    let codec = caller.codec();
    let Some(reply_to) = call.reply_to.as_deref() else {
        return;
    };
    let id = Raw::new(codec, reply_to);
    match error {
        Some(err) => {
            let mut message = String::from("call failed");
            let mut code = String::from(ErrorCode::Call.as_str());
            if let Some(entries) = err.map() {
                for (key, v) in entries {
                    match (&*key, v.as_str()) {
                        ("message", Some(m)) => message = clip(&m, 4096).to_string(),
                        ("code", Some(c)) if !c.is_empty() => code = clip(&c, 64).to_string(),
                        _ => {}
                    }
                }
            } else if let Some(m) = err.as_str() {
                message = clip(&m, 4096).to_string();
            }
            let r = Reply::ErrCode {
                code: &code,
                message: &message,
            };
            out.send(call.caller, |codec, buf| {
                r.encode_into(codec, Some(id), buf)
            });
        }
        None => {
            // The caller's room is checked before the copy, and again after.
            let least = result.map_or(0, |v| crate::connection::least_reply_len(v, codec));
            out.send_value_reply(call.caller, id, least, |codec, buf| {
                write_ok_value(codec, buf, id, result, "the worker's result")
            });
        }
    }
}

/// Fails a call whose worker vanished or whose deadline passed.
pub(crate) fn fail_call(m: &mut Mesh, out: &mut Conns, call: PendingCall, code: ErrorCode) {
    let Some(caller) = out
        .get(call.caller)
        .filter(|c| c.serial == call.caller_serial)
    else {
        return;
    };
    let codec = caller.codec();
    let Some(reply_to) = call.reply_to.as_deref() else {
        return;
    };
    let message = match code {
        ErrorCode::HandlerGone => format!(
            "the worker for `{}` disconnected with the call in flight",
            call.name
        ),
        _ => format!("call to `{}` timed out", call.name),
    };
    m.stats.error(code);
    let r = Reply::Err {
        code,
        message: &message,
    };
    out.send(call.caller, |_, buf| {
        r.encode_into(codec, Some(Raw::new(codec, reply_to)), buf)
    });
}
