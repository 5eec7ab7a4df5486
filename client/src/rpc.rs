//! RPC: the [`Client`] methods `register` and `call`, registrations and the
//! bounded handler pool.
//!
//! Owns [`Registration`] and the pool of threads that run handlers, so a slow
//! handler never stalls the I/O thread that reads replies. Which names a
//! connection serves is owned by `conn` (its `regs` table). A handler's result
//! is written back on the connection that received the invocation, and dropped
//! if that connection has since been replaced (the broker has already failed
//! the call with `EHANDLERGONE`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procmesh_proto::{Codec, Raw, Request};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::ms;
use crate::error::{ClientError, HandlerError, Result};
use crate::pending::lock;
use crate::value::encode_args;
use crate::Client;

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

/// A registered procedure. Dropping it unregisters (without waiting);
/// [`Registration::unregister`] does the same and waits.
///
/// It keeps its client alive, so the handler keeps serving calls as long as
/// its `Registration` exists.
#[must_use = "dropping a Registration unregisters at once"]
pub struct Registration {
    pub(crate) client: Client,
    pub(crate) name: String,
    pub(crate) active: bool,
}

impl Registration {
    /// The procedure's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Unregisters and waits for the broker to confirm.
    pub fn unregister(mut self) -> Result<()> {
        self.active = false;
        self.client.unregister_name(&self.name, true)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.active {
            let _ = self.client.unregister_name(&self.name, false);
        }
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .finish()
    }
}

/// Extra time a caller waits for a `call` beyond its timeout, so that the
/// broker's own `ECALLTIMEOUT` (sent at the timeout) arrives first.
const CALL_GRACE: Duration = Duration::from_secs(5);

impl Client {
    /// Serves the procedure `name` with `handler` until the returned
    /// [`Registration`] is dropped. Handlers run on a bounded pool of threads
    /// (see [`ClientBuilder::handler_threads`]), never on the I/O thread; several
    /// processes may register one name and calls are spread over them.
    ///
    /// The handler takes the call's argument list: a tuple for several
    /// arguments, or any type for one. A panic or error is returned to the
    /// caller (code `ECALL` unless the [`HandlerError`] carries one).
    ///
    /// A handler may use the client, including `call`; but handlers that wait on
    /// calls served by this same client can exhaust the pool and wait forever,
    /// like any bounded pool (raise [`ClientBuilder::handler_threads`] then).
    ///
    /// ```no_run
    /// # let client = procmesh::Client::connect()?;
    /// let reg = client.register("add", |(a, b): (i64, i64)| Ok(a + b))?;
    /// let sum: i64 = client.call("add", &(2, 3), None)?;
    /// assert_eq!(sum, 5);
    /// # drop(reg);
    /// # Ok::<(), procmesh::ClientError>(())
    /// ```
    ///
    /// [`ClientBuilder::handler_threads`]: crate::ClientBuilder::handler_threads
    pub fn register<A, R, F>(&self, name: &str, handler: F) -> Result<Registration>
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> Result<R, HandlerError> + Send + Sync + 'static,
    {
        self.shared().pool()?;
        let c = self.route(name);
        {
            let mut regs = lock(&c.regs);
            if regs.contains_key(name) {
                return Err(ClientError::Config(format!(
                    "procedure `{name}` is already registered by this client"
                )));
            }
            regs.insert(name.to_owned(), crate::rpc::wrap(self.codec(), handler));
        }
        let r = c.request(&Request::Reg { name: name.into() }, self.timeout());
        if let Err(e) = r {
            lock(&c.regs).remove(name);
            return Err(e);
        }
        Ok(Registration {
            client: self.clone(),
            name: name.to_owned(),
            active: true,
        })
    }

    pub(crate) fn unregister_name(&self, name: &str, wait: bool) -> Result<()> {
        let c = self.route(name);
        lock(&c.regs).remove(name);
        let req = Request::Unreg { name: name.into() };
        if wait {
            c.request(&req, self.timeout())?;
        } else {
            c.request_nowait(&req);
        }
        Ok(())
    }

    /// Calls the procedure `name` with `args` (a tuple for several arguments,
    /// `()` for none, any other value for one) and decodes its result.
    /// `timeout` defaults to the client's call timeout; the broker fails the call
    /// with `ECALLTIMEOUT` when it passes, `ENOHANDLER` when nobody serves
    /// `name`, and `EHANDLERGONE` when the worker disconnects mid-call.
    pub fn call<A, R>(&self, name: &str, args: &A, timeout: Option<Duration>) -> Result<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let a = encode_args(self.codec(), args)?;
        let t = timeout.unwrap_or_else(|| self.timeout());
        let req = Request::Call {
            name: name.into(),
            args: Some(self.raw(&a)),
            timeout_ms: Some(ms(t)),
        };
        self.route(name).request(&req, t + CALL_GRACE)?.value()
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
