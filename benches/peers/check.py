#!/usr/bin/env python3
"""Checks a peer's Parquet output against DuckDB's batch answer over the same input.

    check.py CASE INPUT OUT_DIR

CASE is tumble_file (INPUT: course events, JSON lines) or a Nexmark case q0, q1, q2, q3, q4, q5,
q7, q8, q9, q11 (INPUT: the Nexmark directory with person.jsonl, auction.jsonl and bid.jsonl, or a
file in it; q0-q2 and q11 read INPUT itself when it is a file, e.g. bid.jsonl). OUT_DIR holds the
peer's output files (any depth; names starting with '.' or '_', such as Flink's in-progress files and
Spark's _spark_metadata, are skipped): Parquet, or for an updating result (q4, q9) a changelog,
replayed to its final state (each insert adds its row, each retraction takes one back): Freshet's
Parquet with a first column `op` (+I -U +U -D), or Flink's debezium-json lines (`after` adds,
`before` takes back). The rows must equal DuckDB's as a multiset, column by column in order (names
are not compared), with exact values: integers as BIGINT, timestamps as epoch microseconds (whatever
the Parquet time unit or zone flag), non-integer numbers as DECIMAL(38, 3) (q1's 0.908 * price has
three decimals; a DOUBLE is rounded to them), text as text. Prints one line, `ok ...` or `WRONG ...`
with a few differing rows, and exits 0 or 1.

The reference SQL is the batch meaning of Freshet's queries (benches/tumble_file.sql,
queries/nexmark/qN.sql) on bounded files whose end closes every window, as in
scripts/nexmark_oracle.py (whose SQL q3-q9 are; its q11 differs, see below) and
benches/duckdb_tumble.py; standalone so that the peers need only this directory. The inputs are
expected to have no late events (the generators' default disorder is within the watermark); none is
dropped here.
"""

import json
import os
import sys
import time

import duckdb

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%gZ"
COURSE_COLUMNS = ("{'user_id': 'BIGINT', 'course_id': 'BIGINT', 'region': 'VARCHAR', "
                  "'purchased': 'BOOLEAN', 'event_time': 'TIMESTAMP'}")
BID_COLUMNS = ("{'auction': 'BIGINT', 'bidder': 'BIGINT', 'price': 'BIGINT', 'channel': 'VARCHAR', "
               "'url': 'VARCHAR', 'date_time': 'TIMESTAMP', 'extra': 'VARCHAR'}")
PERSON_COLUMNS = ("{'id': 'BIGINT', 'name': 'VARCHAR', 'email_address': 'VARCHAR', "
                  "'credit_card': 'VARCHAR', 'city': 'VARCHAR', 'state': 'VARCHAR', "
                  "'date_time': 'TIMESTAMP', 'extra': 'VARCHAR'}")
AUCTION_COLUMNS = ("{'id': 'BIGINT', 'item_name': 'VARCHAR', 'description': 'VARCHAR', "
                   "'initial_bid': 'BIGINT', 'reserve': 'BIGINT', 'date_time': 'TIMESTAMP', "
                   "'expires': 'TIMESTAMP', 'seller': 'BIGINT', 'category': 'BIGINT', "
                   "'extra': 'VARCHAR'}")
NEXMARK_COLUMNS = {"person": PERSON_COLUMNS, "auction": AUCTION_COLUMNS, "bid": BID_COLUMNS}
# Window starts as epoch arithmetic (windows are aligned to the Unix epoch in every engine).
W10 = "epoch_ms((epoch_ms(date_time) // 10000) * 10000)"

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
    # q3-q9: scripts/nexmark_oracle.py's SQL. `bid_seq` is `bid` with its line number `seq` (the
    # order bids arrive in): of equal (price, date_time) q9's Top-1 keeps the bid that came first.
    "q3": """
        SELECT P.name, P.city, P.state, A.id FROM auction A JOIN person P ON A.seller = P.id
        WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')""",
    "q4": """
        SELECT category, avg(final) FROM (
            SELECT max(B.price) AS final, A.category FROM auction A JOIN bid B ON A.id = B.auction
            WHERE B.date_time BETWEEN A.date_time AND A.expires GROUP BY A.id, A.category) Q
        GROUP BY category""",
    "q5": """
        WITH w AS (
            SELECT auction, epoch_ms((epoch_ms(date_time) // 2000) * 2000 - k.i * 2000) AS ws
            FROM bid CROSS JOIN (SELECT range AS i FROM range(5)) k),
        counts AS (SELECT auction, ws, count(*) AS num FROM w GROUP BY auction, ws),
        maxes AS (SELECT ws, max(num) AS maxn FROM counts GROUP BY ws)
        SELECT c.auction, c.num FROM counts c JOIN maxes m ON c.ws = m.ws AND c.num >= m.maxn""",
    "q7": f"""
        WITH b1 AS (SELECT max(price) AS maxprice, {W10} + INTERVAL 10 SECOND AS dt
                    FROM bid GROUP BY {W10})
        SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bid B JOIN b1 ON B.price = b1.maxprice
        WHERE B.date_time BETWEEN b1.dt - INTERVAL 10 SECOND AND b1.dt""",
    "q8": f"""
        WITH P AS (SELECT DISTINCT id, name, {W10} AS starttime FROM person),
             A AS (SELECT DISTINCT seller, {W10} AS starttime FROM auction)
        SELECT P.id, P.name, P.starttime FROM P JOIN A ON P.id = A.seller AND P.starttime = A.starttime""",
    "q9": """
        SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category,
               extra, auction, bidder, price, bid_date_time, bid_extra FROM (
            SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time, B.extra AS bid_extra,
                   row_number() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time, B.seq) AS rownum
            FROM auction A JOIN bid_seq B ON A.id = B.auction
            WHERE B.date_time BETWEEN A.date_time AND A.expires)
        WHERE rownum <= 1""",
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


def read_json(path, columns):
    return (f"SELECT * FROM read_json({sql_str(path)}, format = 'newline_delimited', "
            f"columns = {columns}, timestampformat = {sql_str(TS_FORMAT)})")


def register(con, case, inp):
    """View `src` over INPUT (a file) and, for Nexmark, person/auction/bid/bid_seq over its directory."""
    if case == "tumble_file":
        con.execute(f"CREATE VIEW src AS {read_json(inp, COURSE_COLUMNS)}")
        return
    data = inp if os.path.isdir(inp) else os.path.dirname(inp)
    for name, columns in NEXMARK_COLUMNS.items():
        con.execute(f"CREATE VIEW {name} AS {read_json(os.path.join(data, name + '.jsonl'), columns)}")
    # Line numbers: DuckDB keeps insertion order, so row_number() OVER () counts lines.
    con.execute("CREATE VIEW bid_seq AS SELECT *, row_number() OVER () AS seq FROM bid")
    con.execute(f"CREATE VIEW src AS {read_json(inp, BID_COLUMNS)}" if os.path.isfile(inp)
                else "CREATE VIEW src AS SELECT * FROM bid")


def is_parquet(path):
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def load_output(con, files):
    """The output files as table `got`; a changelog is replayed. Returns a problem or None."""
    parquet = [f for f in files if is_parquet(f)]
    other = [f for f in files if f not in parquet]
    if parquet and other:
        return f"both Parquet and other files in the output, e.g. {other[0]}"
    if parquet:
        listing = "[" + ", ".join(sql_str(f) for f in parquet) + "]"
        con.execute(f"CREATE TEMP TABLE got_raw AS SELECT * FROM read_parquet({listing})")
        cols = [r[0] for r in con.execute("DESCRIBE got_raw").fetchall()]
        if cols[0] != "op":
            con.execute("ALTER TABLE got_raw RENAME TO got")
            return None
        # Freshet's changelog: +I/+U add the row, -U/-D take one back.
        keep = ", ".join('"' + c.replace('"', '""') + '"' for c in cols[1:])
        sign = "CASE WHEN op IN ('+I', '+U') THEN 1 ELSE -1 END"
        con.execute(f"CREATE TEMP TABLE changes AS SELECT {keep}, {sign} AS __sign FROM got_raw")
    else:
        # Flink's debezium-json changelog: {"before": row|null, "after": row|null, "op": "c"|"d"}.
        # Typed as the expected answer's columns, by position.
        listing = "[" + ", ".join(sql_str(f) for f in other) + "]"
        con.execute(f"CREATE TEMP TABLE got_raw AS SELECT * FROM read_json({listing}, "
                    "format = 'newline_delimited', columns = {'before': 'JSON', 'after': 'JSON', 'op': 'VARCHAR'})")
        first = con.execute("SELECT coalesce(\"after\", \"before\") FROM got_raw LIMIT 1").fetchone()
        if first is None:
            con.execute("CREATE TEMP TABLE got AS SELECT * FROM expected LIMIT 0")
            return None
        names = list(json.loads(first[0]).keys())
        types = [r[1] for r in con.execute("DESCRIBE expected").fetchall()]
        if len(names) != len(types):
            return f"{len(names)} columns {names}, expected {len(types)}"

        def row(side):
            return ", ".join(f"CAST(json_extract_string({side}, {sql_str('$.' + n)}) AS {t}) AS c{i}"
                             for i, (n, t) in enumerate(zip(names, types)))
        con.execute(f"""CREATE TEMP TABLE changes AS
            SELECT {row('"after"')}, 1 AS __sign FROM got_raw WHERE "after" IS NOT NULL
            UNION ALL SELECT {row('"before"')}, -1 FROM got_raw WHERE "before" IS NOT NULL""")
        keep = ", ".join(f"c{i}" for i in range(len(types)))
    con.execute(f"""CREATE TEMP TABLE net AS SELECT {keep}, CAST(sum(__sign) AS BIGINT) AS __n
                    FROM changes GROUP BY ALL""")
    negative = con.execute("SELECT count(*) FROM net WHERE __n < 0").fetchone()[0]
    con.execute(f"CREATE TEMP TABLE got AS SELECT {keep} FROM "
                "(SELECT *, unnest(range(__n)) FROM net WHERE __n > 0)")
    if negative:
        return f"the changelog retracts {negative} row(s) it never inserted"
    return None


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
    register(con, case, inp)
    t0 = time.perf_counter()
    con.execute(f"CREATE TEMP TABLE expected AS {QUERIES[case]}")
    duck_s = time.perf_counter() - t0
    n_exp = con.execute("SELECT count(*) FROM expected").fetchone()[0]

    files = parquet_files(out_dir)
    if not files:
        print(f"WRONG no output files in {out_dir}; expected {n_exp} rows")
        sys.exit(1)
    problem = load_output(con, files)
    if problem:
        print(f"WRONG {problem}")
        sys.exit(1)
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
