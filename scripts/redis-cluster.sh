#!/usr/bin/env bash
# A three-node Redis Cluster on loopback ports (no replicas) for the Redis
# backend (client feature `redis`, issue 14).
#
#   scripts/redis-cluster.sh up     # start it; prints PROCMESH_REDIS_CLUSTER=<seeds>
#   scripts/redis-cluster.sh down   # stop it and remove its files
#   scripts/redis-cluster.sh test   # up, run the cluster test against it, down
#
# Ports: REDIS_CLUSTER_PORT (default 7100) and the next two; each node's
# cluster bus is its port + 10000. Files live in REDIS_CLUSTER_DIR
# (default ${TMPDIR:-/tmp}/procmesh-redis-cluster).
set -euo pipefail
cmd="${1:-test}"
base="${REDIS_CLUSTER_PORT:-7100}"
dir="${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/procmesh-redis-cluster}"
ports=("$base" "$((base + 1))" "$((base + 2))")
here="$(cd "$(dirname "$0")/.." && pwd)"

seeds() {
  local s=""
  for p in "${ports[@]}"; do s+="${s:+,}redis://127.0.0.1:$p/"; done
  echo "$s"
}

up() {
  command -v redis-server >/dev/null || { echo "redis-server missing: scripts/ci-install-redis.sh" >&2; exit 1; }
  mkdir -p "$dir"
  for p in "${ports[@]}"; do
    mkdir -p "$dir/$p"
    redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
      --cluster-config-file "$dir/$p/nodes.conf" --dir "$dir/$p" \
      --save "" --appendonly no --daemonize yes --pidfile "$dir/$p/redis.pid" \
      --logfile "$dir/$p/redis.log"
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 1 200); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
  done
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes
  for p in "${ports[@]}"; do
    for _ in $(seq 1 200); do
      redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break
      sleep 0.05
    done
  done
  echo "PROCMESH_REDIS_CLUSTER=$(seeds)"
}

down() {
  for p in "${ports[@]}"; do
    if [ -f "$dir/$p/redis.pid" ]; then
      kill "$(cat "$dir/$p/redis.pid")" 2>/dev/null || true
    fi
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 || break; sleep 0.05; done
  done
  rm -rf "$dir"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  test)
    trap down EXIT
    up
    cd "$here"
    PROCMESH_REDIS_CLUSTER="$(seeds)" PROCMESH_REQUIRE_REDIS=1 \
      cargo test -p procmesh --features redis --test it redis_cluster -- --nocapture
    ;;
  *) echo "usage: $0 up|down|test" >&2; exit 2 ;;
esac
