//! Address resolution (PROTOCOL.md §1): where the broker of a mesh listens.
//!
//! Pure: the environment is passed in as an [`AddrEnv`] (this crate reads no
//! environment variables). Callers build it once from the process environment with
//! `AddrEnv::from_lookup(std::env::var_os)`.

use std::ffi::OsString;
use std::path::PathBuf;

/// The default mesh name.
pub const DEFAULT_NAME: &str = "default";

/// The environment that addresses depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrEnv {
    /// `$TMPDIR`, when set.
    pub tmpdir: Option<OsString>,
    /// `$PROCMESH_SOCKET`, when set: overrides the derived address for every name.
    pub socket_override: Option<OsString>,
}

impl AddrEnv {
    /// The variable holding the temp directory.
    pub const TMPDIR: &'static str = "TMPDIR";
    /// The variable overriding every mesh's socket path.
    pub const SOCKET: &'static str = "PROCMESH_SOCKET";

    /// Reads the two variables through `get` (pass `std::env::var_os` for the
    /// process environment). Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&'static str) -> Option<OsString>) -> Self {
        let set = |k: &'static str| get(k).filter(|v| !v.is_empty());
        AddrEnv {
            tmpdir: set(Self::TMPDIR),
            socket_override: set(Self::SOCKET),
        }
    }

    /// The temp directory: `$TMPDIR` without a trailing slash, else `/tmp`.
    pub fn tmpdir(&self) -> PathBuf {
        match &self.tmpdir {
            Some(t) if !t.is_empty() => {
                let s = t.to_string_lossy();
                let trimmed = s.trim_end_matches('/');
                PathBuf::from(if trimmed.is_empty() { "/" } else { trimmed })
            }
            _ => PathBuf::from("/tmp"),
        }
    }

    /// The socket path of the mesh `name`: `PROCMESH_SOCKET` when set, else
    /// `<tmpdir>/procmesh-<name>.sock`.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        match &self.socket_override {
            Some(s) if !s.is_empty() => PathBuf::from(s),
            _ => self.default_socket_path(name),
        }
    }

    /// `<tmpdir>/procmesh-<name>.sock`, ignoring `PROCMESH_SOCKET`.
    pub fn default_socket_path(&self, name: &str) -> PathBuf {
        self.tmpdir().join(format!("procmesh-{name}.sock"))
    }

    /// The socket paths of an `n`-shard mesh called `name`: shard `i` listens where
    /// the broker [`member_name`]`(name, i, n)` does. A one-shard mesh is the plain
    /// broker `name` (as procmesh-js treats `shards: 1`), so every tool agrees on it.
    ///
    /// Errors when `PROCMESH_SOCKET` is set and `n > 1`: every shard would collapse onto
    /// one socket.
    pub fn shard_paths(&self, name: &str, n: usize) -> Result<Vec<PathBuf>, String> {
        if n == 1 {
            return Ok(vec![self.socket_path(name)]);
        }
        if self.socket_override.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(
                "PROCMESH_SOCKET is set, but a numeric shard count needs one socket per shard; \
                 unset it or pass explicit addresses"
                    .into(),
            );
        }
        Ok((0..n)
            .map(|i| self.default_socket_path(&shard_name(name, i)))
            .collect())
    }
}

/// The mesh name of shard `i` of mesh `name`: `name#i`.
pub fn shard_name(name: &str, i: usize) -> String {
    format!("{name}#{i}")
}

/// The broker name of shard `i` of an `n`-shard mesh `name`: `name` itself when
/// `n == 1` (procmesh-js connects a `shards: 1` client to the plain name), else
/// [`shard_name`].
pub fn member_name(name: &str, i: usize, n: usize) -> String {
    if n == 1 {
        name.to_owned()
    } else {
        shard_name(name, i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(tmpdir: Option<&str>, socket: Option<&str>) -> AddrEnv {
        AddrEnv::from_lookup(|k| match k {
            AddrEnv::TMPDIR => tmpdir.map(OsString::from),
            AddrEnv::SOCKET => socket.map(OsString::from),
            _ => None,
        })
    }

    #[test]
    fn shard_names() {
        assert_eq!(shard_name("default", 3), "default#3");
        assert_eq!(member_name("default", 0, 1), "default");
        assert_eq!(member_name("default", 0, 2), "default#0");
        let p = AddrEnv::default().default_socket_path("x#1");
        assert!(p.to_string_lossy().ends_with("/procmesh-x#1.sock"));
    }

    #[test]
    fn tmpdir_rules() {
        assert_eq!(env(None, None).tmpdir(), PathBuf::from("/tmp"));
        assert_eq!(env(Some(""), None).tmpdir(), PathBuf::from("/tmp"));
        assert_eq!(env(Some("/var/t/"), None).tmpdir(), PathBuf::from("/var/t"));
        assert_eq!(env(Some("///"), None).tmpdir(), PathBuf::from("/"));
        assert_eq!(
            env(Some("/x"), None).socket_path("m"),
            PathBuf::from("/x/procmesh-m.sock")
        );
    }

    #[test]
    fn socket_override() {
        let e = env(Some("/x"), Some("/s.sock"));
        assert_eq!(e.socket_path("m"), PathBuf::from("/s.sock"));
        assert_eq!(
            e.default_socket_path("m"),
            PathBuf::from("/x/procmesh-m.sock")
        );
        assert!(e.shard_paths("m", 2).is_err());
        // One shard is the plain broker, so the override applies as it does to `m`.
        assert_eq!(e.shard_paths("m", 1).unwrap(), [PathBuf::from("/s.sock")]);
        let e = env(Some("/x"), Some(""));
        assert_eq!(e.socket_path("m"), PathBuf::from("/x/procmesh-m.sock"));
        assert_eq!(
            e.shard_paths("m", 2).unwrap(),
            [
                PathBuf::from("/x/procmesh-m#0.sock"),
                PathBuf::from("/x/procmesh-m#1.sock")
            ]
        );
    }
}
