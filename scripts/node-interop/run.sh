#!/usr/bin/env bash
# Run scenario.mjs (procmesh-js's client) against a broker, once per codec.
#
#   PROCMESH_JS=/path/to/procmesh-js scripts/node-interop/run.sh <broker>
#
# <broker> is our broker binary (e.g. target/debug/procmesh; run as `<broker> serve --socket S`)
# or the word `node` for procmesh-js's own broker ($PROCMESH_JS/src/broker-bin.js).
# Environment:
#   PROCMESH_JS   procmesh-js checkout with node_modules (required; skip without it)
#   CODECS        codecs to run, default "json msgpack"
#   XFAIL_011=1   report procmesh-js 0.1.1 checks that fail as XFAIL, not FAIL
#   BROKER_OPTS   extra PROCMESH_BROKER_OPTS JSON object merged into the default
#                 {"idleTimeout":0,"pubsub":{"persist":true,"retention":100}}
# Exit status: 0 when every run passed (or skipped), 1 otherwise.
set -euo pipefail

src="${BASH_SOURCE[0]}"
[[ "$src" == */* ]] || src="./$src"
here="$(cd "${src%/*}" && pwd)"
broker="${1:-}"

if ! command -v node >/dev/null 2>&1; then
  echo "SKIP: node is not on the PATH"
  exit 0
fi
if [[ -z "${PROCMESH_JS:-}" || ! -f "${PROCMESH_JS}/src/index.js" ]]; then
  echo "SKIP: set PROCMESH_JS to a procmesh-js checkout (src/index.js, after npm install there)"
  exit 0
fi
if [[ -z "$broker" ]]; then
  echo "usage: PROCMESH_JS=... $0 <broker binary | node>" >&2
  exit 2
fi
if [[ "$broker" != node && ! -x "$broker" ]]; then
  echo "not an executable: $broker" >&2
  exit 2
fi
if [[ "$broker" == node && ! -d "${PROCMESH_JS}/node_modules/msgpackr" ]]; then
  echo "note: ${PROCMESH_JS}/node_modules/msgpackr is missing; the msgpack run will fail" >&2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/procmesh-interop.XXXXXX")"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Merge BROKER_OPTS into the default options with node (no jq needed).
opts_for() { # <socket> <codec>
  node -e '
    const [sock, codec, extra] = process.argv.slice(1);
    const o = { idleTimeout: 0, pubsub: { persist: true, retention: 100 } };
    if (extra) Object.assign(o, JSON.parse(extra));
    if (process.env.FOR_NODE === "1") Object.assign(o, { address: sock, codec });
    process.stdout.write(JSON.stringify(o));
  ' "$1" "$2" "${BROKER_OPTS:-}"
}

# Wait until something accepts connections on the socket (bounded), or the broker exits.
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

status=0
for codec in ${CODECS:-json msgpack}; do
  sock="$work/$codec.sock"
  log="$work/$codec-broker.log"
  if [[ "$broker" == node ]]; then
    opts="$(FOR_NODE=1 opts_for "$sock" "$codec")"
    PROCMESH_BROKER_OPTS="$opts" node "${PROCMESH_JS}/src/broker-bin.js" >"$log" 2>&1 &
  else
    opts="$(opts_for "$sock" "$codec")"
    PROCMESH_BROKER_OPTS="$opts" "$broker" serve --socket "$sock" --no-persist >"$log" 2>&1 &
  fi
  pid=$!
  echo "== $codec: broker $broker (pid $pid), PROCMESH_BROKER_OPTS=$opts"
  if ! wait_listening "$sock"; then
    echo "FAIL [$codec] broker start"
    sed 's/^/   broker: /' "$log"
    status=1
  elif ! PROCMESH_JS="$PROCMESH_JS" node "$here/scenario.mjs" "$sock" "$codec"; then
    status=1
  fi
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  else
    wait "$pid" 2>/dev/null || true
    echo "note: the broker had exited; its output:"
    sed 's/^/   broker: /' "$log"
  fi
  pid=""
done
exit "$status"
