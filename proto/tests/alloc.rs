//! The hot path allocates nothing: decoding the common requests (envelope, then
//! `Request`) and encoding replies into a buffer with room.
//!
//! Counts allocations with a wrapping global allocator (this test binary only; the
//! library itself forbids `unsafe`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use procmesh_proto::response::{ok_value, MgetReply};
use procmesh_proto::value::{transcode, validate};
use procmesh_proto::{Codec, Frame, Num, Push, Reply, Request};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

fn in_codec(codec: Codec, json: &str) -> Vec<u8> {
    let mut out = Vec::new();
    transcode(
        validate(Codec::Json, json.as_bytes()).unwrap(),
        codec,
        &mut out,
    )
    .unwrap();
    out
}

#[test]
fn decoding_common_requests_allocates_nothing() {
    let requests = [
        r#"{"t":"get","id":1,"key":"user:1"}"#,
        r#"{"t":"set","id":2,"key":"user:1","value":{"name":"a","n":[1,2,3]},"ttl":1000}"#,
        r#"{"t":"del","id":3,"key":"k"}"#,
        r#"{"t":"has","id":3,"key":"k"}"#,
        r#"{"t":"incr","id":4,"key":"n","by":2}"#,
        r#"{"t":"decr","id":4,"key":"n"}"#,
        r#"{"t":"cas","id":5,"key":"k","prev":1,"next":2}"#,
        r#"{"t":"lock","id":6,"key":"L","ttl":100,"wait":5}"#,
        r#"{"t":"unlock","id":6,"key":"L"}"#,
        r#"{"t":"fset","id":7,"key":"L","token":3,"k":"x","value":1}"#,
        r#"{"t":"pub","id":8,"channel":"news","payload":{"x":1},"acks":"all"}"#,
        r#"{"t":"sub","id":9,"channel":"news.*"}"#,
        r#"{"t":"call","id":10,"name":"add","args":[1,2],"timeout":100}"#,
        r#"{"t":"result","id":11,"result":3}"#,
        r#"{"t":"mget","id":12,"keys":["a","b","c"]}"#,
        r#"{"t":"mset","id":13,"entries":[["a",1],["b",[2]]]}"#,
        r#"{"t":"ping","id":14}"#,
    ];
    for codec in [Codec::Json, Codec::MsgPack] {
        for text in requests {
            let payload = in_codec(codec, text);
            let n = allocations(|| {
                let f = Frame::decode(codec, &payload).unwrap();
                let req = Request::from_frame(f.kind(), &f).unwrap();
                // Walking the lists borrows too.
                match &req {
                    Request::Mget { keys } => assert_eq!(keys.iter().count(), 3),
                    Request::Mset { entries } => assert_eq!(entries.iter().count(), 2),
                    _ => {}
                }
                std::hint::black_box(req);
            });
            assert_eq!(n, 0, "{codec:?} {text}");
        }
    }
    // The counter counts: a JSON escape in a key needs an owned string.
    let escaped = br#"{"t":"get","id":1,"key":"a\nb"}"#;
    let n = allocations(|| {
        let f = Frame::decode(Codec::Json, escaped).unwrap();
        std::hint::black_box(Request::from_frame(f.kind(), &f).unwrap());
    });
    assert!(n >= 1);
}

#[test]
fn encoding_replies_into_a_buffer_with_room_allocates_nothing() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let idb = in_codec(codec, "42");
        let id = Some(procmesh_proto::Raw::new(codec, &idb));
        let vb = in_codec(codec, r#"{"a":[1,"x"]}"#);
        let v = procmesh_proto::Raw::new(codec, &vb);
        let mut out = Vec::with_capacity(4096);
        let n = allocations(|| {
            Reply::Bool(true).encode_into(codec, id, &mut out);
            Reply::Num(Num::Float(1.5)).encode_into(codec, id, &mut out);
            Reply::Lock { token: Some(9) }.encode_into(codec, id, &mut out);
            Reply::Err {
                code: procmesh_proto::ErrorCode::Fenced,
                message: "stale",
            }
            .encode_into(codec, id, &mut out);
            ok_value(codec, id, v, &mut out).unwrap();
            let mut m = MgetReply::begin(codec, id, 3, &mut out);
            m.push(Some(v)).unwrap();
            m.push(None).unwrap();
            m.push(Some(v)).unwrap();
            m.finish();
            Push::Msg {
                channel: "c",
                payload: v,
                offset: None,
            }
            .encode_into(codec, &mut out)
            .unwrap();
            Request::Get { key: "k".into() }
                .encode_into(codec, Some(1), &mut out)
                .unwrap();
        });
        assert_eq!(n, 0, "{codec:?}");
    }
}

#[test]
fn cas_comparing_a_large_bin_allocates_nothing() {
    // Issue 12 #15: the comparison built a `Value` per byte (~64x the bin's size).
    let n = 1 << 20;
    let mut a = vec![0xc6];
    a.extend_from_slice(&(n as u32).to_be_bytes());
    a.extend((0..n).map(|i| i as u8));
    let mut b = a.clone();
    *b.last_mut().unwrap() ^= 1;
    let arr = in_codec(Codec::MsgPack, "[0,1,2.0,3]");
    let small_bin = [0xc4, 4, 0, 1, 2, 3];
    let ra = procmesh_proto::Raw::new(Codec::MsgPack, &a);
    let rb = procmesh_proto::Raw::new(Codec::MsgPack, &b);
    let mut same = false;
    let mut differ = true;
    let mut as_array = false;
    let n_allocs = allocations(|| {
        same = ra.structurally_eq(&procmesh_proto::Raw::new(Codec::MsgPack, &a[..]));
        differ = ra.structurally_eq(&rb);
        as_array = procmesh_proto::Raw::new(Codec::MsgPack, &small_bin)
            .structurally_eq(&procmesh_proto::Raw::new(Codec::MsgPack, &arr));
    });
    assert!(same);
    assert!(!differ, "bins differing in the last byte compared equal");
    assert!(as_array, "a bin equals the array of its bytes");
    assert_eq!(n_allocs, 0);
}
