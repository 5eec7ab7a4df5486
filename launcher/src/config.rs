//! What a launch needs, resolved from the command line into plain data: the shards
//! (name, socket, core, persistence directory), the broker binary and the flags every
//! shard gets. Owns no processes; `supervisor` does.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use procmesh_proto::addr;

/// The index of a shard in its mesh: shard `i` of mesh `NAME` is the broker `NAME#i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub usize);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One shard of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    /// Its index.
    pub id: ShardId,
    /// Its broker name, `NAME#i`.
    pub name: String,
    /// Its socket, `<tmpdir>/procmesh-NAME#i.sock` (PROTOCOL.md §1).
    pub socket: PathBuf,
    /// The CPU it is pinned to; `None` with `--no-pin`.
    pub core: Option<usize>,
    /// Its own persistence directory, `<persist-dir>/shard-i`.
    pub persist_dir: Option<PathBuf>,
}

/// Everything the supervisor needs to start and keep a mesh.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// Mesh name; shards are `NAME#0` … `NAME#N-1`.
    pub name: String,
    /// The shards, in order.
    pub shards: Vec<ShardSpec>,
    /// The `procmesh` broker binary.
    pub broker_bin: PathBuf,
    /// Flags given to every shard's `procmesh serve` after its own
    /// `--name/--socket/--persist-dir`.
    pub broker_args: Vec<OsString>,
    /// Token every shard requires; handed over in `PROCMESH_TOKEN`, not on the
    /// command line, so `ps` does not show it.
    pub token: Option<String>,
    /// A file holding the token (`--token-file`), handed to every shard in
    /// `PROCMESH_TOKEN_FILE`; each shard reads it at every start.
    pub token_file: Option<PathBuf>,
    /// Print the per-shard "serving" lines as JSON.
    pub json: bool,
    /// How long all shards may take to report "serving" at start.
    pub startup_timeout: Duration,
    /// How long shards may take to stop after SIGTERM before they are killed.
    pub stop_timeout: Duration,
}

/// The CPUs this process may run on, in ascending order (respects `taskset` and
/// cpusets). Never empty.
pub fn allowed_cores() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    if ids.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        ids = (0..n).collect();
    }
    ids
}

/// The shards of an `n`-shard mesh called `name`. Shard `i` is pinned to
/// `cores[i % cores.len()]`, or unpinned when `cores` is empty.
///
/// Errors when `PROCMESH_SOCKET` is set: every shard would collapse onto one socket.
pub fn shard_specs(
    name: &str,
    n: usize,
    cores: &[usize],
    persist_dir: Option<&Path>,
) -> Result<Vec<ShardSpec>, String> {
    let paths = addr::AddrEnv::from_lookup(std::env::var_os).shard_paths(name, n)?;
    Ok(paths
        .into_iter()
        .enumerate()
        .map(|(i, socket)| ShardSpec {
            id: ShardId(i),
            name: addr::member_name(name, i, n),
            socket,
            core: (!cores.is_empty()).then(|| cores[i % cores.len()]),
            persist_dir: persist_dir.map(|d| d.join(format!("shard-{i}"))),
        })
        .collect())
}

/// The `procmesh` binary: `explicit` (`--broker-bin` / `PROCMESH_BROKER_BIN`), else
/// `procmesh` next to this executable (how cargo and packages install them), else
/// `procmesh` on `PATH`.
pub fn broker_bin(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit {
        return p;
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(sibling) = exe.parent().map(|d| d.join("procmesh")) {
            if sibling.is_file() {
                return sibling;
            }
        }
    }
    PathBuf::from("procmesh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_wrap_around_the_cores() {
        if std::env::var_os("PROCMESH_SOCKET").is_some() {
            return; // shard_specs refuses, as it must; covered by addr's own tests
        }
        let s = shard_specs("m", 3, &[2, 5], Some(Path::new("/d"))).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].name, "m#1");
        assert!(s[1]
            .socket
            .to_string_lossy()
            .ends_with("/procmesh-m#1.sock"));
        let cores: Vec<_> = s.iter().map(|s| s.core).collect();
        assert_eq!(cores, [Some(2), Some(5), Some(2)]);
        assert_eq!(s[2].persist_dir.as_deref(), Some(Path::new("/d/shard-2")));
        let unpinned = shard_specs("m", 2, &[], None).unwrap();
        assert!(unpinned
            .iter()
            .all(|s| s.core.is_none() && s.persist_dir.is_none()));
    }

    #[test]
    fn allowed_cores_is_never_empty() {
        let c = allowed_cores();
        assert!(!c.is_empty());
        assert!(c.windows(2).all(|w| w[0] < w[1]));
    }
}
