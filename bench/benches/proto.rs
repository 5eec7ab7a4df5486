//! Criterion benches of the wire format: frame encode/decode in both codecs,
//! cross-codec transcoding and FNV-1a shard routing. Topic matching (the broker's
//! index against a linear scan) is in the `broker` bench.
//!
//! Run with `cargo bench -p procmesh-bench --bench proto`. Throughput is per frame,
//! value, key or channel (`Throughput::Elements(1)`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use procmesh_proto::message::{begin_ok, need_str, Frame, FrameWriter};
use procmesh_proto::value::{transcode, validate};
use procmesh_proto::{frame, hash, Codec};

const CODECS: [Codec; 2] = [Codec::Json, Codec::MsgPack];

/// A structured value of about 200 bytes, as a cache would hold.
const VALUE_JSON: &str = r#"{"user":{"id":42,"name":"Ada Lovelace","email":"ada@example.org","tags":["admin","ops","billing"],"score":98.5,"active":true},"items":[1,2,3,4,5,6,7,8],"note":"line\nbreak \u00e9","updated":1732752000123}"#;

fn value_in(codec: Codec) -> Vec<u8> {
    let mut out = Vec::new();
    let v = validate(Codec::Json, VALUE_JSON.as_bytes()).expect("static JSON is valid");
    transcode(v, codec, &mut out).expect("static JSON transcodes");
    out
}

/// `{"t":"set","id":ID,"key":KEY,"value":VALUE}` as one frame.
fn set_frame(codec: Codec, id: u64, out: &mut Vec<u8>) {
    let value = value_in(codec);
    let mut f = FrameWriter::begin(codec, out, 4, "set");
    let w = f.w();
    w.key("id");
    w.uint(id);
    w.key("key");
    w.str("key:000000004217");
    w.key("value");
    w.raw_same(&value);
    f.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    g.throughput(Throughput::Elements(1));
    for codec in CODECS {
        let mut out = Vec::with_capacity(512);
        g.bench_function(BenchmarkId::new("get_request", codec.name()), |b| {
            let mut id = 0u64;
            b.iter(|| {
                out.clear();
                id += 1;
                let mut f = FrameWriter::begin(codec, &mut out, 3, "get");
                let w = f.w();
                w.key("id");
                w.uint(black_box(id));
                w.key("key");
                w.str(black_box("key:000000004217"));
                f.finish();
                black_box(out.len())
            })
        });
        let value = value_in(codec);
        let id_bytes = {
            let mut v = Vec::new();
            procmesh_proto::Writer::new(codec, &mut v).int(4217);
            v
        };
        let id = validate(codec, &id_bytes).expect("an integer is valid");
        g.bench_function(BenchmarkId::new("ok_reply_200B_value", codec.name()), |b| {
            b.iter(|| {
                out.clear();
                let mut f = begin_ok(codec, &mut out, id, true);
                f.w().raw_same(black_box(&value));
                f.finish();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_decode");
    g.throughput(Throughput::Elements(1));
    for codec in CODECS {
        let mut buf = Vec::new();
        set_frame(codec, 4217, &mut buf);
        g.bench_function(
            BenchmarkId::new("set_request_200B_value", codec.name()),
            |b| {
                b.iter(|| {
                    let (start, end) = frame::try_decode(black_box(&buf), frame::MAX_FRAME_LEN)
                        .expect("frame fits")
                        .expect("frame is complete");
                    let f = Frame::decode(codec, &buf[start..end]).expect("frame decodes");
                    let key = need_str(f.key, "key").expect("key is a string");
                    black_box((f.kind(), key.len(), f.value.map(|v| v.bytes.len())))
                })
            },
        );
    }
    g.finish();
}

fn transcoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("transcode_200B_value");
    g.throughput(Throughput::Elements(1));
    for (from, to) in [(Codec::Json, Codec::MsgPack), (Codec::MsgPack, Codec::Json)] {
        let src = value_in(from);
        let raw = validate(from, &src).expect("value is valid");
        let mut out = Vec::with_capacity(512);
        g.bench_function(format!("{}_to_{}", from.name(), to.name()), |b| {
            b.iter(|| {
                out.clear();
                transcode(black_box(raw), to, &mut out).expect("value transcodes");
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn fnv(c: &mut Criterion) {
    let mut g = c.benchmark_group("fnv1a");
    g.throughput(Throughput::Elements(1));
    for (name, key) in [
        ("ascii_16B", "key:000000004217"),
        ("utf16_14chars", "ユーザー:日本語キー:0042"),
    ] {
        g.bench_function(name, |b| b.iter(|| hash::fnv1a(black_box(key))));
    }
    g.finish();
}

criterion_group!(benches, encode, decode, transcoding, fnv);
criterion_main!(benches);
