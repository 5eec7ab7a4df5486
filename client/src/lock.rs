//! Locks with fencing tokens (PROTOCOL.md §7).
//!
//! Owns [`LockGuard`], [`LockOptions`] and [`FencingToken`], and the lock
//! family of [`Client`] methods: `lock`, `with_lock` and the fenced writes
//! (`fenced_set`, `fenced_cas`, `fenced_del`), routed by lock key. A lock lives on
//! the broker of its key's shard and belongs to this client's connection
//! there: if that connection drops, the broker frees the lock, and writes
//! fenced with the old token fail with `EFENCED` once anyone has locked the
//! key again.
//!
//! On a sharded client a fenced write goes to the lock's shard (the broker that
//! issued the token is the only one that can check it), as procmesh-js does: the
//! value then lives on the lock key's shard, not on the data key's, and a plain
//! `get` of the data key (routed by the data key) finds it only when both keys
//! hash to the same shard ([`Client::shard_of`] tells), e.g. with one shard.

use std::fmt;
use std::time::Duration;

use procmesh_proto::Request;
use serde::{Deserialize, Serialize};

use crate::client::ms;
use crate::error::{ClientError, Result};
use crate::Client;

/// A fencing token: strictly increasing per broker, so a write carrying an
/// older token than one already seen for its lock is refused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How long a lock is held at most and how long to wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOptions {
    /// The grant expires after this (default 30 s).
    pub ttl: Duration,
    /// Wait up to this for the lock, in FIFO order with other waiters
    /// (default 0: fail at once when held).
    pub wait: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            ttl: Duration::from_secs(30),
            wait: Duration::ZERO,
        }
    }
}

impl LockOptions {
    /// The defaults: 30 s ttl, no wait.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the ttl.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the wait.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

/// A held lock. Dropping it releases the lock (without waiting for the
/// broker); [`LockGuard::unlock`] does the same and waits.
///
/// Its `set`/`cas`/`del` are fenced with its token: they fail with `EFENCED`
/// (and change nothing) once a newer token was issued for this lock key,
/// for example after this grant expired and another process took the lock.
/// Fenced writes land on the broker that holds the lock (on a sharded client,
/// the shard of the lock key, which may differ from the shard of the written
/// key; read such keys back with the same lock key's routing in mind).
#[must_use = "dropping a LockGuard releases the lock at once"]
pub struct LockGuard {
    pub(crate) client: Client,
    pub(crate) key: String,
    pub(crate) token: FencingToken,
    pub(crate) held: bool,
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
    pub fn set<V: Serialize + ?Sized>(&self, key: &str, value: &V) -> Result<()> {
        self.client.fenced_set(&self.key, self.token, key, value)
    }

    /// Fenced `set` of `key` to `value`, expiring after `ttl`.
    pub fn set_with_ttl<V: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &V,
        ttl: Duration,
    ) -> Result<()> {
        self.client
            .fenced_set_with_ttl(&self.key, self.token, key, value, ttl)
    }

    /// Fenced compare-and-swap of `key` (see [`Client::cas`]).
    pub fn cas<V: Serialize>(&self, key: &str, prev: Option<&V>, next: Option<&V>) -> Result<bool> {
        self.client
            .fenced_cas(&self.key, self.token, key, prev, next)
    }

    /// Fenced delete of `key`; true if it existed.
    pub fn del(&self, key: &str) -> Result<bool> {
        self.client.fenced_del(&self.key, self.token, key)
    }

    /// Releases the lock and waits for the broker; true if this connection
    /// still held it (false after it expired or the connection was replaced).
    pub fn unlock(mut self) -> Result<bool> {
        self.held = false;
        self.client.unlock_key(&self.key, true)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.held {
            let _ = self.client.unlock_key(&self.key, false);
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

/// The broker's answer to `lock` (both clients read it).
#[derive(Deserialize)]
pub(crate) struct LockReply {
    pub acquired: bool,
    token: Option<u64>,
}

impl LockReply {
    /// The token of a granted lock, `None` when it was not acquired.
    pub(crate) fn granted(self) -> Result<Option<FencingToken>> {
        if !self.acquired {
            return Ok(None);
        }
        self.token
            .map(|t| Some(FencingToken(t)))
            .ok_or_else(|| ClientError::Decode("lock granted without a token".into()))
    }
}

impl Client {
    /// Tries to take the lock `key`, waiting up to `opts.wait` in FIFO order.
    /// `Ok(None)` when it was not acquired in time.
    pub fn lock(&self, key: &str, opts: LockOptions) -> Result<Option<LockGuard>> {
        let req = Request::Lock {
            key: key.into(),
            ttl_ms: Some(ms(opts.ttl)),
            wait_ms: Some(ms(opts.wait)),
        };
        let reply = self.route(key).request(&req, opts.wait + self.timeout())?;
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

    /// Runs `f` while holding the lock `key`, then releases it (also when `f`
    /// fails or panics). Fails with `ELOCKTIMEOUT` when the lock is not
    /// acquired within `opts.wait`. The guard's `set`/`cas`/`del` are fenced.
    ///
    /// ```no_run
    /// # let client = procmesh::Client::connect()?;
    /// use std::time::Duration;
    /// use procmesh::LockOptions;
    ///
    /// let opts = LockOptions::new().wait(Duration::from_secs(1));
    /// client.with_lock("report", opts, |ctx| {
    ///     ctx.set("report:status", &"running")?;
    ///     Ok::<_, procmesh::ClientError>(())
    /// })?;
    /// # Ok::<(), procmesh::ClientError>(())
    /// ```
    pub fn with_lock<T, E, F>(&self, key: &str, opts: LockOptions, f: F) -> Result<T, E>
    where
        F: FnOnce(&LockGuard) -> Result<T, E>,
        E: From<ClientError>,
    {
        let guard = self
            .lock(key, opts)?
            .ok_or_else(|| ClientError::LockTimeout {
                key: key.to_owned(),
                waited: opts.wait,
            })?;
        let r = f(&guard);
        // A failed unlock leaves nothing to undo: the lock then expires or dies
        // with the connection.
        let _ = guard.unlock();
        r
    }

    pub(crate) fn unlock_key(&self, key: &str, wait: bool) -> Result<bool> {
        let c = self.route(key);
        let req = Request::Unlock { key: key.into() };
        if wait {
            c.request(&req, self.timeout())?.value()
        } else {
            c.request_nowait(&req);
            Ok(true)
        }
    }

    /// Sets `key` to `value` if `token` is not older than the newest token seen
    /// for the lock `lock_key`; fails with `EFENCED` otherwise.
    pub fn fenced_set<V: Serialize + ?Sized>(
        &self,
        lock_key: &str,
        token: FencingToken,
        key: &str,
        value: &V,
    ) -> Result<()> {
        self.fset(lock_key, token, key, value, None)
    }

    /// [`Client::fenced_set`] with an expiry.
    pub fn fenced_set_with_ttl<V: Serialize + ?Sized>(
        &self,
        lock_key: &str,
        token: FencingToken,
        key: &str,
        value: &V,
        ttl: Duration,
    ) -> Result<()> {
        self.fset(lock_key, token, key, value, Some(ttl))
    }

    fn fset<V: Serialize + ?Sized>(
        &self,
        lock_key: &str,
        token: FencingToken,
        key: &str,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let v = self.enc(value)?;
        let req = Request::Fset {
            key: lock_key.into(),
            token: Some(token.0),
            k: key.into(),
            value: self.raw(&v),
            ttl_ms: ttl.map(ms),
        };
        self.writing(key, || self.route(lock_key).request(&req, self.timeout()))?;
        Ok(())
    }

    /// Fenced [`Client::cas`]: fails with `EFENCED` when `token` is stale.
    pub fn fenced_cas<V: Serialize>(
        &self,
        lock_key: &str,
        token: FencingToken,
        key: &str,
        prev: Option<&V>,
        next: Option<&V>,
    ) -> Result<bool> {
        let p = prev.map(|v| self.enc(v)).transpose()?;
        let n = next.map(|v| self.enc(v)).transpose()?;
        let req = Request::Fcas {
            key: lock_key.into(),
            token: Some(token.0),
            k: key.into(),
            prev: p.as_deref().map(|b| self.raw(b)),
            next: n.as_deref().map(|b| self.raw(b)),
        };
        self.writing(key, || self.route(lock_key).request(&req, self.timeout()))?
            .value()
    }

    /// Fenced delete: fails with `EFENCED` when `token` is stale; true if the
    /// key existed.
    pub fn fenced_del(&self, lock_key: &str, token: FencingToken, key: &str) -> Result<bool> {
        let req = Request::Fdel {
            key: lock_key.into(),
            token: Some(token.0),
            k: key.into(),
        };
        self.writing(key, || self.route(lock_key).request(&req, self.timeout()))?
            .value()
    }
}
