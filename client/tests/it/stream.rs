//! Subscriptions read as bounded queues on the blocking client
//! (`subscribe_iter`): order, and drops counted once the queue is full.

use std::time::Duration;

use crate::support::{client_at, InProc, CODECS, WAIT};
use procmesh::Codec;

#[test]
fn subscribe_iter_receives_messages_in_order() {
    for codec in CODECS {
        let b = InProc::start();
        let c = b.client(codec);
        let mut msgs = c.subscribe_iter("feed.*").unwrap();
        assert_eq!(msgs.pattern(), "feed.*");
        let other = client_at(&b.path, Codec::Json);
        for i in 0..20 {
            assert_eq!(other.publish(&format!("feed.{}", i % 3), &i).unwrap(), 1);
        }
        let got: Vec<i32> = (&mut msgs).take(20).map(|m| m.payload().unwrap()).collect();
        assert_eq!(got, (0..20).collect::<Vec<_>>(), "{codec:?}");
        assert!(msgs.try_recv().is_none());
        assert_eq!(msgs.dropped(), 0);
        msgs.unsubscribe().unwrap();
        assert_eq!(other.publish("feed.0", &1).unwrap(), 0, "unsubscribed");
    }
}

#[test]
fn a_slow_subscribe_iter_reader_drops_and_counts_past_capacity() {
    let b = InProc::start();
    let c = b.client(Codec::MsgPack);
    let slow = c.subscribe_iter_with_capacity("bp", 8).unwrap();
    // A second subscription on another channel of the same connection: once its
    // message arrives, every earlier message has been through the dispatch thread.
    let sync = c.subscribe_iter("bp.sync").unwrap();
    let other = client_at(&b.path, Codec::MsgPack);
    for i in 0..100 {
        other.publish("bp", &i).unwrap();
    }
    other.publish("bp.sync", &()).unwrap();
    assert!(sync.recv_timeout(WAIT).is_some());
    assert_eq!(slow.queued(), 8, "the queue holds its capacity, no more");
    assert_eq!(slow.dropped(), 92, "every message past it is counted");
    let kept: Vec<i32> = (0..8)
        .map(|_| slow.try_recv().unwrap().payload().unwrap())
        .collect();
    assert_eq!(
        kept,
        (0..8).collect::<Vec<_>>(),
        "the oldest are kept, in order"
    );
    // Drained, it takes new messages again.
    other.publish("bp", &100).unwrap();
    let m = slow.recv_timeout(WAIT).unwrap();
    assert_eq!(m.payload::<i32>().unwrap(), 100);
    assert!(slow.recv_timeout(Duration::from_millis(1)).is_none());
}
