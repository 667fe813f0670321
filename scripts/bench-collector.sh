#!/usr/bin/env bash
# End-to-end benchmark of the collector (not a test): spool directory of JSON lines → channel → Kafka,
# with the dev broker running on the same machine (scripts/services start kafka).
#
# For each case a fresh agent (`freshet collect`) and a fresh topic (4 partitions, created up front)
# are used; the generated files (cached) are hard-linked into the spool directory under `.tmp` names,
# then renamed in, which starts the clock. The agent's /metrics endpoint is polled every 50 ms:
#   first    – first event in the channel (the spool source reads a file once its size held still for
#              one 250 ms scan, so 0.25–0.5 s of every run is that wait)
#   channel  – source_accepted_total == EVENTS (every event in the channel)
#   kafka    – sink_sent_total == EVENTS (every event acknowledged by Kafka, acks=all): events/s is
#              EVENTS / this time
# plus the agent's and the broker's CPU time, how busy the machine was, and the agent's peak resident
# memory (VmHWM). Then the stages apart: spool → disk channel with no sink, that full channel → Kafka
# with no source, spool → memory channel; and the HTTP source (Python clients POSTing JSON lines).
# At the end the topics' end offsets (Kafka's GetOffsetShell) must add up to at least EVENTS per case,
# and every counter must match; otherwise the script exits non-zero. The run's topics are then deleted
# (kept after a failure, or with KEEP_TOPICS=1).
#
#   scripts/bench-collector.sh      # EVENTS=2000000 FILES=4 CASES="disk:1000:5000 …" STAGES=1 HTTP=1
#   FRESHET_BIN=path                # use this binary instead of building the release one
#   SINK_PROPS='"linger.ms" = "2"'  # librdkafka properties for the Kafka sink (TOML lines, \n between)
#
# CASES: space-separated CHANNEL:BATCH_LINES:SINK_BATCH, CHANNEL = disk (fsync per batch) | memory.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
EVENTS="${EVENTS:-2000000}"
FILES="${FILES:-4}"
CASES="${CASES:-disk:1000:5000 disk:10000:5000 disk:1000:20000 disk:10000:20000 disk:10000:100000 memory:1000:5000 memory:10000:20000}"
STAGES="${STAGES:-1}"
HTTP="${HTTP:-1}"                  # HTTP source: CLIENTS concurrent clients posting 1000-event bodies
HTTP_EVENTS="${HTTP_EVENTS:-1000000}"
CLIENTS="${CLIENTS:-4}"
BROKERS="${BROKERS:-127.0.0.1:9092}"
TIMEOUT="${TIMEOUT:-300}"          # seconds a case may take
CREATE_TOPICS="${CREATE_TOPICS:-1}" # 0: let the broker auto-create them (num.partitions = 4 here)
SINK_PROPS="${SINK_PROPS:-}"       # extra librdkafka properties of the Kafka sink, TOML lines: '"linger.ms" = "2"'
dir="$root/.freshet/bench/collector"
data="$dir/data"
kafka_lib="$root/.freshet/services/kafka/lib"

scripts/services status kafka >/dev/null || scripts/services start kafka >/dev/null
if [ -z "${FRESHET_BIN:-}" ]; then cargo build --release --quiet; fi
bin="${FRESHET_BIN:-$CARGO_TARGET_DIR/release/freshet}"
java="$(command -v java || true)"
for j in /usr/lib/jvm/*17*/bin/java; do [ -x "$j" ] && java="$j"; done
[ -n "$java" ] || { echo "bench-collector: no java (Kafka's own tools check the topics)" >&2; exit 1; }
tag="$(date +%s)"
mkdir -p "$data"
# One run at a time: runs share the scratch dir (spool, channel, logs).
exec {lock}> "$dir/lock"
flock -n "$lock" || { echo "bench-collector: another run holds $dir/lock" >&2; exit 1; }

kafka_tool() { # CLASS ARGS…: one of Kafka's own tools (org.apache.kafka.tools), from the broker's jars
  local class=$1
  shift
  timeout 120 "$java" -Xmx128m -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$root/scripts/services.d/log4j2-tools.properties" \
    -cp "$kafka_lib/*" "org.apache.kafka.tools.$class" --bootstrap-server "$BROKERS" "$@"
}

agent=""
made_topics=0
# shellcheck disable=SC2317  # (called from the EXIT trap)
cleanup() {
  local rc=$?
  if [ -n "$agent" ] && kill -0 "$agent" 2>/dev/null; then
    kill -TERM "$agent" 2>/dev/null || true
    wait "$agent" 2>/dev/null || true
  fi
  # The topics of this run (2 M events ≈ 250 MiB each) go once checked or when interrupted, unless
  # KEEP_TOPICS=1; after a failure they stay for inspection.
  if [ "$made_topics" = 1 ]; then
    if { [ "$rc" = 0 ] || [ "$rc" = 130 ]; } && [ "${KEEP_TOPICS:-0}" != 1 ]; then
      kafka_tool TopicCommand --delete --topic "bench_collector_.*_$tag" >/dev/null 2>&1 \
        || echo "could not delete the topics bench_collector_.*_$tag" >&2
    else
      echo "kept the topics bench_collector_.*_$tag (KEEP_TOPICS=1 or a failed run)" >&2
    fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A sleep without forking: read with a timeout from a pipe nobody writes to.
exec {nap}<> <(:)
nap() { read -rt "$1" -u "$nap" || true; }
now() { printf '%s' "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "-" }'; }
fail() { echo "bench-collector: $*" >&2; exit 1; }

# ---- input: FILES files of EVENTS/FILES course-page events (JSON lines), generated once
per=$((EVENTS / FILES))
[ $((per * FILES)) -eq "$EVENTS" ] || fail "EVENTS ($EVENTS) must be a multiple of FILES ($FILES)"
for i in $(seq 1 "$FILES"); do
  f="$data/courses-$per-$i.jsonl"
  if [ ! -s "$f" ]; then
    "$bin" generate courses --events "$per" --seed "$i" --out "$f.tmp" 2>/dev/null
    mv "$f.tmp" "$f"
  fi
done
bytes=$(cat "$data"/courses-"$per"-*.jsonl | wc -c)
echo "machine: $(nproc) cores, load average $(cut -d" " -f1-3 /proc/loadavg); checkout at $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
echo "binary: $bin${SINK_PROPS:+; Kafka sink properties: $SINK_PROPS}"
echo "input: $FILES files × $per events, $((bytes / EVENTS)) bytes/event ($((bytes >> 20)) MiB)"

# ---- one agent run
# start_agent NAME CONFIG: starts it, sets $agent and $port (metrics listener).
start_agent() {
  "$bin" collect --config "$2" 2> "$dir/$1.log" > /dev/null &
  agent=$!
  local i
  port=""
  for i in $(seq 1 200); do
    port=$(sed -n 's/^collect: metrics listening on .*:\([0-9]*\)$/\1/p' "$dir/$1.log")
    [ -n "$port" ] && return 0
    kill -0 "$agent" 2>/dev/null || { cat "$dir/$1.log" >&2; fail "$1: the agent exited"; }
    nap 0.05
  done
  fail "$1: no metrics listener after 10 s"
}

# scrape: sets acc, sent, failed, rejected from /metrics (no fork: bash's /dev/tcp).
scrape() {
  local line
  acc=0 sent=0 failed=0 rejected=0
  exec {web}<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n' >&"$web"
  while IFS= read -r line <&"$web"; do
    case $line in
      freshet_collector_source_accepted_total\{*) acc=$((acc + ${line##* })) ;;
      freshet_collector_source_rejected_total\{*) rejected=$((rejected + ${line##* })) ;;
      freshet_collector_sink_sent_total\{*) sent=$((sent + ${line##* })) ;;
      freshet_collector_sink_failed_total\{*) failed=$((failed + ${line##* })) ;;
    esac
  done
  exec {web}<&-
}

cpu_secs() { # PID: user + system CPU seconds so far
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"
}
broker_pid() { local p; p=$(cat "$root/.freshet/services/kafka/kafka.pid" 2>/dev/null) && [ -r "/proc/$p/stat" ] && echo "$p"; }
cpu_of() { if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then cpu_secs "$1"; else echo 0; fi; }
# The machine's busy share (all cores) between two samples of /proc/stat's cpu line.
cpu_sample() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6; exit }' /proc/stat; }
busy() { # SAMPLE_BEFORE SAMPLE_AFTER ("busy idle")
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); d = (y[1] - x[1]) + (y[2] - x[2]);
    printf "%.0f %%", (d > 0 ? 100 * (y[1] - x[1]) / d : 0) }'
}
hwm() { awk '/^VmHWM/ { printf "%d MiB", $2 / 1024 }' "/proc/$1/status"; }

stop_agent() {
  kill -TERM "$agent"
  wait "$agent" || fail "agent exited with an error: $(tail -5 "$dir/$1.log")"
  agent=""
}

# wait_until WHAT: poll until the condition holds; sets t_first (first accepted event), t_acc, t_sent.
# WHAT = all (accepted and sent), accepted, sent.
wait_until() {
  local what=$1 start=$2 deadline t
  deadline=$(awk -v s="$start" -v d="$TIMEOUT" 'BEGIN { printf "%d", s + d }')
  t_first="" t_acc="" t_sent=""
  while :; do
    scrape || fail "scraping /metrics failed"
    t=$(now)
    [ -z "$t_first" ] && [ "$acc" -gt 0 ] && t_first=$t
    [ -z "$t_acc" ] && [ "$acc" -ge "$EVENTS" ] && t_acc=$t
    [ -z "$t_sent" ] && [ "$sent" -ge "$EVENTS" ] && t_sent=$t
    case $what in
      all) [ -n "$t_acc" ] && [ -n "$t_sent" ] && break ;;
      accepted) [ -n "$t_acc" ] && break ;;
      sent) [ -n "$t_sent" ] && break ;;
    esac
    [ "${t%.*}" -lt "$deadline" ] || fail "timed out: accepted $acc, sent $sent, failed $failed of $EVENTS"
    kill -0 "$agent" 2>/dev/null || fail "the agent died: $(tail -5 "$dir"/*.log)"
    nap 0.05
  done
}

# config SOURCE CHANNEL SINK: an agent config on stdout. SOURCE = spool:BATCH_LINES | http | none;
# CHANNEL = disk | memory (CAPACITY); SINK = kafka:BATCH:TOPIC | none.
config() {
  local src=$1 ch=$2 capacity=$3 sink=$4
  echo "[metrics]"
  echo "listen = \"127.0.0.1:0\""
  case $src in
    spool:*) printf '[sources.spool]\ntype = "spool"\ndir = "%s"\nchannel = "ch"\ndelete = true\nbatch_lines = %s\n' \
      "$dir/spool" "${src#spool:}" ;;
    http) printf '[sources.web]\ntype = "http"\nlisten = "127.0.0.1:0"\nchannel = "ch"\n' ;;
  esac
  case $ch in
    disk) printf '[channels.ch]\ntype = "disk"\ndir = "%s"\nfsync = "batch"\ncapacity = %s\n' "$dir/channel" "$capacity" ;;
    memory) printf '[channels.ch]\ntype = "memory"\ncapacity = %s\n' "$capacity" ;;
  esac
  case $sink in
    kafka:*)
      local rest=${sink#kafka:}
      printf '[sinks.kafka]\ntype = "kafka"\nchannel = "ch"\nbootstrap_servers = "%s"\ntopic = "%s"\n' "$BROKERS" "${rest#*:}"
      printf 'key_field = "user_id"\nbatch_size = %s\n' "${rest%%:*}"
      [ -z "$SINK_PROPS" ] || printf '[sinks.kafka.properties]\n%b\n' "$SINK_PROPS" ;;
  esac
}

fresh_topic() { # NAME: 4 partitions, created up front (no events) unless CREATE_TOPICS=0 (auto-created)
  made_topics=1
  [ "$CREATE_TOPICS" = 1 ] || return 0
  "$bin" generate courses --events 0 --kafka "$BROKERS" --topic "$1" --partitions 4 >/dev/null 2>&1 \
    || fail "creating topic $1"
}

# drop_files: hard-link the cached files into the spool dir under .tmp names, then rename them in.
# Prints the time of the first rename.
drop_files() {
  local i t0
  for i in $(seq 1 "$FILES"); do ln "$data/courses-$per-$i.jsonl" "$dir/spool/part-$i.jsonl.tmp"; done
  t0=$(now)
  for i in $(seq 1 "$FILES"); do mv "$dir/spool/part-$i.jsonl.tmp" "$dir/spool/part-$i.jsonl"; done
  printf '%s' "$t0"
}

reset_scratch() { rm -rf "$dir/spool" "$dir/channel"; mkdir -p "$dir/spool"; }

results=()   # table rows
topics=()    # topic → expected events, checked at the end
line_of() { local s="|" a; for a in "$@"; do s+=" $a |"; done; printf '%s' "$s"; }
row() { results+=("$(line_of "$@")"); }

# ---- end to end: spool → channel → Kafka
n=0
for c in $CASES; do
  IFS=: read -r ch lines sinkb <<< "$c"
  n=$((n + 1))
  name="e2e-$ch-$lines-$sinkb"
  topic="bench_collector_${n}_${ch}_${lines}_${sinkb}_$tag"
  reset_scratch
  fresh_topic "$topic"
  config "spool:$lines" "$ch" 1000000 "kafka:$sinkb:$topic" > "$dir/$name.toml"
  start_agent "$name" "$dir/$name.toml"
  kpid=$(broker_pid || true); k0=$(cpu_of "$kpid"); m0=$(cpu_sample)
  t0=$(drop_files)
  wait_until all "$t0"
  cpu=$(cpu_secs "$agent"); mem=$(hwm "$agent")
  kcpu=$(awk -v a="$k0" -v b="$(cpu_of "$kpid")" 'BEGIN { printf "%.1f", b - a }'); mbusy=$(busy "$m0" "$(cpu_sample)")
  stop_agent "$name"
  if [ "$acc" -ne "$EVENTS" ] || [ "$rejected" -ne 0 ]; then fail "$name: accepted $acc, rejected $rejected of $EVENTS"; fi
  [ "$sent" -ge "$EVENTS" ] || fail "$name: sent $sent of $EVENTS"
  topics+=("$topic")
  total=$(secs "$t0" "$t_sent")
  echo "$name: first event $(secs "$t0" "$t_first") s, all in channel $(secs "$t0" "$t_acc") s, all in Kafka $total s ($(rate "$EVENTS" "$total") events/s), failed deliveries $failed, agent CPU ${cpu} s, broker CPU ${kcpu} s, machine busy $mbusy, peak $mem"
  row "$ch" "$lines" "$sinkb" "$(secs "$t0" "$t_first") s" "$(secs "$t0" "$t_acc") s" "$total s" \
    "**$(rate "$EVENTS" "$total")**" "$(rate "$EVENTS" "$(secs "$t_first" "$t_sent")")" "$cpu s" "$kcpu s" "$mbusy" "$mem"
done

# ---- the stages apart (disk channel, batch_lines 10000, sink batch 20000)
stage_rows=()
srow() { stage_rows+=("$(line_of "$@")"); }
if [ "$STAGES" = 1 ]; then
  for ch in disk memory; do
    name="stage-spool-$ch"
    reset_scratch
    config "spool:10000" "$ch" "$EVENTS" none > "$dir/$name.toml"
    start_agent "$name" "$dir/$name.toml"
    t0=$(drop_files)
    wait_until accepted "$t0"
    cpu=$(cpu_secs "$agent"); mem=$(hwm "$agent")
    stop_agent "$name"
    [ "$acc" -eq "$EVENTS" ] || fail "$name: accepted $acc of $EVENTS"
    d=$(secs "$t_first" "$t_acc")
    echo "$name: spool → $ch channel (no sink): all in $(secs "$t0" "$t_acc") s, $(rate "$EVENTS" "$d") events/s after the first, CPU $cpu s, peak $mem"
    srow "spool (batch_lines 10000) → $ch channel, no sink" "$(secs "$t0" "$t_acc") s" \
      "**$(rate "$EVENTS" "$d")**" "$cpu s" "$mem"
    if [ "$ch" = disk ]; then
      # The full channel (left on disk by the run above) → Kafka, no source.
      name="stage-disk-kafka"
      topic="bench_collector_drain_$tag"
      fresh_topic "$topic"
      config none disk "$EVENTS" "kafka:20000:$topic" > "$dir/$name.toml"
      chan_mib=$(( $(du -sk "$dir/channel" | cut -f1) >> 10 ))
      t_launch=$(now)
      start_agent "$name" "$dir/$name.toml"
      t0=$(now)   # channel opened (recovery scan of every segment) and metrics up: the sink starts
      wait_until sent "$t0"
      cpu=$(cpu_secs "$agent"); mem=$(hwm "$agent")
      stop_agent "$name"
      topics+=("$topic")
      d=$(secs "$t0" "$t_sent")
      echo "$name: disk channel (full) → Kafka (batch 20000): opening it (recovery scan of $chan_mib MiB) $(secs "$t_launch" "$t0") s, then $d s, $(rate "$EVENTS" "$d") events/s, CPU $cpu s (with the scan), peak $mem"
      srow "disk channel (full, $chan_mib MiB; opened in $(secs "$t_launch" "$t0") s) → Kafka (batch_size 20000), no source" "$d s" "**$(rate "$EVENTS" "$d")**" "$cpu s" "$mem"
    fi
  done
fi

# ---- HTTP source: CLIENTS clients POSTing 1000-event JSON-lines bodies → disk channel → Kafka
http_line=""
if [ "$HTTP" = 1 ]; then
  name="http-disk"
  topic="bench_collector_http_$tag"
  reset_scratch
  fresh_topic "$topic"
  config http disk 1000000 "kafka:20000:$topic" > "$dir/$name.toml"
  start_agent "$name" "$dir/$name.toml"
  web=$(sed -n 's/^collect: sources.web listening on \(.*\)$/\1/p' "$dir/$name.log")
  out=$(python3 - "$web" "$data/courses-$per-1.jsonl" "$HTTP_EVENTS" "$CLIENTS" <<'EOF'
import http.client, itertools, sys, threading, time
addr, path, total, clients = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
with open(path, "rb") as f:
    lines = list(itertools.islice(f, 100_000))
bodies = [b"".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)]
requests = total // 1000
lock, counts = threading.Lock(), {"next": 0, "ok": 0, "bad": 0}
def client():
    c = http.client.HTTPConnection(host, int(port))
    while True:
        with lock:
            i = counts["next"]
            if i >= requests:
                break
            counts["next"] += 1
        c.request("POST", "/events", body=bodies[i % len(bodies)], headers={"Content-Type": "application/x-ndjson"})
        r = c.getresponse()
        r.read()
        with lock:
            counts["ok" if r.status == 200 else "bad"] += 1
t0 = time.monotonic()
ts = [threading.Thread(target=client) for _ in range(clients)]
for t in ts: t.start()
for t in ts: t.join()
d = time.monotonic() - t0
print(counts["ok"] * 1000, counts["bad"], f"{d:.2f}")
EOF
)
  read -r http_ok http_bad http_secs <<< "$out"
  if [ "$http_bad" -ne 0 ] || [ "$http_ok" -ne "$HTTP_EVENTS" ]; then fail "$name: $http_bad requests failed"; fi
  saved_events=$EVENTS; EVENTS=$HTTP_EVENTS
  wait_until all "$(now)"
  EVENTS=$saved_events
  cpu=$(cpu_secs "$agent"); mem=$(hwm "$agent")
  stop_agent "$name"
  topics+=("$topic:$HTTP_EVENTS")
  http_line="HTTP source ($CLIENTS clients, 1000-event bodies, disk channel fsync per batch → Kafka): $HTTP_EVENTS events accepted (200) in $http_secs s = **$(rate "$HTTP_EVENTS" "$http_secs") events/s**, agent CPU $cpu s, peak $mem"
  echo "$http_line"
fi

# ---- check: every topic holds at least its events (end offsets, from Kafka's own GetOffsetShell)
kafka_tool GetOffsetShell --topic "bench_collector_.*_$tag" --time -1 > "$dir/offsets.txt" 2>/dev/null \
  || fail "GetOffsetShell failed"
bad=0
for t in "${topics[@]}"; do
  want=$EVENTS
  case $t in *:*) want=${t#*:}; t=${t%%:*} ;; esac
  got=$(awk -F: -v t="$t" '$1 == t { n += $3; p++ } END { printf "%d %d", n, p }' "$dir/offsets.txt")
  read -r n parts <<< "$got"
  if [ "$n" -lt "$want" ]; then
    echo "MISSING: topic $t holds $n of $want events ($parts partitions)" >&2
    bad=1
  else
    echo "ok: topic $t holds $n events in $parts partitions ($((n - want)) duplicates)"
  fi
done

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "spool → channel → Kafka, $EVENTS events ($FILES files, $((bytes / EVENTS)) B/event), times from the rename:"
echo "| channel | batch_lines | sink batch_size | first event | all in channel | all in Kafka | events/s | events/s after first | agent CPU | broker CPU | machine busy | peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
if [ "${#stage_rows[@]}" -gt 0 ]; then
  echo
  echo "| stage | time | events/s | agent CPU | peak RSS |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${stage_rows[@]}"
fi
[ -z "$http_line" ] || { echo; echo "$http_line"; }
exit "$bad"
