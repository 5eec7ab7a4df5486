#!/usr/bin/env bash
# Crash survival soak: a writer does acknowledged sets and incrs with `--fsync always`
# while the broker is SIGKILLed at a random moment; after each restart every
# acknowledged write must be present and the recovered state must be a prefix of what
# was issued. ROUNDS (default 25) rounds; CI runs the same test with 3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-25}"
cargo build -q --workspace
PROCMESH_CRASH_ROUNDS="$ROUNDS" cargo test -q -p procmesh-broker --test it \
    persistence::acknowledged_writes_survive_sigkill -- --exact --nocapture
echo "crash test: $ROUNDS rounds passed"
