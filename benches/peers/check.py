#!/usr/bin/env python3
"""Checks a peer's Parquet output against DuckDB's batch answer over the same input.

    check.py CASE INPUT OUT_DIR

CASE is tumble_file (INPUT: course events, JSON lines) or q0, q1, q2, q11 (INPUT: Nexmark
bid.jsonl). OUT_DIR holds the peer's Parquet files (any depth; names starting with '.' or '_', such
as Flink's in-progress files and Spark's _spark_metadata, are skipped). The rows must equal DuckDB's
as a multiset, column by column in order (names are not compared), with exact values: integers as
BIGINT, timestamps as epoch microseconds (whatever the Parquet time unit or zone flag), non-integer
numbers as DECIMAL(38, 3) (q1's 0.908 * price has three decimals; a DOUBLE is rounded to them), text
as text. Prints one line, `ok ...` or `WRONG ...` with a few differing rows, and exits 0 or 1.

The reference SQL is the batch meaning of Freshet's queries (benches/tumble_file.sql,
queries/nexmark/q{0,1,2,11}.sql) on a bounded file whose end closes every window, as in
scripts/nexmark_oracle.py and benches/duckdb_tumble.py; standalone so that the peers need only this
directory. The inputs are expected to have no late events (the generators' default disorder is
within the watermark); none is dropped here.
"""

import os
import sys
import time

import duckdb

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%gZ"
COURSE_COLUMNS = ("{'user_id': 'BIGINT', 'course_id': 'BIGINT', 'region': 'VARCHAR', "
                  "'purchased': 'BOOLEAN', 'event_time': 'TIMESTAMP'}")
BID_COLUMNS = ("{'auction': 'BIGINT', 'bidder': 'BIGINT', 'price': 'BIGINT', 'channel': 'VARCHAR', "
               "'url': 'VARCHAR', 'date_time': 'TIMESTAMP', 'extra': 'VARCHAR'}")

QUERIES = {
    "tumble_file": """
        SELECT course_id, time_bucket(INTERVAL '1 minute', event_time) AS window_start,
               time_bucket(INTERVAL '1 minute', event_time) + INTERVAL '1 minute' AS window_end,
               COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
               SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
        FROM src GROUP BY ALL""",
    "q0": "SELECT auction, bidder, price, date_time, extra FROM src",
    "q1": "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM src",
    "q2": "SELECT auction, price FROM src WHERE auction % 123 = 0",
    # Sessions per bidder with a 10 s gap: gaps and islands over each bidder's distinct times; end =
    # last bid + 10 s. A bid more than 10 s after the previous one starts a new session; one exactly
    # 10 s after continues it: its window [t, t + 10 s) touches the session's [.., t), and Flink,
    # Spark and Freshet all merge touching session windows (seen on data with such gaps:
    # `freshet generate nexmark --rate 100`; scripts/nexmark_oracle.py splits them, with `<`).
    "q11": """
        WITH t AS (SELECT bidder, date_time, count(*) AS n FROM src GROUP BY bidder, date_time),
        marked AS (
            SELECT *, CASE WHEN date_time - lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time)
                                <= INTERVAL 10 SECOND THEN 0 ELSE 1 END AS new_session
            FROM t),
        numbered AS (
            SELECT *, sum(new_session) OVER (PARTITION BY bidder ORDER BY date_time
                                             ROWS UNBOUNDED PRECEDING) AS sid FROM marked)
        SELECT bidder, sum(n) AS bid_count, min(date_time) AS starttime,
               max(date_time) + INTERVAL 10 SECOND AS endtime
        FROM numbered GROUP BY bidder, sid""",
}


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def normalized(con, table):
    """A SELECT over `table` whose columns c0, c1, ... compare exactly across engines."""
    out = []
    cols = con.execute(f"DESCRIBE {table}").fetchall()
    for i, (name, typ, *_) in enumerate(cols):
        q = '"' + name.replace('"', '""') + '"'
        t = typ.upper()
        if t.startswith("TIMESTAMP") or t == "DATETIME":
            e = f"epoch_us({q})"
        elif t.startswith(("DOUBLE", "FLOAT", "REAL", "DECIMAL")):
            e = f"CAST({q} AS DECIMAL(38, 3))"
        elif t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                   "UINTEGER", "UBIGINT"):
            e = f"CAST({q} AS BIGINT)"
        else:
            e = f"CAST({q} AS VARCHAR)"
        out.append(f"{e} AS c{i}")
    return f"SELECT {', '.join(out)} FROM {table}", len(cols)


def parquet_files(out_dir):
    files = []
    for root, dirs, names in os.walk(out_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        files += [os.path.join(root, n) for n in sorted(names)
                  if not n.startswith((".", "_")) and not n.endswith((".crc", ".inprogress"))]
    return files


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in QUERIES:
        sys.exit(f"usage: check.py {{{'|'.join(QUERIES)}}} INPUT OUT_DIR")
    case, inp, out_dir = sys.argv[1:]
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET TimeZone = 'UTC'")
    columns = COURSE_COLUMNS if case == "tumble_file" else BID_COLUMNS
    con.execute(f"CREATE VIEW src AS SELECT * FROM read_json({sql_str(inp)}, "
                f"format = 'newline_delimited', columns = {columns}, "
                f"timestampformat = {sql_str(TS_FORMAT)})")
    t0 = time.perf_counter()
    con.execute(f"CREATE TEMP TABLE expected AS {QUERIES[case]}")
    duck_s = time.perf_counter() - t0
    n_exp = con.execute("SELECT count(*) FROM expected").fetchone()[0]

    files = parquet_files(out_dir)
    if not files:
        print(f"WRONG no Parquet files in {out_dir}; expected {n_exp} rows")
        sys.exit(1)
    listing = "[" + ", ".join(sql_str(f) for f in files) + "]"
    con.execute(f"CREATE TEMP TABLE got AS SELECT * FROM read_parquet({listing})")
    n_got = con.execute("SELECT count(*) FROM got").fetchone()[0]
    e_sql, e_cols = normalized(con, "expected")
    g_sql, g_cols = normalized(con, "got")
    if e_cols != g_cols:
        names = [r[0] for r in con.execute("DESCRIBE got").fetchall()]
        print(f"WRONG {g_cols} columns {names}, expected {e_cols}")
        sys.exit(1)
    missing = con.execute(f"SELECT * FROM ({e_sql} EXCEPT ALL {g_sql}) LIMIT 3").fetchall()
    extra = con.execute(f"SELECT * FROM ({g_sql} EXCEPT ALL {e_sql}) LIMIT 3").fetchall()
    if not missing and not extra and n_got == n_exp:
        print(f"ok {n_got} rows, equal to DuckDB's ({duckdb.__version__}, {duck_s:.2f} s)")
        return
    n_missing = con.execute(f"SELECT count(*) FROM ({e_sql} EXCEPT ALL {g_sql})").fetchone()[0]
    n_extra = con.execute(f"SELECT count(*) FROM ({g_sql} EXCEPT ALL {e_sql})").fetchone()[0]
    print(f"WRONG {n_got} rows, expected {n_exp}: {n_missing} missing, e.g. {missing}; "
          f"{n_extra} unexpected, e.g. {extra}")
    sys.exit(1)


if __name__ == "__main__":
    main()
