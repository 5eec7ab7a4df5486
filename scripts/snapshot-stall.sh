#!/usr/bin/env bash
# How long does a snapshot of 1M keys stall the loop? A 1-in-flight GET probe runs
# beside a SET load that grows the log past --compact-bytes repeatedly (so snapshots
# of the 1M-key cache run during the probe); its max latency is the worst stall.
# Run once with snapshots (COMPACT=40000000) and once without (COMPACT=1e11).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p procmesh-broker -p procmesh-bench
B=target/release
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
run() {
    rm -rf "$DIR/data"
    $B/procmesh serve --socket "$DIR/s.sock" --max-keys 0 --heartbeat 0 \
        --persist-dir "$DIR/data" --fsync everysec --compact-bytes "$1" 2>/dev/null &
    local pid=$!
    for _ in $(seq 100); do [ -S "$DIR/s.sock" ] && break; sleep 0.05; done
    $B/procmesh-bench --socket "$DIR/s.sock" -t fill -r 1000000 -c 4 -P 64 --size 32 >/dev/null
    $B/procmesh-bench --socket "$DIR/s.sock" -t set -r 1000000 -c 2 -P 32 --size 32 -d 4s >/dev/null &
    echo "probe: $($B/procmesh-bench --socket "$DIR/s.sock" -t get -r 1000000 -c 1 -P 1 -d 4s | tail -1)"
    wait %2 2>/dev/null || true
    $B/procmesh stats --socket "$DIR/s.sock" --json | grep -E '"snapshots"|"cacheSize"' | tr -d ' \n'; echo
    $B/procmesh stop --socket "$DIR/s.sock" >/dev/null
    wait "$pid" || true
}
echo "== snapshots every 40 MB of log"; run 40000000
echo "== no snapshots"; run 100000000000
