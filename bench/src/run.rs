//! One benchmark run: connects every stream, starts the threads together, drives the
//! workload and merges the threads' histograms and counters into a [`RunResult`].
//!
//! Request threads each own a few streams and go round them: read whatever replies
//! arrived on one (blocking), record their latencies, refill its window, write the
//! batch, move on. A blocking read on one stream while another has replies waiting
//! costs nothing in throughput: every stream has requests in flight, so every read
//! returns soon. Subscriber and RPC-worker connections are pure readers and get a
//! thread each. The clock is read once per batch, not per request.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use procmesh_proto::hash::shard_index;
use procmesh_proto::message::{opt_u64, Frame, Kind};
use procmesh_proto::{addr, frame, Codec, Raw, Request};

use crate::cli::{AcksArg, CodecArg, RunArgs, Target, Workload};
use crate::keys::ShardedKeys;
use crate::report::{Latency, RunResult};
use crate::stream::Stream;
use crate::wire::{Op, Procmesh, ReplyKind, Resp, Wire};
use crate::workload::{key_prefix, lock_key, OpGen, CHANNEL, PROCEDURE};

/// How often side threads (subscribers, workers) look at the stop flag.
const SIDE_POLL: Duration = Duration::from_millis(50);

/// How long to wait for deliveries to stop arriving after the last publish.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// A request stream with replies outstanding and nothing to read for this long fails
/// the run (a lost reply would otherwise hang the generator).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Highest latency the histogram records (longer ones are clamped to it).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .expect("invariant: static histogram bounds are valid")
}

fn codec_of(c: CodecArg) -> Codec {
    match c {
        CodecArg::Msgpack => Codec::MsgPack,
        CodecArg::Json => Codec::Json,
    }
}

/// The server sockets: `--socket`, else the mesh's address or its shards'.
pub fn socket_paths(args: &RunArgs) -> Result<Vec<PathBuf>, String> {
    match (&args.socket, args.shards) {
        (_, 0) => Err("--shards must be at least 1".into()),
        (Some(p), 1) => Ok(vec![p.clone()]),
        (Some(_), _) => Err(
            "--socket names one server; with --shards N the shard sockets come from --name".into(),
        ),
        (None, 1) if args.target == Target::Redis => {
            Err("--target redis needs --socket PATH".into())
        }
        (None, 1) => Ok(vec![
            addr::AddrEnv::from_lookup(std::env::var_os).socket_path(&args.name)
        ]),
        (None, n) if args.target == Target::Redis => {
            Err(format!("--shards {n} is for procmesh only"))
        }
        (None, n) => addr::AddrEnv::from_lookup(std::env::var_os).shard_paths(&args.name, n),
    }
}

/// Runs the benchmark described by `args`.
pub fn run(args: &RunArgs) -> Result<RunResult, String> {
    if args.connections == 0 || args.pipeline == 0 || args.keyspace == 0 {
        return Err("-c, -P and -r must be at least 1".into());
    }
    if args.requests == Some(0) {
        return Err("-n must be at least 1".into());
    }
    if args.acks != AcksArg::One && args.workload != Workload::Publish {
        return Err("--acks is for the publish workload".into());
    }
    match args.target {
        Target::Procmesh => run_with(
            args,
            Procmesh {
                producer: args.idempotent.then_some(0),
                ..Procmesh::new(codec_of(args.codec), args.acks.into())
            },
        ),
        Target::Redis => {
            if args.workload == Workload::Call {
                return Err("the call workload has no Redis equivalent".into());
            }
            run_with(args, Resp)
        }
    }
}

/// A subscriber's message count and the time of its last delivery.
type Delivered = (u64, Option<Instant>);

/// What one request thread measured.
struct ThreadOut {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// Sum of integer replies (a publish's delivered counts).
    int_sum: i64,
    start: Instant,
    end: Instant,
}

fn io_err(e: io::Error) -> String {
    e.to_string()
}

fn run_with<W: Wire + Copy + 'static>(args: &RunArgs, wire: W) -> Result<RunResult, String> {
    let paths = socket_paths(args)?;
    let nshards = paths.len();
    let workload = args.workload;
    let prefix = key_prefix(workload);
    let sharded = match prefix {
        Some(p) if nshards > 1 => Some(Arc::new(ShardedKeys::new(p, args.keyspace, nshards))),
        _ => None,
    };
    let threads = args.request_threads();

    // Request streams, grouped per thread: connection i goes to thread i % threads.
    let mut per_thread: Vec<Vec<(Stream<W>, OpGen)>> = (0..threads).map(|_| Vec::new()).collect();
    let mut streams = 0usize;
    for conn in 0..args.connections {
        let shards: Vec<usize> = match (prefix, workload) {
            (Some(_), _) => (0..nshards).collect(),
            (None, Workload::Lock) => vec![shard_index(&lock_key(conn), nshards)],
            (None, Workload::Call) => vec![shard_index(PROCEDURE, nshards)],
            (None, _) => vec![shard_index(CHANNEL, nshards)],
        };
        for s in shards {
            let mut stream = Stream::connect(&paths[s], wire.for_connection(conn), args.pipeline)
                .map_err(io_err)?;
            stream
                .set_read_timeout(Some(REPLY_TIMEOUT))
                .map_err(io_err)?;
            let gen = OpGen::new(
                workload,
                args.seed,
                args.keyspace,
                args.size,
                sharded.as_ref().map(|k| (k.clone(), s)),
                conn,
                args.connections,
            );
            stream.remaining = gen.budget();
            per_thread[conn % threads].push((stream, gen));
            streams += 1;
        }
    }
    if let Some(n) = args.requests {
        if workload != Workload::Fill {
            for (i, (stream, _)) in per_thread.iter_mut().flatten().enumerate() {
                let share = n / streams as u64 + u64::from((i as u64) < n % streams as u64);
                stream.remaining = stream.remaining.min(share);
            }
        }
    }
    {
        let mut probe = OpGen::new(workload, 0, 1, 1, None, 0, 1);
        if !W::supports(&probe.next_op()) {
            return Err(format!(
                "the {} workload is not supported by this target",
                workload.name()
            ));
        }
    }

    // Side connections, set up before the clock starts.
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut subscribers: Vec<JoinHandle<Result<Delivered, String>>> = Vec::new();
    let mut workers: Vec<JoinHandle<Result<u64, String>>> = Vec::new();
    if workload == Workload::Publish {
        let path = &paths[shard_index(CHANNEL, nshards)];
        for _ in 0..args.subscribers {
            let mut s = Stream::connect(path, wire, 1).map_err(io_err)?;
            let r = s.roundtrip(&Op::Sub(CHANNEL)).map_err(io_err)?;
            if let ReplyKind::Err(m) = r.kind {
                return Err(format!("subscribe failed: {m}"));
            }
            let (stop, delivered) = (stop.clone(), delivered.clone());
            subscribers.push(thread::spawn(move || {
                subscriber(s, &stop, &delivered).map_err(io_err)
            }));
        }
    }
    if workload == Workload::Call {
        let path = &paths[shard_index(PROCEDURE, nshards)];
        let codec = codec_of(args.codec);
        for _ in 0..args.workers.max(1) {
            let mut s = Stream::connect(path, Procmesh::new(codec, procmesh_proto::Acks::One), 1)
                .map_err(io_err)?;
            let r = s.roundtrip(&Op::Reg(PROCEDURE)).map_err(io_err)?;
            if let ReplyKind::Err(m) = r.kind {
                return Err(format!("register failed: {m}"));
            }
            let stop = stop.clone();
            workers.push(thread::spawn(move || worker(s, &stop).map_err(io_err)));
        }
    }

    let limit = args.time_limit();
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<JoinHandle<Result<ThreadOut, String>>> = per_thread
        .into_iter()
        .map(|work| {
            let barrier = barrier.clone();
            thread::spawn(move || drive(work, &barrier, limit).map_err(io_err))
        })
        .collect();
    barrier.wait();
    let mut outs = Vec::new();
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(o)) => outs.push(o),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a generator thread panicked".into()),
        }
    }

    // Let deliveries drain, then stop the side threads. Acks-0 publishes report no
    // delivered count: every subscriber is expected to get each one.
    let per_request = wire.ops_per_request();
    let expected: i64 = if per_request > 1 {
        let answered: u64 = outs.iter().map(|o| o.ok).sum();
        (answered * per_request * args.subscribers as u64) as i64
    } else {
        outs.iter().map(|o| o.int_sum).sum()
    };
    if workload == Workload::Publish && failure.is_none() {
        let mut last = delivered.load(Ordering::Relaxed);
        let mut since = Instant::now();
        while (last as i64) < expected && since.elapsed() < DRAIN_IDLE {
            thread::sleep(Duration::from_millis(2));
            let now = delivered.load(Ordering::Relaxed);
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut sub_counts = Vec::new();
    for h in subscribers {
        match h.join() {
            Ok(Ok(c)) => sub_counts.push(c),
            Ok(Err(e)) => failure = failure.or(Some(format!("subscriber: {e}"))),
            Err(_) => failure = failure.or(Some("a subscriber thread panicked".into())),
        }
    }
    for h in workers {
        match h.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failure = failure.or(Some(format!("worker: {e}"))),
            Err(_) => failure = failure.or(Some("a worker thread panicked".into())),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }

    let mut hist = new_histogram();
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    let start = outs
        .iter()
        .map(|o| o.start)
        .min()
        .unwrap_or_else(Instant::now);
    let end = outs.iter().map(|o| o.end).max().unwrap_or(start);
    for o in &outs {
        hist.add(&o.hist).map_err(|e| e.to_string())?;
        ok += o.ok;
        errors += o.errors;
        if first_error.is_none() {
            first_error.clone_from(&o.first_error);
        }
    }
    let elapsed = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    let requests = (ok + errors) * per_request;
    let (delivered, delivered_per_sec) = if workload == Workload::Publish {
        let n: u64 = sub_counts.iter().map(|c| c.0).sum();
        let last = sub_counts.iter().filter_map(|c| c.1).max().unwrap_or(start);
        let secs = last
            .saturating_duration_since(start)
            .as_secs_f64()
            .max(1e-9);
        (Some(n), Some(if n == 0 { 0.0 } else { n as f64 / secs }))
    } else {
        (None, None)
    };
    Ok(RunResult {
        target: match args.target {
            Target::Procmesh => "procmesh",
            Target::Redis => "redis",
        }
        .to_string(),
        workload: workload.name().to_string(),
        codec: match args.target {
            Target::Procmesh => codec_of(args.codec).name().to_string(),
            Target::Redis => "resp".to_string(),
        },
        connections: args.connections,
        pipeline: args.pipeline,
        threads,
        shards: nshards,
        subscribers: if workload == Workload::Publish {
            args.subscribers
        } else {
            0
        },
        workers: if workload == Workload::Call {
            args.workers.max(1)
        } else {
            0
        },
        keyspace: args.keyspace,
        size: args.size,
        requests,
        errors,
        first_error,
        elapsed_s: elapsed,
        ops_per_sec: requests as f64 / elapsed,
        delivered,
        delivered_per_sec,
        latency_us: Latency::from_ns(&hist),
    })
}

/// Sends as many requests as fit on `s`, then writes them out.
#[inline]
fn refill<W: Wire>(s: &mut Stream<W>, gen: &mut OpGen, now: Instant) -> io::Result<()> {
    while s.has_room() {
        let op = gen.next_op();
        s.queue(&op, now);
    }
    s.flush()
}

/// The loop of one request thread.
fn drive<W: Wire>(
    mut work: Vec<(Stream<W>, OpGen)>,
    barrier: &Barrier,
    limit: Option<Duration>,
) -> io::Result<ThreadOut> {
    barrier.wait();
    let start = Instant::now();
    let deadline = limit.map(|d| start + d);
    let mut out = ThreadOut {
        hist: new_histogram(),
        ok: 0,
        errors: 0,
        first_error: None,
        int_sum: 0,
        start,
        end: start,
    };
    for (s, g) in work.iter_mut() {
        refill(s, g, start)?;
    }
    let mut stopping = false;
    let mut now = start;
    loop {
        let mut active = false;
        for (s, g) in work.iter_mut() {
            if s.inflight() == 0 {
                continue;
            }
            active = true;
            if let Err(e) = s.fill() {
                return Err(match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                        e.kind(),
                        format!(
                            "no reply for {REPLY_TIMEOUT:?} with {} requests in flight",
                            s.inflight()
                        ),
                    ),
                    _ => e,
                });
            }
            now = Instant::now();
            while let Some(reply) = s.next_reply()? {
                if reply.kind == ReplyKind::Ping {
                    s.wire.pong(&mut s.wbuf);
                    continue;
                }
                let Some(lat) = s.complete(&reply, now)? else {
                    continue;
                };
                out.hist.saturating_record(lat.as_nanos() as u64);
                match reply.kind {
                    ReplyKind::Err(m) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(m);
                    }
                    _ => out.ok += 1,
                }
                out.int_sum += reply.int.unwrap_or(0);
            }
            if !stopping && deadline.is_some_and(|d| now >= d) {
                stopping = true;
            }
            if stopping {
                s.remaining = 0;
            }
            refill(s, g, now)?;
        }
        if !active {
            break;
        }
    }
    out.end = now;
    Ok(out)
}

/// A subscriber: counts deliveries until told to stop.
fn subscriber<W: Wire>(
    mut s: Stream<W>,
    stop: &AtomicBool,
    total: &AtomicU64,
) -> io::Result<Delivered> {
    s.set_read_timeout(Some(SIDE_POLL))?;
    let (mut count, mut last) = (0u64, None);
    while !stop.load(Ordering::Relaxed) {
        if !fill_or_idle(&mut s)? {
            continue;
        }
        let mut batch = 0;
        while let Some(r) = s.next_reply()? {
            match r.kind {
                ReplyKind::Msg => batch += 1,
                ReplyKind::Ping => s.wire.pong(&mut s.wbuf),
                _ => {}
            }
        }
        if batch > 0 {
            count += batch;
            last = Some(Instant::now());
            total.fetch_add(batch, Ordering::Relaxed);
        }
        s.flush()?;
    }
    Ok((count, last))
}

/// Reads what arrived on a side connection; false when the poll timed out idle.
fn fill_or_idle<W: Wire>(s: &mut Stream<W>) -> io::Result<bool> {
    match s.fill() {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// An RPC worker: answers every `invoke` with its arguments until told to stop.
fn worker(mut s: Stream<Procmesh>, stop: &AtomicBool) -> io::Result<u64> {
    s.set_read_timeout(Some(SIDE_POLL))?;
    let codec = s.wire.codec;
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut served = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if !fill_or_idle(&mut s)? {
            continue;
        }
        loop {
            let buf = &s.rbuf[s.rstart..s.rend];
            let Some((start, end)) =
                frame::try_decode(buf, frame::MAX_FRAME_LEN).map_err(|e| bad(e.to_string()))?
            else {
                break;
            };
            let f = Frame::decode(codec, &buf[start..end]).map_err(|e| bad(e.to_string()))?;
            match f.kind() {
                Kind::Invoke => {
                    let id = opt_u64(f.id, "id")
                        .map_err(|e| bad(e.to_string()))?
                        .ok_or_else(|| bad("invoke without id".into()))?;
                    let null = Raw::new(
                        codec,
                        if codec == Codec::Json {
                            b"null"
                        } else {
                            &[0xc0]
                        },
                    );
                    Request::Result {
                        id,
                        result: Some(f.args.unwrap_or(null)),
                        error: None,
                    }
                    .encode_into(codec, None, &mut s.wbuf)
                    .map_err(|e| bad(e.to_string()))?;
                    served += 1;
                }
                Kind::Ping => s.wire.pong(&mut s.wbuf),
                _ => {}
            }
            s.rstart += end;
        }
        s.flush()?;
    }
    Ok(served)
}
