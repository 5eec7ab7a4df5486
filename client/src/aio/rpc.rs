//! Async RPC: [`Registration`] and the `register` and `call` methods of the
//! async [`Client`].
//!
//! A registration is the blocking client's (same `regs` table, replayed after a
//! reconnect); handlers are plain functions run on the client's handler
//! threads, never on the runtime. The guard exists before the `reg` is sent,
//! so a dropped `register` future unregisters.

use std::future::Future;
use std::time::Duration;

use procmesh_proto::Request;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{request, Client};
use crate::client::ms;
use crate::error::{ClientError, HandlerError, Result};
use crate::pending::lock;
use crate::rpc::CALL_GRACE;
use crate::value::encode_args;

/// A registered procedure of the async client. Dropping it unregisters
/// (without waiting); [`Registration::unregister`] awaits the broker.
#[must_use = "dropping a Registration unregisters at once"]
#[derive(Debug)]
pub struct Registration {
    reg: Option<crate::Registration>,
}

impl Registration {
    /// The procedure's name.
    pub fn name(&self) -> &str {
        self.reg.as_ref().map_or("", |r| r.name())
    }

    /// Unregisters and awaits the broker's confirmation.
    pub async fn unregister(mut self) -> Result<()> {
        let Some(mut reg) = self.reg.take() else {
            return Ok(());
        };
        reg.active = false;
        let c = &reg.client;
        let conn = c.route(&reg.name);
        lock(&conn.regs).remove(&reg.name);
        let req = Request::Unreg {
            name: reg.name.as_str().into(),
        };
        request(conn, &req, c.timeout()).await?;
        Ok(())
    }
}

impl Client {
    /// Serves the procedure `name` with `handler` until the returned
    /// [`Registration`] is dropped; see [`crate::Client::register`]. The handler
    /// runs on the client's handler threads (a blocking function: to run async
    /// code in it, use a runtime `Handle`'s `block_on`).
    pub async fn register<A, R, F>(&self, name: &str, handler: F) -> Result<Registration>
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> Result<R, HandlerError> + Send + Sync + 'static,
    {
        let b = &self.inner;
        b.shared().pool()?;
        let c = b.route(name);
        {
            let mut regs = lock(&c.regs);
            if regs.contains_key(name) {
                return Err(ClientError::Config(format!(
                    "procedure `{name}` is already registered by this client"
                )));
            }
            regs.insert(name.to_owned(), crate::pool::wrap(b.codec(), handler));
        }
        // From here a drop (of this future, or on an error) unregisters.
        let reg = crate::Registration {
            client: b.clone(),
            name: name.to_owned(),
            active: true,
        };
        request(c, &Request::Reg { name: name.into() }, self.timeout()).await?;
        Ok(Registration { reg: Some(reg) })
    }

    /// [`Client::register`] with an async handler: each invocation is driven to
    /// completion on the client's handler thread by the runtime this is called
    /// from (`Handle::block_on`), so the handler may await anything, this client
    /// included; at most `handler_threads` invocations run at once.
    pub async fn register_async<A, R, F, Fut>(&self, name: &str, handler: F) -> Result<Registration>
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>>,
    {
        let rt = tokio::runtime::Handle::current();
        self.register(name, move |a: A| rt.block_on(handler(a)))
            .await
    }

    /// Calls the procedure `name` with `args` and decodes its result; see
    /// [`crate::Client::call`]. Dropping the future forgets the call (its
    /// result, when it comes, is discarded).
    pub async fn call<A, R>(&self, name: &str, args: &A, timeout: Option<Duration>) -> Result<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let a = encode_args(self.codec(), args)?;
        let t = timeout.unwrap_or_else(|| self.timeout());
        let req = Request::Call {
            name: name.into(),
            args: Some(self.inner.raw(&a)),
            timeout_ms: Some(ms(t)),
        };
        request(self.route(name), &req, t + CALL_GRACE)
            .await?
            .value()
    }
}
