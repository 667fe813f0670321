#!/usr/bin/env bash
# HBase sink throughput (not a test): `benches/hbase_upserts.sql` — a GROUP BY user_id, course_id over
# EVENTS generated events, every changed pair upserted after every micro-batch — written to a new
# table through each sink configuration given, with HBase from scripts/services on the same machine.
# Prints the wall time of each `freshet run` (release build) and the upserted rows per second.
#
#   scripts/bench-hbase.sh                      # the configurations below, RUNS=1, EVENTS=2000000
#   scripts/bench-hbase.sh "protocol = 'thrift2', durability = 'async_wal', connections = '4'"
#   scripts/bench-hbase.sh rest                 # HBase's REST gateway instead (benches/hbase_rest.py)
#
# The rows the sink upserted (`rows out` of the run's summary) divide the run's whole wall time, which
# includes computing the aggregate (a blackhole sink cannot take the query's updates; the engine alone
# is a few seconds of it). Runs take no checkpoints (--no-checkpoints), so the sink's own writes are
# what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
EVENTS="${EVENTS:-2000000}"
RUNS="${RUNS:-1}"
dir="${BENCH_DIR:-$CARGO_TARGET_DIR/bench-hbase}"
mkdir -p "$dir"
scripts/services start hbase >/dev/null
if [ "${1:-}" = rest ]; then
  # The REST gateway's ceiling: ROWS rows of the same shape (4 cells) from a client whose request
  # bodies are all encoded before the clock starts, JSON and protobuf, 1 and 4 connections.
  scripts/services start rest >/dev/null
  py=$(scripts/bench-venv)
  tag="$(date +%s)"
  for fmt in json protobuf; do
    for c in 1 4; do
      for r in $(seq 1 "$RUNS"); do
        "$py" benches/hbase_rest.py --rest "http://127.0.0.1:${HBASE_REST_PORT:-8085}" \
          --table "bench_rest_${tag}_${fmt}_${c}_$r" --rows "${ROWS:-500000}" --batch 1000 --connections "$c" --format "$fmt"
      done
    done
  done
  scripts/services stop rest >/dev/null
  exit 0
fi

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/freshet"

if [ $# -eq 0 ]; then
  set -- \
    "protocol = 'thrift1', connections = '1'" \
    "protocol = 'thrift1', connections = '4'" \
    "protocol = 'thrift2', durability = 'sync_wal', connections = '1'" \
    "protocol = 'thrift2', durability = 'sync_wal', connections = '4'" \
    "protocol = 'thrift2', durability = 'async_wal', connections = '1'" \
    "protocol = 'thrift2', durability = 'async_wal', connections = '4'" \
    "protocol = 'thrift2', durability = 'skip_wal', connections = '1'" \
    "protocol = 'thrift2', durability = 'skip_wal', connections = '4'"
fi

job() { # TABLE SINK_OPTIONS
  sed -e "s#EVENTS#$EVENTS#; s#'TABLE'#'$1'#; s#SINK_OPTIONS#${2:+, $2}#" benches/hbase_upserts.sql
}

tag="$(date +%s)"
n=0
for opts in "$@"; do
  for r in $(seq 1 "$RUNS"); do
    n=$((n + 1))
    job "bench_pairs_${tag}_$n" "$opts" > "$dir/run.sql"
    t0=$(date +%s.%N)
    "$bin" run --no-checkpoints "$dir/run.sql" > /dev/null 2> "$dir/run.log" || { cat "$dir/run.log"; exit 1; }
    t1=$(date +%s.%N)
    rows=$(sed -n 's/^pairs: .* \([0-9]*\) rows out.*/\1/p' "$dir/run.log")
    awk -v o="$opts" -v r="$r" -v n="$rows" -v a="$t0" -v b="$t1" \
      'BEGIN { printf "%-66s run %d: %6.1f s, %d rows, %5.1f K rows/s\n", o, r, b - a, n, n / (b - a) / 1000 }'
  done
done
