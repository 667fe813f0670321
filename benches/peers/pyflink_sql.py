#!/usr/bin/env python3
"""PyFlink (Flink SQL) peer for Freshet's benchmark cases: streaming mode, parallelism 2.

    pyflink_sql.py CASE INPUT OUT_DIR --jars DIR

CASE is tumble_file (INPUT: course events, JSON lines) or a Nexmark case q0, q1, q2, q3, q4, q5, q7,
q8, q9, q11 (INPUT: the Nexmark directory, or a file in it such as bid.jsonl; each case reads the
person.jsonl, auction.jsonl and bid.jsonl it needs from that directory). Each source is the
filesystem connector with format json and the table's watermark, the sink the filesystem connector
with format parquet, or for an updating result (q4, q9) format debezium-json, a changelog (the
filesystem sink takes the changelog mode of its format; Parquet is insert-only); the job runs in STREAMING mode on the local mini-cluster
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
The Nexmark queries are Freshet's queries/nexmark/qN.sql text, except: AVG(final) in q4 is
AVG(CAST(final AS DOUBLE)) (Flink's AVG of a BIGINT is a BIGINT, DataFusion's a DOUBLE); q7 compares
CAST(B.date_time AS TIMESTAMP(3)) with window_end (a TIMESTAMP(3), while the column is a
TIMESTAMP_LTZ(3)); output times are cast to TIMESTAMP(3); and q9's ORDER BY B.price DESC,
B.date_time ASC is written as the one key price * 10^17 - yyyyMMddHHmmssSSS(date_time) DESC (the
same order: the time part is below 10^17). With two sort keys Flink 2.3.0's planner marks the Top-1
insert-only (EXPLAIN ... CHANGELOG_MODE: changelogMode=[I] on the Rank) and the operator then writes
every new leader of an auction as an insert, with no retraction of the previous one; with one key it
produces the changelog [I,UB,UA,D].
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
PERSON = """CREATE TABLE person (
    id BIGINT, name STRING, email_address STRING, credit_card STRING, city STRING, state STRING,
    date_time TIMESTAMP_LTZ(3), extra STRING,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ({src})"""
AUCTION = """CREATE TABLE auction (
    id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, reserve BIGINT,
    date_time TIMESTAMP_LTZ(3), expires TIMESTAMP_LTZ(3), seller BIGINT, category BIGINT,
    extra STRING,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ({src})"""
TABLES = {"course_events": COURSE, "person": PERSON, "auction": AUCTION, "bid": BID}

# case: (source DDL(s), sink columns, SELECT[, sink format])
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
    "q3": (
        [AUCTION, PERSON],
        "name STRING, city STRING, state STRING, id BIGINT",
        """SELECT P.name, P.city, P.state, A.id
           FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
           WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')""",
    ),
    "q4": (
        [AUCTION, BID],
        "category BIGINT, avg_final DOUBLE",
        """SELECT Q.category, AVG(CAST(Q.final AS DOUBLE)) AS avg_final
           FROM (
               SELECT MAX(B.price) AS final, A.category
               FROM auction A, bid B
               WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
               GROUP BY A.id, A.category
           ) Q
           GROUP BY Q.category""",
        "debezium-json",
    ),
    "q5": (
        BID,
        "auction BIGINT, num BIGINT",
        """SELECT AuctionBids.auction, AuctionBids.num
           FROM (
               SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
               FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
               GROUP BY auction, window_start, window_end
           ) AS AuctionBids
           JOIN (
               SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime
               FROM (
                   SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
                   FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
                   GROUP BY auction, window_start, window_end
               ) AS CountBids
               GROUP BY CountBids.starttime, CountBids.endtime
           ) AS MaxBids
           ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime AND
              AuctionBids.num >= MaxBids.maxn""",
    ),
    "q7": (
        BID,
        "auction BIGINT, price BIGINT, bidder BIGINT, date_time TIMESTAMP(3), extra STRING",
        """SELECT B.auction, B.price, B.bidder, CAST(B.date_time AS TIMESTAMP(3)), B.extra
           FROM bid B
           JOIN (
               SELECT MAX(price) AS maxprice, window_end AS date_time
               FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
               GROUP BY window_start, window_end
           ) B1
           ON B.price = B1.maxprice
           WHERE CAST(B.date_time AS TIMESTAMP(3))
                 BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time""",
    ),
    "q8": (
        [PERSON, AUCTION],
        "id BIGINT, name STRING, starttime TIMESTAMP(3)",
        """SELECT P.id, P.name, P.starttime
           FROM (
               SELECT id, name, window_start AS starttime, window_end AS endtime
               FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
               GROUP BY id, name, window_start, window_end
           ) P
           JOIN (
               SELECT seller, window_start AS starttime, window_end AS endtime
               FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
               GROUP BY seller, window_start, window_end
           ) A
           ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime""",
    ),
    "q9": (
        [AUCTION, BID],
        "id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, reserve BIGINT, "
        "date_time TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT, category BIGINT, extra STRING, "
        "auction BIGINT, bidder BIGINT, price BIGINT, bid_date_time TIMESTAMP(3), bid_extra STRING",
        """SELECT id, item_name, description, initial_bid, reserve, CAST(date_time AS TIMESTAMP(3)),
                  CAST(expires AS TIMESTAMP(3)), seller, category, extra,
                  auction, bidder, price, CAST(bid_date_time AS TIMESTAMP(3)), bid_extra
           FROM (
               SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time, B.extra AS bid_extra,
                      -- ORDER BY B.price DESC, B.date_time ASC as one key (see the docstring)
                      ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY
                          CAST(B.price AS DECIMAL(38, 0)) * 100000000000000000
                          - CAST(DATE_FORMAT(B.date_time, 'yyyyMMddHHmmssSSS') AS DECIMAL(38, 0)) DESC
                      ) AS rownum
               FROM auction A, bid B
               WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
           )
           WHERE rownum <= 1""",
        "debezium-json",
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

    source_ddls, sink_cols, select, *fmt = CASES[args.case]
    sink_format = fmt[0] if fmt else "parquet"
    for ddl in source_ddls if isinstance(source_ddls, list) else [source_ddls]:
        table = next(name for name, t in TABLES.items() if t is ddl)
        path = inp
        if table != "course_events":
            path = os.path.join(inp if os.path.isdir(inp) else os.path.dirname(inp), table + ".jsonl")
        src = ", ".join(f"{sql_str(k)} = {sql_str(v)}" for k, v in {
            "connector": "filesystem", "path": "file://" + path, "format": "json",
            "json.timestamp-format.standard": "ISO-8601", "json.fail-on-missing-field": "true",
        }.items())
        env.execute_sql(ddl.format(src=src))
    if sink_format == "parquet":
        sink_opts = "'format' = 'parquet', 'parquet.utc-timezone' = 'true'"
    else:
        # A changelog: UPDATE_BEFORE/DELETE as {"before": row, "op": "d"}, INSERT/UPDATE_AFTER as
        # {"after": row, "op": "c"}; check.py replays it.
        sink_opts = (f"'format' = {sql_str(sink_format)}, "
                     f"{sql_str(sink_format + '.timestamp-format.standard')} = 'ISO-8601'")
    env.execute_sql(f"""CREATE TABLE sink ({sink_cols}) WITH (
        'connector' = 'filesystem', 'path' = {sql_str("file://" + out)}, {sink_opts})""")

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
