#!/usr/bin/env bash
# procmesh vs Redis, side by side, in one run (issue 7).
#
# Builds in release, installs redis-server/redis-tools with apt-get if missing, starts
# Redis (Unix socket, no persistence) and a procmesh broker, both pinned to CPU 0, and
# runs the same workloads against both, alternating which system goes first, for
# ROUNDS rounds. Writes bench/results/<date>-compare.md (medians, ratios, p50/p99,
# machine, placement, exact commands) and the raw measurements next to it as .jsonl.
# Stops every process it started (trap). Takes about 3-4 minutes on 2 vCPUs.
#
# Placement: servers on CPU 0; pipelined clients on CPU 1; the one-in-flight latency
# row runs the client on CPU 0 too (same core), and a second latency row on CPU 1
# (cross core) is shown for reference.
#
# The 50 connections x 1 in flight rows run against the broker on both I/O drivers (the
# main broker on `--io auto`, i.e. io_uring where the kernel allows it, and a second one
# on `--io epoll`) and Redis, and record each server's CPU per request (utime + stime
# from /proc/PID/stat over the run, divided by the requests).
#
# Environment knobs: ROUNDS (3), N (requests per pipelined run, 2000000), N_MANY
# (requests per 50x1 run, 300000),
# PUB_DURATION (3s), MEM_KEYS (1000000), PROFILE (1: strace -c syscalls per request),
# OUT (results file; default bench/results/<date>-compare.md), SKIP_BUILD (0),
# N_FSYNC (requests per logged-SET run, 200000),
# ONLY (empty; `many` = only the 50x1 rows and their syscall profile; `fsync` = only the
# logged-SET rows),
# SNAPSHOT (0; 1 = build the committed HEAD from `git archive` instead of the working
# tree, so the results name exactly one commit), QUIET_WAIT (180 s).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ROUNDS=${ROUNDS:-3}
N=${N:-2000000}
N_LAT=${N_LAT:-50000}
N_LAT_CROSS=${N_LAT_CROSS:-10000}
N_MANY=${N_MANY:-300000}
N_FSYNC=${N_FSYNC:-200000}
PUB_DURATION=${PUB_DURATION:-3s}
CALL_DURATION=${CALL_DURATION:-3s}
MEM_KEYS=${MEM_KEYS:-1000000}
KEYSPACE=${KEYSPACE:-100000}
PROFILE=${PROFILE:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
DATE=$(date +%F)
OUT=${OUT:-bench/results/$DATE-compare.md}
RUNS=${OUT%.md}.jsonl
SERVER_CPU=0
CLIENT_CPU=1

SNAPSHOT=${SNAPSHOT:-0}
QUIET_WAIT=${QUIET_WAIT:-180}
BENCH_NAME=compare
source "$(dirname "$0")/lib-bench.sh"

# ------------------------------------------------------------------ setup
# Build, Redis, placement, and a wait for a quiet machine (lib-bench.sh).
bench_setup compare redis-benchmark

WORK=$(mktemp -d /tmp/procmesh-compare.XXXXXX)
PIDS=()
started_pids() { echo "$CLIENT_PID" "$STRACE_PID" "${PIDS[@]}"; }
trap_cleanup

START_PID=
start_redis() { # SOCKET
    taskset -c "$SERVER_CPU" redis-server --port 0 --unixsocket "$1" --unixsocketperm 700 \
        --save '' --appendonly no --daemonize no --dir "$WORK" --logfile "$WORK/redis.log" &
    START_PID=$!
    PIDS+=("$START_PID")
    wait_for "redis-server" redis-cli -s "$1" ping
}
start_broker() { # SOCKET [IO]
    taskset -c "$SERVER_CPU" "$BROKER" serve --socket "$1" --max-keys 0 --io "${2:-auto}" >>"$WORK/broker.log" 2>&1 &
    START_PID=$!
    PIDS+=("$START_PID")
    wait_for "procmesh broker" "$BROKER" status --socket "$1"
}
stop_pid() { # PID
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

RSOCK=$WORK/redis.sock
PSOCK=$WORK/procmesh.sock
start_redis "$RSOCK"
REDIS_PID=$START_PID
start_broker "$PSOCK"
BROKER_PID=$START_PID
# The driver `auto` chose (uring, or epoll where io_uring is refused).
IO_MAIN=$("$BROKER" stats --socket "$PSOCK" --json | grep -o '"ioBackend": *"[a-z]*"' | grep -o '[a-z]*"$' | tr -d '"')
ESOCK=$WORK/procmesh-epoll.sock
EPOLL_PID=
if [[ $IO_MAIN != epoll ]]; then
    start_broker "$ESOCK" epoll
    EPOLL_PID=$START_PID
fi
log "redis pid $REDIS_PID, broker pid $BROKER_PID ($IO_MAIN)${EPOLL_PID:+, epoll broker pid $EPOLL_PID}, all on CPU $SERVER_CPU"

# CPU accounting (lib-bench.sh), to say how much other processes ran during the measurements:
# machine-wide busy time (/proc/stat) minus our servers' and our reaped children's.
T0=$(date +%s.%N)
BUSY0=$(machine_busy_s)
snap_children_cpu
OURS0=$(awk -v a="$CHILD_CPU" -v b="$(pid_cpu_s "$REDIS_PID" "$BROKER_PID" $EPOLL_PID)" 'BEGIN { printf "%.2f", a + b }')

mkdir -p "$(dirname "$OUT")"
: >"$RUNS"
FAILS=$WORK/failures
: >"$FAILS"

# ------------------------------------------------------------------ recording
record() { # ROW SYSTEM TOOL ROUND TARGET CMD RESULT_JSON
    local target=null
    [[ -n $5 ]] && target=$(json_str "$5")
    printf '{"row":%s,"system":"%s","tool":"%s","round":%d,"target":%s,"cmd":%s,"result":%s}\n' \
        "$(json_str "$1")" "$2" "$3" "$4" "$target" "$(json_str "$6")" "$7" >>"$RUNS"
}

# pm ROW SYSTEM ROUND TARGET CPU ARGS...: one procmesh-bench run (against procmesh or,
# with SYSTEM=redis, against Redis in RESP).
pm() {
    local row=$1 sys=$2 round=$3 target=$4 cpu=$5
    shift 5
    local sock=$PSOCK extra=()
    if [[ $sys == redis ]]; then
        sock=$RSOCK
        extra=(--target redis)
    fi
    local cmd=(taskset -c "$cpu" "$BENCH" "${extra[@]}" --socket "$sock" "$@" --json)
    local out
    if client "$WORK/out" "${cmd[@]}" && out=$(<"$WORK/out"); then
        record "$row" "$sys" procmesh-bench "$round" "$target" "${cmd[*]}" "$out"
    else
        echo "- round $round, $row, $sys: \`${cmd[*]}\` failed: $(head -c 300 "$WORK/err")" >>"$FAILS"
        log "FAILED: ${cmd[*]}"
    fi
}

# rb ROW ROUND TARGET CPU TEST ARGS...: one redis-benchmark run; its CSV line
# ("GET","rps","avg_ms","min_ms","p50_ms","p95_ms","p99_ms","max_ms") becomes JSON.
rb() {
    local row=$1 round=$2 target=$3 cpu=$4 test=$5
    shift 5
    local cmd=(taskset -c "$cpu" redis-benchmark -s "$RSOCK" -t "$test" "$@" --csv)
    local out line
    if client "$WORK/out" "${cmd[@]}" && line=$(grep -i "^\"$test\"" "$WORK/out"); then
        local json
        json=$(awk -F'"' '{printf "{\"ops_per_sec\":%s,\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f}}", $4, $10*1000, $14*1000}' <<<"$line")
        record "$row" redis redis-benchmark "$round" "$target" "${cmd[*]}" "$json"
    else
        echo "- round $round, $row, redis-benchmark: \`${cmd[*]}\` failed: $(head -c 300 "$WORK/err")" >>"$FAILS"
        log "FAILED: ${cmd[*]}"
    fi
}

# ------------------------------------------------------------------ workloads
# Every key the GET rows read exists on both systems (3-byte values, as redis-benchmark's).
log "prefilling $KEYSPACE keys on both systems"
"$BENCH" --socket "$PSOCK" -t fill -c 4 -P 64 -n "$KEYSPACE" -r "$KEYSPACE" --size 3 >/dev/null
"$BENCH" --target redis --socket "$RSOCK" -t fill -c 4 -P 64 -n "$KEYSPACE" -r "$KEYSPACE" --size 3 >/dev/null
if [[ -n $EPOLL_PID ]]; then
    "$BENCH" --socket "$ESOCK" -t fill -c 4 -P 64 -n "$KEYSPACE" -r "$KEYSPACE" --size 3 >/dev/null
fi

PIPE=(-c 4 -P 64 -n "$N" -r "$KEYSPACE" --threads 1)
RB_PIPE=(-c 4 -P 64 -n "$N" -r "$KEYSPACE" -d 3)

one_system() { # SYSTEM ROUND
    local sys=$1 r=$2
    local w
    for w in get set incr; do
        local row="${w^^} 4 conn x 64 in flight"
        pm "$row" "$sys" "$r" "ops_per_sec>=1.5" "$CLIENT_CPU" -t "$w" "${PIPE[@]}"
        if [[ $sys == redis ]]; then
            rb "$row" "$r" "ops_per_sec>=1.5" "$CLIENT_CPU" "$w" "${RB_PIPE[@]}"
        fi
    done
    pm "MIXED 80/20 get/set 4x64" "$sys" "$r" "ops_per_sec" "$CLIENT_CPU" -t mixed "${PIPE[@]}"
    pm "GET 1 conn x 1, client on the server's core" "$sys" "$r" "p50<=1@procmesh-bench" "$SERVER_CPU" \
        -t get -c 1 -P 1 -n "$N_LAT" -r "$KEYSPACE"
    if [[ $sys == redis ]]; then
        rb "GET 1 conn x 1, client on the server's core" "$r" "" "$SERVER_CPU" get -c 1 -P 1 -n "$N_LAT" -r "$KEYSPACE" -d 3
    fi
    pm "GET 1 conn x 1, client on the other core" "$sys" "$r" "p50@procmesh-bench" "$CLIENT_CPU" \
        -t get -c 1 -P 1 -n "$N_LAT_CROSS" -r "$KEYSPACE"
    pm "PUBLISH 1 conn x 64 to 4 subscribers (16 B)" "$sys" "$r" "delivered_per_sec>=1" "$CLIENT_CPU" \
        -t publish -c 1 -P 64 -s 4 --size 16 -d "$PUB_DURATION"
    pm "LOCK/UNLOCK 4x64 (Redis: SET NX PX / DEL)" "$sys" "$r" "ops_per_sec" "$CLIENT_CPU" -t lock "${PIPE[@]}"
    if [[ $sys == procmesh ]]; then
        pm "CALL 4x16, 2 workers (procmesh only)" procmesh "$r" "" "$CLIENT_CPU" -t call -c 4 -P 16 -w 2 -d "$CALL_DURATION"
    fi
}

# cpu_run SOCKET PID ARGS...: one procmesh-bench run on the client core; sets CPU_CMD and
# CPU_JSON (its --json result plus cpu_us_per_req: the server PID's utime + stime over
# the run, in µs, divided by the requests), CPU_JSON empty when it failed.
cpu_run() {
    local sock=$1 pid=$2
    shift 2
    CPU_CMD="taskset -c $CLIENT_CPU $BENCH --socket $sock $* --json; server CPU from /proc/$pid/stat"
    CPU_JSON=
    local c0 c1 out reqs
    c0=$(pid_cpu_s "$pid")
    if client "$WORK/out" taskset -c "$CLIENT_CPU" "$BENCH" --socket "$sock" "$@" --json && out=$(<"$WORK/out"); then
        c1=$(pid_cpu_s "$pid")
        reqs=$(grep -o '"requests":[0-9]*' <<<"$out" | cut -d: -f2)
        local cpu
        cpu=$(awk -v a="$c0" -v b="$c1" -v n="$reqs" 'BEGIN { printf "%.3f", (b - a) * 1e6 / n }')
        CPU_JSON=$(sed -E 's/\}[[:space:]]*$/,"cpu_us_per_req":'"$cpu"'}/' <<<"$out")
    else
        echo "- 50x1: \`$CPU_CMD\` failed: $(head -c 300 "$WORK/err")" >>"$FAILS"
    fi
}

# many ROUND: GET and SET over 50 connections x 1 in flight against Redis and the broker
# on each driver. Each run is recorded twice, under an ops/s row and a CPU-per-request
# row (targets: ops/s >= 1.8x Redis, CPU per request <= 0.5x); Redis's run of the round
# stands in both drivers' rows.
many() {
    local r=$1 w b
    local drivers=("$IO_MAIN")
    [[ -n $EPOLL_PID ]] && drivers+=(epoll)
    for w in get set; do
        local args=(-t "$w" -c 50 -P 1 -n "$N_MANY" -r "$KEYSPACE" --threads 1)
        local runs=()
        if ((r % 2 == 0)); then runs=(redis "${drivers[@]}"); else runs=("${drivers[@]}" redis); fi
        local redis_cmd='' redis_json='' ours_cmd=() ours_json=()
        for b in "${runs[@]}"; do
            case $b in
            redis) cpu_run "$RSOCK" "$REDIS_PID" --target redis "${args[@]}"; redis_cmd=$CPU_CMD; redis_json=$CPU_JSON ;;
            epoll) cpu_run "$ESOCK" "$EPOLL_PID" "${args[@]}"; ours_cmd+=("epoll" "$CPU_CMD"); ours_json+=("$CPU_JSON") ;;
            *) cpu_run "$PSOCK" "$BROKER_PID" "${args[@]}"; ours_cmd+=("$b" "$CPU_CMD"); ours_json+=("$CPU_JSON") ;;
            esac
        done
        local i
        for i in "${!ours_json[@]}"; do
            b=${ours_cmd[$((2 * i))]}
            local row="${w^^} 50 conn x 1 in flight [$b]" cmd=${ours_cmd[$((2 * i + 1))]} json=${ours_json[$i]}
            [[ -n $json ]] && record "$row" procmesh procmesh-bench "$r" "ops_per_sec>=1.8" "$cmd" "$json"
            [[ -n $redis_json ]] && record "$row" redis procmesh-bench "$r" "ops_per_sec>=1.8" "$redis_cmd" "$redis_json"
            row="${w^^} 50 conn x 1 [$b]: server CPU per request"
            [[ -n $json ]] && record "$row" procmesh procmesh-bench "$r" "cpu_us_per_req<=0.5" "$cmd" "$json"
            [[ -n $redis_json ]] && record "$row" redis procmesh-bench "$r" "cpu_us_per_req<=0.5" "$redis_cmd" "$redis_json"
        done
    done
}

# fsync ROUND: pipelined SET 4x64 with every write logged, against fresh servers: the
# broker with --persist-dir and --fsync everysec|always (on the main broker's driver),
# Redis with appendonly yes and appendfsync everysec|always, both logging to $WORK (the
# machine's temp disk). Targets: `always` >= Redis's ops/s; `everysec` costs <= 15% of
# the plain "SET 4 conn x 64 in flight" row's throughput (compare those two rows). Each
# run also records the server's CPU per request.
FSYNC_PIPE=(-t set -c 4 -P 64 -n "$N_FSYNC" -r "$KEYSPACE" --threads 1)
fsync_rows() {
    local r=$1 mode sys
    for mode in everysec always; do
        local row="SET 4 conn x 64, fsync $mode (Redis: appendfsync $mode)"
        local order=(procmesh redis)
        ((r % 2 == 0)) && order=(redis procmesh)
        for sys in "${order[@]}"; do
            local dir=$WORK/fsync-$sys-$mode-$r sock=$WORK/fsync-$sys.sock
            mkdir -p "$dir"
            if [[ $sys == redis ]]; then
                taskset -c "$SERVER_CPU" redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 \
                    --save '' --appendonly yes --appendfsync "$mode" --daemonize no --dir "$dir" \
                    --logfile "$WORK/redis-fsync.log" &
                START_PID=$!
                PIDS+=("$START_PID")
                wait_for "redis-server" redis-cli -s "$sock" ping
                cpu_run "$sock" "$START_PID" --target redis "${FSYNC_PIPE[@]}"
            else
                taskset -c "$SERVER_CPU" "$BROKER" serve --socket "$sock" --max-keys 0 --io "$IO_MAIN" \
                    --persist-dir "$dir" --fsync "$mode" >>"$WORK/broker.log" 2>&1 &
                START_PID=$!
                PIDS+=("$START_PID")
                wait_for "procmesh broker" "$BROKER" status --socket "$sock"
                cpu_run "$sock" "$START_PID" "${FSYNC_PIPE[@]}"
            fi
            [[ -n $CPU_JSON ]] && record "$row" "$sys" procmesh-bench "$r" "ops_per_sec>=1" "$CPU_CMD" "$CPU_JSON"
            stop_pid "$START_PID"
            rm -f "$sock"
        done
    done
}

ONLY=${ONLY:-}
for r in $(seq "$ROUNDS"); do
    if ((r % 2 == 1)); then order=(procmesh redis); else order=(redis procmesh); fi
    log "round $r/$ROUNDS: ${order[*]}"
    if [[ -z $ONLY ]]; then
        for sys in "${order[@]}"; do
            one_system "$sys" "$r"
        done
    fi
    if [[ -z $ONLY || $ONLY == fsync ]]; then
        fsync_rows "$r"
    fi
    if [[ -z $ONLY || $ONLY == many ]]; then
        many "$r"
    fi
done

# ------------------------------------------------------------------ memory
rss_bytes() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }

log "memory: $MEM_KEYS keys of 16 B with 32 B values, fresh servers"
MEM_ROW="RSS with $MEM_KEYS keys (16 B keys, 32 B values)"
for r in $(seq "$ROUNDS"); do
    [[ -n $ONLY ]] && break
    if ((r % 2 == 1)); then order=(procmesh redis); else order=(redis procmesh); fi
    for sys in "${order[@]}"; do
        sock=$WORK/mem-$sys-$r.sock
        if [[ $sys == redis ]]; then
            start_redis "$sock"
            extra=(--target redis)
        else
            start_broker "$sock"
            extra=()
        fi
        pid=$START_PID
        empty=$(rss_bytes "$pid")
        cmd=(taskset -c "$CLIENT_CPU" "$BENCH" "${extra[@]}" --socket "$sock" -t fill -c 4 -P 64 -n "$MEM_KEYS" -r "$MEM_KEYS" --size 32 --json)
        if client "$WORK/fill.json" "${cmd[@]}"; then
            sleep 0.5
            full=$(rss_bytes "$pid")
            cmdline="${cmd[*]}; then VmRSS of the server from /proc/PID/status"
            record "$MEM_ROW" "$sys" "/proc VmRSS" "$r" "rss_bytes<=1" "$cmdline" \
                "{\"rss_bytes\":$full,\"rss_empty_bytes\":$empty}"
        else
            echo "- round $r, memory, $sys: \`${cmd[*]}\` failed: $(head -c 300 "$WORK/err")" >>"$FAILS"
        fi
        stop_pid "$pid"
    done
done

# ------------------------------------------------------------------ syscall profile
if strace_profile; then
    log "profile: strace -c on each server (slows it down; counts only)"
    profile_one() { # SYSTEM PID LABEL CPU ARGS...
        local sys=$1 pid=$2 label=$3 cpu=$4
        shift 4
        local extra=() sock=$PSOCK
        [[ $sys == redis ]] && extra=(--target redis) && sock=$RSOCK
        [[ $sys == procmesh-epoll ]] && sock=$ESOCK
        local st=$WORK/strace-$sys.txt
        traced_client "$st" "-c -f" "$pid" taskset -c "$cpu" "$BENCH" "${extra[@]}" --socket "$sock" "$@" --json
        local reqs=$TRACED_REQS
        if [[ -z $reqs || ! -s $st ]]; then
            echo "| $label | $sys | strace failed | |" >>"$PROFILE_MD"
            return
        fi
        # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall.
        awk -v reqs="$reqs" -v sys="$sys" -v label="$label" '
            NR > 2 && $1 ~ /^[0-9.]+$/ {
                errs = (NF == 6) ? $5 : 0
                if ($NF == "total") { total = $4 / reqs; next }
                per[$NF] = $4 / reqs; err[$NF] = errs / reqs; order[++n] = $NF
            }
            END {
                s = ""
                for (i = 1; i <= n; i++) {
                    nm = order[i]
                    if (per[nm] < 0.01) continue
                    s = s sprintf("%s%s %.2f", (s == "" ? "" : ", "), nm, per[nm])
                    if (err[nm] > 0) s = s sprintf(" (%.2f failed)", err[nm])
                }
                printf "| %s | %s | %.2f | %s |\n", label, sys, total, s
            }' "$st" >>"$PROFILE_MD"
    }
    {
        echo "| run | server | syscalls per request | per request, by call (EAGAIN etc. in parentheses) |"
        echo "|---|---|---|---|"
    } >>"$PROFILE_MD"
    for sys in procmesh procmesh-epoll redis; do
        pid=$BROKER_PID
        [[ $sys == redis ]] && pid=$REDIS_PID
        if [[ $sys == procmesh-epoll ]]; then
            [[ -z $EPOLL_PID ]] && continue
            pid=$EPOLL_PID
        fi
        if [[ $ONLY != many ]]; then
            profile_one "$sys" "$pid" "GET 1x1, same core, 20k requests" "$SERVER_CPU" -t get -c 1 -P 1 -n 20000 -r "$KEYSPACE"
            profile_one "$sys" "$pid" "GET 4x64, 400k requests" "$CLIENT_CPU" -t get -c 4 -P 64 -n 400000 -r "$KEYSPACE" --threads 1
        fi
        if [[ $ONLY != fsync ]]; then
            profile_one "$sys" "$pid" "GET 50x1, 100k requests" "$CLIENT_CPU" -t get -c 50 -P 1 -n 100000 -r "$KEYSPACE" --threads 1
        fi
    done
fi

# Where the broker's time goes on the pipelined GET and INCR rows (perf, if it works here).
PERF_MD=$WORK/perf.md
: >"$PERF_MD"
if [[ $PROFILE == 1 && -z $ONLY ]] && command -v perf >/dev/null; then
    for w in get incr; do
        log "profile: perf record of the broker during ${w^^} 4x64"
        pd=$WORK/perf-$w.data
        perf record -F 1999 -g -p "$BROKER_PID" -o "$pd" -- sleep 2 >/dev/null 2>&1 &
        ppid=$!
        PIDS+=("$ppid")
        sleep 0.3
        client /dev/null taskset -c "$CLIENT_CPU" "$BENCH" --socket "$PSOCK" -t "$w" -c 4 -P 64 -d 1500ms -r "$KEYSPACE" --threads 1 || true
        wait "$ppid" 2>/dev/null || true
        if [[ -s $pd ]]; then
            {
                echo "#### ${w^^} 4x64, top symbols of the broker (self time, perf record -F 1999)"
                echo
                echo '```'
                perf report -i "$pd" --no-children --stdio -g none --percent-limit 1.5 2>/dev/null |
                    grep -E '^ +[0-9.]+%' | sed -E 's/ +\[\.\] / /; s/ +\[k\] / [kernel] /' | head -20
                echo '```'
                echo
            } >>"$PERF_MD"
        fi
    done
fi

# ------------------------------------------------------------------ report
other_cpu "$REDIS_PID" "$BROKER_PID" $EPOLL_PID
machine_facts
{
    echo "# procmesh vs Redis — $DATE"
    echo
    echo "Written by \`scripts/compare.sh\` (ROUNDS=$ROUNDS, N=$N). Medians of $ROUNDS rounds; in each round"
    echo "every workload ran against both systems back to back, procmesh first in odd rounds and"
    echo "Redis first in even ones. Ratios are procmesh / Redis from this same run."
    echo
    echo "## Machine and build"
    echo
    echo "- commit \`$COMMIT\`$( ((DIRTY > 0)) && echo " (+ $DIRTY uncommitted files under broker/ proto/ bench/)")"
    echo "- CPU: $CPU_MODEL, $(nproc) vCPUs; $(uname -sr); $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)"
    echo "- $(redis-server --version | head -1)"
    echo "- $(rustc --version); release profile (lto = fat, codegen-units = 1)"
    echo "- other load: CPU ${BUSY_BEFORE}% busy just before the run (waited ${waited} s for quiet); load average $LOAD_BEFORE before, $LOAD_AFTER after;"
    echo "  processes other than ours used $OTHER_CPU (our servers and clients excluded)"
    echo
    echo "## Placement"
    echo
    echo "- redis-server and \`procmesh serve\`: \`taskset -c $SERVER_CPU\` (pid $REDIS_PID: $(taskset -pc "$REDIS_PID" 2>/dev/null | sed 's/.*: //'); pid $BROKER_PID: $(taskset -pc "$BROKER_PID" 2>/dev/null | sed 's/.*: //'))."
    echo "- Pipelined, publish, lock and call clients: \`taskset -c $CLIENT_CPU\` (the other core)."
    echo "- \"client on the server's core\": the client also on CPU $SERVER_CPU; \"other core\": CPU $CLIENT_CPU."
    echo "- Servers: \`taskset -c $SERVER_CPU redis-server --port 0 --unixsocket SOCK --unixsocketperm 700 --save '' --appendonly no --daemonize no\`"
    echo "  and \`taskset -c $SERVER_CPU $BROKER serve --socket SOCK --max-keys 0\`; before the rounds both got every key of"
    echo "  the keyspace once (\`$BENCH [--target redis] --socket SOCK -t fill -c 4 -P 64 -n $KEYSPACE -r $KEYSPACE --size 3\`)."
    echo "- Memory rows: a fresh server per round, filled by procmesh-bench (\`fill\`: each key set once; RESP SET for Redis), VmRSS read 0.5 s later."
    echo
    echo "## Which tool measured what"
    echo
    echo "- \`procmesh-bench\` (bench/): every procmesh number, and the same workloads against Redis in RESP"
    echo "  (\`--target redis\`), so both systems also face the identical client."
    echo "- \`redis-benchmark\`: GET/SET/INCR 4x64 and the same-core 1x1 row for Redis, with the same -c/-P/-n/-r."
    echo "  Throughput targets are judged against the better of the two Redis medians; the 1x1 latency"
    echo "  target compares procmesh-bench with procmesh-bench (on one core the client's own cost is part"
    echo "  of the round trip, and redis-benchmark reports p50 in whole microseconds)."
    echo "- Publish: procmesh-bench for both (redis-benchmark has no subscribers): 4 subscriber connections"
    echo "  count delivered messages; msg/s = deliveries / (first publish .. last delivery)."
    echo "- Lock: procmesh \`lock\`/\`unlock\` vs Redis \`SET key 1 NX PX 30000\` / \`DEL key\` (Redis has no"
    echo "  owner check in DEL; a script would be slower), one uncontended key per connection."
    echo
    echo "## Results"
    echo
    "$BENCH" report "$RUNS"
    failed_runs
    if [[ -s $PROFILE_MD ]]; then
        echo
        echo "## Syscalls per request (strace -c on the server, one extra run each)"
        echo
        cat "$PROFILE_MD"
    fi
    if [[ -s $PERF_MD ]]; then
        echo
        echo "## Where the broker spends its time"
        echo
        cat "$PERF_MD"
    fi
} >"$OUT"
log "wrote $OUT and $RUNS"
