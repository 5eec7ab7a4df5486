#!/usr/bin/env bash
# Installs redis-server and redis-cli from the OS packages when redis-server is
# missing, for the Redis backend tests (client feature `redis`, issue 14).
# Run by .ci/run before the tests, which then run with PROCMESH_REQUIRE_REDIS=1.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  echo "redis: $(redis-server --version)"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq redis-server redis-tools >/dev/null
# The package may start a system service; the tests start their own servers.
echo "redis: $(redis-server --version)"
