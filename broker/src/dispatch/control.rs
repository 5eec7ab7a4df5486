//! The control family (PROTOCOL.md §5, §10): `hello ping pong stats shutdown`.
//!
//! Owns no state: authentication marks the connection, `stats` gathers the other
//! modules' numbers into one reply, `shutdown` raises the mesh's flag (the driver
//! stops after the turn).

use procmesh_proto::response;
use procmesh_proto::stats::StatsReport;
use procmesh_proto::{ErrorCode, Raw, Reply};

use super::{reply, send_err};
use crate::connection::{Closing, ConnId, Conns};
use crate::mesh::Mesh;
use crate::stats::{Gauges, PersistGauges};
use crate::sys;

/// The codecs this broker reads, listed in `welcome` (ours; Node.js clients ignore it).
const CODECS: &[&str] = &["json", "msgpack", "msgpackr"];

/// Constant-time comparison of two secrets (time depends only on their lengths).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// `hello`: checks the token (a wrong one is answered and the connection closed),
/// then `welcome` with the client's producer id or a minted one.
pub(super) fn hello(
    m: &mut Mesh,
    out: &mut Conns,
    from: ConnId,
    id: Option<Raw<'_>>,
    token: Option<&str>,
    pid: Option<&str>,
) {
    if let Some(expected) = &m.cfg.token {
        let ok = token.is_some_and(|g| ct_eq(g.as_bytes(), expected.as_bytes()));
        if !ok {
            m.stats.error(ErrorCode::Auth);
            send_err(
                out,
                from,
                id,
                ErrorCode::Auth,
                "authentication failed: wrong or missing token",
            );
            out[from].closing = Closing::AfterFlush;
            return;
        }
    }
    out[from].authed = true;
    let pid = match pid {
        Some(p) => p.to_owned(),
        None => {
            m.next_pid += 1;
            format!("{}-{}", std::process::id(), m.next_pid)
        }
    };
    let r = Reply::Welcome {
        broker: &m.cfg.name,
        pid: &pid,
        codecs: CODECS,
        shard: m.cfg.shard.map(|s| (s.index, s.count)),
    };
    out.send(from, |codec, buf| r.encode_into(codec, id, buf));
}

/// `ping`: `pong` with the same id.
pub(super) fn ping(out: &mut Conns, from: ConnId, id: Option<Raw<'_>>) {
    out.send(from, |codec, buf| Reply::Pong.encode_into(codec, id, buf));
}

/// `stats`: counters and gauges of every module.
pub(super) fn stats(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>) {
    let Some(id) = id else { return };
    let open = (out.len(), out.slow_closed, out.too_big);
    with_gauges(m, open, |stats, g| {
        out.send(from, |codec, buf| {
            response::ok_with(codec, Some(id), buf, |w| stats.encode(g, w))
        })
    });
}

/// The stats report of this moment (the periodic `stats` event).
pub(crate) fn report(m: &mut Mesh, out: &mut Conns) -> StatsReport {
    with_gauges(m, (out.len(), out.slow_closed, out.too_big), |stats, g| {
        stats.report(g)
    })
}

/// Gathers the gauges of every module and hands them, with the counters, to `f`;
/// `open` is the connection table's (open connections, hard-limit closes, ETOOBIG
/// replies).
fn with_gauges<R>(
    m: &mut Mesh,
    open: (usize, u64, u64),
    f: impl FnOnce(&crate::stats::Stats, &Gauges<'_>) -> R,
) -> R {
    let uptime = m.now.max(1);
    let cpu = sys::cpu_time().saturating_sub(m.cpu_start).as_secs_f64() * 1000.0;
    let counters = m.store.counters();
    // The connection table counts hard-limit closes and ETOOBIG replies; stats
    // exports them.
    m.stats.slow_closed = open.1;
    m.stats.too_big = open.2;
    let g = Gauges {
        name: &m.cfg.name,
        uptime_ms: m.now,
        connections: open.0,
        cache_size: m.store.len(),
        cache_bytes: m.store.value_bytes(),
        evicted: counters.evicted,
        expired: counters.expired,
        hits: counters.hits,
        misses: counters.misses,
        locks: m.locks.held(),
        lock_waiters: m.locks.waiters(),
        pending_calls: m.rpc.pending(),
        subscriptions: m.pubsub.len(),
        duplicates: m.dedup.duplicates,
        dedup_size: m.dedup.len(),
        procs: m.rpc.procs().collect(),
        rss: sys::rss_bytes(),
        cpu_core_fraction: cpu / uptime as f64,
        os_pid: std::process::id(),
        core: sys::pinned_core(),
        persistence: m.gate.log().map(|p| PersistGauges {
            fsync: p.mode().name(),
            log_bytes: p.log_bytes(),
            error: p.error.as_deref(),
            errors: p.error_count,
            snapshots: p.snapshots,
            snapshot_running: p.snapshot_running(),
        }),
        io_backend: m.cfg.io.name(),
    };
    f(&m.stats, &g)
}

/// `shutdown`: answered, then the driver stops after this turn.
pub(super) fn shutdown(m: &mut Mesh, out: &mut Conns, from: ConnId, id: Option<Raw<'_>>) {
    reply(out, from, id, Reply::Bool(true));
    m.shutdown = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
        assert!(ct_eq(b"", b""));
    }
}
