#!/usr/bin/env python3
"""Spark Structured Streaming peer for Freshet's benchmark cases (local[2]).

    spark_ss.py CASE INPUT OUT_DIR [--work DIR]

CASE is tumble_file (INPUT: course events, JSON lines) or a Nexmark case q0, q1, q2, q3, q4, q5, q7,
q8, q9, q11 (INPUT: the Nexmark directory, or a file in it such as bid.jsonl; each case reads the
person.jsonl, auction.jsonl and bid.jsonl it needs from that directory). The query runs as a streaming job: readStream.json with an explicit schema and the case's watermark,
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
* q3 is a stream-stream inner join without any time bound (both sides kept in state, as in Freshet
  and Flink); its filters are applied before the join. No watermark or sentinel is needed.
* q5, q7, q8 are windowed aggregations whose final rows are then joined (Spark >= 3.5 allows a
  stream-stream join after append-mode aggregations, the watermark propagated per operator). q5's
  maximum per HOP window is a second aggregation over the first one's rows grouped by
  window(window_time(w), '2 seconds'): a 10 s window sliding by 2 s ends on a 2 s boundary, so its
  window_time (end - 1 us) falls in exactly one 2 s bucket, the one ending with it; the join matches
  the bucket's end with the HOP window's end. q7 joins every bid with the per-window maximum (the
  window's end, `w.end`, as B1.date_time). q8 groups each side by (key, window) with a count that is
  dropped (a GROUP BY without aggregates) and joins on the key and the window. Each stream carries its
  own sentinel (the watermark of a multi-input query is the minimum of its inputs').
* q4 and q9 are not expressible exactly: see NOT_EXPRESSIBLE (the script prints {"na": reason}).
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
PERSON_SCHEMA = ("id BIGINT, name STRING, email_address STRING, credit_card STRING, city STRING, "
                 "state STRING, date_time TIMESTAMP, extra STRING")
AUCTION_SCHEMA = ("id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, "
                  "reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, "
                  "category BIGINT, extra STRING")
SCHEMAS = {"person": PERSON_SCHEMA, "auction": AUCTION_SCHEMA, "bid": BID_SCHEMA}
SENTINEL_TIME = "2999-01-01T00:00:00.000Z"
# Cases Spark Structured Streaming cannot run exactly; the reason is reported instead of a time.
NOT_EXPRESSIBLE = {
    "q4": "the winning bid per auction (GROUP BY A.id after an unbounded stream-stream join) and the "
          "average per category are updating results with no event-time window: Spark refuses the "
          "query in append mode (a streaming aggregation without watermark), in update mode (stateful "
          "operators after the join may emit rows older than the global watermark: 'possible "
          "correctness issue') and in complete mode (no stream-stream join); its file sink is "
          "append-only",
    "q9": "a Top-N per auction (ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY ...) <= 1) over a "
          "stream: Spark refuses window functions other than time windows on streaming DataFrames "
          "(NON_TIME_WINDOW_NOT_SUPPORTED_IN_STREAMING) in every output mode",
}
SENTINEL_LIMIT = "2900-01-01 00:00:00"  # every real event is before this, the sentinel after


def write_sentinel(work, stream):
    d = os.path.join(work, "sentinel-" + stream)
    os.makedirs(d, exist_ok=True)
    if stream == "course":
        row = {"user_id": 0, "course_id": 0, "region": "sentinel", "purchased": False,
               "event_time": SENTINEL_TIME}
    elif stream == "bid":
        row = {"auction": 0, "bidder": 0, "price": 0, "channel": "sentinel", "url": "",
               "date_time": SENTINEL_TIME, "extra": ""}
    elif stream == "person":
        row = {"id": 0, "name": "sentinel", "email_address": "", "credit_card": "", "city": "",
               "state": "", "date_time": SENTINEL_TIME, "extra": ""}
    else:
        row = {"id": 0, "item_name": "sentinel", "description": "", "initial_bid": 0, "reserve": 0,
               "date_time": SENTINEL_TIME, "expires": SENTINEL_TIME, "seller": 0, "category": 0,
               "extra": ""}
    with open(os.path.join(d, "sentinel.jsonl"), "w") as f:
        f.write(json.dumps(row) + "\n")
    return d


def source(spark, path, schema, work, stream, time_col, delay, with_sentinel):
    # A file stream source reads directories: the file's own directory, filtered to its name.
    name = "".join("\\" + c if c in "[]{}*?\\" else c for c in os.path.basename(path))
    df = (spark.readStream.schema(schema).option("pathGlobFilter", name)
          .json(os.path.dirname(path)))
    if with_sentinel:
        sentinel = spark.readStream.schema(schema).json(write_sentinel(work, stream))
        df = df.unionByName(sentinel)
    if delay is None:
        return df
    df = df.withWatermark(time_col, delay)
    if with_sentinel:
        df = df.where(F.col(time_col) < F.lit(SENTINEL_LIMIT).cast("timestamp"))
    return df


def nexmark(spark, inp, work, stream, with_sentinel, delay="4 seconds"):
    """A Nexmark stream (person, auction or bid) from INPUT's directory, watermark date_time - 4 s."""
    data = inp if os.path.isdir(inp) else os.path.dirname(inp)
    return source(spark, os.path.join(data, stream + ".jsonl"), SCHEMAS[stream], work, stream,
                  "date_time", delay, with_sentinel)


def build(spark, case, inp, work):
    if case == "tumble_file":
        ev = source(spark, inp, COURSE_SCHEMA, work, "course", "event_time", "5 seconds", True)
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
        bid = source(spark, inp, BID_SCHEMA, work, "bid", "date_time", "4 seconds", False)
        if case == "q0":
            return bid.select("auction", "bidder", "price", "date_time", "extra")
        if case == "q1":
            # 0.908 is DECIMAL(3,3): the product is an exact DECIMAL(23,3), as in Flink.
            return bid.selectExpr("auction", "bidder", "0.908 * price AS price", "date_time", "extra")
        return bid.where("auction % 123 = 0").select("auction", "price")
    if case == "q11":
        bid = source(spark, inp, BID_SCHEMA, work, "bid", "date_time", "4 seconds", True)
        s = (bid.groupBy(F.col("bidder"), F.session_window("date_time", "10 seconds").alias("s"))
             .agg(F.count(F.lit(1)).alias("bid_count")))
        return s.select("bidder", "bid_count", F.col("s.start").alias("starttime"),
                        F.col("s.end").alias("endtime"))
    if case == "q3":
        # An unbounded inner join; no time semantics, so no watermark (nothing is ever late here).
        a = nexmark(spark, inp, work, "auction", False, None).where("category = 10").alias("A")
        p = (nexmark(spark, inp, work, "person", False, None)
             .where("state = 'OR' OR state = 'ID' OR state = 'CA'").alias("P"))
        return (a.join(p, F.col("A.seller") == F.col("P.id"))
                .select(F.col("P.name"), F.col("P.city"), F.col("P.state"), F.col("A.id")))
    if case == "q5":
        def auction_bids():
            bid = nexmark(spark, inp, work, "bid", True)
            return (bid.groupBy(F.col("auction"),
                                F.window("date_time", "10 seconds", "2 seconds").alias("w"))
                    .agg(F.count(F.lit(1)).alias("num")))
        ab = auction_bids().select("auction", "num", F.col("w.end").alias("endtime"))
        # The maximum per HOP window: its window_time (end - 1 us) lies in the 2 s bucket ending
        # with it, one bucket per window.
        mx = (auction_bids().groupBy(F.window(F.window_time("w"), "2 seconds").alias("m"))
              .agg(F.max("num").alias("maxn"))
              .select("maxn", F.col("m.end").alias("m_end")))
        return (ab.join(mx, (ab.endtime == mx.m_end) & (ab.num >= mx.maxn))
                .select("auction", "num"))
    if case == "q7":
        b = nexmark(spark, inp, work, "bid", True).alias("B")
        b1 = (nexmark(spark, inp, work, "bid", True)
              .groupBy(F.window("date_time", "10 seconds").alias("w"))
              .agg(F.max("price").alias("maxprice"))
              .select("maxprice", F.col("w.end").alias("dt")).alias("B1"))
        cond = ((F.col("B.price") == F.col("B1.maxprice"))
                & (F.col("B.date_time") >= F.col("B1.dt") - F.expr("INTERVAL 10 SECONDS"))
                & (F.col("B.date_time") <= F.col("B1.dt")))
        return b.join(b1, cond).select("B.auction", "B.price", "B.bidder", "B.date_time", "B.extra")
    if case == "q8":
        p = (nexmark(spark, inp, work, "person", True)
             .groupBy("id", "name", F.window("date_time", "10 seconds").alias("w"))
             .agg(F.count(F.lit(1)).alias("n"))
             .select("id", "name", F.col("w.start").alias("starttime"),
                     F.col("w.end").alias("endtime")).alias("P"))
        a = (nexmark(spark, inp, work, "auction", True)
             .groupBy("seller", F.window("date_time", "10 seconds").alias("w"))
             .agg(F.count(F.lit(1)).alias("n"))
             .select("seller", F.col("w.start").alias("starttime"),
                     F.col("w.end").alias("endtime")).alias("A"))
        cond = ((F.col("P.id") == F.col("A.seller")) & (F.col("P.starttime") == F.col("A.starttime"))
                & (F.col("P.endtime") == F.col("A.endtime")))
        return p.join(a, cond).select("P.id", "P.name", "P.starttime")
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
    if args.case in NOT_EXPRESSIBLE:
        print(f"{args.case}: not expressible exactly in Spark Structured Streaming: "
              f"{NOT_EXPRESSIBLE[args.case]}", file=sys.stderr)
        print(json.dumps({"engine": "spark", "case": args.case, "na": NOT_EXPRESSIBLE[args.case]}))
        return
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
