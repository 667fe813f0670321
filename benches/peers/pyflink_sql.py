#!/usr/bin/env python3
"""PyFlink (Flink SQL) peer for Freshet's benchmark cases: streaming mode, parallelism 2.

    pyflink_sql.py CASE INPUT OUT_DIR --jars DIR

CASE is tumble_file (INPUT: course events, JSON lines) or q0, q1, q2, q11 (INPUT: Nexmark bid.jsonl).
The source is the filesystem connector with format json and the case's watermark, the sink the
filesystem connector with format parquet; the job runs in STREAMING mode on the local mini-cluster
and finishes when the bounded file has been read (Flink then emits the end-of-input watermark, which
closes every window, as Freshet does at the end of a file). OUT_DIR is replaced. The last stdout line
is JSON: {"engine", "case", "seconds", ...}, `seconds` being the wall time from submitting the
INSERT to the job's end (the Python gateway JVM is already up; `process_seconds` is the whole
script).

The `apache-flink` wheel has no Parquet format: DIR must hold flink-sql-parquet (same version as
Flink) and Hadoop's client jars (hadoop-client-api, hadoop-client-runtime), which
scripts/bench-peers.sh copies from Maven Central with mvn.

Times: the JSON has '...T..:..:..sssZ' times, which Flink's ISO-8601 JSON format parses only as
TIMESTAMP_LTZ; with table.local-time-zone UTC, window bounds (TIMESTAMP) and casts are UTC.
COUNT(DISTINCT) and SESSION windows are exact in Flink SQL; nothing else is needed for exactness.
"""

import argparse
import glob
import json
import os
import shutil
import sys
import time

T_PROCESS = time.perf_counter()

from pyflink.table import EnvironmentSettings, TableEnvironment  # noqa: E402

COURSE = """CREATE TABLE course_events (
    user_id BIGINT, course_id BIGINT, region STRING, purchased BOOLEAN, event_time TIMESTAMP_LTZ(3),
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH ({src})"""
BID = """CREATE TABLE bid (
    auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,
    date_time TIMESTAMP_LTZ(3), extra STRING,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ({src})"""

# case: (source DDL, sink columns, SELECT)
CASES = {
    "tumble_file": (
        COURSE,
        "course_id BIGINT, window_start TIMESTAMP(3), window_end TIMESTAMP(3), `views` BIGINT, "
        "viewers BIGINT, purchases INT",
        """SELECT course_id, window_start, window_end,
                  COUNT(*) AS `views`, COUNT(DISTINCT user_id) AS viewers,
                  SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
           FROM TABLE(TUMBLE(TABLE course_events, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
           GROUP BY course_id, window_start, window_end""",
    ),
    "q0": (
        BID,
        "auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3), extra STRING",
        "SELECT auction, bidder, price, CAST(date_time AS TIMESTAMP(3)), extra FROM bid",
    ),
    "q1": (
        BID,
        "auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), date_time TIMESTAMP(3), extra STRING",
        "SELECT auction, bidder, 0.908 * price AS price, CAST(date_time AS TIMESTAMP(3)), extra FROM bid",
    ),
    "q2": (
        BID,
        "auction BIGINT, price BIGINT",
        "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
    ),
    "q11": (
        BID,
        "bidder BIGINT, bid_count BIGINT, starttime TIMESTAMP(3), endtime TIMESTAMP(3)",
        """SELECT bidder, COUNT(*) AS bid_count, window_start AS starttime, window_end AS endtime
           FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
           GROUP BY bidder, window_start, window_end""",
    ),
}


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("input")
    ap.add_argument("out")
    ap.add_argument("--jars", required=True, help="dir with flink-sql-parquet and Hadoop client jars")
    ap.add_argument("--parallelism", default="2")
    args = ap.parse_args()
    inp = os.path.abspath(args.input)
    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    jars = sorted(glob.glob(os.path.join(os.path.abspath(args.jars), "*.jar")))
    if not jars:
        sys.exit(f"no jars in {args.jars}")

    t0 = time.perf_counter()
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("parallelism.default", args.parallelism)
    conf.set("table.local-time-zone", "UTC")
    conf.set("pipeline.jars", ";".join("file://" + j for j in jars))
    session_s = time.perf_counter() - t0

    source_ddl, sink_cols, select = CASES[args.case]
    src = ", ".join(f"{sql_str(k)} = {sql_str(v)}" for k, v in {
        "connector": "filesystem", "path": "file://" + inp, "format": "json",
        "json.timestamp-format.standard": "ISO-8601", "json.fail-on-missing-field": "true",
    }.items())
    env.execute_sql(source_ddl.format(src=src))
    env.execute_sql(f"""CREATE TABLE sink ({sink_cols}) WITH (
        'connector' = 'filesystem', 'path' = {sql_str("file://" + out)}, 'format' = 'parquet',
        'parquet.utc-timezone' = 'true')""")

    t1 = time.perf_counter()
    result = env.execute_sql(f"INSERT INTO sink {select}")
    result.wait()
    seconds = time.perf_counter() - t1
    from pyflink.version import __version__ as version
    print(json.dumps({"engine": "flink", "version": version, "case": args.case,
                      "seconds": round(seconds, 3), "session_seconds": round(session_s, 3),
                      "process_seconds": round(time.perf_counter() - T_PROCESS, 3),
                      "parallelism": int(args.parallelism)}))


if __name__ == "__main__":
    main()
