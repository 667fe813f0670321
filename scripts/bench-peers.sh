#!/usr/bin/env bash
# Peer benchmark (not a test): the same cases as Freshet's benchmarks, run as streaming jobs in
# Spark Structured Streaming (local[2]) and PyFlink / Flink SQL (parallelism 2), each output checked
# against DuckDB's batch answer over the same input (benches/peers/check.py). See
# benches/peers/README.md.
#
#   scripts/bench-peers.sh COURSE_EVENTS_FILE NEXMARK_DATA_DIR
#   CASES="tumble_file q11" ENGINES=flink scripts/bench-peers.sh events.jsonl data/nexmark
#
# Prints one tab-separated line per case and engine on stdout:
#   case  engine  seconds  events_per_s  ok|WRONG|n/a
# `seconds` is the job's wall time from start to output complete (Spark: query start to
# termination, the SparkSession already up; Flink: INSERT submitted to job end, the gateway JVM
# already up; Freshet: the whole `freshet run`). events_per_s = input events / seconds, input events
# being the lines of the course file, or for a Nexmark case the lines of every file it reads
# (bid.jsonl; q3 and q8 person.jsonl + auction.jsonl; q4 and q9 auction.jsonl + bid.jsonl).
# WRONG: the output differs from DuckDB's, or the job failed. n/a: the engine cannot express the
# query exactly as a streaming job (seconds and events/s are `-`; the reason goes to stderr).
# Details (whole-process time, the check's message, where the log is) go to stderr.
#
# Environment:
#   CASES       tumble_file q0 q1 q2 q3 q4 q5 q7 q8 q9 q11 (default: all)
#   ENGINES     spark flink (default); add freshet to run $FRESHET too (`freshet run`, same check)
#   PEERS_TSV   also write the lines to this file (truncated first)
#   PEERS_WORK  scratch for outputs, checkpoints and logs (default /tmp/freshet-peers)
#   FRESHET     the freshet binary (default $HOME/.cache/freshet/target/release/freshet)
# Installs on first use (nothing else is needed but python3 >= 3.9, Java 17 and mvn): a venv at
# $HOME/.cache/freshet/peers-venv with pyspark, apache-flink and duckdb from PyPI, and Flink's
# Parquet format with Hadoop's client jars (not in the apache-flink wheel) from Maven Central into
# $HOME/.cache/freshet/peers-jars. Exit status 1 if any line is WRONG.
set -euo pipefail

PYSPARK_VERSION=4.3.0
FLINK_VERSION=2.3.0
DUCKDB_VERSION=2.0.1
HADOOP_VERSION=3.3.6

if [ $# -ne 2 ]; then
  echo "usage: $0 COURSE_EVENTS_FILE NEXMARK_DATA_DIR" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="$root/benches/peers"
course="$(realpath "$1")"
nexmark="$(realpath "$2")"
CASES="${CASES:-tumble_file q0 q1 q2 q3 q4 q5 q7 q8 q9 q11}"
ENGINES="${ENGINES:-spark flink}"
work="${PEERS_WORK:-/tmp/freshet-peers}"
FRESHET="${FRESHET:-$HOME/.cache/freshet/target/release/freshet}"
venv="$HOME/.cache/freshet/peers-venv"
jars="$HOME/.cache/freshet/peers-jars/flink-$FLINK_VERSION"
py="$venv/bin/python"

log() { echo "# $*" >&2; }

# --- installation (not timed) -------------------------------------------------------------------
for tool in python3 java mvn; do
  command -v "$tool" > /dev/null || { echo "$tool is needed (python3, Java 17, Maven)" >&2; exit 1; }
done
java_major=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
if ! [ "${java_major%%.*}" -ge 17 ] 2>/dev/null; then
  echo "Java 17 or later is needed (found $java_major)" >&2
  exit 1
fi
if ! "$py" -c "import pyspark, pyflink, duckdb
assert pyspark.__version__ == '$PYSPARK_VERSION' and duckdb.__version__ == '$DUCKDB_VERSION'
from pyflink.version import __version__ as f; assert f == '$FLINK_VERSION'" 2>/dev/null; then
  log "installing pyspark $PYSPARK_VERSION, apache-flink $FLINK_VERSION, duckdb $DUCKDB_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip >&2
  "$venv/bin/pip" install --quiet "pyspark==$PYSPARK_VERSION" "apache-flink==$FLINK_VERSION" \
    "duckdb==$DUCKDB_VERSION" >&2
fi
case " $ENGINES " in *" flink "*)
  if [ ! -f "$jars/.complete" ]; then
    log "copying flink-sql-parquet $FLINK_VERSION and hadoop-client $HADOOP_VERSION jars into $jars"
    rm -rf "$jars"
    mkdir -p "$jars"
    for a in "org.apache.flink:flink-sql-parquet:$FLINK_VERSION" \
             "org.apache.hadoop:hadoop-client-api:$HADOOP_VERSION" \
             "org.apache.hadoop:hadoop-client-runtime:$HADOOP_VERSION"; do
      (cd "$jars" && mvn -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
         -Dartifact="$a" -DoutputDirectory="$jars" > "$jars.mvn.log" 2>&1) \
        || { cat "$jars.mvn.log" >&2; exit 1; }
    done
    touch "$jars/.complete"
  fi
esac
export TZ=UTC PYSPARK_PYTHON="$py"

# --- the runs ------------------------------------------------------------------------------------
mkdir -p "$work"
[ -n "${PEERS_TSV:-}" ] && : > "$PEERS_TSV"
events_of() { wc -l < "$1" | tr -d ' '; }

# run_freshet CASE INPUT OUT: `freshet run` of Freshet's own SQL for the case, output into OUT.
run_freshet() {
  local case="$1" input="$2" out="$3" dir="$work/freshet-$1"
  rm -rf "$dir" "$out"
  mkdir -p "$dir/data" "$out"
  if [ "$case" = tumble_file ]; then
    sed -e "s#EVENTS_FILE#$input#; s#OUT_DIR/tumble_file#$out#" "$root/benches/tumble_file.sql" > "$dir/q.sql"
  else
    ln -s "$nexmark" "$dir/data/nexmark"
    sed -e "s#out/nexmark/$case#$out#" "$root/queries/nexmark/$case.sql" > "$dir/q.sql"
  fi
  # The input and the Nexmark data live outside the run's directory: allowed by flag.
  (cd "$dir" && "$FRESHET" run q.sql --allow-path "$(dirname "$input")" --allow-path "$nexmark" \
    --allow-path "$(dirname "$out")" > /dev/null)
}

failed=0
log "cases: $CASES; engines: $ENGINES; $(nproc) cores; scratch $work"
for case in $CASES; do
  case "$case" in
    tumble_file) input="$course"; files="$course" ;;
    q0|q1|q2|q5|q7|q11) input="$nexmark/bid.jsonl"; files="$input" ;;
    # Several inputs: the peers and the check take the directory.
    q3|q8) input="$nexmark"; files="$nexmark/person.jsonl $nexmark/auction.jsonl" ;;
    q4|q9) input="$nexmark"; files="$nexmark/auction.jsonl $nexmark/bid.jsonl" ;;
    *) echo "unknown case $case (tumble_file q0 q1 q2 q3 q4 q5 q7 q8 q9 q11)" >&2; exit 2 ;;
  esac
  events=0
  for f in $files; do events=$((events + $(events_of "$f"))); done
  for engine in $ENGINES; do
    out="$work/out/$engine/$case"
    logf="$work/$engine-$case.log"
    t0=$(date +%s.%N)
    status=0
    case "$engine" in
      spark) "$py" "$peers/spark_ss.py" "$case" "$input" "$out" > "$logf.json" 2> "$logf" || status=$? ;;
      flink) "$py" "$peers/pyflink_sql.py" "$case" "$input" "$out" --jars "$jars" > "$logf" 2>&1 || status=$?
             tail -n 1 "$logf" > "$logf.json" ;;
      freshet) run_freshet "$case" "$input" "$out" 2> "$logf" || status=$?
               echo '{}' > "$logf.json" ;;
      *) echo "unknown engine $engine (spark flink freshet)" >&2; exit 2 ;;
    esac
    t1=$(date +%s.%N)
    process=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    # A peer that cannot run the case exactly says so in its last line: {"na": "reason"}.
    na=$("$py" -c 'import json, sys
try: print(json.load(open(sys.argv[1])).get("na", ""))
except Exception: print("")' "$logf.json")
    if [ "$status" -eq 0 ] && [ -n "$na" ]; then
      line=$(printf '%s\t%s\t-\t-\tn/a' "$case" "$engine")
      echo "$line"
      [ -n "${PEERS_TSV:-}" ] && echo "$line" >> "$PEERS_TSV"
      log "$case $engine: n/a: $na"
      continue
    fi
    secs=$("$py" -c 'import json, sys
try: print(json.load(open(sys.argv[1]))["seconds"])
except Exception: print(sys.argv[2])' "$logf.json" "$process")
    if [ "$status" -eq 0 ]; then
      verdict=$("$py" "$peers/check.py" "$case" "$input" "$out" 2>&1) || true
    else
      verdict="WRONG: the job failed (exit $status); see $logf"
    fi
    word=${verdict%% *}
    [ "$word" = ok ] || { word=WRONG; failed=1; }
    line=$(awk -v c="$case" -v e="$engine" -v s="$secs" -v n="$events" -v w="$word" \
      'BEGIN { printf "%s\t%s\t%.3f\t%.0f\t%s", c, e, s, n / s, w }')
    echo "$line"
    [ -n "${PEERS_TSV:-}" ] && echo "$line" >> "$PEERS_TSV"
    log "$case $engine: job $secs s, process $process s, $events events; check: $verdict; log $logf"
  done
done
exit "$failed"
