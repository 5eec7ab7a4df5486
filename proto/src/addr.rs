//! Address resolution (PROTOCOL.md §1): where the broker of a mesh listens.

use std::path::PathBuf;

/// The default mesh name.
pub const DEFAULT_NAME: &str = "default";

/// The temp directory: `$TMPDIR` without a trailing slash, else `/tmp`.
pub fn tmpdir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
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
pub fn socket_path(name: &str) -> PathBuf {
    if let Some(s) = std::env::var_os("PROCMESH_SOCKET") {
        if !s.is_empty() {
            return PathBuf::from(s);
        }
    }
    default_socket_path(name)
}

/// `<tmpdir>/procmesh-<name>.sock`, ignoring `PROCMESH_SOCKET`.
pub fn default_socket_path(name: &str) -> PathBuf {
    tmpdir().join(format!("procmesh-{name}.sock"))
}

/// The mesh name of shard `i` of mesh `name`: `name#i`.
pub fn shard_name(name: &str, i: usize) -> String {
    format!("{name}#{i}")
}

/// The socket paths of an `n`-shard mesh called `name`.
///
/// Errors when `PROCMESH_SOCKET` is set: every shard would collapse onto one socket.
pub fn shard_paths(name: &str, n: usize) -> Result<Vec<PathBuf>, String> {
    if std::env::var_os("PROCMESH_SOCKET").is_some_and(|s| !s.is_empty()) {
        return Err(
            "PROCMESH_SOCKET is set, but a numeric shard count needs one socket per shard; \
             unset it or pass explicit addresses"
                .into(),
        );
    }
    Ok((0..n)
        .map(|i| default_socket_path(&shard_name(name, i)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        assert_eq!(shard_name("default", 3), "default#3");
        let p = default_socket_path("x#1");
        assert!(p.to_string_lossy().ends_with("/procmesh-x#1.sock"));
    }
}
