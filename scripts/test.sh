#!/usr/bin/env bash
# The full test suite, as CI runs it: starts real Apache Kafka and HBase (scripts/services), then
# unit tests, the integration binary (batch oracles, bad input, the CLI, Kafka and HBase), `freshet
# check` over the shipped SQL files (and tests/check/bad, which must fail), `freshet test` over the
# streaming spec files (tests/sql) and the examples' tests, and the shipped SQL files end to end. Services this script started are stopped again when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

started_services=""
if ! scripts/services status >/dev/null 2>&1; then
  echo "== starting Kafka and HBase (scripts/services start)"
  scripts/services start
  started_services=yes
fi
stop_services() {
  if [ -n "$started_services" ]; then
    scripts/services stop || true
  fi
}
# Tests that need the services fail (never skip) when they are not reachable.
export FRESHET_REQUIRE_SERVICES=1

# A target dir outside the clone keeps repeated runs (and CI on the same machine) warm.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

trap 'stop_services' EXIT
echo "== cargo test"
cargo test --all-targets

bin="$CARGO_TARGET_DIR/debug/freshet"
echo "== freshet check: shipped queries pass, tests/check/bad fails"
"$bin" check queries examples
rc=0; "$bin" check tests/check/bad > /dev/null || rc=$?
[ "$rc" = 1 ] || { echo "FAILED: freshet check tests/check/bad exited $rc, expected 1"; exit 1; }

echo "== freshet collect --check: the shipped collector configs"
for c in examples/collector/*.toml; do "$bin" collect --check --config "$c"; done

echo "== freshet test: the streaming spec files (tests/sql) and the examples' tests pass"
"$bin" test tests/sql examples

echo "== shipped queries run end to end"
work="$(mktemp -d)"
trap 'rm -rf "$work"; stop_services' EXIT
for q in queries/*.sql examples/*/*.sql; do
  [ -e "$q" ] || continue
  case "$q" in *_kafka.sql) continue ;; esac  # needs a producer; covered by the integration tests
  # Bounded variants of the shipped queries keep this quick; the SQL is otherwise as shipped.
  sed -e "s/events = '1000000'/events = '100000'/" "$q" > "$work/job.sql"
  cp -r examples "$work/" 2>/dev/null || true
  echo "-- $q"
  (cd "$work" && FRESHET_DATA_DIR="$work/data" "$bin" run job.sql > "$work/out.txt") || { echo "FAILED: $q"; cat "$work/out.txt"; exit 1; }
done
echo "shipped queries: all ran"
