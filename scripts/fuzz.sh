#!/usr/bin/env bash
# Time-boxed fuzzing of procmesh-proto's hand-written codecs.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#
# Which fuzzer: the structure-aware proptest properties in proto/tests/fuzz.rs
# (`fuzz_*`) and proto/tests/differential.rs, run with a huge case count and cut
# off by `timeout` after SECONDS_PER_TARGET each. A coverage-guided fuzzer does not
# run on the project's stable toolchain: cargo-fuzz (libFuzzer) needs nightly's
# `-Zsanitizer`, and cargo-afl needs AFL++ built with clang's LLVM plugins, which
# this machine does not have (checked 2026-12: no clang; a nightly toolchain is
# present here but is not the project's toolchain nor on every machine).
# The properties assert invariants, not just "no crash": frame ranges inside the
# buffer, decoded fields inside the payload and valid on their own, the nesting
# limit, re-encode/decode agreement, frames recovered exactly from a stream split
# at arbitrary points, and agreement with serde_json / rmp / rmp-serde.
#
# CI's short run is the default case count, as part of `cargo test --workspace`.
# A failure prints the minimal (shrunk) input; turn it into a named regression test
# next to the property.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
# Optimised, with debug assertions and overflow checks kept, in a target dir of
# its own so the warm debug build is not invalidated.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/fuzz"
export CARGO_PROFILE_DEV_OPT_LEVEL=2
export CARGO_PROFILE_DEV_DEBUG_ASSERTIONS=true
export CARGO_PROFILE_DEV_OVERFLOW_CHECKS=true
export PROPTEST_CASES=100000000
export PROPTEST_MAX_SHRINK_ITERS="${PROPTEST_MAX_SHRINK_ITERS:-4096}"

failed=0
for suite in fuzz differential; do
    bin=$(cargo test -p procmesh-proto --test "$suite" --no-run --message-format=json 2>/dev/null |
        grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
    if [[ -z "$bin" ]]; then
        echo "fuzz.sh: could not build the $suite tests" >&2
        exit 2
    fi
    # Every property of the suite (fixed tests are skipped: they do not take cases).
    targets=$("$bin" --list 2>/dev/null | sed -n 's/: test$//p' |
        grep -E '^(fuzz_|json_|msgpack_)' | grep -vE '^(json_nesting|msgpack_forms_golden|documented_)' || true)
    for t in $targets; do
        printf '%-50s ' "$suite::$t"
        set +e
        timeout --signal=INT "$secs" "$bin" --exact "$t" --test-threads 1 >"$CARGO_TARGET_DIR/$t.log" 2>&1
        rc=$?
        set -e
        case $rc in
            0) echo "ok (all cases passed)" ;;
            124 | 130) echo "ok (${secs}s time box, no failure)" ;;
            *)
                echo "FAILED (exit $rc), log: $CARGO_TARGET_DIR/$t.log"
                grep -E 'minimal failing input|Test failed' -A20 "$CARGO_TARGET_DIR/$t.log" | head -n 40
                failed=1
                ;;
        esac
    done
done
exit $failed
