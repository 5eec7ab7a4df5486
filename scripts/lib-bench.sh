# shellcheck shell=bash
# Setup shared by the benchmark scripts (compare.sh, bench-persist.sh, bench-shards.sh).
# Source it after `set -euo pipefail` and `cd "$ROOT"`:
#
#     source "$(dirname "$0")/lib-bench.sh"
#
# Functions read the caller's settings (BENCH_NAME, SNAPSHOT, SKIP_BUILD, QUIET_WAIT,
# WORK, ...) as noted on each; nothing here runs on its own.

# log MESSAGE...: "[BENCH_NAME hh:mm:ss] MESSAGE" on stderr.
log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%T)" "$*" >&2; }

# bench_targets SNAPSHOT_DIR: sets TARGET_DIR (target, or target/SNAPSHOT_DIR with
# SNAPSHOT=1), BENCH and BROKER.
bench_targets() {
    TARGET_DIR=target
    if [[ $SNAPSHOT == 1 ]]; then
        TARGET_DIR=target/$1
    fi
    BENCH=$TARGET_DIR/release/procmesh-bench
    BROKER=$TARGET_DIR/release/procmesh
}

# bench_build SRC_NAME: sets COMMIT (taken before building: other people may commit
# while a benchmark runs), then unless SKIP_BUILD=1 builds procmesh-broker and
# procmesh-bench in release into TARGET_DIR: with SNAPSHOT=1 from `git archive` of
# COMMIT (unpacked in /tmp/procmesh-SRC_NAME-src.XXXXXX), else the working tree.
bench_build() {
    COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    if [[ $SKIP_BUILD != 1 ]]; then
        if [[ $SNAPSHOT == 1 ]]; then
            log "building release binaries of HEAD $COMMIT (git archive)"
            local src
            src=$(mktemp -d "/tmp/procmesh-$1-src.XXXXXX")
            git archive "$COMMIT" | tar -x -C "$src"
            CARGO_TARGET_DIR="$ROOT/$TARGET_DIR" cargo build --release --manifest-path "$src/Cargo.toml" \
                -p procmesh-broker -p procmesh-bench >&2
            rm -rf "$src"
        else
            log "building release binaries of the working tree"
            cargo build --release -p procmesh-broker -p procmesh-bench >&2
        fi
    fi
}

# ensure_redis TOOL: installs redis-server and redis-tools with apt-get unless
# redis-server and TOOL (redis-cli, redis-benchmark) are both on PATH.
ensure_redis() {
    if ! command -v redis-server >/dev/null || ! command -v "$1" >/dev/null; then
        log "installing redis-server and redis-tools"
        apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools >&2
    fi
}

# one_cpu_placement: with a single CPU, puts servers and clients (SERVER_CPU,
# CLIENT_CPU) on CPU 0.
one_cpu_placement() {
    if [[ $(nproc) -lt 2 ]]; then
        SERVER_CPU=0
        CLIENT_CPU=0
        log "one CPU only: every process shares CPU 0"
    fi
}

# Other work on these 2 vCPUs (someone's cargo build) moves results by 2x: wait up to
# QUIET_WAIT seconds for a 2-second window with at least 90% idle CPU, and say in the
# results how idle it was.
busy_pct() { # percent of all CPU time busy over 2 seconds
    local a b
    a=($(head -1 /proc/stat))
    sleep 2
    b=($(head -1 /proc/stat))
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    local idle=$((b[4] - a[4] + b[5] - a[5]))
    echo $(((total - idle) * 100 / (total > 0 ? total : 1)))
}
waited=0
# wait_quiet [WHAT]: sets BUSY_NOW; adds the seconds waited to `waited`. WHAT ends the
# log line while waiting (default "waiting for it to settle").
wait_quiet() {
    local w=0
    BUSY_NOW=$(busy_pct)
    while ((BUSY_NOW > 10 && w < QUIET_WAIT)); do
        log "machine ${BUSY_NOW}% busy with other work; ${1:-waiting for it to settle}"
        sleep 8
        w=$((w + 10))
        BUSY_NOW=$(busy_pct)
    done
    waited=$((waited + w))
}

# trap_cleanup: on exit, stops (SIGTERM, then waits for) every process that the
# caller's `started_pids` prints, then removes $WORK; INT and TERM exit with 130.
cleanup() {
    local pid pids
    pids=($(started_pids))
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap_cleanup() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# client OUTFILE COMMAND...: runs a benchmark client in the background and waits for it,
# so that a signal to this script is handled at once (bash runs traps only between
# foreground commands, but interrupts `wait`). Its stderr goes to $WORK/err.
CLIENT_PID=
client() {
    local out=$1
    shift
    "$@" >"$out" 2>"$WORK/err" &
    CLIENT_PID=$!
    local rc=0
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=
    return "$rc"
}

# strace_profile: sets PROFILE_MD to an empty file in $WORK for the syscall profile;
# true when it is to be filled (PROFILE=1 and strace is installed).
strace_profile() {
    PROFILE_MD=$WORK/profile.md
    : >"$PROFILE_MD"
    [[ $PROFILE == 1 ]] && command -v strace >/dev/null
}
# traced_client STRACE_OUT "STRACE_OPTIONS" PID COMMAND...: traces PID with strace
# (OPTIONS word-split; STRACE_PID while it runs) into STRACE_OUT while the benchmark
# client COMMAND... (which prints --json) runs; sets TRACED_REQS to the requests the
# client reports, empty if it failed.
STRACE_PID=
traced_client() {
    local st=$1 opts pid=$3
    read -ra opts <<<"$2"
    shift 3
    strace "${opts[@]}" -p "$pid" -o "$st" 2>/dev/null &
    STRACE_PID=$!
    sleep 0.5
    local out='{}'
    if client "$WORK/out" "$@"; then
        out=$(<"$WORK/out")
    fi
    kill -INT "$STRACE_PID" 2>/dev/null || true
    wait "$STRACE_PID" 2>/dev/null || true
    STRACE_PID=
    TRACED_REQS=$(grep -o '"requests":[0-9]*' <<<"$out" | cut -d: -f2)
}

wait_for() { # DESCRIPTION COMMAND...: retries for up to 10 s
    local what=$1
    shift
    for _ in $(seq 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "$what did not come up"
    return 1
}

# CPU accounting, to say how much other processes ran during the measurements:
# machine-wide busy time (/proc/stat) minus our servers' and our reaped children's.
machine_busy_s() {
    awk 'NR == 1 { busy = 0; for (i = 2; i <= 8; i++) if (i != 5 && i != 6) busy += $i; printf "%.2f", busy / 100 }' /proc/stat
}
snap_children_cpu() { # sets CHILD_CPU: user + sys of every child this shell has reaped
    times >"$WORK/times" # in this shell: a subshell would only see its own children
    CHILD_CPU=$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%.2f", t }' "$WORK/times")
}
pid_cpu_s() { # PID...: user + sys of running processes
    local pid sum=0
    for pid in "$@"; do
        sum=$(awk -v s="$sum" '{ printf "%.2f", s + ($14 + $15) / 100 }' "/proc/$pid/stat" 2>/dev/null || echo "$sum")
    done
    echo "$sum"
}
# other_cpu [PID...]: after the measurements, sets LOAD_AFTER and OTHER_CPU, the CPU
# time used by processes other than ours since T0/BUSY0/OURS0 were taken (ours: reaped
# children, plus the running PIDs).
other_cpu() {
    LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
    snap_children_cpu
    OTHER_CPU=$(awk -v t0="$T0" -v t1="$(date +%s.%N)" -v b0="$BUSY0" -v b1="$(machine_busy_s)" \
        -v o0="$OURS0" -v c="$CHILD_CPU" -v p="$(pid_cpu_s "$@")" \
        'BEGIN { other = (b1 - b0) - (c + p - o0); if (other < 0) other = 0
                 printf "%.1f CPU-seconds (%.0f%% of one core) over the %.0f s of measurements", other, 100 * other / (t1 - t0), t1 - t0 }')
}

json_str() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }

# machine_facts: sets DIRTY (files changed under broker/ proto/ bench/; 0 with
# SNAPSHOT=1, which builds the commit) and CPU_MODEL, for the report.
machine_facts() {
    DIRTY=0
    if [[ $SNAPSHOT != 1 ]]; then
        DIRTY=$(git status --porcelain -- broker proto bench 2>/dev/null | wc -l)
    fi
    CPU_MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
}

# bench_setup NAME REDIS_TOOL: the common start of compare.sh and bench-persist.sh:
# TARGET_DIR/BENCH/BROKER (snapshot builds in target/NAME-snapshot), COMMIT and the
# release build, Redis installed (with REDIS_TOOL), CPU placement, then a wait for a
# quiet machine; sets BUSY_BEFORE and LOAD_BEFORE.
bench_setup() {
    bench_targets "$1-snapshot"
    bench_build "$1"
    ensure_redis "$2"
    one_cpu_placement
    wait_quiet
    BUSY_BEFORE=$BUSY_NOW
    LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
}

# failed_runs: the report's "Failed runs" section, when $FAILS lists any.
failed_runs() {
    if [[ -s $FAILS ]]; then
        echo
        echo "### Failed runs"
        echo
        cat "$FAILS"
    fi
}

# ------------------------------------------------------------------ callgrind (icount.sh)

# ensure_valgrind: installs valgrind with apt-get unless valgrind and callgrind_control
# are both on PATH.
ensure_valgrind() {
    if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
        log "installing valgrind"
        apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind >&2
    fi
}

# wait_for_s SECONDS DESCRIPTION COMMAND...: wait_for with a longer limit (a server under
# valgrind takes seconds to start).
wait_for_s() {
    local secs=$1 what=$2
    shift 2
    local i
    for ((i = 0; i < secs * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "$what did not come up in $secs s"
    return 1
}

# callgrind_total FILE: the instruction total (Ir) of a callgrind out file, from its
# `summary:` line (or `totals:` when there is none); empty when neither is there.
callgrind_total() {
    awk '/^summary:/ { s = $2 } /^totals:/ { t = $2 } END { if (s != "") print s; else if (t != "") print t }' "$1"
}
