//! The async client (`procmesh::aio`, feature `tokio`) against real brokers:
//! many tasks on one connection under a multi-threaded runtime, every
//! operation family, cancellation of a call, a lock wait, a subscribe and a
//! register (nothing leaked, the connection still right), a broker killed and
//! restarted while tasks wait, stream backpressure, and pipelines.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use procmesh::aio;
use procmesh::{
    Acks, Client, ClientError, Codec, ErrorCode, Event, LockOptions, PipelineResult,
    PublishOptions, Published, Replay, SubscribeOptions,
};

use crate::support::{client_at, BrokerProc, InProc, CODECS, WAIT};

async fn aclient(path: &Path, codec: Codec) -> aio::Client {
    Client::builder()
        .address(path)
        .codec(codec)
        .auto_spawn(false)
        .connect_async()
        .await
        .expect("connect")
}

/// Polls `f` once: true when it is still pending (for example, written and
/// waiting for its reply).
async fn pending_after_one_poll<F: Future>(f: &mut Pin<Box<F>>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx).is_pending())).await
}

/// `what` within [`WAIT`].
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

/// Polls `f` until true, for broker state without a signal (a queued waiter).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    bounded(what, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

async fn next_event(events: &mut aio::Events, what: &str, f: impl Fn(&Event) -> bool) {
    bounded(what, async {
        loop {
            let e = events.next().await.expect("event stream ended");
            if f(&e) {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_share_one_connection_on_a_multi_thread_runtime() {
    for codec in CODECS {
        let b = InProc::start();
        let c = aclient(&b.path, codec).await;
        let mut tasks = Vec::new();
        for t in 0..64i64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25i64 {
                    let k = format!("t{t}:{i}");
                    c.set(&k, &(t * 1000 + i)).await?;
                    assert_eq!(c.get::<i64>(&k).await?, Some(t * 1000 + i));
                    c.incr("total", 1).await?;
                }
                Ok::<_, ClientError>(())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(c.get::<i64>("total").await.unwrap(), Some(64 * 25));
        assert_eq!(c.keys().await.unwrap().len(), 64 * 25 + 1);
        let st = c.stats().await.unwrap();
        assert_eq!(st.connections, 1, "every task shares one connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_family_works_async_on_a_sharded_mesh() {
    for codec in CODECS {
        let brokers: Vec<InProc> = (0..2).map(|_| InProc::start()).collect();
        let c = Client::builder()
            .addresses(brokers.iter().map(|b| b.path.clone()))
            .codec(codec)
            .auto_spawn(false)
            .connect_async()
            .await
            .unwrap();
        assert_eq!(c.shard_count(), 2);
        // Cache and atomics.
        c.set("a", &"x").await.unwrap();
        c.set_with_ttl("t", &1, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(c.has("a").await.unwrap());
        assert!(c.del("a").await.unwrap());
        assert_eq!(c.get::<String>("a").await.unwrap(), None);
        c.mset(&[("m1", 1), ("m2", 2), ("m3", 3)]).await.unwrap();
        assert_eq!(
            c.mget::<i32, _>(&["m3", "nope", "m1"]).await.unwrap(),
            vec![Some(3), None, Some(1)]
        );
        assert_eq!(c.incr("n", 5).await.unwrap(), 5);
        assert_eq!(c.decr("n", 2).await.unwrap(), 3);
        assert_eq!(c.incr_float("f", 0.5).await.unwrap(), 0.5);
        assert!(c.cas("n", Some(&3), Some(&10)).await.unwrap());
        assert!(!c.cas("n", Some(&3), Some(&11)).await.unwrap());
        let e = c.incr("m1", 1).await;
        assert!(e.is_ok(), "a number");
        c.set("s", &"text").await.unwrap();
        let e = c.incr("s", 1).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotNumber), "{codec:?}");
        // Locks and fencing.
        let g = c
            .lock("job", LockOptions::new())
            .await
            .unwrap()
            .expect("free");
        let old = g.token();
        g.set("job:owner", &"me").await.unwrap();
        assert!(c.lock("job", LockOptions::new()).await.unwrap().is_none());
        assert!(g.unlock().await.unwrap());
        let g2 = c.lock("job", LockOptions::new()).await.unwrap().unwrap();
        assert!(g2.token() > old);
        let e = c
            .fenced_set("job", old, "job:owner", &"stale")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Fenced));
        drop(g2);
        // Pub/sub as a stream, exact and wildcard.
        let mut exact = c.subscribe("news.rust").await.unwrap();
        let mut wild = c.subscribe("news.*").await.unwrap();
        assert_eq!(c.publish("news.rust", &"hi").await.unwrap(), 1);
        let m = bounded("exact message", exact.next()).await.unwrap();
        assert_eq!(m.payload::<String>().unwrap(), "hi");
        let m = bounded("wildcard message", wild.recv()).await.unwrap();
        assert_eq!(m.channel(), "news.rust");
        c.publish_nowait("news.go", &"nowait").await.unwrap();
        let m = bounded("nowait message", wild.next()).await.unwrap();
        assert_eq!(m.payload::<String>().unwrap(), "nowait");
        wild.unsubscribe().await.unwrap();
        exact.unsubscribe().await.unwrap();
        assert_eq!(c.publish("news.rust", &"gone").await.unwrap(), 0);
        // RPC.
        let reg = c
            .register("add", |(a, b): (i64, i64)| Ok(a + b))
            .await
            .unwrap();
        assert_eq!(c.call::<_, i64>("add", &(2, 3), None).await.unwrap(), 5);
        reg.unregister().await.unwrap();
        let e = c.call::<_, i64>("add", &(2, 3), None).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NoHandler));
        // Control.
        c.ping().await.unwrap();
        let st = c.stats().await.unwrap();
        assert_eq!(st.shards.len(), 2);
        c.clear().await.unwrap();
        assert!(c.keys().await.unwrap().is_empty());
        // The blocking face shares the connections.
        c.blocking().set("b", &1).unwrap();
        assert_eq!(c.get::<i32>("b").await.unwrap(), Some(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_handler_may_await_the_client_it_serves_on() {
    let b = InProc::start();
    let c = aclient(&b.path, Codec::MsgPack).await;
    c.set("base", &40).await.unwrap();
    let inner = c.clone();
    let _reg = c
        .register_async("add_base", move |n: i64| {
            let c = inner.clone();
            async move {
                let base: i64 = c
                    .get("base")
                    .await
                    .map_err(|e| procmesh::HandlerError::new(e.to_string()))?
                    .unwrap_or(0);
                Ok(base + n)
            }
        })
        .await
        .unwrap();
    let mut calls = Vec::new();
    for i in 0..8i64 {
        let c = c.clone();
        calls.push(tokio::spawn(async move {
            c.call::<_, i64>("add_base", &i, None).await
        }));
    }
    for (i, t) in calls.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), 40 + i as i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_discarded_by_id_and_the_connection_still_works() {
    let b = InProc::start();
    let worker = client_at(&b.path, Codec::MsgPack);
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let _reg = worker
        .register("slow", move |()| {
            let _ = started_tx.send(());
            let _ = release_rx.lock().unwrap().recv();
            Ok(42i64)
        })
        .unwrap();
    let c = aclient(&b.path, Codec::MsgPack).await;
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.call::<_, i64>("slow", &(), None).await }
    });
    bounded("the handler starts", started.recv()).await.unwrap();
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    // The worker answers now; the reply comes back for an id nobody waits for.
    release_tx.send(()).unwrap();
    for i in 0..50 {
        c.set("k", &i).await.unwrap();
        assert_eq!(c.get::<i32>("k").await.unwrap(), Some(i));
    }
    // A new call gets its own result.
    let next = tokio::spawn({
        let c = c.clone();
        async move { c.call::<_, i64>("slow", &(), None).await }
    });
    bounded("the handler starts again", started.recv())
        .await
        .unwrap();
    release_tx.send(()).unwrap();
    assert_eq!(next.await.unwrap().unwrap(), 42);
    assert_eq!(c.stats().await.unwrap().pending_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lock_wait_releases_the_lock_once_granted() {
    let b = InProc::start();
    let holder = client_at(&b.path, Codec::MsgPack);
    let g = holder
        .lock("job", LockOptions::new().ttl(Duration::from_secs(120)))
        .unwrap()
        .unwrap();
    let c = aclient(&b.path, Codec::MsgPack).await;
    let wait = tokio::spawn({
        let c = c.clone();
        async move {
            c.lock(
                "job",
                LockOptions::new()
                    .ttl(Duration::from_secs(120))
                    .wait(Duration::from_secs(60)),
            )
            .await
        }
    });
    eventually("the async waiter is queued", || {
        holder.stats().unwrap().lock_waiters == 1
    })
    .await;
    wait.abort();
    assert!(wait.await.unwrap_err().is_cancelled());
    // The broker grants the lock to the cancelled waiter's connection now; the
    // client releases it at once. Leaked, it would be held for 120 s.
    assert!(g.unlock().unwrap());
    let other = client_at(&b.path, Codec::Json);
    let g3 = tokio::task::spawn_blocking(move || {
        other.lock("job", LockOptions::new().wait(WAIT)).unwrap()
    })
    .await
    .unwrap()
    .expect("the cancelled waiter's grant was released");
    assert_eq!(holder.stats().unwrap().locks, 1, "only the new holder's");
    drop(g3);
    // The async client still works, its own locks included.
    let mine = c
        .lock("job", LockOptions::new().wait(WAIT))
        .await
        .unwrap()
        .unwrap();
    assert!(mine.unlock().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_subscribe_or_register_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stop.sock");
    let broker = BrokerProc::start(&path, &[]);
    let c = aclient(&path, Codec::MsgPack).await;
    // A stopped broker: the requests are written and wait for replies.
    broker.signal(libc::SIGSTOP);
    let mut sub = Box::pin(c.subscribe("news"));
    assert!(pending_after_one_poll(&mut sub).await, "sub sent, waiting");
    let mut reg = Box::pin(c.register("proc", |()| Ok(1)));
    assert!(pending_after_one_poll(&mut reg).await, "reg sent, waiting");
    let mut call = Box::pin(c.call::<_, i64>("proc", &(), None));
    assert!(
        pending_after_one_poll(&mut call).await,
        "call sent, waiting"
    );
    drop((sub, reg, call));
    broker.signal(libc::SIGCONT);
    // Our own ping follows the sub/unsub and reg/unreg on the same connection:
    // when it returns, the broker has applied all of them.
    bounded("ping", c.ping()).await.unwrap();
    let other = client_at(&path, Codec::Json);
    assert_eq!(other.publish("news", &1).unwrap(), 0, "no subscriber left");
    let e = other.call::<_, i64>("proc", &(), None).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoHandler), "no worker left: {e}");
    let st = other.stats().unwrap();
    assert_eq!(st.subscriptions, 0);
    assert_eq!(st.pending_calls, 0);
    // The connection is intact: subscribe and register again, for real.
    let mut s = c.subscribe("news").await.unwrap();
    let _r = c.register("proc", |()| Ok(7i64)).await.unwrap();
    assert_eq!(other.publish("news", &2).unwrap(), 1);
    let m = bounded("message", s.next()).await.unwrap();
    assert_eq!(m.payload::<i32>().unwrap(), 2);
    assert_eq!(other.call::<_, i64>("proc", &(), None).unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_waiting_through_a_broker_restart_complete_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.sock");
    let mut broker = BrokerProc::start(&path, &[]);
    let c = aclient(&path, Codec::MsgPack).await;
    let mut events = c.events();
    let mut sub = c.subscribe("news").await.unwrap();
    let _reg = c
        .register("echo", |s: String| Ok(format!("echo {s}")))
        .await
        .unwrap();
    c.set("k", &1).await.unwrap();
    // A request in flight when the broker dies fails with EDISCONNECTED.
    broker.signal(libc::SIGSTOP);
    let mut inflight = Box::pin(c.get::<i32>("k"));
    assert!(pending_after_one_poll(&mut inflight).await);
    broker.kill();
    let e = bounded("the in-flight request fails", inflight)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Disconnected), "{e}");
    next_event(&mut events, "disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    // Tasks started while the broker is down wait for the reconnect.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.incr("n", 1).await }));
    }
    let _broker = BrokerProc::start(&path, &[]);
    next_event(&mut events, "reconnect", |e| {
        matches!(e, Event::Reconnected { .. })
    })
    .await;
    let mut last = Vec::new();
    for t in tasks {
        last.push(bounded("a waiting task", t).await.unwrap().unwrap());
    }
    last.sort();
    assert_eq!(
        last,
        (1..=16).collect::<Vec<i64>>(),
        "each ran once, on the new broker"
    );
    // The subscription and the registration came back with the connection.
    let other = client_at(&path, Codec::Json);
    assert_eq!(other.publish("news", &"again").unwrap(), 1);
    let m = bounded("replayed subscription", sub.next()).await.unwrap();
    assert_eq!(m.payload::<String>().unwrap(), "again");
    assert_eq!(
        other.call::<_, String>("echo", &"hi", None).unwrap(),
        "echo hi"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_drops_and_counts_past_its_capacity() {
    let b = InProc::start();
    let c = aclient(&b.path, Codec::MsgPack).await;
    let mut slow = c.subscribe_with_capacity("bp", 8).await.unwrap();
    // Once this second subscription's message arrives, every earlier message of
    // the connection has been through the dispatch thread.
    let mut sync = c.subscribe("bp.sync").await.unwrap();
    let other = client_at(&b.path, Codec::MsgPack);
    let publisher = tokio::task::spawn_blocking(move || {
        for i in 0..1000 {
            other.publish("bp", &i).unwrap();
        }
        other.publish("bp.sync", &()).unwrap();
        other
    });
    let other = publisher.await.unwrap();
    bounded("sync message", sync.next()).await.unwrap();
    assert_eq!(slow.queued(), 8, "memory stays at the capacity");
    assert_eq!(slow.dropped(), 992, "every message past it is counted");
    let mut kept = Vec::new();
    for _ in 0..8 {
        kept.push(slow.next().await.unwrap().payload::<i32>().unwrap());
    }
    assert_eq!(kept, (0..8).collect::<Vec<_>>(), "the oldest, in order");
    other.publish("bp", &1000).unwrap();
    let m = bounded("after draining", slow.next()).await.unwrap();
    assert_eq!(m.payload::<i32>().unwrap(), 1000);
    assert_eq!(slow.dropped(), 992);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_pipeline_keeps_order_and_an_error_is_its_own() {
    let brokers: Vec<InProc> = (0..3).map(|_| InProc::start()).collect();
    let c = Client::builder()
        .addresses(brokers.iter().map(|b| b.path.clone()))
        .auto_spawn(false)
        .connect_async()
        .await
        .unwrap();
    let mut p = c.pipeline();
    for i in 0..30i64 {
        p = p.set(&format!("k{i}"), &i).incr(&format!("k{i}"), 100);
    }
    p = p.set("s", &"text").incr("s", 1).get("s");
    let r: Vec<PipelineResult> = p.run().await.unwrap();
    assert_eq!(r.len(), 63);
    let mut it = r.into_iter();
    for i in 0..30i64 {
        it.next().unwrap().value::<()>().unwrap();
        assert_eq!(it.next().unwrap().value::<i64>().unwrap(), i + 100);
    }
    assert!(it.next().unwrap().is_ok());
    let err = it.next().unwrap();
    assert_eq!(
        err.error().and_then(|e| e.code()),
        Some(ErrorCode::NotNumber)
    );
    assert_eq!(
        it.next()
            .unwrap()
            .value::<Option<String>>()
            .unwrap()
            .as_deref(),
        Some("text")
    );
    let (a, b): (i64, Option<i64>) = c.pipeline().incr("k0", 1).get("k29").query().await.unwrap();
    assert_eq!((a, b), (101, Some(129)));
}

/// The examples (built by `cargo test --features tokio`) run to completion and
/// show what they claim.
#[test]
fn the_async_examples_run_and_show_what_they_claim() {
    let exe = std::env::current_exe().expect("current exe");
    let examples = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("examples");
    let run = |name: &str| -> String {
        let bin = examples.join(name);
        assert!(
            bin.exists(),
            "example {name} not built at {}",
            bin.display()
        );
        let out = std::process::Command::new(&bin)
            .env_remove("PROCMESH_SOCKET")
            .output()
            .expect("run example");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{name} failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let lock = run("aio_lock");
    assert!(lock.contains("A's late write: EFENCED"), "{lock}");
    assert!(lock.contains(r#"report:owner = Some("B")"#), "{lock}");
    let workers = run("aio_workers");
    assert_eq!(
        workers.lines().filter(|l| l.contains("by worker")).count(),
        12
    );
    for w in 0..3 {
        assert!(
            workers.contains(&format!("by worker {w}")),
            "every worker served: {workers}"
        );
    }
    let service = run("aio_service");
    assert!(service.contains("hit #5"), "{service}");
    assert!(
        service.contains("rendered by instance b (cached for instance a"),
        "one instance serves the other's cached page: {service}"
    );
    let sharded = run("aio_sharded");
    assert!(sharded.contains("total 12"), "{sharded}");
    assert_eq!(
        sharded.lines().filter(|l| l.starts_with("heard ")).count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_subscription_replays_a_retained_backlog_then_goes_live() {
    let b = InProc::start_with(|b| {
        b.pubsub(procmesh_broker::retain::RetainConfig {
            persist: true,
            retention: 100,
            ..Default::default()
        })
    });
    let other = client_at(&b.path, Codec::MsgPack);
    for i in 0..5 {
        other.publish("orders", &i).unwrap();
    }
    let c = aclient(&b.path, Codec::MsgPack).await;
    let mut sub = c
        .subscribe_with(
            "orders",
            procmesh::SubscribeOptions::new().replay(procmesh::Replay::All),
        )
        .await
        .unwrap();
    other.publish("orders", &5).unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        let m = bounded("backlog then live", sub.next()).await.unwrap();
        got.push((m.offset().is_some(), m.payload::<i32>().unwrap()));
    }
    assert_eq!(got, (0..6).map(|i| (true, i)).collect::<Vec<_>>());
}

/// The broker's count of `kind` requests.
async fn ops(c: &aio::Client, kind: &str) -> u64 {
    c.stats().await.unwrap().raw["ops"][kind]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_near_cache_serves_repeated_reads_locally_and_sees_other_writes() {
    let b = InProc::start();
    let c = Client::builder()
        .address(&b.path)
        .codec(Codec::MsgPack)
        .auto_spawn(false)
        .near_cache(1000)
        .connect_async()
        .await
        .expect("connect");
    c.set("k", &41).await.unwrap();
    c.set("j", &7).await.unwrap();
    assert_eq!(c.get::<i64>("k").await.unwrap(), Some(41));
    assert_eq!(c.get::<i64>("missing").await.unwrap(), None);
    let v: Vec<Option<i64>> = c.mget(&["j"]).await.unwrap();
    assert_eq!(v, vec![Some(7)], "an mget fills too");
    let (gets, mgets, hass) = (
        ops(&c, "get").await,
        ops(&c, "mget").await,
        ops(&c, "has").await,
    );
    let before = c.near_cache_stats().unwrap();
    for _ in 0..50 {
        assert_eq!(c.get::<i64>("k").await.unwrap(), Some(41));
        assert_eq!(c.get::<i64>("j").await.unwrap(), Some(7));
        assert_eq!(c.get::<i64>("missing").await.unwrap(), None, "a miss too");
        assert!(c.has("k").await.unwrap());
        let v: Vec<Option<i64>> = c.mget(&["k", "missing", "j"]).await.unwrap();
        assert_eq!(v, vec![Some(41), None, Some(7)]);
    }
    assert_eq!(ops(&c, "get").await, gets, "no get reached the broker");
    assert_eq!(ops(&c, "mget").await, mgets, "no mget reached the broker");
    assert_eq!(ops(&c, "has").await, hass, "no has reached the broker");
    let after = c.near_cache_stats().unwrap();
    assert_eq!(after.hits - before.hits, 50 * 7);
    assert_eq!(after.misses, before.misses);

    // Read-your-writes for every async write kind.
    c.set("k", &42).await.unwrap();
    assert_eq!(c.get::<i64>("k").await.unwrap(), Some(42), "after set");
    assert_eq!(c.incr("k", 1).await.unwrap(), 43);
    assert_eq!(c.get::<i64>("k").await.unwrap(), Some(43), "after incr");
    assert!(c.cas("k", Some(&43), Some(&44)).await.unwrap());
    assert_eq!(c.get::<i64>("k").await.unwrap(), Some(44), "after cas");
    c.mset(&[("k", 45)]).await.unwrap();
    assert_eq!(c.get::<i64>("k").await.unwrap(), Some(45), "after mset");
    let g = c
        .lock("lk", LockOptions::new())
        .await
        .unwrap()
        .expect("a free lock");
    c.fenced_set("lk", g.token(), "k", &46).await.unwrap();
    assert_eq!(c.get::<i64>("k").await.unwrap(), Some(46), "after fset");
    assert!(c.fenced_del("lk", g.token(), "k").await.unwrap());
    assert_eq!(c.get::<i64>("k").await.unwrap(), None, "after fdel");
    assert!(g.unlock().await.unwrap());
    c.set("k", &47).await.unwrap();
    assert!(c.del("k").await.unwrap());
    assert_eq!(c.get::<i64>("k").await.unwrap(), None, "after del");

    // Another client's write reaches us as an invalidation push; until it is
    // applied the cached value may still be served, so poll up to a deadline.
    assert_eq!(c.get::<i64>("j").await.unwrap(), Some(7));
    assert_eq!(c.get::<i64>("j").await.unwrap(), Some(7), "cached");
    let other = client_at(&b.path, Codec::Json);
    other.set("j", &8).unwrap();
    bounded("the other client's set seen", async {
        while c.get::<i64>("j").await.unwrap() != Some(8) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(c.near_cache_stats().unwrap().invalidations > after.invalidations);
}

/// The payloads of `sub` up to the `-1` that ends them.
async fn until_end(sub: &mut aio::Subscription) -> Vec<i64> {
    bounded("the end marker", async {
        let mut got = Vec::new();
        loop {
            let m = sub.next().await.expect("subscription ended");
            match m.payload::<i64>().unwrap() {
                -1 => return got,
                v => got.push(v),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_publish_with_answers_acks_as_asked_and_deduplicates_a_sequence() {
    for codec in CODECS {
        let b = InProc::start();
        let s = aclient(&b.path, codec).await;
        let mut sub = s.subscribe("c").await.unwrap();
        let p = Client::builder()
            .address(&b.path)
            .codec(codec)
            .auto_spawn(false)
            .idempotent(true)
            .connect_async()
            .await
            .unwrap();
        let none = p.publish_with("c", &1, PublishOptions::new().acks(Acks::None));
        assert_eq!(none.await.unwrap(), Published::Sent);
        let leader = p.publish_with("c", &2, PublishOptions::new().acks(Acks::Leader));
        assert_eq!(leader.await.unwrap(), Published::Delivered(1));
        let all = p.publish_with("c", &3, PublishOptions::new().acks(Acks::All));
        assert_eq!(all.await.unwrap(), Published::Delivered(1));
        assert_eq!(p.blocking().sequence("c"), 3, "each took a sequence number");
        // The same sequence number again (what a retry sends): deduplicated.
        p.blocking().set_sequence("c", 2).unwrap();
        let again = p
            .publish_with("c", &3, PublishOptions::new())
            .await
            .unwrap();
        assert!(again.is_duplicate(), "{codec:?}: {again:?}");
        // `publish` is idempotent on an idempotent client too: a duplicate is 0.
        p.blocking().set_sequence("c", 2).unwrap();
        assert_eq!(p.publish("c", &3).await.unwrap(), 0);
        assert_eq!(p.publish("c", &4).await.unwrap(), 1, "seq 4 is new");
        // Not idempotent for one call: no sequence, always delivered.
        p.blocking().set_sequence("c", 0).unwrap();
        let plain = p.publish_with("c", &5, PublishOptions::new().idempotent(false));
        assert_eq!(plain.await.unwrap(), Published::Delivered(1));
        p.publish_with("c", &-1, PublishOptions::new().idempotent(false))
            .await
            .unwrap();
        assert_eq!(until_end(&mut sub).await, vec![1, 2, 3, 4, 5], "{codec:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_idempotent_publish_cut_off_by_a_broker_crash_is_retried_after_the_reconnect() {
    for codec in CODECS {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("mesh.sock");
        let data = dir.path().join("data");
        let args = [
            "--pubsub-persist",
            "--persist-dir",
            data.to_str().unwrap(),
            "--fsync",
            "always",
        ];
        let mut broker = BrokerProc::start(&sock, &args);
        let p = Client::builder()
            .address(&sock)
            .codec(codec)
            .auto_spawn(false)
            .call_timeout(WAIT)
            .idempotent(true)
            .publish_retries(10)
            .connect_async()
            .await
            .unwrap();
        // A stopped broker takes the frame into its socket buffer and never
        // answers; SIGKILL then cuts the connection with it unacknowledged.
        broker.signal(libc::SIGSTOP);
        let mut publishing =
            Box::pin(p.publish_with("x", &1, PublishOptions::new().acks(Acks::All)));
        assert!(pending_after_one_poll(&mut publishing).await, "written");
        broker.kill();
        let _broker = BrokerProc::start(&sock, &args);
        let r = bounded("the retried publish", publishing)
            .await
            .expect("retried after the reconnect");
        assert_eq!(r, Published::Delivered(0), "{codec:?}");
        let s = aclient(&sock, codec).await;
        let opts = SubscribeOptions::new().replay(Replay::All);
        let mut sub = s.subscribe_with("x", opts).await.unwrap();
        s.publish("x", &-1).await.unwrap();
        assert_eq!(
            until_end(&mut sub).await,
            vec![1],
            "{codec:?}: delivered once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_with_lock_holds_the_lock_for_the_closure_and_releases_it_after() {
    for codec in CODECS {
        let b = InProc::start();
        let c = aclient(&b.path, codec).await;
        let other = client_at(&b.path, codec);
        let seen = c
            .with_lock("job", LockOptions::new(), |g| {
                let other = other.clone();
                Box::pin(async move {
                    g.set("job:state", &"running").await?;
                    // Held for the closure: another client is refused.
                    let refused = other.lock("job", LockOptions::new())?;
                    assert!(refused.is_none(), "held while the closure runs");
                    Ok::<_, ClientError>(g.token())
                })
            })
            .await
            .unwrap();
        let state: Option<String> = c.get("job:state").await.unwrap();
        assert_eq!(state.as_deref(), Some("running"), "the fenced set landed");
        // Released after: the other client gets it, with a newer token.
        let g = other
            .lock("job", LockOptions::new())
            .unwrap()
            .expect("free");
        assert!(g.token() > seen);
        // Held by the other: ELOCKTIMEOUT, and the closure never runs.
        let e = c
            .with_lock::<(), ClientError, _>("job", LockOptions::new(), |_| {
                Box::pin(async { panic!("ran without the lock") })
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::LockTimeout), "{e}");
        assert!(g.unlock().unwrap());
        // A failing closure's error is returned, and the lock is still released.
        let e = c
            .with_lock("job", LockOptions::new(), |_| {
                Box::pin(async { Err::<(), _>(ClientError::Config("the job failed".into())) })
            })
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Config(_)), "{e}");
        assert!(other.lock("job", LockOptions::new()).unwrap().is_some());
    }
}
