#!/usr/bin/env bash
# Server user-space instructions per request, procmesh and Redis (issue 10's "no
# slowdown"; the method of issue 15).
#
# Each server runs under `valgrind --tool=callgrind --instr-atstart=no` (pinned to CPU 0;
# the client runs on CPU 1). The keyspace is filled with procmesh-bench (`-t fill`), then
# for every workload: for those in WARMUP one unmeasured run of it (the same seed draws
# the same keys, so INCR's counters exist), and REPEAT times: `callgrind_control -i on`
# and `-z` (instrument, zero the counters), one procmesh-bench run of REQUESTS requests
# (pipelined CONNS connections x PIPELINE in flight, one generator thread),
# `callgrind_control -d` (dump) and `-i off`; the dump's `summary:` total (Ir, every
# thread of the server) divided by the requests the client reports is one measurement.
# Redis gets the same client in RESP (`--target redis`): GET/SET/INCR, and SET NX PX /
# DEL for lock/unlock. Counted: everything the server executes in user space between
# zero and dump, i.e. the requests plus the CONNS connections' accept/hello/close and any
# timer work that falls in the run (the broker runs with --heartbeat 0; Redis's
# serverCron at its default hz). Kernel time is not counted.
#
# The broker's counts repeat to about 0.01% (lock: 0.1%), run to run and process to
# process; Redis's move by 2-3% (its serverCron and other timer work follow the wall
# clock, which valgrind stretches). Every ROUNDS round starts a fresh process of every
# server (order alternating) and the table gives the medians.
#
# Prints a markdown report on stdout (also written to OUT when set): the per-request
# table, the spread of the runs, the setup, then every run's raw totals. Logs go to
# stderr. Builds the release binaries first (like compare.sh) unless both PROCMESH_BIN
# and PROCMESH_BENCH are given; installs valgrind and redis-server/redis-tools with
# apt-get when missing; stops every process it started (trap). About 5 minutes with the
# defaults on 2 vCPUs (plus the build), more while other work loads the machine.
#
# Usage:
#   scripts/icount.sh
#   PROCMESH_BIN=/work/baseline-bin/procmesh PROCMESH_BENCH=/work/baseline-bin/procmesh-bench scripts/icount.sh
#   PROCMESH_BIN="old=/work/baseline-bin/procmesh new=target/release/procmesh" scripts/icount.sh
#   WORKLOADS=get ROUNDS=2 REPEAT=2 REDIS=0 scripts/icount.sh
#
# Environment knobs:
#   PROCMESH_BIN    broker binary, or several separated by spaces, each PATH or LABEL=PATH
#                   (default: target/release/procmesh, built here); with several, the
#                   table also gives each one's ratio to the first, all from the same run
#   PROCMESH_BENCH  procmesh-bench binary (default: target/release/procmesh-bench, built here)
#   REQUESTS (100000), WORKLOADS ("get set incr lock"; any procmesh-bench -t workload that
#   takes -n: get set incr mixed lock), CONNS (4), PIPELINE (64), KEYSPACE (100000;
#   filled before the runs, 3-byte values as redis-benchmark's), ROUNDS (3; fresh server
#   processes per binary), REPEAT (1; measured runs of each workload per process),
#   WARMUP ("incr"; workloads run once unmeasured before their measured runs; "" = none),
#   REDIS (1; 0 = procmesh only), OUT (also write the report there), SKIP_BUILD,
#   SNAPSHOT (0; 1 = build the committed HEAD from `git archive`), QUIET_WAIT (30 s;
#   the counts hardly move with load, but the machine's busy share is reported).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

REQUESTS=${REQUESTS:-100000}
WORKLOADS=${WORKLOADS:-get set incr lock}
CONNS=${CONNS:-4}
PIPELINE=${PIPELINE:-64}
KEYSPACE=${KEYSPACE:-100000}
ROUNDS=${ROUNDS:-3}
REPEAT=${REPEAT:-1}
WARMUP=${WARMUP-incr}
REDIS=${REDIS:-1}
OUT=${OUT:-}
SERVER_CPU=0
CLIENT_CPU=1

SNAPSHOT=${SNAPSHOT:-0}
QUIET_WAIT=${QUIET_WAIT:-30}
if [[ -n ${PROCMESH_BIN:-} && -n ${PROCMESH_BENCH:-} ]]; then
    SKIP_BUILD=${SKIP_BUILD:-1}
else
    SKIP_BUILD=${SKIP_BUILD:-0}
fi
BENCH_NAME=icount
source "$(dirname "$0")/lib-bench.sh"

# ------------------------------------------------------------------ setup
bench_targets icount-snapshot
bench_build icount
BENCH=${PROCMESH_BENCH:-$BENCH}
read -ra BIN_SPECS <<<"${PROCMESH_BIN:-$BROKER}"
ensure_valgrind
if [[ $REDIS == 1 ]]; then
    ensure_redis redis-cli
fi
one_cpu_placement

# Servers: LABELS[i], KINDS[i] (procmesh or redis), BINS[i].
LABELS=()
KINDS=()
BINS=()
for spec in "${BIN_SPECS[@]}"; do
    if [[ $spec == *=* ]]; then
        label=${spec%%=*}
        path=${spec#*=}
    else
        label=procmesh
        ((${#BIN_SPECS[@]} > 1)) && label=$spec
        path=$spec
    fi
    if [[ ! -x $path ]]; then
        log "PROCMESH_BIN: $path is not an executable"
        exit 1
    fi
    LABELS+=("$label")
    KINDS+=(procmesh)
    BINS+=("$path")
done
if [[ $REDIS == 1 ]]; then
    LABELS+=(redis)
    KINDS+=(redis)
    BINS+=("$(command -v redis-server)")
fi
if [[ ! -x $BENCH ]]; then
    log "PROCMESH_BENCH: $BENCH is not an executable"
    exit 1
fi

WORK=$(mktemp -d /tmp/procmesh-icount.XXXXXX)
PIDS=()
started_pids() { echo "$CLIENT_PID" "${PIDS[@]}"; }
trap_cleanup

wait_quiet
BUSY_BEFORE=$BUSY_NOW
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

VGDB_PREFIX=$WORK/vgdb
RUNS=$WORK/runs.tsv # label, workload, round, repeat, requests, instructions
: >"$RUNS"
FAILS=$WORK/failures
: >"$FAILS"

cg() { # PID ARGS...: callgrind_control on the server under valgrind
    local pid=$1
    shift
    if ! callgrind_control --vgdb-prefix="$VGDB_PREFIX" "$@" "$pid" >>"$WORK/callgrind_control.log" 2>&1; then
        log "callgrind_control $* $pid failed: $(tail -3 "$WORK/callgrind_control.log")"
        return 1
    fi
}

SERVER_CMDS=()
# measure_server INDEX ROUND: a fresh server under callgrind (instrumentation off): start,
# fill, then for every workload its warm-up and REPEAT measured runs, with instrumentation
# switched on (`-i on`) and the counters zeroed just before each and dumped just after.
measure_server() {
    local i=$1 round=$2 label=${LABELS[$1]} kind=${KINDS[$1]} bin=${BINS[$1]}
    local sock=$WORK/s$i-$round.sock out=$WORK/cg-$i-$round.out
    local vg=(valgrind --tool=callgrind --instr-atstart=no --vgdb=yes --vgdb-prefix="$VGDB_PREFIX"
        --callgrind-out-file="$out" --log-file="$WORK/valgrind-$i-$round.log")
    local srv extra=() ready
    if [[ $kind == redis ]]; then
        srv=("$bin" --port 0 --unixsocket "$sock" --unixsocketperm 700 --save '' --appendonly no
            --daemonize no --dir "$WORK" --logfile "$WORK/redis.log")
        extra=(--target redis)
        ready=(redis-cli -s "$sock" ping)
    else
        srv=("$bin" serve --socket "$sock" --max-keys 0 --heartbeat 0)
        ready=("$bin" status --socket "$sock")
    fi
    if ((round == 1)); then
        local shown
        shown=$(printf '%q ' taskset -c "$SERVER_CPU" "${vg[@]}" "${srv[@]}")
        shown=${shown% }
        SERVER_CMDS+=("$label: \`${shown//$WORK/\$WORK}\`")
    fi
    log "round $round, $label: starting ${srv[0]} under callgrind"
    env -u PROCMESH_PERSIST_DIR -u PROCMESH_BROKER_OPTS -u PROCMESH_TOKEN -u PROCMESH_SOCKET \
        taskset -c "$SERVER_CPU" "${vg[@]}" "${srv[@]}" >>"$WORK/server-$i.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    if ! wait_for_s 60 "$label under valgrind" "${ready[@]}"; then
        echo "- round $round, $label: did not start: $(tail -c 300 "$WORK/valgrind-$i-$round.log")" >>"$FAILS"
        return
    fi
    # -n lifts procmesh-bench's default 5 s limit (a fill sets each key once whatever -n says).
    if ! client "$WORK/fill.out" taskset -c "$CLIENT_CPU" "$BENCH" "${extra[@]}" --socket "$sock" \
        -t fill -c "$CONNS" -P "$PIPELINE" -n "$KEYSPACE" -r "$KEYSPACE" --size 3 --threads 1 --json; then
        echo "- round $round, $label: fill failed: $(head -c 300 "$WORK/err")" >>"$FAILS"
        return
    fi
    if ! grep -q "\"requests\":$KEYSPACE,\"errors\":0," "$WORK/fill.out"; then
        echo "- round $round, $label: fill did not set all $KEYSPACE keys: $(head -c 300 "$WORK/fill.out")" >>"$FAILS"
        return
    fi
    local dumps=0 w r
    for w in $WORKLOADS; do
        local cmd=(taskset -c "$CLIENT_CPU" "$BENCH" "${extra[@]}" --socket "$sock" -t "$w"
            -c "$CONNS" -P "$PIPELINE" -n "$REQUESTS" -r "$KEYSPACE" --threads 1 --json)
        if [[ " $WARMUP " == *" $w "* ]]; then
            # The same requests once, unmeasured (same seed, same keys): INCR's counters
            # exist before the measured run, as the filled keys do for GET and SET.
            if ! client "$WORK/out" "${cmd[@]}"; then
                echo "- round $round, $label $w: warm-up \`${cmd[*]}\` failed: $(head -c 300 "$WORK/err")" >>"$FAILS"
                continue
            fi
        fi
        for ((r = 1; r <= REPEAT; r++)); do
            cg "$pid" -i on
            cg "$pid" -z
            local ok=1
            client "$WORK/out" "${cmd[@]}" || ok=0
            cg "$pid" -d
            cg "$pid" -i off
            dumps=$((dumps + 1))
            if ((ok == 0)); then
                echo "- round $round, $label $w: \`${cmd[*]}\` failed: $(head -c 300 "$WORK/err")" >>"$FAILS"
                continue
            fi
            local reqs errs total
            reqs=$(grep -o '"requests":[0-9]*' "$WORK/out" | cut -d: -f2)
            errs=$(grep -o '"errors":[0-9]*' "$WORK/out" | cut -d: -f2)
            total=
            [[ -s $out.$dumps ]] && total=$(callgrind_total "$out.$dumps")
            if [[ -z $reqs || -z $total || $errs != 0 ]]; then
                echo "- round $round, $label $w: requests '$reqs', errors '$errs', dump $out.$dumps total '$total'" >>"$FAILS"
                continue
            fi
            printf '%s\t%s\t%d\t%d\t%d\t%d\n' "$label" "$w" "$round" "$r" "$reqs" "$total" >>"$RUNS"
            log "round $round, $label $w #$r: $total instructions / $reqs requests"
        done
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

T0=$(date +%s)
for ((round = 1; round <= ROUNDS; round++)); do
    order=("${!LABELS[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((j = ${#LABELS[@]} - 1; j >= 0; j--)); do order+=("$j"); done
    fi
    for i in "${order[@]}"; do
        measure_server "$i" "$round"
    done
done
ELAPSED=$(($(date +%s) - T0))

# ------------------------------------------------------------------ report
# Per workload and server: the median instructions/request over the REPEAT runs.
per_request_table() {
    local labels kinds
    labels=$(
        IFS=,
        echo "${LABELS[*]}"
    )
    kinds=$(
        IFS=,
        echo "${KINDS[*]}"
    )
    awk -F'\t' -v labels="$labels" -v kinds="$kinds" -v workloads="$WORKLOADS" '
        { v[$1 SUBSEP $2, ++n[$1 SUBSEP $2]] = $6 / $5 }
        function median(key,    m, i, j, t, a) {
            m = n[key]
            if (m == 0) return ""
            for (i = 1; i <= m; i++) a[i] = v[key, i]
            for (i = 2; i <= m; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
        }
        function cell(x) { return x == "" ? "-" : sprintf("%.0f", x) }
        function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", a / b) }
        END {
            nl = split(labels, L, ","); split(kinds, K, ","); nw = split(workloads, W, " ")
            redis = ""; first = ""; np = 0
            for (i = 1; i <= nl; i++) {
                if (K[i] == "redis") redis = L[i]
                else { P[++np] = L[i]; if (first == "") first = L[i] }
            }
            h = "| workload |"; s = "|---|"
            for (i = 1; i <= nl; i++) { h = h " " L[i] " instr/req |"; s = s "---:|" }
            if (redis != "") for (i = 1; i <= np; i++) { h = h " " P[i] " / " redis " |"; s = s "---:|" }
            for (i = 2; i <= np; i++) { h = h " " P[i] " / " first " |"; s = s "---:|" }
            print h; print s
            for (k = 1; k <= nw; k++) {
                w = W[k]; row = "| " w " |"
                for (i = 1; i <= nl; i++) { x[L[i]] = median(L[i] SUBSEP w); row = row " " cell(x[L[i]]) " |" }
                if (redis != "") for (i = 1; i <= np; i++) row = row " " ratio(x[P[i]], x[redis]) " |"
                for (i = 2; i <= np; i++) row = row " " ratio(x[P[i]], x[first]) " |"
                print row
            }
        }' "$RUNS"
}

# Per server and workload: how far apart its runs are (instructions per request).
spread_table() {
    echo "| server | workload | min | max | spread |"
    echo "|---|---|---:|---:|---:|"
    awk -F'\t' '
        { k = $1 " | " $2; x = $6 / $5; if (!(k in mn)) { order[++n] = k; mn[k] = x; mx[k] = x }
          if (x < mn[k]) mn[k] = x; if (x > mx[k]) mx[k] = x }
        END { for (i = 1; i <= n; i++) { k = order[i]; printf "| %s | %.1f | %.1f | %.2f%% |\n", k, mn[k], mx[k], 100 * (mx[k] - mn[k]) / mn[k] } }' "$RUNS"
}

machine_facts
report() {
    local runs=$((ROUNDS * REPEAT))
    echo "# Server instructions per request (callgrind)"
    echo
    echo "Written by \`scripts/icount.sh\` on $(date -u '+%F %H:%M UTC') in ${ELAPSED} s."
    echo "User-space instructions (callgrind Ir, all threads) each server executed from"
    echo "\`callgrind_control -z\` to \`callgrind_control -d\` around one procmesh-bench run, divided by"
    echo "the requests the client reports (lock: each lock and each unlock is one request)."
    echo "Median of $runs runs per cell: $ROUNDS rounds, each with a fresh server process per"
    echo "binary$( ((REPEAT > 1)) && echo " and $REPEAT runs of each workload on it"). Lower is better; a ratio below 1 means fewer"
    echo "instructions than the server it is divided by."
    echo
    per_request_table
    if ((runs > 1)); then
        echo
        echo "Spread of the $runs runs, instructions per request, (max - min) / min:"
        echo
        spread_table
    fi
    failed_runs
    echo
    echo "## Setup"
    echo
    echo "- commit \`$COMMIT\`$( ((DIRTY > 0)) && echo " (+ $DIRTY uncommitted files under broker/ proto/ bench/)")"
    local i
    for i in "${!LABELS[@]}"; do
        if [[ ${KINDS[$i]} == procmesh ]]; then
            echo "- ${LABELS[$i]}: \`${BINS[$i]}\` (sha256 $(sha256sum "${BINS[$i]}" | cut -c1-12))"
        fi
    done
    echo "- client: \`$BENCH\` (sha256 $(sha256sum "$BENCH" | cut -c1-12))"
    if [[ $REDIS == 1 ]]; then echo "- $(redis-server --version | head -1)"; fi
    echo "- $(valgrind --version); CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1) (/proc/cpuinfo), $(nproc) vCPUs; $(uname -sr)"
    echo "- CPU ${BUSY_BEFORE}% busy just before the run, load average $LOAD_BEFORE"
    echo "- servers, on CPU $SERVER_CPU (round 1's command line; SOCK and out file change per round):"
    for i in "${SERVER_CMDS[@]}"; do echo "  - $i"; done
    echo "- per server process: fill \`taskset -c $CLIENT_CPU $BENCH [--target redis] --socket SOCK -t fill -c $CONNS -P $PIPELINE -n $KEYSPACE -r $KEYSPACE --size 3 --threads 1 --json\`"
    echo "  (checked: $KEYSPACE requests, no errors),"
    echo "  then for each workload W of \"$WORKLOADS\", in this order:$( [[ -n $WARMUP ]] && echo " for \"$WARMUP\" the run below once unmeasured (same seed, same keys: INCR's counters exist, as the filled keys do for GET and SET);") $REPEAT x"
    echo "  \`callgrind_control -i on PID; callgrind_control -z PID\`, \`taskset -c $CLIENT_CPU $BENCH [--target redis] --socket SOCK -t W -c $CONNS -P $PIPELINE -n $REQUESTS -r $KEYSPACE --threads 1 --json\`,"
    echo "  \`callgrind_control -d PID; callgrind_control -i off PID\`"
    echo "- rounds alternate the order of the servers (as listed in odd rounds, reversed in even ones)"
    echo
    echo "## Every run"
    echo
    echo "| server | workload | round | run | requests | instructions | instr/req |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    sort -t$'\t' -k1,1 -k3,3n -s "$RUNS" |
        awk -F'\t' '{ printf "| %s | %s | %d | %d | %d | %d | %.1f |\n", $1, $2, $3, $4, $5, $6, $6 / $5 }'
}
if [[ -n $OUT ]]; then
    mkdir -p "$(dirname "$OUT")"
    report | tee "$OUT"
    log "wrote $OUT"
else
    report
fi
