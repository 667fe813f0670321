#!/usr/bin/env bash
# End-to-end benchmark (not a test): generator → Kafka → windowed SQL → HBase (upserts) + Parquet,
# with the broker and HBase running on the same machine (scripts/services start).
#
# 1. Throughput: EVENTS events are produced first, then Freshet drains the topic (bounded) and
#    reports events/s per query (two queries: the HBase sink and the Parquet archive each read the topic).
# 2. Sustained rate and latency: Freshet follows a topic while the generator produces RATE events/s
#    on the wall clock for SECONDS; it reports rows in (= events produced when the consumer keeps up)
#    and the event-time latency to HBase (p50/p99: wall clock when HBase acknowledged minus event time).
#
#   scripts/bench-kafka.sh            # EVENTS=5000000 RATE=100000 SECONDS=30 DRAIN_BATCH=65536
#   RUN_ARGS="--workers 1 --no-checkpoints" scripts/bench-kafka.sh   # extra `freshet run` flags
#   EARLY_FIRE_DELAY='1 s' scripts/bench-kafka.sh   # SET 'table.exec.emit.early-fire.delay' first
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
EVENTS="${EVENTS:-5000000}"
RATE="${RATE:-100000}"
SECONDS_RUN="${SECONDS:-30}"
DRAIN_BATCH="${DRAIN_BATCH:-65536}"   # rows per micro-batch while draining (fewer, larger upserts)
dir="${BENCH_DIR:-$CARGO_TARGET_DIR/bench}"
mkdir -p "$dir"
scripts/services start >/dev/null
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/freshet"
tag="$(date +%s)"

sql() { # TOPIC TABLE STARTUP BOUNDED
  if [ -n "${EARLY_FIRE_DELAY:-}" ]; then echo "SET 'table.exec.emit.early-fire.delay' = '$EARLY_FIRE_DELAY';"; fi
  sed -e "s#TOPIC#$1#g; s#'TABLE'#'$2'#; s#STARTUP#$3#; s#BOUNDED#$4#; s#OUT_DIR#$dir/out#" benches/kafka_hbase.sql
}

echo "== throughput: $EVENTS events produced first, then drained (batch size $DRAIN_BATCH)"
topic="bench_drain_$tag"
t0=$(date +%s.%N)
"$bin" generate courses --events "$EVENTS" --seed 42 --kafka 127.0.0.1:9092 --topic "$topic" --partitions 4
t1=$(date +%s.%N)
awk -v n="$EVENTS" -v a="$t0" -v b="$t1" 'BEGIN { printf "produce: %.1f s, %.0f events/s\n", b - a, n / (b - a) }'
sql "$topic" "bench_views_$tag" earliest latest > "$dir/drain.sql"
# shellcheck disable=SC2086
"$bin" run "$dir/drain.sql" --allow-path "$dir" --batch-size "$DRAIN_BATCH" ${RUN_ARGS:-} 2> "$dir/drain.log" > /dev/null || { cat "$dir/drain.log"; exit 1; }
grep -E "rows in|peak memory" "$dir/drain.log"

echo "== sustained: $RATE events/s for $SECONDS_RUN s, event time = wall clock"
topic="bench_live_$tag"
"$bin" generate courses --events 1 --seed 1 --kafka 127.0.0.1:9092 --topic "$topic" --partitions 4 >/dev/null
sql "$topic" "bench_live_views_$tag" latest none > "$dir/live.sql"
# shellcheck disable=SC2086
"$bin" run "$dir/live.sql" --allow-path "$dir" ${RUN_ARGS:-} 2> "$dir/live.log" > /dev/null &
runner=$!
sleep 3
"$bin" generate courses --rate "$RATE" --events $((RATE * SECONDS_RUN)) --seed 7 --out-of-order-ms 1000 \
  --kafka 127.0.0.1:9092 --topic "$topic" --partitions 4
sleep 8   # let the last batches and windows through
kill -TERM "$runner"
wait "$runner" || true
echo "produced: $((RATE * SECONDS_RUN)) events"
grep -E "rows in|latency|peak memory" "$dir/live.log"
