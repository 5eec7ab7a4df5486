//! RPC: [`Registration`] and the [`Client`] methods `register` and `call`.
//!
//! Owns the life of a registration: the handler is entered in the
//! connection's `regs` table before `reg` is sent and removed before `unreg`.
//! Handlers run on the pool of `pool`. A handler's result is written back on
//! the connection that received the invocation, and dropped if that connection
//! has since been replaced (the broker has already failed the call with
//! `EHANDLERGONE`).

use std::time::Duration;

use procmesh_proto::Request;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::ms;
use crate::error::{ClientError, HandlerError, Result};
use crate::pending::lock;
use crate::value::encode_args;
use crate::Client;

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
pub(crate) const CALL_GRACE: Duration = Duration::from_secs(5);

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
            regs.insert(name.to_owned(), crate::pool::wrap(self.codec(), handler));
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
