//! Async locks: [`LockGuard`] and the `lock`, `with_lock` and fenced-write
//! methods of the async [`Client`], routed by lock key like the blocking
//! client's.
//!
//! A `lock` future dropped while the broker still queues it (FIFO wait) does
//! not leak the lock: its request stays entered, and when the grant comes the
//! abandon handler sends `unlock` at once (a refusal needs nothing). A guard
//! dropped without [`LockGuard::unlock`] releases without waiting.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use procmesh_proto::Request;
use serde::Serialize;

use super::{request, send_one, within, Client};
use crate::client::ms;
use crate::error::{ClientError, Result};
use crate::lock::{FencingToken, LockOptions, LockReply};

/// The future a [`Client::with_lock`] closure returns: boxed, as it borrows
/// the guard (`|g| Box::pin(async move { g.set("k", &1).await })`).
pub type LockFuture<'g, T, E> =
    Pin<Box<dyn Future<Output = std::result::Result<T, E>> + Send + 'g>>;

/// A held lock of the async client. Dropping it releases the lock (without
/// waiting); [`LockGuard::unlock`] releases and awaits the broker.
///
/// Its writes are fenced with its token, as the blocking
/// [`LockGuard`](crate::LockGuard)'s: `EFENCED` once a newer token was issued.
#[must_use = "dropping a LockGuard releases the lock at once"]
pub struct LockGuard {
    client: Client,
    key: String,
    token: FencingToken,
    held: bool,
}

impl LockGuard {
    /// The lock key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The grant's fencing token.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Fenced `set` of `key` to `value`.
    pub async fn set<V: Serialize + ?Sized>(&self, key: &str, value: &V) -> Result<()> {
        self.client
            .fenced_set(&self.key, self.token, key, value)
            .await
    }

    /// Fenced `set` of `key` to `value`, expiring after `ttl`.
    pub async fn set_with_ttl<V: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &V,
        ttl: Duration,
    ) -> Result<()> {
        self.client
            .fset(&self.key, self.token, key, value, Some(ttl))
            .await
    }

    /// Fenced compare-and-swap of `key`.
    pub async fn cas<V: Serialize>(
        &self,
        key: &str,
        prev: Option<&V>,
        next: Option<&V>,
    ) -> Result<bool> {
        self.client
            .fenced_cas(&self.key, self.token, key, prev, next)
            .await
    }

    /// Fenced delete of `key`; true if it existed.
    pub async fn del(&self, key: &str) -> Result<bool> {
        self.client.fenced_del(&self.key, self.token, key).await
    }

    /// Releases the lock and awaits the broker; true if this connection still
    /// held it. Dropped before the broker answers, the `unlock` is still sent.
    pub async fn unlock(mut self) -> Result<bool> {
        self.held = false;
        let req = Request::Unlock {
            key: self.key.as_str().into(),
        };
        request(self.client.route(&self.key), &req, self.client.timeout())
            .await?
            .value()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.held {
            let _ = self.client.inner.unlock_key(&self.key, false);
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish()
    }
}

impl Client {
    /// Tries to take the lock `key`, waiting up to `opts.wait` in FIFO order;
    /// `Ok(None)` when it was not acquired in time. Cancel-safe: dropped while
    /// waiting, a later grant is released at once.
    pub async fn lock(&self, key: &str, opts: LockOptions) -> Result<Option<LockGuard>> {
        let req = Request::Lock {
            key: key.into(),
            ttl_ms: Some(ms(opts.ttl)),
            wait_ms: Some(ms(opts.wait)),
        };
        let shard = self.shard_of(key).0;
        let conn = self.inner.conn(shard);
        let reply = within("lock", opts.wait + self.timeout(), async {
            let mut f = send_one(conn, &req).await?;
            let owner = self.inner.conn_arc(shard);
            let k = key.to_owned();
            f.on_abandon = Some(Box::new(move |o| {
                let granted = o
                    .and_then(|r| r.value::<LockReply>())
                    .is_ok_and(|l| l.acquired);
                if granted {
                    owner.request_nowait(&Request::Unlock {
                        key: k.as_str().into(),
                    });
                }
            }));
            f.await
        })
        .await?;
        let Some(token) = reply.value::<LockReply>()?.granted()? else {
            return Ok(None);
        };
        Ok(Some(LockGuard {
            client: self.clone(),
            key: key.to_owned(),
            token,
            held: true,
        }))
    }

    /// Runs `f` while holding the lock `key`, then releases it and awaits the
    /// broker (also when `f` fails), as [`crate::Client::with_lock`] does;
    /// `ELOCKTIMEOUT` when the lock is not acquired within `opts.wait`. The
    /// guard's `set`/`cas`/`del` are fenced. Dropped while `f` runs, the guard
    /// goes with it and the lock is released at once.
    ///
    /// ```no_run
    /// # async fn run(client: procmesh::aio::Client) -> procmesh::Result<()> {
    /// use std::time::Duration;
    /// use procmesh::LockOptions;
    ///
    /// let opts = LockOptions::new().wait(Duration::from_secs(1));
    /// client
    ///     .with_lock("report", opts, |g| {
    ///         Box::pin(async move {
    ///             g.set("report:status", &"running").await?;
    ///             Ok::<_, procmesh::ClientError>(())
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_lock<T, E, F>(
        &self,
        key: &str,
        opts: LockOptions,
        f: F,
    ) -> std::result::Result<T, E>
    where
        F: for<'g> FnOnce(&'g LockGuard) -> LockFuture<'g, T, E>,
        E: From<ClientError>,
    {
        let guard = self
            .lock(key, opts)
            .await?
            .ok_or_else(|| ClientError::LockTimeout {
                key: key.to_owned(),
                waited: opts.wait,
            })?;
        let r = f(&guard).await;
        // A failed unlock leaves nothing to undo: the lock then expires or dies
        // with the connection.
        let _ = guard.unlock().await;
        r
    }

    /// Sets `key` to `value` if `token` is not older than the newest token seen
    /// for the lock `lock_key`; `EFENCED` otherwise.
    pub async fn fenced_set<V: Serialize + ?Sized>(
        &self,
        lock_key: &str,
        token: FencingToken,
        key: &str,
        value: &V,
    ) -> Result<()> {
        self.fset(lock_key, token, key, value, None).await
    }

    async fn fset<V: Serialize + ?Sized>(
        &self,
        lock_key: &str,
        token: FencingToken,
        key: &str,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let v = self.inner.enc(value)?;
        let req = Request::Fset {
            key: lock_key.into(),
            token: Some(token.0),
            k: key.into(),
            value: self.inner.raw(&v),
            ttl_ms: ttl.map(ms),
        };
        self.writing(key, self.keyed(lock_key, &req)).await?;
        Ok(())
    }

    /// Fenced compare-and-swap: `EFENCED` when `token` is stale.
    pub async fn fenced_cas<V: Serialize>(
        &self,
        lock_key: &str,
        token: FencingToken,
        key: &str,
        prev: Option<&V>,
        next: Option<&V>,
    ) -> Result<bool> {
        let p = prev.map(|v| self.inner.enc(v)).transpose()?;
        let n = next.map(|v| self.inner.enc(v)).transpose()?;
        let req = Request::Fcas {
            key: lock_key.into(),
            token: Some(token.0),
            k: key.into(),
            prev: p.as_deref().map(|b| self.inner.raw(b)),
            next: n.as_deref().map(|b| self.inner.raw(b)),
        };
        self.writing(key, self.keyed(lock_key, &req)).await?.value()
    }

    /// Fenced delete: `EFENCED` when `token` is stale; true if the key existed.
    pub async fn fenced_del(&self, lock_key: &str, token: FencingToken, key: &str) -> Result<bool> {
        let req = Request::Fdel {
            key: lock_key.into(),
            token: Some(token.0),
            k: key.into(),
        };
        self.writing(key, self.keyed(lock_key, &req)).await?.value()
    }
}
