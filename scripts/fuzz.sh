#!/usr/bin/env bash
# Fuzz every target of src/fuzz.rs for FUZZ_SECONDS each (default 20: all seven in about two and a
# half minutes, plus the build, which reuses the test build) with the stable driver (tests/fuzz.rs).
# Prints executions per target; exits non-zero on any failure, with the failing input saved under
# FUZZ_OUT (default $CARGO_TARGET_DIR/tmp/fuzz-failures) and the command that reproduces it.
# Longer by hand: FUZZ_SECONDS=600 scripts/fuzz.sh [TARGET…]; a fixed seed: FUZZ_SEED=N.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
export FUZZ_OUT="${FUZZ_OUT:-$CARGO_TARGET_DIR/tmp/fuzz-failures}"
mkdir -p "$FUZZ_OUT"

started=$(date +%s)
rc=0
cargo test --test fuzz -- "$@" || rc=$?
if [ "$rc" != 0 ]; then
  # A stack overflow aborts the driver before it can report: the input it was running is left as
  # TARGET.current.
  for f in "$FUZZ_OUT"/*.current; do
    [ -e "$f" ] || continue
    target=$(basename "$f" .current)
    kept="$FUZZ_OUT/$target-aborted-$(date +%s).crash"
    mv "$f" "$kept"
    echo "fuzz: $target: the driver died on $kept (reproduce: FUZZ_REPRO=$kept cargo test --test fuzz -- $target)"
  done
  echo "fuzz: FAILED (exit $rc) after $(( $(date +%s) - started )) s"
  exit 1
fi
echo "fuzz: all targets passed in $(( $(date +%s) - started )) s"
