#!/usr/bin/env bash
# Check and test a team's Freshet queries, as CI runs them (and as you can before pushing):
#
#     examples/ci/check-and-test.sh [QUERIES_DIR] [TESTS_DIR]      # defaults: queries tests
#
# 1. `freshet check QUERIES_DIR`: every .sql file parses, plans and has valid connector options.
#    Nothing is started: no Kafka or HBase connection, no file written.
# 2. `freshet test TESTS_DIR`: every .fslt file passes. Tests are deterministic and offline: sources
#    are fed by the test files, sinks are captured, time moves only when a test says so.
#
# Errors name FILE:LINE (check: FILE:LINE:COLUMN); the script stops at the first failing step.
# Run it from the repository root (relative paths in WITH (path = …) resolve from there). Set
# FRESHET to the binary if it is not on PATH. In this repository:
#
#     FRESHET=target/debug/freshet examples/ci/check-and-test.sh queries examples/ci/tests
set -euo pipefail

queries="${1:-queries}"
tests="${2:-tests}"
freshet="${FRESHET:-freshet}"

echo "== freshet check $queries"
"$freshet" check "$queries"

echo "== freshet test $tests"
"$freshet" test "$tests"
