//! RPC through the client, in both codecs and across codecs.

use std::sync::mpsc::channel;
use std::sync::Mutex;
use std::time::Duration;

use procmesh::{Codec, ErrorCode, HandlerError};
use serde::{Deserialize, Serialize};

use crate::support::{InProc, CODECS, WAIT};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    y: i64,
}

#[test]
fn call_registered_procedures_with_typed_args() {
    for codec in CODECS {
        let b = InProc::start();
        let worker = b.client(codec);
        let caller = b.client(if codec == Codec::Json {
            Codec::MsgPack
        } else {
            Codec::Json
        });
        let _add = worker
            .register("add", |(a, b): (i64, i64)| Ok(a + b))
            .unwrap();
        let _norm = worker
            .register("flip", |p: Point| Ok(Point { x: p.y, y: p.x }))
            .unwrap();
        let _none = worker.register("answer", |(): ()| Ok(42)).unwrap();
        let _fail = worker
            .register("fail", |s: String| -> Result<(), HandlerError> {
                Err(HandlerError::new(format!("bad {s}")).with_code("EINVAL"))
            })
            .unwrap();
        let _panic = worker
            .register("panic", |(): ()| -> Result<(), HandlerError> {
                panic!("boom")
            })
            .unwrap();

        assert_eq!(
            caller.call::<_, i64>("add", &(2, 3), None).unwrap(),
            5,
            "{codec:?}"
        );
        let p: Point = caller.call("flip", &Point { x: 1, y: 2 }, None).unwrap();
        assert_eq!(p, Point { x: 2, y: 1 });
        assert_eq!(caller.call::<_, i32>("answer", &(), None).unwrap(), 42);

        let e = caller.call::<_, ()>("fail", &"input", None).unwrap_err();
        assert_eq!(e.code_str(), Some("EINVAL"), "{e}");
        assert!(e.to_string().contains("bad input"), "{e}");
        let e = caller.call::<_, ()>("panic", &(), None).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Call), "{e}");
        assert!(e.to_string().contains("boom"), "{e}");
        let e = caller.call::<_, ()>("nobody", &(), None).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NoHandler), "{e}");
        // Registering a name twice on one client is refused locally.
        assert!(worker.register("add", |(): ()| Ok(0)).is_err());
    }
}

#[test]
fn unregister_and_drop_stop_serving() {
    let b = InProc::start();
    let c = b.client(Codec::MsgPack);
    let reg = c.register("f", |(): ()| Ok(1)).unwrap();
    assert_eq!(c.call::<_, i32>("f", &(), None).unwrap(), 1);
    reg.unregister().unwrap();
    let e = c.call::<_, i32>("f", &(), None).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoHandler), "{e}");
    let reg = c.register("f", |(): ()| Ok(2)).unwrap();
    assert_eq!(c.call::<_, i32>("f", &(), None).unwrap(), 2);
    drop(reg);
    c.ping().unwrap();
    let e = c.call::<_, i32>("f", &(), None).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoHandler), "{e}");
}

#[test]
fn slow_handler_does_not_stall_replies_or_other_calls() {
    let b = InProc::start();
    let c = b.client(Codec::MsgPack);
    let (entered_tx, entered_rx) = channel::<()>();
    let (release_tx, release_rx) = channel::<()>();
    let entered = Mutex::new(entered_tx);
    let release = Mutex::new(release_rx);
    let _slow = c
        .register("slow", move |(): ()| {
            entered.lock().unwrap().send(()).unwrap();
            release.lock().unwrap().recv().unwrap();
            Ok("done")
        })
        .unwrap();
    let _fast = c.register("fast", |n: i32| Ok(n * 2)).unwrap();
    let c2 = c.clone();
    let slow_call = std::thread::spawn(move || c2.call::<_, String>("slow", &(), None));
    entered_rx.recv_timeout(WAIT).unwrap();
    // The slow handler holds a pool thread; replies and another call go through.
    c.set("k", &1).unwrap();
    assert_eq!(c.call::<_, i32>("fast", &21, None).unwrap(), 42);
    release_tx.send(()).unwrap();
    assert_eq!(slow_call.join().unwrap().unwrap(), "done");
}

#[test]
fn call_timeout_is_reported_by_the_broker() {
    let b = InProc::start_with(|b| b.call_grace(Duration::from_millis(0)));
    let c = b.client(Codec::Json);
    let (release_tx, release_rx) = channel::<()>();
    let release = Mutex::new(release_rx);
    let _stuck = c
        .register("stuck", move |(): ()| {
            let _ = release.lock().unwrap().recv();
            Ok(())
        })
        .unwrap();
    let e = c
        .call::<_, ()>("stuck", &(), Some(Duration::from_millis(100)))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::CallTimeout), "{e}");
    release_tx.send(()).unwrap();
}
