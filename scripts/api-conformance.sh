#!/usr/bin/env bash
# API conformance (docs/server.md, "Conformance"): docs/openapi.yaml checked against a real `freshet
# serve` by schemathesis (pinned, from PyPI), plus probes for what a schema-driven tester does not
# send (scripts/api-conformance.d/probes.py). Fails on any 5xx, any status, Content-Type, header or
# body the document does not describe.
#
#   scripts/api-conformance.sh                      # debug build; 15-60 s after the build
#   API_MAX_EXAMPLES=200 scripts/api-conformance.sh # more test cases per operation
#   API_SEED=random scripts/api-conformance.sh      # a new seed (printed, to replay it)
#
# Servers each in their own temporary directory, seeded with a generator source, materialized
# views (running, paused, finished, one read by another) and a Parquet sink:
#   1. no token, default limits (but --max-result-rows 1000: the probe of the cap is quick):
#      schemathesis on every operation but DELETE, then on DELETE (which drops the seeded queries, so
#      it comes last), then the probes on a fresh server;
#   2. with FRESHET_TOKEN, --request-timeout 2 --max-concurrent-requests 2: schemathesis with the
#      bearer token (API_TOKEN_RUN=0 skips it), then the probes with the token, a stalled body (408)
#      and a full server (503 + Retry-After).
#
# Environment: API_MAX_EXAMPLES (test cases per operation and phase, default 25), API_SEED (default
# 1205; `random`), API_TOKEN_RUN (1), API_KEEP (1: keep the temporary directory: server logs,
# schemathesis reports), CARGO_TARGET_DIR (default $HOME/.cache/freshet/target). The venv:
# ${XDG_CACHE_HOME:-$HOME/.cache}/freshet/api-venv (created on first use: needs python3 >= 3.11, PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
SCHEMATHESIS_VERSION=4.32.5
API_MAX_EXAMPLES="${API_MAX_EXAMPLES:-25}"
API_SEED="${API_SEED:-1205}"
API_TOKEN_RUN="${API_TOKEN_RUN:-1}"
if [ "$API_SEED" = random ]; then API_SEED=$(( (RANDOM << 15) | RANDOM )); fi
conf="$root/scripts/api-conformance.d"
started=$SECONDS

venv="${XDG_CACHE_HOME:-$HOME/.cache}/freshet/api-venv"
if [ "$("$venv/bin/st" --version 2>/dev/null)" != "st, version $SCHEMATHESIS_VERSION" ]; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

echo "== cargo build (debug)"
cargo build --quiet
bin="$CARGO_TARGET_DIR/debug/freshet"

work="$(mktemp -d)"
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
cleanup() {
  stop_server
  if [ "${API_KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server DIR [TOKEN] [FLAG…]: sets $addr; the server's stderr goes to DIR/serve.log.
start_server() {
  local dir="$1" token="$2"
  shift 2
  mkdir -p "$dir"
  if [ -n "$token" ]; then
    (cd "$dir" && FRESHET_TOKEN="$token" exec "$bin" serve --listen 127.0.0.1:0 --data-dir "$dir/data" \
      --allow-path "$dir" "$@" 2> "$dir/serve.log") &
  else
    (cd "$dir" && exec env -u FRESHET_TOKEN "$bin" serve --listen 127.0.0.1:0 --data-dir "$dir/data" \
      --allow-path "$dir" "$@" 2> "$dir/serve.log") &
  fi
  server_pid=$!
  addr=""
  for _ in $(seq 300); do
    addr=$(sed -n 's#^serving on http://\([^ ]*\) .*#\1#p' "$dir/serve.log" | head -1)
    [ -n "$addr" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "FAILED: freshet serve did not start:"
  cat "$dir/serve.log"
  exit 1
}

# api METHOD PATH [SQL]: one call with the run's token; fails the script unless 2xx.
api() {
  curl -fsS -X "$1" -H 'Content-Type: application/sql' ${token:+-H "Authorization: Bearer $token"} \
    ${3:+--data-binary "$3"} "http://$addr$2" > /dev/null
}

# The objects the path parameter `name` is drawn from (scripts/api-conformance.d/schemathesis.toml),
# and `top_courses`, which the examples in docs/openapi.yaml read.
seed() {
  api POST /v1/statements "
CREATE SOURCE ev (user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
  event_time TIMESTAMP NOT NULL, WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
  WITH (connector = 'generator', kind = 'courses', seed = '42', rate = '20');
CREATE SOURCE ev_bounded (user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR,
  purchased BOOLEAN, event_time TIMESTAMP NOT NULL)
  WITH (connector = 'generator', kind = 'courses', seed = '7', events = '1000');
CREATE MATERIALIZED VIEW live AS SELECT course_id, COUNT(*) AS views FROM ev GROUP BY course_id;
CREATE MATERIALIZED VIEW top AS SELECT * FROM live WHERE views > 1;
CREATE MATERIALIZED VIEW top_courses AS SELECT course_id, COUNT(*) AS views FROM ev GROUP BY course_id;
CREATE MATERIALIZED VIEW held AS SELECT region, COUNT(*) AS n FROM ev GROUP BY region;
CREATE MATERIALIZED VIEW done AS SELECT course_id, COUNT(*) AS n FROM ev_bounded GROUP BY course_id;
CREATE SINK archive WITH (connector = 'parquet', path = 'out/archive') AS SELECT user_id, course_id FROM ev"
  api POST /v1/queries/held/pause
  for _ in $(seq 100); do
    curl -fsS ${token:+-H "Authorization: Bearer $token"} "http://$addr/v1/queries/done" | grep -q '"status":"finished"' && return 0
    sleep 0.1
  done
  echo "FAILED: the seeded materialized view 'done' did not finish in 10 s"
  exit 1
}

failed=()
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance

# schemathesis LABEL DIR [ARG…]: one schemathesis run against the server's own /openapi.yaml.
schemathesis() {
  local label="$1" dir="$2"
  shift 2
  echo "== schemathesis $SCHEMATHESIS_VERSION: $label (seed $API_SEED, at most $API_MAX_EXAMPLES cases per operation and phase)"
  local rc=0
  (cd "$dir" && SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$conf" "$venv/bin/st" --config-file "$conf/schemathesis.toml" \
    run "http://$addr/openapi.yaml" ${token:+-H "Authorization: Bearer $token"} \
    --checks "$checks" --phases examples,coverage,fuzzing --workers 1 \
    --max-examples "$API_MAX_EXAMPLES" --seed "$API_SEED" --generation-database none \
    --request-timeout 30 --no-color --report junit,ndjson --report-dir "$dir/report-$label" "$@" \
    > "$dir/st-$label.log" 2>&1) || rc=$?
  # The failures and the summary; the whole output is in the log (API_KEEP=1 keeps it).
  sed -n '/^=* *\(ERRORS\|FAILURES\) *=*$/,$p' "$dir/st-$label.log" | grep -v '^$' | head -200 || true
  grep -E '^ +[0-9]+ generated|^Seed:' "$dir/st-$label.log" | sed 's/^ */   /' || true
  "$venv/bin/python" "$conf/cases.py" "$dir/report-$label" || true
  if [ "$rc" != 0 ]; then
    grep -q 'generated' "$dir/st-$label.log" || tail -30 "$dir/st-$label.log"
    failed+=("schemathesis $label (exit $rc)")
  fi
}

probes() {
  local label="$1"
  shift
  echo "== probes: $label"
  "$venv/bin/python" "$conf/probes.py" "$addr" ${token:+--token "$token"} "$@" || failed+=("probes $label")
}

token=""
start_server "$work/plain" "" --max-result-rows 1000
echo "== server on $addr (no token)"
seed
schemathesis plain "$work/plain" --exclude-method DELETE
schemathesis plain-delete "$work/plain" --include-method DELETE
stop_server
# A fresh server for the probes: the runs above paused, resumed and dropped what was seeded.
start_server "$work/probes" "" --max-result-rows 1000
seed
probes plain --data-dir "$work/probes/data"
stop_server

if [ "$API_TOKEN_RUN" = 1 ]; then
  token="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  start_server "$work/token" "$token" --max-result-rows 1000 --request-timeout 2 --max-concurrent-requests 2
  echo "== server on $addr (FRESHET_TOKEN, --request-timeout 2, --max-concurrent-requests 2)"
  seed
  schemathesis token "$work/token" --exclude-method DELETE
  probes "token, slow client, busy" --slow
  stop_server
fi

echo "== api conformance: $(( SECONDS - started )) s"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  echo "(a FAIL above that says 'server defect' is the server's to fix; anything else: the document or the server, see docs/server.md, Conformance)"
  exit 1
fi
echo "api conformance: docs/openapi.yaml and the server agree"
