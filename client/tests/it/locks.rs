//! Locks and fencing through the client, in both codecs.

use std::time::Duration;

use procmesh::{ClientError, ErrorCode, FencingToken, LockOptions};

use crate::support::{InProc, CODECS};

#[test]
fn lock_excludes_and_releases_on_drop() {
    for codec in CODECS {
        let b = InProc::start();
        let a = b.client(codec);
        let other = b.client(codec);
        let g = a
            .lock("job", LockOptions::new())
            .unwrap()
            .expect("free lock");
        assert_eq!(g.key(), "job");
        assert!(
            other.lock("job", LockOptions::new()).unwrap().is_none(),
            "{codec:?}"
        );
        // A waiter gets it as soon as the holder lets go.
        let waiter = {
            let other = other.clone();
            std::thread::spawn(move || {
                other
                    .lock("job", LockOptions::new().wait(Duration::from_secs(10)))
                    .unwrap()
                    .map(|g| g.token())
            })
        };
        // Make sure the waiter is queued before releasing (it is, once stats say so).
        crate::support::eventually("waiter queued", || a.stats().unwrap().lock_waiters == 1);
        let t1 = g.token();
        drop(g);
        let t2 = waiter.join().unwrap().expect("acquired after release");
        assert!(t2 > t1, "tokens increase: {t1} then {t2}");
    }
}

#[test]
fn fenced_writes_refuse_stale_tokens() {
    for codec in CODECS {
        let b = InProc::start();
        let a = b.client(codec);
        let c = b.client(codec);
        let old = a
            .lock("res", LockOptions::new().ttl(Duration::from_millis(50)))
            .unwrap()
            .unwrap();
        old.set("res:data", &"from a").unwrap();
        // The grant expires; c takes the lock with a newer token.
        let new = c
            .lock("res", LockOptions::new().wait(Duration::from_secs(10)))
            .unwrap()
            .expect("acquired after expiry");
        assert!(new.token() > old.token());
        new.set("res:data", &"from c").unwrap();
        let e = old.set("res:data", &"late a").unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Fenced), "{codec:?}: {e}");
        assert!(matches!(
            old.del("res:data").unwrap_err().code(),
            Some(ErrorCode::Fenced)
        ));
        assert!(old.cas("res:data", Some(&"from c"), Some(&"x")).is_err());
        assert_eq!(
            c.get::<String>("res:data").unwrap().as_deref(),
            Some("from c")
        );
        // The token-level API is the same thing.
        assert!(new.cas("res:data", Some(&"from c"), Some(&"cas")).unwrap());
        let e = c
            .fenced_set("res", FencingToken(0), "res:data", &"zero")
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Fenced));
        assert!(c.fenced_del("res", new.token(), "res:data").unwrap());
        assert!(new.unlock().unwrap());
        drop(old);
    }
}

#[test]
fn with_lock_runs_fenced_and_times_out() {
    let b = InProc::start();
    let c = b.client(procmesh::Codec::MsgPack);
    let v = c
        .with_lock("w", LockOptions::new(), |ctx| {
            ctx.set("w:v", &1)?;
            Ok::<_, ClientError>(ctx.token())
        })
        .unwrap();
    assert!(v.0 > 0);
    assert_eq!(c.get::<i32>("w:v").unwrap(), Some(1));
    // Released afterwards: it can be taken again at once.
    let held = c
        .lock("w", LockOptions::new())
        .unwrap()
        .expect("released by with_lock");
    let other = b.client(procmesh::Codec::Json);
    let e = other
        .with_lock(
            "w",
            LockOptions::new().wait(Duration::from_millis(20)),
            |_| Ok::<_, ClientError>(()),
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LockTimeout), "{e}");
    drop(held);
}
