//! The bounded pool of threads that run RPC handlers, and the type-erased
//! handler they run.
//!
//! Owns the pool, so a slow handler never stalls the I/O thread that reads
//! replies, and the wrapping of a typed user function into an [`RpcHandler`]
//! (decode the argument array, run it catching panics, encode the result).
//! Knows nothing about connections: `conn`'s reader submits the work and
//! writes the result back.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use procmesh_proto::{Codec, Raw};

use crate::error::{HandlerError, Result};
use crate::pending::lock;
/// A registered procedure: decodes the argument array, runs the user's
/// function, encodes its result in the connection's codec.
pub(crate) type RpcHandler = Arc<dyn Fn(Raw<'_>) -> Result<Vec<u8>, HandlerError> + Send + Sync>;

/// Wraps a typed user handler.
pub(crate) fn wrap<A, R, F>(codec: Codec, f: F) -> RpcHandler
where
    A: serde::de::DeserializeOwned,
    R: serde::Serialize,
    F: Fn(A) -> Result<R, HandlerError> + Send + Sync + 'static,
{
    Arc::new(move |args: Raw<'_>| {
        let a: A = crate::value::decode_args(args)
            .map_err(|e| HandlerError::new(format!("bad arguments: {e}")))?;
        let r = f(a)?;
        crate::value::encode(codec, &r).map_err(|e| HandlerError::new(e.to_string()))
    })
}

/// Runs a handler, turning a panic into an `ECALL` error for the caller.
pub(crate) fn run_handler(h: &RpcHandler, args: Raw<'_>) -> Result<Vec<u8>, HandlerError> {
    match catch_unwind(AssertUnwindSafe(|| h(args))) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(HandlerError::new(format!("handler panicked: {what}")))
        }
    }
}

type Task = Box<dyn FnOnce() + Send>;

/// A fixed number of threads taking tasks from one queue. Threads end when
/// the pool is dropped.
pub(crate) struct Pool {
    tx: Sender<Task>,
}

impl Pool {
    /// Starts `n` threads (at least one).
    pub fn new(n: usize) -> std::io::Result<Pool> {
        let (tx, rx) = channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n.max(1) {
            let rx: Arc<Mutex<Receiver<Task>>> = rx.clone();
            std::thread::Builder::new()
                .name(format!("procmesh-worker-{i}"))
                .spawn(move || loop {
                    // The guard is dropped before the task runs, so tasks run in parallel.
                    let task = lock(&rx).recv();
                    match task {
                        Ok(t) => t(),
                        Err(_) => return,
                    }
                })?;
        }
        Ok(Pool { tx })
    }

    /// Queues a task.
    pub fn submit(&self, t: Task) {
        let _ = self.tx.send(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_handler_round_trip_and_panics() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let add = wrap(codec, |(a, b): (i64, i64)| Ok(a + b));
            let args = crate::value::encode_args(codec, &(2, 3)).unwrap();
            let out = run_handler(&add, Raw::new(codec, &args)).unwrap();
            assert_eq!(
                crate::value::decode::<i64>(Raw::new(codec, &out)).unwrap(),
                5
            );

            let bad = crate::value::encode_args(codec, &("x",)).unwrap();
            let e = run_handler(&add, Raw::new(codec, &bad)).unwrap_err();
            assert_eq!(e.code(), "ECALL");
            assert!(e.message().starts_with("bad arguments"), "{e}");

            let boom = wrap(codec, |_: ()| -> Result<(), HandlerError> {
                panic!("kaput")
            });
            let none = crate::value::encode_args(codec, &()).unwrap();
            let e = run_handler(&boom, Raw::new(codec, &none)).unwrap_err();
            assert_eq!(e.code(), "ECALL");
            assert!(e.message().contains("kaput"), "{e}");
        }
    }

    #[test]
    fn pool_runs_tasks_in_parallel() {
        let pool = Pool::new(2).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(3));
        for _ in 0..2 {
            let b = barrier.clone();
            pool.submit(Box::new(move || {
                b.wait();
            }));
        }
        // Both tasks must be running at once for the barrier to open.
        barrier.wait();
    }
}
