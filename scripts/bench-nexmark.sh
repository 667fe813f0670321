#!/usr/bin/env bash
# Nexmark benchmark (not a test): generates the events once, runs each of queries/nexmark/q0–q22 with
# `freshet run` (release build), timing it, runs the DuckDB batch oracle on the same files
# (scripts/nexmark_oracle.py) and prints per query Freshet's events/s, DuckDB's time and whether
# Freshet's result matched the oracle's. Queries Freshet refuses show the refusal.
#
#   scripts/bench-nexmark.sh               # 10 M events (2.8 GB of JSON, generated once, cached)
#   scripts/bench-nexmark.sh 1000000       # 1 M events
#   QUERIES="q0 q12" scripts/bench-nexmark.sh 1000000
#
# Environment: SEED (42), RATE (events per second of event time, 10000), BENCH_DIR (where data and
# results go; default $CARGO_TARGET_DIR/bench/nexmark), WORKERS (freshet --workers; default every
# core), RESULTS_TSV (append rows for scripts/bench.sh's table). DuckDB comes from PyPI into a venv under
# ~/.cache/freshet (created on first use). Exit status 1 when a result Freshet produced differs.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
EVENTS="${1:-${EVENTS:-10000000}}"
SEED="${SEED:-42}"
RATE="${RATE:-10000}"
QUERIES="${QUERIES:-$(seq -f 'q%g' 0 22 | tr '\n' ' ')}"
base="${BENCH_DIR:-$CARGO_TARGET_DIR/bench/nexmark}"
data="$base/data-$EVENTS-$SEED-$RATE"
work="$base/run-$EVENTS-$SEED-$RATE"

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/freshet"

if [ ! -s "$data/bid.jsonl" ]; then
  echo "generating $EVENTS events into $data"
  rm -rf "$data.tmp"
  "$bin" generate nexmark --events "$EVENTS" --seed "$SEED" --rate "$RATE" --out "$data.tmp"
  mv "$data.tmp" "$data"
fi

py=$("$root/scripts/bench-venv")

rm -rf "$work"
mkdir -p "$work/data"
ln -s "$data" "$work/data/nexmark"
tsv="$work/freshet.tsv"
: > "$tsv"
echo "== Freshet (release), $EVENTS events, $(nproc) cores; logs in $work"
for q in $QUERIES; do
  log="$work/$q.log"
  status=ok
  ( TIMEFORMAT='%R %U %S'; time (cd "$work" && "$bin" run "$root/queries/nexmark/$q.sql" \
      --allow-path "$data" --no-checkpoints --workers "${WORKERS:-$(nproc)}" > "$work/$q.out" 2> "$log") ) 2> "$work/$q.time" \
    || status=refused
  if [ "$status" != ok ] && grep -q 'a query failed' "$log"; then status=failed; fi
  secs=$(awk '{ printf "%.2f", $1 }' "$work/$q.time" | tail -1)
  cpu=$(awk '{ printf "%.2f", $2 + $3 }' "$work/$q.time" | tail -1)
  rows_in=$(grep -oE ': [0-9]+ rows in' "$log" | grep -oE '[0-9]+' | head -1 || true)
  peak=$(grep -oE 'peak memory: [0-9.]+' "$log" | grep -oE '[0-9.]+$' | head -1 || true)
  msg=""
  [ "$status" = ok ] || msg=$(grep -E 'error:|failed:' "$log" | head -1 | sed -E 's/^error: //' | tr '\t' ' ')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$q" "$status" "${rows_in:-}" "$secs" "${peak:-}" "$msg" "$cpu" >> "$tsv"
  printf '%-4s %-8s %6s s\n' "$q" "$status" "$secs"
done

echo "== DuckDB batch oracle on the same files, and the comparison"
"$py" "$root/scripts/nexmark_oracle.py" --data "$data" --results "$work/out/nexmark" \
  --freshet "$tsv" --queries "$(echo $QUERIES | tr ' ' ',')" ${RESULTS_TSV:+--tsv "$RESULTS_TSV"}
