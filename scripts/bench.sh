#!/usr/bin/env bash
# Throughput benchmark (not a test), in one run on the same files: Freshet (release build) on the
# course queries and Nexmark, DuckDB on the same files and queries, and — with BENCH_PEERS=1 —
# Spark Structured Streaming (local[2]) and PyFlink (parallelism 2) from PyPI. Every engine's output
# is checked against a batch answer before its time counts. Prints one table (events/s, CPU
# seconds, peak memory, ratio to DuckDB) and writes it with a plot to $BENCH_DIR/report.{md,svg};
# docs/benchmarks.md keeps the figures of a run.
#
#   scripts/bench.sh                    # 10 M course events (1.1 GB JSON) and 1 M Nexmark events
#   EVENTS=3000000 scripts/bench.sh     # quicker
#   BENCH_PEERS=1 scripts/bench.sh      # also Spark SS and PyFlink (downloads ~1 GB from PyPI once)
#   WORKERS=1 scripts/bench.sh          # Freshet on one decode thread per source and one instance per keyed operator
#
# Environment: EVENTS (course events, 10 M), NEXMARK_EVENTS (1 M), NEXMARK_QUERIES ("q0 q1 q2 q3 q4
# q5 q7 q8 q9 q11"), WORKERS (default: every core), BENCH_DIR (data and results; default
# $CARGO_TARGET_DIR/bench), BENCH_PEERS.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
EVENTS="${EVENTS:-10000000}"
NEXMARK_EVENTS="${NEXMARK_EVENTS:-1000000}"
NEXMARK_QUERIES="${NEXMARK_QUERIES:-q0 q1 q2 q3 q4 q5 q7 q8 q9 q11}"
WORKERS="${WORKERS:-$(nproc)}"
dir="${BENCH_DIR:-$CARGO_TARGET_DIR/bench}"
mkdir -p "$dir"
results="$dir/results.tsv"
printf 'case\tengine\tevents\tseconds\tcpu_s\tpeak_mib\tcheck\n' > "$results"

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/freshet"
file="$dir/events-$EVENTS.jsonl"
if [ ! -s "$file" ]; then
  echo "generating $EVENTS events into $file"
  "$bin" generate courses --events "$EVENTS" --seed 42 --out "$file.tmp" && mv "$file.tmp" "$file"
fi
dirty="$dir/events-$EVENTS-dirty.jsonl"
if [ ! -s "$dirty" ]; then
  "$bin" generate courses --events "$EVENTS" --seed 42 --late-ratio 0.02 --out - \
    | awk '{ print } NR % 99 == 0 { print "{\"user_id\": 1, \"course_id\": oops" }' > "$dirty.tmp"
  mv "$dirty.tmp" "$dirty"
fi

py=$(scripts/bench-venv)

# freshet CASE INPUT EVENTS [SQL CASE] -> a row in $results; the run's output stays in $dir/out/CASE
freshet() {
  local case="$1" input="$2" n="$3" sqlcase="${4:-$1}"
  sed -e "s#EVENTS_FILE#$input#; s#OUT_DIR#$dir/out#; s#'EVENTS'#'$n'#" "benches/$sqlcase.sql" \
    | sed -e "s#$dir/out/$sqlcase#$dir/out/$case#" > "$dir/$case.sql"
  rm -rf "$dir/out/$case"
  local log="$dir/$case.log" timing="$dir/$case.time"
  ( TIMEFORMAT='%R %U %S'; time "$bin" run "$dir/$case.sql" --allow-path "$dir" --no-checkpoints --workers "$WORKERS" \
      2> "$log" > /dev/null ) 2> "$timing" || { cat "$log"; exit 1; }
  local wall cpu peak
  wall=$(awk '{ print $1 }' "$timing")
  cpu=$(awk '{ printf "%.2f", $2 + $3 }' "$timing")
  peak=$(grep -oE 'peak memory: [0-9.]+' "$log" | grep -oE '[0-9.]+$')
  printf '%s\tfreshet\t%s\t%s\t%s\t%s\t%s\n' "$case" "$n" "$wall" "$cpu" "$peak" "${CHECK:--}" >> "$results"
  awk -v c="$case" -v n="$n" -v s="$wall" -v u="$cpu" -v p="$peak" \
    'BEGIN { printf "%-22s %7.2f s %7.2f M events/s %7.2f CPU s %8.1f MiB\n", c, s, n / s / 1e6, u, p }'
}

echo "== Freshet (release, --workers $WORKERS), $EVENTS course events, $(nproc) cores"
freshet tumble_file "$file" "$EVENTS"
freshet tumble_generator "$file" "$EVENTS"
freshet hop_file "$file" "$EVENTS"
freshet session_file "$file" "$EVENTS"
freshet tumble_dirty "$dirty" "$EVENTS" tumble_file
# Operator-bound: the keyed window aggregate split over --workers instances, then on one.
freshet hop_wide_generator "$file" "$EVENTS"
WORKERS=1 freshet hop_wide_generator_1w "$file" "$EVENTS" hop_wide_generator
grep -oE '[0-9]+ errors, [0-9]+ late' "$dir/tumble_dirty.log" | head -1 | sed 's/^/tumble_dirty: /'
echo "== peak memory against input length (generator, fixed key count)"
freshet tumble_generator_1m "$file" 1000000 tumble_generator

echo "== DuckDB ($("$py" -c 'import duckdb; print(duckdb.__version__)'), 2 threads), same file and query; results compared"
"$py" benches/duckdb_tumble.py "$file" "$dir/out/duckdb.parquet" \
  --freshet "$dir/out/tumble_file" --tsv "$results" --events "$EVENTS"

echo "== Nexmark ($NEXMARK_EVENTS events): Freshet and the DuckDB oracle on the same files"
QUERIES="$NEXMARK_QUERIES" RESULTS_TSV="$results" WORKERS="$WORKERS" \
  scripts/bench-nexmark.sh "$NEXMARK_EVENTS" || echo "(a Nexmark result differed: see above)"

if [ "${BENCH_PEERS:-0}" = 1 ]; then
  echo "== peers: Spark Structured Streaming local[2] and PyFlink parallelism 2, same files"
  PEERS_TSV="$dir/peers.tsv" scripts/bench-peers.sh "$file" \
    "${BENCH_DIR:-$CARGO_TARGET_DIR/bench}/nexmark/data-$NEXMARK_EVENTS-42-10000" \
    || echo "(a peer's result differed from DuckDB's: marked WRONG in the table)"
  # Its rows: case, engine, seconds, events/s, check (n/a: no time) → this table's columns and names.
  awk -F'\t' '$1 != "case" && NF >= 5 {
      c = $1; if (c ~ /^q[0-9]+$/) c = "nexmark_" c
      e = $2; if (e ~ /spark/) e = "spark"; else if (e ~ /flink/) e = "flink"
      if ($3 == "-") printf "%s\t%s\t\t\t\t\t%s\n", c, e, $5
      else printf "%s\t%s\t%.0f\t%s\t\t\t%s\n", c, e, $3 * $4, $3, $5 }' "$dir/peers.tsv" >> "$results"
fi

echo "== the table (also $dir/report.md, plot $dir/report.svg)"
"$py" benches/report.py "$results" --md "$dir/report.md" --svg "$dir/report.svg" \
  --clean tumble_file --dirty tumble_dirty
