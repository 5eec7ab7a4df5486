#!/usr/bin/env bash
# Publish throughput on a retained channel (issue 11): plain publish without retention,
# retained + persistence everysec (acks 1), the same with durable acks "all" (the fsync-always
# path), retained + idempotent, and acks 0 on both. One broker per kind, runs interleaved,
# REPS each.
#
#   cargo build --release -p procmesh-broker --bin procmesh -p procmesh-bench --bin procmesh-bench
#   bench/retained.sh [REPS] [DURATION] > runs.jsonl
# Each output line is procmesh-bench's JSON with "config" added.
set -euo pipefail
reps="${1:-5}"
dur="${2:-3s}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
broker="$root/target/release/procmesh"
bench="$root/target/release/procmesh-bench"
work="$(mktemp -d "${TMPDIR:-/tmp}/procmesh-retained.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start() { # <name> <serve args...>
  local name="$1"; shift
  "$broker" serve --socket "$work/$name.sock" --heartbeat 0 "$@" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "serving at" "$work/$name.log" 2>/dev/null && return; sleep 0.05; done
  echo "broker $name did not start" >&2; cat "$work/$name.log" >&2; exit 1
}
start plain --no-persist
start retained --pubsub-persist --persist-dir "$work/retained" --fsync everysec
start durable --pubsub-persist --persist-dir "$work/durable" --fsync everysec

run() { # <config> <broker> <bench args...>
  local config="$1" name="$2"; shift 2
  "$bench" -t publish --socket "$work/$name.sock" -c 4 -P 16 -s 1 -d "$dur" --json "$@" |
    sed "s/^{/{\"config\":\"$config\",/"
}
for _ in $(seq "$reps"); do
  run plain plain
  run retained-everysec retained
  run retained-acks-all durable --acks all
  run retained-idempotent retained --idempotent
  run plain-acks0 plain --acks 0
  run retained-acks0 retained --acks 0
done
