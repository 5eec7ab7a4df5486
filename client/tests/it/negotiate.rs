//! Codec negotiation (PROTOCOL §3, ours): a client without a configured codec says hello in
//! JSON, then MessagePack against our broker (no round trip beyond the hello), JSON against
//! a broker that lists no codecs, msgpackr records against a broker that closes on JSON.
//! Against our real broker the bytes are watched through a relay socket; the Node.js broker
//! behaviours are played by small peers that do what procmesh-js 0.1.1's broker does (the
//! real Node.js broker runs in scripts/node-interop, see bench/results).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use procmesh::Client;
use procmesh_proto::msgpackr::{Encoder, Normalizer};
use procmesh_proto::{Codec, Frame, Kind, Raw, Reply};

use crate::support::InProc;

fn negotiating_client(path: &Path) -> Client {
    Client::builder()
        .address(path)
        .auto_spawn(false)
        .reconnect(false)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .expect("connect")
}

fn read_payload(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut b = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut b).ok()?;
    Some(b)
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// The id of a plain frame, as its raw bytes.
fn id_of(codec: Codec, payload: &[u8]) -> Vec<u8> {
    Frame::decode(codec, payload)
        .unwrap()
        .id
        .unwrap()
        .bytes
        .to_vec()
}

#[test]
fn default_client_says_hello_in_json_then_speaks_msgpack_to_our_broker() {
    let b = InProc::start();
    // A relay in front of the broker records every client→broker payload.
    let dir = tempfile::tempdir().unwrap();
    let relay = dir.path().join("relay.sock");
    let listener = UnixListener::bind(&relay).unwrap();
    let target = b.path.clone();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut up = UnixStream::connect(&target).unwrap();
        let mut up_r = up.try_clone().unwrap();
        let mut c_w = c.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut up_r, &mut c_w);
        });
        while let Some(p) = read_payload(&mut c) {
            up.write_all(&framed(&p)).unwrap();
            if tx.send(p).is_err() {
                break;
            }
        }
    });
    let client = negotiating_client(&relay);
    client.set("k", &serde_json::json!({"a": [1, 2]})).unwrap();
    let got: Option<serde_json::Value> = client.get("k").unwrap();
    assert_eq!(got, Some(serde_json::json!({"a": [1, 2]})));
    let hello = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(hello[0], b'{', "hello is JSON");
    assert_eq!(
        Frame::decode(Codec::Json, &hello).unwrap().kind(),
        Kind::Hello
    );
    // The very next frame is the `set`, already in MessagePack: no second round trip.
    let set = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        matches!(set[0], 0x80..=0x8f),
        "set is a MessagePack map: {set:02x?}"
    );
    assert_eq!(
        Frame::decode(Codec::MsgPack, &set).unwrap().kind(),
        Kind::Set
    );
    let get = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        Frame::decode(Codec::MsgPack, &get).unwrap().kind(),
        Kind::Get
    );
}

#[test]
fn default_client_stays_on_json_when_the_welcome_lists_no_codecs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nodejson.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let hello = read_payload(&mut s).unwrap();
        assert_eq!(hello[0], b'{');
        let id = id_of(Codec::Json, &hello);
        // procmesh-js's JSON welcome: no `codecs`.
        let mut out = Vec::new();
        Reply::Welcome {
            broker: "node",
            pid: "p1",
            codecs: &[],
            shard: None,
        }
        .encode_into(Codec::Json, Some(Raw::new(Codec::Json, &id)), &mut out);
        s.write_all(&out).unwrap();
        let get = read_payload(&mut s).unwrap();
        let id = id_of(Codec::Json, &get);
        let mut out = Vec::new();
        Reply::UInt(7).encode_into(Codec::Json, Some(Raw::new(Codec::Json, &id)), &mut out);
        s.write_all(&out).unwrap();
        get
    });
    let client = negotiating_client(&path);
    let v: Option<u64> = client.get("k").unwrap();
    assert_eq!(v, Some(7));
    let get = peer.join().unwrap();
    assert_eq!(get[0], b'{', "still JSON: {get:02x?}");
    assert_eq!(Frame::decode(Codec::Json, &get).unwrap().kind(), Kind::Get);
}

#[test]
fn default_client_retries_with_a_record_hello_when_the_broker_closes_on_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nodemp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        // A procmesh-js msgpack broker cannot read JSON: it drops the socket.
        let (mut s, _) = listener.accept().unwrap();
        let first = read_payload(&mut s).unwrap();
        assert_eq!(first[0], b'{');
        drop(s);
        let (mut s, _) = listener.accept().unwrap();
        let (mut norm, mut enc) = (Normalizer::new(), Encoder::new());
        let mut read_plain = |s: &mut UnixStream| {
            let raw = read_payload(s).unwrap();
            assert_eq!(&raw[..2], &[0xd4, 0x72], "a record: {raw:02x?}");
            let mut plain = Vec::new();
            norm.normalize_into(&raw, 1 << 20, &mut plain).unwrap();
            plain
        };
        let mut send = |s: &mut UnixStream, r: Reply<'_>, id: &[u8]| {
            let mut plain = Vec::new();
            r.encode_into(
                Codec::MsgPack,
                Some(Raw::new(Codec::MsgPack, id)),
                &mut plain,
            );
            let mut out = Vec::new();
            enc.encode_frames_into(&plain, &mut out).unwrap();
            s.write_all(&out).unwrap();
        };
        let hello = read_plain(&mut s);
        assert_eq!(
            Frame::decode(Codec::MsgPack, &hello).unwrap().kind(),
            Kind::Hello
        );
        let id = id_of(Codec::MsgPack, &hello);
        send(
            &mut s,
            Reply::Welcome {
                broker: "node",
                pid: "p1",
                codecs: &[],
                shard: None,
            },
            &id,
        );
        let set = read_plain(&mut s);
        let f = Frame::decode(Codec::MsgPack, &set).unwrap();
        assert_eq!(f.kind(), Kind::Set);
        let id = id_of(Codec::MsgPack, &set);
        let value: serde_json::Value = rmp_serde::from_slice(f.value.unwrap().bytes).unwrap();
        send(&mut s, Reply::Bool(true), &id);
        value
    });
    let client = negotiating_client(&path);
    client
        .set(
            "k",
            &serde_json::json!({"user": {"id": 100, "tags": ["a"]}}),
        )
        .unwrap();
    assert_eq!(
        peer.join().unwrap(),
        serde_json::json!({"user": {"id": 100, "tags": ["a"]}})
    );
}

#[test]
fn explicit_codec_is_not_negotiated() {
    let b = InProc::start();
    for codec in [Codec::Json, Codec::MsgPack] {
        let c = crate::support::client_at(&b.path, codec);
        c.set("x", &1).unwrap();
        assert_eq!(c.get::<i64>("x").unwrap(), Some(1));
    }
}
