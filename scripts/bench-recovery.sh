#!/usr/bin/env bash
# Recovery benchmark: a query with KEYS (default 1 000 000) keys of state checkpoints, is stopped, and
# resumes; prints the checkpoint's size, its write time, and the time from the restart to the first
# micro-batch after recovery. Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench recovery -- "${1:-1000000}"
