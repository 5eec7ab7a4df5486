#!/usr/bin/env bash
# 1 shard vs N shards under the load generator (issue 5).
#
# Builds procmesh, procmesh-launch and procmesh-bench in release, then for ROUNDS
# rounds (alternating which configuration goes first) launches a mesh of 1 shard and
# one of N shards with `procmesh-launch` (each shard pinned to its own CPU), preloads
# the keyspace, and runs the same workloads with `procmesh-bench --shards K`. Writes
# bench/results/<date>-shards.md (medians, ratio, p50/p99, machine, commit, exact
# commands) and the raw runs next to it as .jsonl. Stops what it started (trap).
#
# Placement: shard i on CPU i (the launcher's default); the generator is not pinned,
# so with N = the number of CPUs it shares them with the shards. With -c C and -P P
# the generator keeps C connections per shard socket with P requests in flight on
# each, as the sharded client does (one connection per shard): N shards see N times
# the sockets and in-flight requests of 1 shard.
#
# Environment knobs: SHARDS (N, default: nproc), ROUNDS (3), DURATION (5s), CONNS (4),
# PIPELINE (16), KEYSPACE (100000), WORKLOADS ("get set incr mixed get1"; get1 = get
# with one request in flight per connection), SKIP_BUILD (0), QUIET_WAIT (120 s),
# OUT (results file; default bench/results/<date>-shards.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SHARDS=${SHARDS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-4}
PIPELINE=${PIPELINE:-16}
KEYSPACE=${KEYSPACE:-100000}
WORKLOADS=${WORKLOADS:-"get set incr mixed get1"}
SKIP_BUILD=${SKIP_BUILD:-0}
QUIET_WAIT=${QUIET_WAIT:-120}
DATE=$(date +%F)
OUT=${OUT:-bench/results/$DATE-shards.md}
RUNS=${OUT%.md}.jsonl
BIN=target/release

BENCH_NAME=bench-shards
source "$(dirname "$0")/lib-bench.sh"

COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- launcher broker proto bench 2>/dev/null | wc -l)
if [[ $SKIP_BUILD != 1 ]]; then
    log "building release binaries"
    cargo build --release -p procmesh-broker -p procmesh-launch -p procmesh-bench >&2
fi

# Other work on a small machine moves results a lot: wait for a quiet 2 s window.
wait_quiet waiting
BUSY_BEFORE=$BUSY_NOW
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

WORK=$(mktemp -d /tmp/procmesh-bench-shards.XXXXXX)
LAUNCHER=
started_pids() { echo "$LAUNCHER"; }
trap_cleanup

launch() { # K: starts a K-shard mesh `bench` in $WORK/k$K, waits for its K serving lines
    local k=$1 dir=$WORK/k$1
    mkdir -p "$dir"
    TMPDIR=$dir "$BIN/procmesh-launch" --shards "$k" --name bench --json --max-keys 0 \
        --heartbeat 0 >"$dir/serving" 2>>"$WORK/launcher.log" &
    LAUNCHER=$!
    for _ in $(seq 200); do
        if [[ $(wc -l <"$dir/serving") -ge $k ]]; then return 0; fi
        if ! kill -0 "$LAUNCHER" 2>/dev/null; then break; fi
        sleep 0.05
    done
    log "the $k-shard mesh did not come up:"
    cat "$WORK/launcher.log" >&2
    return 1
}

stop_mesh() {
    kill -TERM "$LAUNCHER"
    wait "$LAUNCHER"
    LAUNCHER=
}

target() { # K: the generator's address flags for a K-shard mesh
    # A 1-shard mesh is the broker `bench#0`; `--shards 1` would mean the plain `bench`.
    if (($1 == 1)); then
        echo --socket "$WORK/k1/procmesh-bench#0.sock"
    else
        echo --shards "$1" --name bench
    fi
}

bench() { # K WORKLOAD: one run, appended to $RUNS with round and shard count
    local k=$1 w=$2 t=$2 p=$PIPELINE
    if [[ $w == get1 ]]; then t=get p=1; fi
    # shellcheck disable=SC2046 # target's words are separate flags
    TMPDIR=$WORK/k$k "$BIN/procmesh-bench" $(target "$k") -t "$t" -c "$CONNS" -P "$p" \
        -r "$KEYSPACE" -d "$DURATION" --json |
        python3 -c 'import json,sys; r=json.load(sys.stdin); r.update(round=int(sys.argv[1]), mesh_shards=int(sys.argv[2]), label=sys.argv[3]); print(json.dumps(r))' \
            "$round" "$k" "$w" >>"$RUNS"
}

: >"$RUNS"
CONFIGS=(1 "$SHARDS")
for round in $(seq "$ROUNDS"); do
    order=("${CONFIGS[@]}")
    if ((round % 2 == 0)); then order=("${CONFIGS[1]}" "${CONFIGS[0]}"); fi
    for k in "${order[@]}"; do
        log "round $round: $k shard(s)"
        launch "$k"
        # Preload every key so `get` finds values (one pass of `fill`).
        # shellcheck disable=SC2046
        TMPDIR=$WORK/k$k "$BIN/procmesh-bench" $(target "$k") -t fill \
            -r "$KEYSPACE" -c "$CONNS" -P "$PIPELINE" --json >/dev/null
        for w in $WORKLOADS; do
            bench "$k" "$w"
        done
        cp "$WORK/k$k/serving" "$WORK/serving-$k"
        stop_mesh
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
python3 - "$RUNS" "$SHARDS" >"$OUT" <<EOF
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
n = int(sys.argv[2])
labels = []
for r in runs:
    if r["label"] not in labels:
        labels.append(r["label"])
def med(label, k, f):
    xs = [f(r) for r in runs if r["label"] == label and r["mesh_shards"] == k]
    return statistics.median(xs) if xs else float("nan")
print("# 1 shard vs $SHARDS shards (procmesh-launch)")
print()
print("- date: $DATE; commit: $COMMIT" + (" (working tree had $DIRTY changed files under launcher/ broker/ proto/ bench/)" if $DIRTY else ""))
print("- machine: $(nproc) CPUs ($CPU_MODEL), $(uname -sr)")
print("- other load: CPU ${BUSY_BEFORE}% busy just before the run (waited ${waited} s for quiet); load average $LOAD_BEFORE before, $LOAD_AFTER after")
print("- meshes: \`procmesh-launch --shards K --name bench --max-keys 0 --heartbeat 0\`, shard i pinned to CPU i; the generator is not pinned")
print("- each run: \`procmesh-bench --shards K --name bench -t W -c $CONNS -P $PIPELINE -r $KEYSPACE -d $DURATION\` (1 shard: \`--socket <dir>/procmesh-bench#0.sock\` in place of \`--shards 1 --name bench\`; get1: \`-t get -P 1\`), after one \`-t fill\` pass; msgpack")
print("- $ROUNDS rounds, alternating which mesh runs first; medians over rounds; raw runs in \`$(basename "$RUNS")\`")
print()
print("| workload | 1 shard ops/s | %d shards ops/s | ratio | p50 us (1 / %d) | p99 us (1 / %d) |" % (n, n, n))
print("|---|---:|---:|---:|---:|---:|")
for l in labels:
    a = med(l, 1, lambda r: r["ops_per_sec"])
    b = med(l, n, lambda r: r["ops_per_sec"])
    p50 = (med(l, 1, lambda r: r["latency_us"]["p50"]), med(l, n, lambda r: r["latency_us"]["p50"]))
    p99 = (med(l, 1, lambda r: r["latency_us"]["p99"]), med(l, n, lambda r: r["latency_us"]["p99"]))
    print("| %s | %s | %s | %.2fx | %.0f / %.0f | %.0f / %.0f |" % (l, f"{a:,.0f}", f"{b:,.0f}", b / a, *p50, *p99))
errs = sum(r["errors"] for r in runs)
print()
print("Errors over all runs: %d." % errs)
EOF
{
    echo
    echo "Serving lines of the last ${SHARDS}-shard mesh:"
    echo
    echo '```'
    cat "$WORK/serving-$SHARDS"
    echo '```'
} >>"$OUT"
log "wrote $OUT and $RUNS"
cat "$OUT"
