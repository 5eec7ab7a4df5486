//! Locks with fencing tokens (PROTOCOL.md §7).
//!
//! Owns [`LockGuard`], [`LockOptions`] and [`FencingToken`]. A lock lives on
//! the broker of its key's shard and belongs to this client's connection
//! there: if that connection drops, the broker frees the lock, and writes
//! fenced with the old token fail with `EFENCED` once anyone has locked the
//! key again.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
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
