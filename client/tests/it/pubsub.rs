//! Pub/sub through the client, in both codecs.

use std::sync::mpsc::channel;
use std::sync::Mutex;

use procmesh::Codec;
use serde::{Deserialize, Serialize};

use crate::support::{InProc, CODECS, WAIT};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
}

#[test]
fn exact_and_wildcard_subscriptions_receive_typed_messages() {
    for codec in CODECS {
        let b = InProc::start();
        let sub_client = b.client(codec);
        let pub_client = b.client(if codec == Codec::Json {
            Codec::MsgPack
        } else {
            Codec::Json
        });
        let (tx, rx) = channel();
        let tx = Mutex::new(tx);
        let exact = sub_client
            .subscribe("orders.created", {
                let tx = Mutex::new(tx.lock().unwrap().clone());
                move |m| {
                    tx.lock()
                        .unwrap()
                        .send((
                            "exact",
                            m.channel().to_owned(),
                            m.payload::<Order>().unwrap(),
                        ))
                        .unwrap();
                }
            })
            .unwrap();
        let wild = sub_client
            .subscribe("orders.*", move |m| {
                tx.lock()
                    .unwrap()
                    .send((
                        "wild",
                        m.channel().to_owned(),
                        m.payload::<Order>().unwrap(),
                    ))
                    .unwrap();
            })
            .unwrap();
        assert_eq!(exact.pattern(), "orders.created");
        let o = Order {
            id: 7,
            item: "crab".into(),
        };
        // One connection matching twice still receives the message once.
        assert_eq!(
            pub_client.publish("orders.created", &o).unwrap(),
            1,
            "{codec:?}"
        );
        let mut got = [
            rx.recv_timeout(WAIT).unwrap(),
            rx.recv_timeout(WAIT).unwrap(),
        ];
        got.sort_by_key(|g| g.0);
        assert_eq!(got[0], ("exact", "orders.created".to_owned(), o.clone()));
        assert_eq!(got[1], ("wild", "orders.created".to_owned(), o.clone()));

        assert_eq!(pub_client.publish("orders.shipped", &o).unwrap(), 1);
        assert_eq!(rx.recv_timeout(WAIT).unwrap().0, "wild");
        assert_eq!(pub_client.publish("users.new", &o).unwrap(), 0);

        // Unsubscribing one handler keeps the other; dropping the last stops delivery.
        wild.unsubscribe().unwrap();
        assert_eq!(pub_client.publish("orders.shipped", &o).unwrap(), 0);
        assert_eq!(pub_client.publish("orders.created", &o).unwrap(), 1);
        assert_eq!(rx.recv_timeout(WAIT).unwrap().0, "exact");
        drop(exact);
        // The drop's unsub is not awaited; a request after it on the same
        // connection is answered after it.
        sub_client.ping().unwrap();
        assert_eq!(pub_client.publish("orders.created", &o).unwrap(), 0);
    }
}

#[test]
fn messages_arrive_in_order_and_handlers_do_not_block_replies() {
    let b = InProc::start();
    let c = b.client(Codec::MsgPack);
    let (tx, rx) = channel::<u32>();
    let (gate_tx, gate_rx) = channel::<()>();
    let gate = Mutex::new(gate_rx);
    let tx = Mutex::new(tx);
    let _sub = c
        .subscribe("seq", move |m| {
            let n: u32 = m.payload().unwrap();
            if n == 0 {
                // The first handler blocks until the test has made more requests.
                gate.lock().unwrap().recv().unwrap();
            }
            tx.lock().unwrap().send(n).unwrap();
        })
        .unwrap();
    for n in 0..100u32 {
        c.publish("seq", &n).unwrap();
    }
    // The handler is stuck, yet replies keep flowing on the same connection.
    c.set("still", &"working").unwrap();
    assert_eq!(
        c.get::<String>("still").unwrap().as_deref(),
        Some("working")
    );
    gate_tx.send(()).unwrap();
    let got: Vec<u32> = (0..100).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[test]
fn publish_nowait_is_delivered() {
    for codec in CODECS {
        let b = InProc::start();
        let c = b.client(codec);
        let (tx, rx) = channel::<u32>();
        let tx = Mutex::new(tx);
        let _sub = c
            .subscribe("fire", move |m| {
                tx.lock().unwrap().send(m.payload().unwrap()).unwrap()
            })
            .unwrap();
        for n in 0..50u32 {
            c.publish_nowait("fire", &n).unwrap();
        }
        let got: Vec<u32> = (0..50).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
        assert_eq!(got, (0..50).collect::<Vec<_>>(), "{codec:?}");
        // No reply was asked for, so nothing is left waiting: a request still works.
        c.set("after", &1).unwrap();
    }
}
