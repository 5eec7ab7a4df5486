//! Connection life: events, reconnect after the broker is killed and
//! restarted, requests in flight at a disconnect, timeouts, auth, spawn errors.

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procmesh::{Client, ClientError, Codec, ErrorCode, Event};

use crate::support::{client_at, wait_event, BrokerProc, InProc, CODECS, WAIT};

#[test]
fn killed_broker_restarted_client_reconnects_and_replays() {
    for codec in CODECS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.sock");
        let mut broker = BrokerProc::start(&path, &[]);
        let seen = Arc::new(Mutex::new(Vec::<Event>::new()));
        let client = Client::builder()
            .address(&path)
            .codec(codec)
            .auto_spawn(false)
            .on_event({
                let seen = seen.clone();
                move |e| seen.lock().unwrap().push(e.clone())
            })
            .connect()
            .unwrap();
        let events = client.events();
        let (tx, rx) = channel::<(String, String)>();
        let tx = Mutex::new(tx);
        let _sub = client
            .subscribe("news.*", move |m| {
                tx.lock()
                    .unwrap()
                    .send((m.channel().to_owned(), m.payload().unwrap()))
                    .unwrap();
            })
            .unwrap();
        let _reg = client
            .register("echo", |s: String| Ok(format!("echo {s}")))
            .unwrap();

        client.set("k", &0).unwrap();
        broker.kill();
        wait_event(&events, "disconnect", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        // A request made while the broker is down waits for the reconnect (up to
        // its timeout) and then goes to the new, empty broker.
        let (asking_tx, asking_rx) = channel::<()>();
        let waiting = {
            let client = client.clone();
            std::thread::spawn(move || {
                asking_tx.send(()).unwrap();
                client.get::<i32>("k")
            })
        };
        asking_rx.recv_timeout(WAIT).unwrap();
        // The restarted broker is empty, but our subscription and registration
        // come back with the connection.
        let _broker = BrokerProc::start(&path, &[]);
        wait_event(&events, "reconnect", |e| {
            matches!(e, Event::Reconnected { .. })
        });
        assert_eq!(waiting.join().unwrap().unwrap(), None, "{codec:?}");

        let other = client_at(&path, Codec::Json);
        assert_eq!(
            other.publish("news.today", &"again").unwrap(),
            1,
            "{codec:?}"
        );
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap(),
            ("news.today".to_owned(), "again".to_owned())
        );
        assert_eq!(
            other.call::<_, String>("echo", &"hi", None).unwrap(),
            "echo hi"
        );
        // The client itself works again too.
        client.set("k", &1).unwrap();
        assert_eq!(other.get::<i32>("k").unwrap(), Some(1));
        let seen = seen.lock().unwrap();
        assert!(
            matches!(seen.first(), Some(Event::Connected { .. })),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(|e| matches!(e, Event::Reconnected { .. })),
            "{seen:?}"
        );
    }
}

#[test]
fn requests_in_flight_fail_with_edisconnected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.sock");
    let mut broker = BrokerProc::start(&path, &[]);
    let worker = Client::builder()
        .address(&path)
        .auto_spawn(false)
        .reconnect(false)
        .connect()
        .unwrap();
    let caller = Client::builder()
        .address(&path)
        .auto_spawn(false)
        .reconnect(false)
        .connect()
        .unwrap();
    let (entered_tx, entered_rx) = channel::<()>();
    let entered = Mutex::new(entered_tx);
    let (release_tx, release_rx) = channel::<()>();
    let release = Mutex::new(release_rx);
    let _reg = worker
        .register("hang", move |(): ()| {
            entered.lock().unwrap().send(()).unwrap();
            let _ = release.lock().unwrap().recv();
            Ok(())
        })
        .unwrap();
    let c = caller.clone();
    let call = std::thread::spawn(move || c.call::<_, ()>("hang", &(), None));
    entered_rx.recv_timeout(WAIT).unwrap();
    broker.kill();
    let e = call.join().unwrap().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Disconnected), "{e}");
    // Without reconnect, later requests fail at once.
    let e = caller.get::<i32>("x").unwrap_err();
    assert!(matches!(e, ClientError::Disconnected { .. }), "{e:?}");
    release_tx.send(()).unwrap();
}

#[test]
fn unresponsive_broker_gives_etimeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.sock");
    let broker = BrokerProc::start(&path, &[]);
    let c = Client::builder()
        .address(&path)
        .auto_spawn(false)
        .call_timeout(Duration::from_millis(200))
        .ping_interval(None)
        .connect()
        .unwrap();
    c.set("a", &1).unwrap();
    broker.signal(libc::SIGSTOP);
    let e = c.get::<i32>("a").unwrap_err();
    broker.signal(libc::SIGCONT);
    assert_eq!(e.code(), Some(ErrorCode::Timeout), "{e}");
    // The late reply is dropped; the connection stays usable.
    assert_eq!(c.get::<i32>("a").unwrap(), Some(1));
}

#[test]
fn silent_broker_is_detected_by_pings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.sock");
    let broker = BrokerProc::start(&path, &[]);
    let c = Client::builder()
        .address(&path)
        .auto_spawn(false)
        .ping_interval(Some(Duration::from_millis(100)))
        .connect()
        .unwrap();
    let events = c.events();
    broker.signal(libc::SIGSTOP);
    let e = wait_event(&events, "disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    });
    broker.signal(libc::SIGCONT);
    let Event::Disconnected { reason, .. } = e else {
        unreachable!()
    };
    assert!(reason.contains("no answer"), "{reason}");
    // It was alive after all: the client reconnects.
    wait_event(&events, "reconnect", |e| {
        matches!(e, Event::Reconnected { .. })
    });
    c.set("ok", &true).unwrap();
}

#[test]
fn token_is_required_and_accepted() {
    let b = InProc::start_with(|b| b.token(Some("s3cret".into())));
    let e = Client::builder()
        .address(&b.path)
        .auto_spawn(false)
        .connect()
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Auth), "no token: {e}");
    let c = Client::builder()
        .address(&b.path)
        .auto_spawn(false)
        .token("wrong")
        .connect()
        .unwrap_err();
    assert_eq!(c.code(), Some(ErrorCode::Auth), "{c}");
    let ok = Client::builder()
        .address(&b.path)
        .auto_spawn(false)
        .token("s3cret")
        .connect()
        .unwrap();
    ok.set("a", &1).unwrap();
}

#[test]
fn connect_without_broker_or_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.sock");
    let e = Client::builder()
        .address(&path)
        .auto_spawn(false)
        .connect()
        .unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert_eq!(e.code(), Some(ErrorCode::Disconnected));
    let e = Client::builder()
        .address(&path)
        .broker_bin(dir.path().join("no-such-procmesh"))
        .connect()
        .unwrap_err();
    assert!(matches!(e, ClientError::Spawn { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such-procmesh"), "{e}");
}

#[test]
fn broker_heartbeats_are_answered() {
    let b = InProc::start_with(|b| b.heartbeat(Some(Duration::from_millis(100))));
    let c = Client::builder()
        .address(&b.path)
        .auto_spawn(false)
        .ping_interval(None)
        .connect()
        .unwrap();
    let events = c.events();
    // Idle for many heartbeat intervals: only our pongs keep the connection.
    // (Time has to pass here; nothing signals "not reaped".)
    std::thread::sleep(Duration::from_millis(800));
    assert!(events.try_recv().is_err(), "no disconnect while idle");
    let s = c.stats().unwrap();
    assert_eq!(s.reaped, 0);
    assert_eq!(s.connections, 1);
}
