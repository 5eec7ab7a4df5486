#!/usr/bin/env bash
# SET throughput with persistence, procmesh vs Redis, in one run (issue 6).
#
# Modes, the same for both systems:
#   off       procmesh without --persist-dir      Redis --appendonly no
#   no        procmesh --fsync no                 Redis --appendonly yes --appendfsync no
#   everysec  procmesh --fsync everysec           Redis --appendonly yes --appendfsync everysec
#   always    procmesh --fsync always             Redis --appendonly yes --appendfsync always
# (`no` writes the log but leaves syncing to the OS: it separates the cost of writing
# the log from the cost of syncing it. Only the pipelined load runs it.)
#
# Loads (procmesh-bench SET of 3-byte values over KEYSPACE keys, for DURATION each):
#   SET 4 conn x 64 in flight  (the pipelined load of scripts/compare.sh)   all modes
#   SET 50 conn x 1 in flight  (many clients: group commit per loop turn)   off, everysec, always
#   SET 1 conn x 1 in flight   (one request in flight: fsync latency)       off, everysec, always
#
# Every run gets a fresh server and a fresh, empty data directory under DATA_BASE
# (the same filesystem for both systems), removed after the run. In each of ROUNDS
# rounds every (load, mode) runs against both systems back to back, procmesh first in
# odd rounds and Redis first in even ones. Placement as compare.sh's pipelined rows:
# servers (and so their fsync/bio threads) on CPU 0, clients on CPU 1.
# Compaction is on for both with the same threshold: procmesh --compact-bytes 64 MiB,
# Redis --auto-aof-rewrite-min-size 64mb (percentage 100, its default).
#
# Writes bench/results/<date>-persist.md (machine, commit, filesystem, exact commands,
# medians per mode, cost of each mode relative to the same system's `off`, ratios
# procmesh/Redis, targets) and the raw runs next to it as .jsonl. With PROFILE=1 it
# then counts the servers' syscalls per request under strace (log writes, fdatasyncs,
# socket reads/writes) for a few (load, mode) pairs. Stops every process it started
# (trap). Takes about 4 minutes on 2 vCPUs (plus the build).
#
# Environment knobs: ROUNDS (3), DURATION (2s per run), KEYSPACE (100000),
# DATA_BASE (directory holding the data dirs; default ${TMPDIR:-/tmp}), PROFILE (1),
# SKIP_BUILD (0), SNAPSHOT (0; 1 = build the committed HEAD from `git archive` so the
# results name exactly one commit), QUIET_WAIT (180 s), OUT (results file; default
# bench/results/<date>-persist.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-2s}
KEYSPACE=${KEYSPACE:-100000}
DATA_BASE=${DATA_BASE:-${TMPDIR:-/tmp}}
PROFILE=${PROFILE:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
SNAPSHOT=${SNAPSHOT:-0}
QUIET_WAIT=${QUIET_WAIT:-180}
COMPACT_BYTES=$((64 << 20))
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
DATE=$(date +%F)
OUT=${OUT:-bench/results/$DATE-persist.md}
RUNS=${OUT%.md}.jsonl
SERVER_CPU=0
CLIENT_CPU=1

BENCH_NAME=bench-persist
source "$(dirname "$0")/lib-bench.sh"

# ------------------------------------------------------------------ setup
# Build, Redis, placement; before the run and before each round (wait_quiet), wait for
# a quiet machine and say in the results how idle it was.
bench_setup persist redis-cli

mkdir -p "$DATA_BASE"
WORK=$(mktemp -d "$DATA_BASE/procmesh-persist.XXXXXX")
DATA=$WORK/data
mkdir -p "$DATA"
SERVER_PID=
started_pids() { echo "$CLIENT_PID" "$STRACE_PID" "$SERVER_PID"; }
trap_cleanup

PSOCK=$WORK/procmesh.sock
RSOCK=$WORK/redis.sock

# server_cmd SYSTEM MODE DIR: sets CMD to the server's command line.
server_cmd() {
    local sys=$1 mode=$2 dir=$3
    if [[ $sys == procmesh ]]; then
        CMD=(taskset -c "$SERVER_CPU" "$BROKER" serve --socket "$PSOCK" --max-keys 0)
        if [[ $mode != off ]]; then
            CMD+=(--persist-dir "$dir" --fsync "$mode" --compact-bytes "$COMPACT_BYTES")
        fi
    else
        CMD=(taskset -c "$SERVER_CPU" redis-server --port 0 --unixsocket "$RSOCK" --unixsocketperm 700
            --save '' --daemonize no --dir "$dir" --logfile "$WORK/redis.log")
        if [[ $mode == off ]]; then
            CMD+=(--appendonly no)
        else
            CMD+=(--appendonly yes --appendfsync "$mode" --auto-aof-rewrite-percentage 100
                --auto-aof-rewrite-min-size 64mb)
        fi
    fi
}

# start_server SYSTEM MODE DIR: starts a fresh server on DIR (sets SERVER_PID).
start_server() {
    local sys=$1 mode=$2 dir=$3
    server_cmd "$sys" "$mode" "$dir"
    if [[ $sys == procmesh ]]; then
        "${CMD[@]}" >>"$WORK/broker.log" 2>&1 &
        SERVER_PID=$!
        wait_for "procmesh broker ($mode)" "$BROKER" status --socket "$PSOCK"
    else
        "${CMD[@]}" &
        SERVER_PID=$!
        wait_for "redis-server ($mode)" redis-cli -s "$RSOCK" ping
    fi
}
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

# ------------------------------------------------------------------ the disk
# What one synced append costs on this filesystem: the floor under `always` with one
# request in flight.
dd_out=$(LC_ALL=C dd if=/dev/zero of="$DATA/ddprobe" bs=64 count=500 oflag=dsync 2>&1 | tail -1)
DSYNC_US=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "copied,") { printf "%.0f", $(i + 1) * 1e6 / 500 } }' <<<"$dd_out")
rm -f "$DATA/ddprobe"
FS_INFO=$(findmnt -no FSTYPE,SOURCE,OPTIONS -T "$DATA" 2>/dev/null | awk '{ printf "%s (%s, mounted %s)", $1, $2, $3 }')
[[ -n $FS_INFO ]] || FS_INFO=$(df -T "$DATA" | awk 'NR == 2 { printf "%s (%s)", $2, $1 }')
DEV=$(findmnt -no SOURCE -T "$DATA" 2>/dev/null | sed 's#^/dev/##; s#\[.*##')
DEV_INFO=
if [[ -n $DEV && -e /sys/class/block/$DEV ]]; then
    parent=$(basename "$(readlink -f "/sys/class/block/$DEV/..")")
    [[ -e /sys/block/$DEV ]] && parent=$DEV
    if [[ -e /sys/block/$parent/queue ]]; then
        DEV_INFO="block device $parent: rotational=$(cat "/sys/block/$parent/queue/rotational"), write cache \"$(cat "/sys/block/$parent/queue/write_cache" 2>/dev/null)\""
    fi
fi

# CPU accounting (lib-bench.sh), to say how much other processes ran during the measurements.
T0=$(date +%s.%N)
BUSY0=$(machine_busy_s)
snap_children_cpu
OURS0=$CHILD_CPU

mkdir -p "$(dirname "$OUT")"
: >"$RUNS"
TSV=$WORK/runs.tsv
: >"$TSV"
FAILS=$WORK/failures
: >"$FAILS"

# ------------------------------------------------------------------ recording
# Loads: id, label, client arguments, modes.
LOADS=(p64 c50 c1)
declare -A LOAD_LABEL=(
    [p64]="SET 4 conn x 64 in flight"
    [c50]="SET 50 conn x 1 in flight"
    [c1]="SET 1 conn x 1 in flight"
)
declare -A LOAD_ARGS=(
    [p64]="-c 4 -P 64 --threads 1"
    [c50]="-c 50 -P 1 --threads 1"
    [c1]="-c 1 -P 1 --threads 1"
)
declare -A LOAD_MODES=(
    [p64]="off no everysec always"
    [c50]="off everysec always"
    [c1]="off everysec always"
)
MODES=(off no everysec always)

# one_run LOAD MODE SYSTEM ROUND: a fresh server on a fresh data dir, one client run.
one_run() {
    local load=$1 mode=$2 sys=$3 r=$4
    local dir=$DATA/$sys-$load-$mode-$r
    rm -rf "$dir"
    mkdir -p "$dir"
    if ! start_server "$sys" "$mode" "$dir"; then
        echo "- round $r, ${LOAD_LABEL[$load]}, $mode, $sys: the server did not start (\`${CMD[*]}\`)" >>"$FAILS"
        stop_server
        rm -rf "$dir"
        return
    fi
    local server_line="${CMD[*]}"
    local sock=$PSOCK extra=()
    if [[ $sys == redis ]]; then
        sock=$RSOCK
        extra=(--target redis)
    fi
    local args
    read -ra args <<<"${LOAD_ARGS[$load]}"
    local cmd=(taskset -c "$CLIENT_CPU" "$BENCH" "${extra[@]}" --socket "$sock" -t set "${args[@]}"
        -d "$DURATION" -r "$KEYSPACE" --size 3 --json)
    local out cpu
    if client "$WORK/out" "${cmd[@]}" && out=$(<"$WORK/out") && [[ -n $out ]]; then
        # The server's CPU time (all its threads, and reaped children such as Redis's
        # rewrite child), before it stops: user and system ticks.
        cpu=$(awk '{ print $14 + $16, $15 + $17 }' "/proc/$SERVER_PID/stat" 2>/dev/null || echo "0 0")
        local row="${LOAD_LABEL[$load]}, $mode"
        local target='"ops_per_sec"'
        [[ $mode == always ]] && target='"ops_per_sec>=1"'
        printf '{"row":%s,"system":"%s","tool":"procmesh-bench","round":%d,"target":%s,"cmd":%s,"server":%s,"result":%s}\n' \
            "$(json_str "$row")" "$sys" "$r" "$target" "$(json_str "${cmd[*]}")" "$(json_str "$server_line")" "$out" >>"$RUNS"
        local ops p50 p99 errs reqs us_user us_sys
        ops=$(sed -E 's/.*"ops_per_sec":([0-9.eE+-]+).*/\1/' <<<"$out")
        reqs=$(sed -E 's/.*"requests":([0-9]+).*/\1/' <<<"$out")
        read -r us_user us_sys < <(awk -v c="$cpu" -v n="$reqs" -v hz="$CLK_TCK" \
            'BEGIN { split(c, t, " "); n = (n > 0) ? n : 1; printf "%.3f %.3f\n", t[1] / hz / n * 1e6, t[2] / hz / n * 1e6 }')
        p50=$(sed -E 's/.*"p50":([0-9.eE+-]+).*/\1/' <<<"$out")
        p99=$(sed -E 's/.*"p99":([0-9.eE+-]+).*/\1/' <<<"$out")
        errs=$(sed -E 's/.*"errors":([0-9]+).*/\1/' <<<"$out")
        printf '%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n' "$load" "$mode" "$sys" "$r" "$ops" "$p50" "$p99" "$us_user" "$us_sys" >>"$TSV"
        if [[ $errs != 0 ]]; then
            echo "- round $r, ${LOAD_LABEL[$load]}, $mode, $sys: $errs request errors" >>"$FAILS"
        fi
    else
        echo "- round $r, ${LOAD_LABEL[$load]}, $mode, $sys: \`${cmd[*]}\` failed: $(head -c 300 "$WORK/err")" >>"$FAILS"
        log "FAILED: ${cmd[*]}"
    fi
    stop_server
    rm -rf "$dir"
    # Nothing of this run left dirty in the page cache for the next one to write back.
    sync -f "$DATA" 2>/dev/null || sync
}

# The exact server command lines, for the report (data dir and socket as placeholders).
server_line_for() { # SYSTEM MODE
    server_cmd "$1" "$2" DATADIR
    local s
    s=$(printf '%q ' "${CMD[@]}")
    s=${s% }
    s=${s//$PSOCK/SOCK}
    s=${s//$RSOCK/SOCK}
    s=${s//$WORK\/redis.log/LOGFILE}
    echo "$s"
}

# ------------------------------------------------------------------ workloads
ROUND_BUSY=()
for r in $(seq "$ROUNDS"); do
    if ((r % 2 == 1)); then order=(procmesh redis); else order=(redis procmesh); fi
    # No server of ours runs between rounds: whatever is busy now is someone else.
    ((r > 1)) && wait_quiet
    ROUND_BUSY+=("$BUSY_NOW%")
    log "round $r/$ROUNDS: ${order[*]} first"
    for load in "${LOADS[@]}"; do
        for mode in ${LOAD_MODES[$load]}; do
            for sys in "${order[@]}"; do
                one_run "$load" "$mode" "$sys" "$r"
            done
        done
    done
done
other_cpu

# ------------------------------------------------------------------ syscall profile
# strace -f on the server (every thread, so the fsync/bio threads too) during one extra
# run per (load, mode, system); strace slows the servers down, so only the counts per
# request mean anything. Writes are split by their descriptor: the log file or a socket.
if strace_profile; then
    log "profile: strace -f on each server (slows it down; counts only)"
    {
        echo "| load, mode | server | requests | syscalls / request | log-file writes / request | log bytes / request | fdatasync+fsync calls | requests per sync | socket reads / request | socket writes / request | epoll_wait / request |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
    } >>"$PROFILE_MD"
    profile_one() { # LOAD MODE SYSTEM N
        local load=$1 mode=$2 sys=$3 n=$4
        local dir=$DATA/prof-$sys-$load-$mode
        rm -rf "$dir"
        mkdir -p "$dir"
        if ! start_server "$sys" "$mode" "$dir"; then
            echo "| ${LOAD_LABEL[$load]}, $mode | $sys | server did not start | | | | | | | | |" >>"$PROFILE_MD"
            stop_server
            return
        fi
        local sock=$PSOCK extra=()
        [[ $sys == redis ]] && extra=(--target redis) && sock=$RSOCK
        local st=$WORK/strace-$sys-$load-$mode.txt args
        read -ra args <<<"${LOAD_ARGS[$load]}"
        traced_client "$st" "-f -qq -y -s 0" "$SERVER_PID" taskset -c "$CLIENT_CPU" "$BENCH" "${extra[@]}" \
            --socket "$sock" -t set "${args[@]}" -n "$n" -d 10s -r "$KEYSPACE" --size 3 --json
        stop_server
        rm -rf "$dir"
        sync -f "$DATA" 2>/dev/null || sync
        local reqs=$TRACED_REQS
        if [[ -z $reqs || ! -s $st ]]; then
            echo "| ${LOAD_LABEL[$load]}, $mode | $sys | strace failed | | | | | | | | |" >>"$PROFILE_MD"
            return
        fi
        # strace -f -y lines: "PID name(FD<path>, ...) = RET", split calls as
        # "PID name(FD<path>, ... <unfinished ...>" then "PID <... name resumed>...) = RET".
        awk -v reqs="$reqs" -v label="${LOAD_LABEL[$load]}, $mode" -v sys="$sys" '
            function cls(line, name) {
                if (name ~ /^(write|writev|pwrite64|pwritev|sendto|sendmsg)$/)
                    return (line ~ /[(][0-9]+<(socket|UNIX)/) ? "sockw" : (line ~ /[(][0-9]+<\//) ? "filew" : "other"
                if (name ~ /^(read|readv|recvfrom|recvmsg)$/)
                    return (line ~ /[(][0-9]+<(socket|UNIX)/) ? "sockr" : "other"
                if (name ~ /^(fdatasync|fsync|sync_file_range)$/) return "sync"
                if (name ~ /^epoll_(p?wait|pwait2)$/) return "epoll"
                return "other"
            }
            {
                pid = $1
                if ($2 == "<...") {
                    if (pending[pid] == "filew" && match($0, /= [0-9]+$/)) bytes += substr($0, RSTART + 2)
                    delete pending[pid]
                    next
                }
                if (!match($2, /^[a-z0-9_]+[(]/)) next
                name = substr($2, 1, RLENGTH - 1)
                c = cls($0, name)
                total++; n[c]++
                if ($0 ~ /<unfinished [.][.][.]>$/) { pending[pid] = c; next }
                if (c == "filew" && match($0, /= [0-9]+$/)) bytes += substr($0, RSTART + 2)
            }
            END {
                per_sync = n["sync"] > 0 ? sprintf("%.1f", reqs / n["sync"]) : "–"
                printf "| %s | %s | %d | %.3f | %.4f | %.1f | %d | %s | %.3f | %.3f | %.3f |\n",
                    label, sys, reqs, total / reqs, n["filew"] / reqs, bytes / reqs, n["sync"], per_sync,
                    n["sockr"] / reqs, n["sockw"] / reqs, n["epoll"] / reqs
            }' "$st" >>"$PROFILE_MD"
    }
    for sys in procmesh redis; do
        profile_one p64 everysec "$sys" 300000
        profile_one p64 always "$sys" 100000
        profile_one c50 always "$sys" 30000
        profile_one c1 always "$sys" 3000
    done
fi

# ------------------------------------------------------------------ report
# med LOAD MODE SYSTEM COLUMN (5 ops, 6 p50, 7 p99, 8 user µs/request, 9 system µs/request):
# median over the rounds, or empty.
med() {
    awk -F'\t' -v l="$1" -v m="$2" -v s="$3" -v c="$4" '
        $1 == l && $2 == m && $3 == s { v[++n] = $c + 0 }
        END {
            if (n == 0) exit
            for (i = 2; i <= n; i++) { x = v[i]; j = i - 1; while (j > 0 && v[j] > x) { v[j + 1] = v[j]; j-- } v[j + 1] = x }
            printf "%.6f", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }' "$TSV"
}
thousands() { awk -v x="$1" 'BEGIN { s = sprintf("%.0f", x); o = ""; while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) } print s o }'; }
# cost OPS OFF: throughput lost relative to off, in percent (negative: faster).
cost() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

TABLE=$WORK/table.md
TARGETS=$WORK/targets.md
CPU_TABLE=$WORK/cpu.md
{
    echo "| load | mode | procmesh user + sys µs / request | procmesh extra vs its off | Redis user + sys µs / request | Redis extra vs its off |"
    echo "|---|---|---|---|---|---|"
} >"$CPU_TABLE"
cpu_cell() { # LOAD MODE SYSTEM: "u + s = t"
    local u s
    u=$(med "$1" "$2" "$3" 8)
    s=$(med "$1" "$2" "$3" 9)
    [[ -z $u ]] && { echo –; return; }
    awk -v u="$u" -v s="$s" 'BEGIN { printf "%.3f + %.3f = %.3f", u, s, u + s }'
}
cpu_extra() { # LOAD MODE SYSTEM: total minus the off total, in µs
    local t o
    t=$(awk -v u="$(med "$1" "$2" "$3" 8)" -v s="$(med "$1" "$2" "$3" 9)" 'BEGIN { print u + s }')
    o=$(awk -v u="$(med "$1" off "$3" 8)" -v s="$(med "$1" off "$3" 9)" 'BEGIN { print u + s }')
    awk -v t="$t" -v o="$o" 'BEGIN { if (o > 0) printf "%+.3f µs (%+.0f%%)", t - o, (t / o - 1) * 100; else print "–" }'
}
{
    echo "| load | mode | procmesh ops/s | procmesh cost vs its off | Redis ops/s | Redis cost vs its off | procmesh / Redis | p50 µs procmesh / Redis | p99 µs procmesh / Redis |"
    echo "|---|---|---|---|---|---|---|---|---|"
} >"$TABLE"
{
    echo "| target | load | value | verdict |"
    echo "|---|---|---|---|"
} >"$TARGETS"
for load in "${LOADS[@]}"; do
    p_off=$(med "$load" off procmesh 5)
    r_off=$(med "$load" off redis 5)
    for mode in ${LOAD_MODES[$load]}; do
        p=$(med "$load" "$mode" procmesh 5)
        rd=$(med "$load" "$mode" redis 5)
        pc=– rc=– rt=– pv=– rv=–
        [[ -n $p ]] && pv=$(thousands "$p")
        [[ -n $rd ]] && rv=$(thousands "$rd")
        if [[ $mode != off ]]; then
            [[ -n $p && -n $p_off ]] && pc="$(cost "$p" "$p_off")%"
            [[ -n $rd && -n $r_off ]] && rc="$(cost "$rd" "$r_off")%"
        fi
        [[ -n $p && -n $rd ]] && rt="$(ratio "$p" "$rd")×"
        p50s=– p99s=–
        if [[ -n $p && -n $rd ]]; then
            p50s="$(printf '%.0f / %.0f' "$(med "$load" "$mode" procmesh 6)" "$(med "$load" "$mode" redis 6)")"
            p99s="$(printf '%.0f / %.0f' "$(med "$load" "$mode" procmesh 7)" "$(med "$load" "$mode" redis 7)")"
        fi
        echo "| ${LOAD_LABEL[$load]} | $mode | $pv | $pc | $rv | $rc | $rt | $p50s | $p99s |" >>"$TABLE"
        pe=– re=–
        if [[ $mode != off ]]; then
            pe=$(cpu_extra "$load" "$mode" procmesh)
            re=$(cpu_extra "$load" "$mode" redis)
        fi
        echo "| ${LOAD_LABEL[$load]} | $mode | $(cpu_cell "$load" "$mode" procmesh) | $pe | $(cpu_cell "$load" "$mode" redis) | $re |" >>"$CPU_TABLE"
        # Targets: procmesh everysec costs at most 15% of procmesh off; procmesh always >= Redis always.
        if [[ $mode == everysec && -n $p && -n $p_off ]]; then
            c=$(cost "$p" "$p_off")
            v=$(awk -v c="$c" 'BEGIN { print (c <= 15) ? "met" : sprintf("**missed** (%.1f points over)", c - 15) }')
            echo "| procmesh everysec costs ≤ 15% of procmesh off | ${LOAD_LABEL[$load]} | costs $c% ($pv vs $(thousands "$p_off") ops/s) | $v |" >>"$TARGETS"
        fi
        if [[ $mode == always && -n $p && -n $rd ]]; then
            x=$(ratio "$p" "$rd")
            v=$(awk -v x="$x" 'BEGIN { print (x >= 1) ? "met" : sprintf("**missed by %.0f%%**", (1 - x) * 100) }')
            echo "| procmesh always ≥ Redis always | ${LOAD_LABEL[$load]} | $x× ($pv vs $rv ops/s) | $v |" >>"$TARGETS"
        fi
    done
done

machine_facts
{
    echo "# procmesh vs Redis with persistence — $DATE"
    echo
    echo "Written by \`scripts/bench-persist.sh\` (ROUNDS=$ROUNDS, DURATION=$DURATION per run). SET of 3-byte"
    echo "values over $KEYSPACE keys. Medians of $ROUNDS rounds; in each round every (load, mode) ran"
    echo "against both systems back to back, procmesh first in odd rounds and Redis first in even"
    echo "ones, each run on a fresh server with a fresh, empty data directory. \"Cost vs its off\""
    echo "is the throughput a system loses in that mode relative to its own \`off\` in the same load"
    echo "(negative: faster). Ratios are procmesh / Redis from this same run."
    echo
    echo "## Machine and build"
    echo
    echo "- commit \`$COMMIT\`$( ((DIRTY > 0)) && echo " (+ $DIRTY uncommitted files under broker/ proto/ bench/)")$([[ $SNAPSHOT == 1 ]] && echo " (built from \`git archive\` of that commit)")"
    echo "- CPU: $CPU_MODEL, $(nproc) cores (vCPUs); $(uname -sr); $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)"
    echo "- data directories: under \`$DATA\` on $FS_INFO${DEV_INFO:+; $DEV_INFO}"
    echo "- one 64-byte O_DSYNC append on that filesystem: ${DSYNC_US:-?} µs (\`dd if=/dev/zero of=DATADIR/ddprobe bs=64 count=500 oflag=dsync\`), so"
    echo "  one request in flight under \`always\` cannot exceed ~$(awk -v u="${DSYNC_US:-0}" 'BEGIN { if (u > 0) printf "%.0f", 1e6 / u; else print "?" }') ops/s on either system"
    echo "- $(redis-server --version | head -1)"
    echo "- $(rustc --version 2>/dev/null || echo rustc unknown); release profile"
    echo "- other load: CPU ${BUSY_BEFORE}% busy just before the run, ${ROUND_BUSY[*]} before each round (waited ${waited} s in all for quiet); load average $LOAD_BEFORE before, $LOAD_AFTER after;"
    echo "  processes other than ours used $OTHER_CPU (our servers and clients excluded; kernel writeback threads count as other)"
    echo
    echo "## Placement and exact commands"
    echo
    echo "- Servers on CPU $SERVER_CPU (\`taskset -c $SERVER_CPU\`, inherited by their fsync/bio threads), clients on CPU $CLIENT_CPU, as compare.sh's pipelined rows."
    echo "- A fresh data directory per run (DATADIR below, removed after the run, then \`sync -f\`), a fresh server per run (SIGTERM at the end)."
    echo "- Servers, per mode:"
    for mode in "${MODES[@]}"; do
        echo "  - $mode: \`$(server_line_for procmesh "$mode")\`"
        echo "    and \`$(server_line_for redis "$mode")\`"
    done
    echo "- Clients: \`taskset -c $CLIENT_CPU $BENCH [--target redis] --socket SOCK -t set LOAD -d $DURATION -r $KEYSPACE --size 3 --json\`"
    echo "  with LOAD one of: $(for l in "${LOADS[@]}"; do printf '`%s` (%s); ' "${LOAD_ARGS[$l]}" "${LOAD_LABEL[$l]}"; done | sed 's/; $//')."
    echo "  procmesh-bench speaks RESP to Redis, so both systems face the identical client."
    echo
    echo "## Results (medians of the rounds)"
    echo
    cat "$TABLE"
    echo
    echo "### Server CPU per request (medians of the rounds)"
    echo
    echo "User and system CPU time of the server process (every thread, and reaped children such as"
    echo "Redis's AOF-rewrite child) from /proc/PID/stat at the end of each run, divided by the"
    echo "requests served (${CLK_TCK} Hz ticks: coarse for the slow rows). Kernel work done by other threads"
    echo "(writeback workers, jbd2) is not included. With one request in flight the servers mostly wait."
    echo
    cat "$CPU_TABLE"
    echo
    echo "### Targets (reported, not enforced)"
    echo
    cat "$TARGETS"
    failed_runs
    if [[ -s $PROFILE_MD ]]; then
        echo
        echo "## Syscalls per request (strace -f on the server, one extra run each)"
        echo
        echo "Counts only (strace slows the servers down). \"log-file writes\": write/writev/pwrite on a file"
        echo "descriptor (the log; Redis writes its AOF with write(2) like its replies, told apart here by the"
        echo "descriptor); \"socket reads/writes\": read/recvfrom and write/sendto on sockets; syncs of every"
        echo "thread (procmesh's fsync thread, Redis's bio thread) are included."
        echo
        cat "$PROFILE_MD"
    fi
    echo
    echo "## All runs (\`procmesh-bench report\` of the .jsonl)"
    echo
    "$BENCH" report "$RUNS" | sed -n '/^### Every measurement/,$p'
} >"$OUT"
log "wrote $OUT and $RUNS"
