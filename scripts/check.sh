#!/usr/bin/env bash
# What CI runs (.ci/run): fmt --check, clippy -D warnings on all targets, all tests.
exec "$(dirname "$0")/../.ci/run"
