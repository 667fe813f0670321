#!/usr/bin/env bash
# Throughput benchmark (not a test): events/s and peak memory of the shipped window queries, in a
# release build, plus DuckDB on the same file and query for a ratio. Figures go to docs/benchmarks.md.
#
#   scripts/bench.sh                 # 10 M events (about 1.1 GB of JSON, generated once and cached)
#   EVENTS=1000000 scripts/bench.sh  # a quicker run
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
EVENTS="${EVENTS:-10000000}"
dir="${BENCH_DIR:-$CARGO_TARGET_DIR/bench}"
mkdir -p "$dir"

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/freshet"
file="$dir/events-$EVENTS.jsonl"
if [ ! -s "$file" ]; then
  echo "generating $EVENTS events into $file"
  "$bin" generate courses --events "$EVENTS" --seed 42 --out "$file.tmp" && mv "$file.tmp" "$file"
fi

# run CASE EVENTS -> prints "seconds events_per_s peak_mib"
run_case() {
  local case="$1" n="$2"
  sed -e "s#EVENTS_FILE#$file#; s#OUT_DIR#$dir/out#; s#'EVENTS'#'$n'#" "benches/$case.sql" > "$dir/$case.sql"
  rm -rf "$dir/out/$case"
  local log="$dir/$case.log"
  "$bin" run "$dir/$case.sql" 2> "$log" > /dev/null || { cat "$log"; exit 1; }
  local secs peak
  secs=$(grep -oE 'rows out, .* ([0-9.]+) s \(' "$log" | grep -oE '[0-9.]+ s \(' | grep -oE '[0-9.]+' | head -1)
  peak=$(grep -oE 'peak memory: [0-9.]+' "$log" | grep -oE '[0-9.]+$')
  awk -v n="$n" -v s="$secs" -v p="$peak" 'BEGIN { printf "%8.2f s  %12.0f events/s  %8.1f MiB peak\n", s, n / s, p }'
}

echo "== Freshet (release), $EVENTS events, $(nproc) cores"
for case in tumble_file tumble_generator hop_file session_file; do
  printf "%-18s " "$case"
  run_case "$case" "$EVENTS"
done

echo "== peak memory against input length (generator, fixed key count)"
for n in 1000000 "$EVENTS"; do
  printf "%-18s " "generator $n"
  run_case tumble_generator "$n"
done

echo "== DuckDB, same file and query"
if [ ! -x "$dir/venv/bin/python" ]; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet duckdb
fi
duck=$("$dir/venv/bin/python" benches/duckdb_tumble.py "$file" "$dir/out/duckdb.parquet")
echo "$duck"
dsecs=$(echo "$duck" | awk '{print $2}')
fsecs=$(grep -oE '[0-9.]+ s \(' "$dir/tumble_file.log" | grep -oE '[0-9.]+' | head -1)
awk -v f="$fsecs" -v d="$dsecs" 'BEGIN { printf "tumble_file: Freshet %.2f s, DuckDB %.2f s, Freshet/DuckDB time ratio %.2f\n", f, d, f / d }'

echo "== dirty input: the tumble_file query over the same events with 2% late and 1% malformed lines"
dirty="$dir/events-$EVENTS-dirty.jsonl"
if [ ! -s "$dirty" ]; then
  "$bin" generate courses --events "$EVENTS" --seed 42 --late-ratio 0.02 --out - \
    | awk '{ print } NR % 99 == 0 { print "{\"user_id\": 1, \"course_id\": oops" }' > "$dirty.tmp"
  mv "$dirty.tmp" "$dirty"
fi
cp "$dir/tumble_file.log" "$dir/tumble_clean.log"
clean_file="$file"
file="$dirty"
printf "%-18s " "tumble_dirty"
run_case tumble_file "$EVENTS"
file="$clean_file"
csecs=$(grep -oE '[0-9.]+ s \(' "$dir/tumble_clean.log" | grep -oE '[0-9.]+' | head -1)
xsecs=$(grep -oE '[0-9.]+ s \(' "$dir/tumble_file.log" | grep -oE '[0-9.]+' | head -1)
grep -oE '[0-9]+ errors?|[0-9]+ late' "$dir/tumble_file.log" | head -2 | tr '\n' ' '
awk -v c="$csecs" -v x="$xsecs" 'BEGIN { printf "\ndirty input throughput: %.0f%% of clean\n", 100 * c / x }'
