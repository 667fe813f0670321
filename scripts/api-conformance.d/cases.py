"""Prints, per operation, how many requests a schemathesis run sent and which statuses came back
(from the run's NDJSON report). Usage: python3 cases.py REPORT_DIR"""

import collections
import glob
import json
import sys

files = sorted(glob.glob(f"{sys.argv[1]}/*.ndjson"))
if not files:
    sys.exit(0)
requests = collections.defaultdict(collections.Counter)
for line in open(files[-1], encoding="utf-8"):
    event = json.loads(line)
    finished = event.get("ScenarioFinished")
    if not finished:
        continue
    recorder = finished.get("recorder") or {}
    label = recorder.get("label", "?")
    for interaction in (recorder.get("interactions") or {}).values():
        response = interaction.get("response") or {}
        requests[label][response.get("status_code", "no answer")] += 1
total = sum(sum(c.values()) for c in requests.values())
print(f"   {total} requests:")
for label in sorted(requests, key=lambda s: (s.split(" ", 1)[1], s)):
    statuses = requests[label]
    detail = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items(), key=lambda kv: str(kv[0])))
    print(f"   {sum(statuses.values()):5d}  {label:32s} ({detail})")
