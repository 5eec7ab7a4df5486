#!/usr/bin/env bash
# Throughput of procmesh-js's client (bench.mjs) against our release broker and against
# procmesh-js's own broker, in both codecs, ROUNDS rounds alternating the broker order, with
# the Node client's CPU and the broker's CPU (utime+stime from /proc/PID/stat over the
# measured window). Prints every run as a JSON line, then a Markdown table of medians (ranges).
#
#   PROCMESH_JS=/path/to/procmesh-js scripts/node-interop/bench.sh [our-broker-binary]
#
# Default binary: target/release/procmesh (`cargo build --release -p procmesh-broker`).
# Environment: SECONDS_PER_RUN (default 2), ROUNDS (3), CODECS ("json msgpack"),
# MODES ("1 50 burst1000"), OPS ("get set"), OUT (file for the JSON lines; default a temp file).
set -euo pipefail

src="${BASH_SOURCE[0]}"
[[ "$src" == */* ]] || src="./$src"
here="$(cd "${src%/*}" && pwd)"
root="$(cd "$here/../.." && pwd)"
ours="${1:-$root/target/release/procmesh}"

if ! command -v node >/dev/null 2>&1; then
  echo "SKIP: node is not on the PATH"
  exit 0
fi
if [[ -z "${PROCMESH_JS:-}" || ! -f "${PROCMESH_JS}/src/index.js" ]]; then
  echo "SKIP: set PROCMESH_JS to a procmesh-js checkout (src/index.js, after npm install there)"
  exit 0
fi
if [[ ! -x "$ours" ]]; then
  echo "not an executable: $ours (cargo build --release -p procmesh-broker)" >&2
  exit 2
fi

secs="${SECONDS_PER_RUN:-2}"
rounds="${ROUNDS:-3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/procmesh-bench.XXXXXX")"
out="${OUT:-$work/runs.jsonl}"
: >"$out"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Wait until something accepts connections on the socket (bounded).
wait_listening() { # <socket>
  node -e '
    const net = require("net");
    const sock = process.argv[1];
    const deadline = Date.now() + 10000;
    const attempt = () => {
      const s = net.connect(sock);
      s.once("connect", () => { s.destroy(); process.exit(0); });
      s.once("error", () => {
        if (Date.now() > deadline) { console.error("broker did not listen on " + sock); process.exit(1); }
        setTimeout(attempt, 20);
      });
    };
    attempt();
  ' "$1"
}

start_broker() { # <ours|node> <codec> <socket> <log>
  if [[ "$1" == node ]]; then
    PROCMESH_BROKER_OPTS="{\"address\":\"$3\",\"codec\":\"$2\",\"idleTimeout\":0}" \
      node "${PROCMESH_JS}/src/broker-bin.js" >"$4" 2>&1 &
  else
    # Our broker detects each connection's codec from its first frame.
    "$ours" serve --socket "$3" --max-keys 0 >"$4" 2>&1 &
  fi
  pid=$!
}

stop_broker() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}

echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg); node $(node --version)"
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then order="ours node"; else order="node ours"; fi
  for broker in $order; do
    for codec in ${CODECS:-json msgpack}; do
      sock="$work/$broker-$codec.sock"
      log="$work/$broker-$codec.log"
      start_broker "$broker" "$codec" "$sock" "$log"
      if ! wait_listening "$sock"; then
        sed 's/^/   broker: /' "$log" >&2
        exit 1
      fi
      for mode in ${MODES:-1 50 burst1000}; do
        for op in ${OPS:-get set}; do
          line="$(BROKER_PID="$pid" PROCMESH_JS="$PROCMESH_JS" \
            node "$here/bench.mjs" "$sock" "$codec" "$mode" "$op" "$secs")"
          line="{\"round\":$r,\"broker\":\"$broker\",${line#\{}"
          echo "$line" | tee -a "$out"
        done
      done
      stop_broker
    done
  done
done

# Medians (min–max) per broker × codec × mode × op.
node -e '
  const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
  const groups = new Map();
  for (const l of lines) {
    const k = [l.broker, l.codec, l.mode, l.op].join("|");
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(l);
  }
  const med = (xs) => { const s = [...xs].sort((a, b) => a - b); const n = s.length;
    return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2; };
  const rng = (xs) => `${Math.min(...xs)}–${Math.max(...xs)}`;
  const cell = (xs, d = 0) => `${+med(xs).toFixed(d)} (${rng(xs.map((x) => +x.toFixed(d)))})`;
  console.log("| broker | codec | mode | op | ops/s median (range) | Node client CPU % | broker CPU % | broker CPU µs/request |");
  console.log("|---|---|---|---|---|---|---|---|");
  for (const [k, g] of groups) {
    const [b, c, m, o] = k.split("|");
    console.log(`| ${b} | ${c} | ${m} | ${o} | ${cell(g.map((x) => x.opsPerSec))} | ${cell(g.map((x) => x.nodeCpuPct))} | ${cell(g.map((x) => x.brokerCpuPct))} | ${cell(g.map((x) => x.brokerUsPerReq), 1)} |`);
  }
' "$out"
