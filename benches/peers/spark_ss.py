#!/usr/bin/env python3
"""Spark Structured Streaming peer for Freshet's benchmark cases (local[2]).

    spark_ss.py CASE INPUT OUT_DIR [--work DIR]

CASE is tumble_file (INPUT: course events, JSON lines) or q0, q1, q2, q11 (INPUT: Nexmark bid.jsonl).
The query runs as a streaming job: readStream.json with an explicit schema and the case's watermark,
writeStream to Parquet in append mode, trigger(availableNow=True), so it reads the whole file and
stops. OUT_DIR is replaced. The last stdout line is JSON: {"engine", "case", "seconds", ...} where
`seconds` is the wall time from query start to its termination (the SparkSession and its JVM are
already up; `session_seconds` is their start-up, `process_seconds` the whole script).

Exactness, per case:
* End of input. Spark has no end-of-stream watermark: in append mode a window is emitted only once the
  watermark passes its end, and the watermark never passes the last windows of a bounded file. Freshet
  (and Flink) advance the watermark to +infinity when a bounded file ends. To get the same answer, a
  second file source is unioned in that holds one sentinel event dated 2999-01-01; it raises the
  watermark after the only data batch, Spark's no-data batch then closes every window, and the
  sentinel itself is filtered out right after the watermark operator (the filter references the event
  time column, which Spark never pushes below EventTimeWatermark, so the sentinel does move the
  watermark). The sentinel is read in the same micro-batch as the data, so it cannot make any real
  event late. Stateless cases (q0-q2) need no sentinel.
* COUNT(DISTINCT user_id) (tumble_file). Streaming Spark refuses distinct aggregates, and
  approx_count_distinct is not exact. We use two chained windowed aggregations (Spark >= 3.5 supports
  several stateful operators with per-operator watermark propagation): the first groups by
  (course_id, 1-minute window, user_id) and keeps that user's view count and purchase count; the
  second groups its output by (course_id, window(window_time(w), 1 minute)), which is the same window,
  and sums the views and purchases and counts the rows, one per distinct user: exact.
* q11 uses session_window(date_time, '10 seconds') grouped by bidder.
"""

import argparse
import json
import os
import shutil
import sys
import time

T_PROCESS = time.perf_counter()

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

COURSE_SCHEMA = ("user_id BIGINT, course_id BIGINT, region STRING, purchased BOOLEAN, "
                 "event_time TIMESTAMP")
BID_SCHEMA = ("auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, "
              "date_time TIMESTAMP, extra STRING")
SENTINEL_TIME = "2999-01-01T00:00:00.000Z"
SENTINEL_LIMIT = "2900-01-01 00:00:00"  # every real event is before this, the sentinel after


def write_sentinel(work, case):
    d = os.path.join(work, "sentinel")
    os.makedirs(d, exist_ok=True)
    if case == "tumble_file":
        row = {"user_id": 0, "course_id": 0, "region": "sentinel", "purchased": False,
               "event_time": SENTINEL_TIME}
    else:
        row = {"auction": 0, "bidder": 0, "price": 0, "channel": "sentinel", "url": "",
               "date_time": SENTINEL_TIME, "extra": ""}
    with open(os.path.join(d, "sentinel.jsonl"), "w") as f:
        f.write(json.dumps(row) + "\n")
    return d


def source(spark, path, schema, work, case, time_col, delay, with_sentinel):
    # A file stream source reads directories: the file's own directory, filtered to its name.
    name = "".join("\\" + c if c in "[]{}*?\\" else c for c in os.path.basename(path))
    df = (spark.readStream.schema(schema).option("pathGlobFilter", name)
          .json(os.path.dirname(path)))
    if with_sentinel:
        sentinel = spark.readStream.schema(schema).json(write_sentinel(work, case))
        df = df.unionByName(sentinel)
    df = df.withWatermark(time_col, delay)
    if with_sentinel:
        df = df.where(F.col(time_col) < F.lit(SENTINEL_LIMIT).cast("timestamp"))
    return df


def build(spark, case, inp, work):
    if case == "tumble_file":
        ev = source(spark, inp, COURSE_SCHEMA, work, case, "event_time", "5 seconds", True)
        # Stage 1: one row per (course, window, user): that user's views and purchases.
        per_user = (ev.groupBy(F.col("course_id"), F.window("event_time", "1 minute").alias("w"),
                               F.col("user_id"))
                    .agg(F.count(F.lit(1)).alias("n"),
                         F.sum(F.when(F.col("purchased"), 1).otherwise(0)).alias("p")))
        # Stage 2: the same window again (window_time(w) = w.end - 1 us lies in w): rows are users.
        per_course = (per_user.groupBy(F.col("course_id"),
                                       F.window(F.window_time("w"), "1 minute").alias("w"))
                      .agg(F.sum("n").alias("views"), F.count(F.lit(1)).alias("viewers"),
                           F.sum("p").alias("purchases")))
        return per_course.select("course_id", F.col("w.start").alias("window_start"),
                                 F.col("w.end").alias("window_end"), "views", "viewers", "purchases")
    if case in ("q0", "q1", "q2"):
        bid = source(spark, inp, BID_SCHEMA, work, case, "date_time", "4 seconds", False)
        if case == "q0":
            return bid.select("auction", "bidder", "price", "date_time", "extra")
        if case == "q1":
            # 0.908 is DECIMAL(3,3): the product is an exact DECIMAL(23,3), as in Flink.
            return bid.selectExpr("auction", "bidder", "0.908 * price AS price", "date_time", "extra")
        return bid.where("auction % 123 = 0").select("auction", "price")
    if case == "q11":
        bid = source(spark, inp, BID_SCHEMA, work, case, "date_time", "4 seconds", True)
        s = (bid.groupBy(F.col("bidder"), F.session_window("date_time", "10 seconds").alias("s"))
             .agg(F.count(F.lit(1)).alias("bid_count")))
        return s.select("bidder", "bid_count", F.col("s.start").alias("starttime"),
                        F.col("s.end").alias("endtime"))
    raise SystemExit(f"unknown case {case}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("input")
    ap.add_argument("out")
    ap.add_argument("--work", default=None, help="scratch dir for checkpoints (default OUT.work)")
    ap.add_argument("--driver-memory", default=os.environ.get("SPARK_DRIVER_MEMORY", "6g"))
    args = ap.parse_args()
    inp = os.path.abspath(args.input)
    out = os.path.abspath(args.out)
    work = os.path.abspath(args.work or out + ".work")
    for d in (out, work):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(work)

    t0 = time.perf_counter()
    spark = (SparkSession.builder.master("local[2]").appName(f"freshet-peer-{args.case}")
             .config("spark.driver.memory", args.driver_memory)
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.session.timeZone", "UTC")
             # One shuffle partition per core (the default 200 means 200 state stores per batch).
             .config("spark.sql.shuffle.partitions", "2")
             .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
             .config("spark.sql.streaming.noDataMicroBatches.enabled", "true")
             .config("spark.sql.adaptive.enabled", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    session_s = time.perf_counter() - t0

    df = build(spark, args.case, inp, work)
    t1 = time.perf_counter()
    q = (df.writeStream.format("parquet").outputMode("append")
         .option("path", out).option("checkpointLocation", os.path.join(work, "checkpoint"))
         .trigger(availableNow=True).start())
    q.awaitTermination()
    seconds = time.perf_counter() - t1
    if q.exception() is not None:
        print(q.exception(), file=sys.stderr)
        sys.exit(1)
    batches = [p.get("batchId") for p in q.recentProgress]
    rows_in = sum(p.get("numInputRows", 0) for p in q.recentProgress)
    version = spark.version
    spark.stop()
    print(json.dumps({"engine": "spark", "version": version, "case": args.case,
                      "seconds": round(seconds, 3), "session_seconds": round(session_s, 3),
                      "process_seconds": round(time.perf_counter() - T_PROCESS, 3),
                      "rows_in": rows_in, "batches": len(batches)}))


if __name__ == "__main__":
    main()
