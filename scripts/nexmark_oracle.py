#!/usr/bin/env python3
"""Nexmark batch oracle (DuckDB) and comparator for Freshet's results.

For each query q0-q22 it computes the expected final result in plain batch SQL over the three JSONL
files `freshet generate nexmark` writes (windows as epoch arithmetic, Top-N as ROW_NUMBER with
Flink's tie rules), timing DuckDB on the same files, and compares it with what Freshet wrote under
RESULTS/qN (Parquet; a changelog with an `op` column is replayed to its final state: each +I/+U adds
its row, each -U/-D takes one back). Rows compare as multisets, by position, with DOUBLE and DECIMAL
values rounded to 3 decimals (Freshet computes 0.908 * price in DOUBLE, DuckDB in DECIMAL).

    nexmark_oracle.py --data DIR --results OUT/nexmark [--queries q0,q5] [--freshet FRESHET.tsv]

--freshet names the bench script's per-query Freshet figures (query, status, rows in, wall seconds,
peak MiB, message; tab-separated), printed beside DuckDB's. Exit status 1 when a query Freshet ran
differs from the oracle. Used by scripts/bench-nexmark.sh, which installs duckdb in a venv.
"""

import argparse
import glob
import os
import resource
import sys
import time

import duckdb

SCHEMAS = {
    "person": {
        "id": "BIGINT",
        "name": "VARCHAR",
        "email_address": "VARCHAR",
        "credit_card": "VARCHAR",
        "city": "VARCHAR",
        "state": "VARCHAR",
        "date_time": "TIMESTAMP",
        "extra": "VARCHAR",
    },
    "auction": {
        "id": "BIGINT",
        "item_name": "VARCHAR",
        "description": "VARCHAR",
        "initial_bid": "BIGINT",
        "reserve": "BIGINT",
        "date_time": "TIMESTAMP",
        "expires": "TIMESTAMP",
        "seller": "BIGINT",
        "category": "BIGINT",
        "extra": "VARCHAR",
    },
    "bid": {
        "auction": "BIGINT",
        "bidder": "BIGINT",
        "price": "BIGINT",
        "channel": "VARCHAR",
        "url": "VARCHAR",
        "date_time": "TIMESTAMP",
        "extra": "VARCHAR",
    },
}

# Window starts as epoch arithmetic (windows are aligned to the Unix epoch, as Freshet's and Flink's).
W10 = "epoch_ms((epoch_ms(date_time) // 10000) * 10000)"
RANKS = """
    count(*) FILTER (WHERE price < 10000), count(*) FILTER (WHERE price >= 10000 AND price < 1000000),
    count(*) FILTER (WHERE price >= 1000000),
    count(DISTINCT bidder), count(DISTINCT bidder) FILTER (WHERE price < 10000),
    count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000),
    count(DISTINCT bidder) FILTER (WHERE price >= 1000000),
    count(DISTINCT auction), count(DISTINCT auction) FILTER (WHERE price < 10000),
    count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000),
    count(DISTINCT auction) FILTER (WHERE price >= 1000000)"""
CHANNEL_ID = "(&|^)channel_id=([^&]*)"

# The batch answer of each query, in DuckDB's SQL. `bid_seq` is `bid` with `seq`, the line number
# (the order events arrive in), for the tie rules: of equal sort keys a Top-N keeps the row that came
# first, deduplication on `ORDER BY … DESC` the one that came last. None: no final result to compare.
QUERIES = {
    "q0": "SELECT auction, bidder, price, date_time, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908 * price, date_time, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    "q3": """SELECT P.name, P.city, P.state, A.id FROM auction A JOIN person P ON A.seller = P.id
             WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')""",
    "q4": """SELECT category, avg(final) FROM (
                SELECT max(B.price) AS final, A.category FROM auction A JOIN bid B ON A.id = B.auction
                WHERE B.date_time BETWEEN A.date_time AND A.expires GROUP BY A.id, A.category) Q
             GROUP BY category""",
    "q5": """WITH w AS (
                SELECT auction, epoch_ms((epoch_ms(date_time) // 2000) * 2000 - k.i * 2000) AS ws
                FROM bid CROSS JOIN (SELECT range AS i FROM range(5)) k),
             counts AS (SELECT auction, ws, count(*) AS num FROM w GROUP BY auction, ws),
             maxes AS (SELECT ws, max(num) AS maxn FROM counts GROUP BY ws)
             SELECT c.auction, c.num FROM counts c JOIN maxes m ON c.ws = m.ws AND c.num >= m.maxn""",
    # An OVER aggregate over an updating input (the winning bid changes): Flink refuses it too.
    "q6": None,
    "q7": f"""WITH b1 AS (SELECT max(price) AS maxprice, {W10} + INTERVAL 10 SECOND AS dt FROM bid GROUP BY {W10})
             SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bid B JOIN b1 ON B.price = b1.maxprice
             WHERE B.date_time BETWEEN b1.dt - INTERVAL 10 SECOND AND b1.dt""",
    "q8": f"""WITH P AS (SELECT DISTINCT id, name, {W10} AS starttime FROM person),
                  A AS (SELECT DISTINCT seller, {W10} AS starttime FROM auction)
             SELECT P.id, P.name, P.starttime FROM P JOIN A ON P.id = A.seller AND P.starttime = A.starttime""",
    "q9": """SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category, extra,
                    auction, bidder, price, bid_date_time, bid_extra FROM (
                SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time, B.extra AS bid_extra,
                       row_number() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time, B.seq) AS rownum
                FROM auction A JOIN bid_seq B ON A.id = B.auction
                WHERE B.date_time BETWEEN A.date_time AND A.expires)
             WHERE rownum <= 1""",
    "q10": """SELECT auction, bidder, price, date_time, extra, strftime(date_time, '%Y-%m-%d'),
                     strftime(date_time, '%H:%M') FROM bid""",
    # Gaps and islands over each bidder's distinct times (with ties, LAG and the running SUM could
    # order equal times differently and split a session).
    "q11": """WITH t AS (SELECT bidder, date_time, count(*) AS n FROM bid GROUP BY bidder, date_time),
             marked AS (
                SELECT *, CASE WHEN date_time - lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time)
                                    <= INTERVAL 10 SECOND THEN 0 ELSE 1 END AS new_session
                FROM t),
             numbered AS (
                SELECT *, sum(new_session) OVER (PARTITION BY bidder ORDER BY date_time
                                                 ROWS UNBOUNDED PRECEDING) AS sid FROM marked)
             SELECT bidder, sum(n), min(date_time), max(date_time) + INTERVAL 10 SECOND
             FROM numbered GROUP BY bidder, sid""",
    "q12": f"""SELECT bidder, count(*), {W10}, {W10} + INTERVAL 10 SECOND FROM bid GROUP BY bidder, {W10}""",
    "q13": """SELECT B.auction, B.bidder, B.price, B.date_time, S.value FROM bid B JOIN side_input S
              ON B.auction % 10000 = S.key""",
    "q14": """SELECT auction, bidder, 0.908 * price,
                     CASE WHEN hour(date_time) >= 8 AND hour(date_time) <= 18 THEN 'dayTime'
                          WHEN hour(date_time) <= 6 OR hour(date_time) >= 20 THEN 'nightTime'
                          ELSE 'otherTime' END,
                     date_time, extra, length(extra) - length(replace(extra, 'c', ''))
              FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000""",
    "q15": f"""SELECT strftime(date_time, '%Y-%m-%d'), count(*), {RANKS}
               FROM bid GROUP BY strftime(date_time, '%Y-%m-%d')""",
    "q16": f"""SELECT channel, strftime(date_time, '%Y-%m-%d'), max(strftime(date_time, '%H:%M')), count(*), {RANKS}
               FROM bid GROUP BY channel, strftime(date_time, '%Y-%m-%d')""",
    "q17": """SELECT auction, strftime(date_time, '%Y-%m-%d'), count(*),
                     count(*) FILTER (WHERE price < 10000),
                     count(*) FILTER (WHERE price >= 10000 AND price < 1000000),
                     count(*) FILTER (WHERE price >= 1000000),
                     min(price), max(price), avg(price), sum(price)
              FROM bid GROUP BY auction, strftime(date_time, '%Y-%m-%d')""",
    "q18": """SELECT auction, bidder, price, channel, url, date_time, extra FROM (
                SELECT *, row_number() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC, seq DESC) AS rn
                FROM bid_seq)
              WHERE rn <= 1""",
    "q19": """SELECT auction, bidder, price, channel, url, date_time, extra, rank_number FROM (
                SELECT *, row_number() OVER (PARTITION BY auction ORDER BY price DESC, seq) AS rank_number
                FROM bid_seq)
              WHERE rank_number <= 10""",
    "q20": """SELECT B.auction, B.bidder, B.price, B.channel, B.url, B.date_time, B.extra,
                     A.item_name, A.description, A.initial_bid, A.reserve, A.date_time, A.expires, A.seller,
                     A.category, A.extra
              FROM bid B JOIN auction A ON B.auction = A.id WHERE A.category = 10""",
    "q21": f"""SELECT auction, bidder, price, channel,
                      CASE lower(channel) WHEN 'apple' THEN '0' WHEN 'google' THEN '1' WHEN 'facebook' THEN '2'
                           WHEN 'baidu' THEN '3' ELSE cid END
               FROM (SELECT *, CASE WHEN regexp_matches(url, '{CHANNEL_ID}')
                                    THEN regexp_extract(url, '{CHANNEL_ID}', 2) END AS cid FROM bid)
               WHERE cid IS NOT NULL OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')""",
    "q22": """SELECT auction, bidder, price, channel, split_part(url, '/', 4), split_part(url, '/', 5),
                     split_part(url, '/', 6) FROM bid""",
}


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def register(con, data):
    """Views over the files: every query reads (and parses) them itself, as Freshet does."""
    for name, cols in SCHEMAS.items():
        spec = "{" + ", ".join(f"{sql_str(c)}: {sql_str(t)}" for c, t in cols.items()) + "}"
        path = sql_str(os.path.join(data, f"{name}.jsonl"))
        con.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_json({path}, format = 'newline_delimited', "
            f"columns = {spec}, timestampformat = '%Y-%m-%dT%H:%M:%S.%gZ')"
        )
    # Line numbers: insertion order is preserved (DuckDB's default), so row_number() OVER () counts
    # lines; checked below on person.jsonl, whose ids follow the line order.
    con.execute("CREATE VIEW bid_seq AS SELECT *, row_number() OVER () AS seq FROM bid")
    side = sql_str(os.path.join(data, "side_input.csv"))
    con.execute(
        f"CREATE VIEW side_input AS SELECT * FROM read_csv({side}, header = true, "
        "columns = {'key': 'BIGINT', 'value': 'VARCHAR'})"
    )


def check_line_order(con):
    bad = con.execute(
        "SELECT count(*) FROM (SELECT id, row_number() OVER () AS seq FROM person) WHERE id <> 999 + seq"
    ).fetchone()[0]
    if bad:
        sys.exit("DuckDB did not number person.jsonl in line order; the seq tie rules would be wrong")


def normalized(con, table):
    """A SELECT over `table` with comparable columns: doubles/decimals rounded, integers BIGINT."""
    cols = con.execute(f"DESCRIBE {table}").fetchall()
    out = []
    for i, (name, typ, *_) in enumerate(cols):
        q = '"' + name.replace('"', '""') + '"'
        t = typ.upper()
        if t.startswith(("DOUBLE", "FLOAT", "REAL", "DECIMAL")):
            e = f"round(CAST({q} AS DOUBLE), 3)"
        elif t.startswith("TIMESTAMP"):
            e = f"CAST({q} AS TIMESTAMP)"
        elif t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                   "UINTEGER", "UBIGINT"):
            e = f"CAST({q} AS BIGINT)"
        else:
            e = f"CAST({q} AS VARCHAR)"
        out.append(f"{e} AS c{i}")
    return f"SELECT {', '.join(out)} FROM {table}", len(cols)


def load_freshet(con, qdir):
    """Freshet's rows as table `got` (a changelog replayed); the replay problem, if any."""
    files = sorted(glob.glob(os.path.join(qdir, "*.parquet")))
    if not files:
        return "no Parquet files in " + qdir
    listing = "[" + ", ".join(sql_str(f) for f in files) + "]"
    con.execute(f"CREATE OR REPLACE TEMP TABLE got_raw AS SELECT * FROM read_parquet({listing})")
    cols = [r[0] for r in con.execute("DESCRIBE got_raw").fetchall()]
    if cols[0] != "op":
        con.execute("CREATE OR REPLACE TEMP TABLE got AS SELECT * FROM got_raw")
        return None
    keep = ", ".join('"' + c.replace('"', '""') + '"' for c in cols[1:])
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE net AS
            SELECT {keep}, CAST(sum(CASE WHEN op IN ('+I', '+U') THEN 1 ELSE -1 END) AS BIGINT) AS __n
            FROM got_raw GROUP BY ALL"""
    )
    negative = con.execute("SELECT count(*) FROM net WHERE __n < 0").fetchone()[0]
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE got AS SELECT {keep} FROM (SELECT *, unnest(range(__n)) FROM net WHERE __n > 0)"
    )
    if negative:
        return f"the changelog retracts {negative} row(s) it never inserted"
    return None


def compare(con, qdir):
    """(equal, description)."""
    problem = load_freshet(con, qdir)
    if problem and problem.startswith("no Parquet"):
        expected = con.execute("SELECT count(*) FROM expected").fetchone()[0]
        return expected == 0, f"{problem}; expected {expected} rows"
    e_sql, e_cols = normalized(con, "expected")
    g_sql, g_cols = normalized(con, "got")
    if e_cols != g_cols:
        return False, f"{g_cols} columns, expected {e_cols}"
    missing = con.execute(f"SELECT * FROM ({e_sql} EXCEPT ALL {g_sql}) LIMIT 5").fetchall()
    extra = con.execute(f"SELECT * FROM ({g_sql} EXCEPT ALL {e_sql}) LIMIT 5").fetchall()
    n_exp = con.execute("SELECT count(*) FROM expected").fetchone()[0]
    n_got = con.execute("SELECT count(*) FROM got").fetchone()[0]
    if not missing and not extra and not problem:
        return True, f"match ({n_got} rows)"
    lines = [f"DIFFER: {n_got} rows, expected {n_exp}" + (f"; {problem}" if problem else "")]
    for r in missing:
        lines.append(f"      missing:    {r}")
    for r in extra:
        lines.append(f"      unexpected: {r}")
    return False, "\n".join(lines)


def read_freshet(path):
    rows = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 6:
                    rows[parts[0]] = parts
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="directory with person.jsonl, auction.jsonl, bid.jsonl")
    ap.add_argument("--results", help="Freshet's output directory (out/nexmark): qN/*.parquet")
    ap.add_argument("--queries", default=",".join(QUERIES), help="comma-separated, e.g. q0,q5")
    ap.add_argument("--freshet", help="the bench script's Freshet figures (TSV)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tsv", help="append rows to this results table (scripts/bench.sh)")
    args = ap.parse_args()

    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    register(con, args.data)
    check_line_order(con)
    freshet = read_freshet(args.freshet)
    print(f"DuckDB {duckdb.__version__}, {args.threads} threads; Freshet: events/s = rows its sources read / wall time")
    print(f"{'query':6} {'freshet':8} {'rows in':>10} {'wall s':>8} {'events/s':>10} {'peak MiB':>9} "
          f"{'duckdb s':>9}  result")
    failed = False
    for q in args.queries.split(","):
        q = q.strip()
        sql = QUERIES[q]
        f = freshet.get(q)
        status, rows_in, wall, peak, msg = (f[1], f[2], f[3], f[4], f[5]) if f else ("-", "", "", "", "")
        eps = ""
        if status == "ok" and rows_in and wall and float(wall) > 0:
            eps = f"{int(rows_in) / float(wall) / 1e6:.2f} M"
        duck = "-"
        duck_cpu = ""
        result = ""
        check = status if status != "ok" else "-"
        if sql is None:
            result = "no batch oracle (see queries/nexmark/README.md)"
        else:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            con.execute(f"CREATE OR REPLACE TEMP TABLE expected AS {sql}")
            duck = f"{time.perf_counter() - t0:.2f}"
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            duck_cpu = f"{r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime:.2f}"
        if status == "ok" and sql is not None and args.results:
            ok, result = compare(con, os.path.join(args.results, q))
            failed |= not ok
            check = "ok" if ok else "WRONG"
        elif status not in ("ok", "-"):
            result = f"{status}: {msg}"
        if args.tsv and f:
            cpu = f[6] if len(f) > 6 else ""
            with open(args.tsv, "a") as out:
                out.write(f"nexmark_{q}\tfreshet\t{rows_in}\t{wall}\t{cpu}\t{peak}\t{check}\n")
                if duck != "-":
                    out.write(f"nexmark_{q}\tduckdb\t{rows_in}\t{duck}\t{duck_cpu}\t\tok\n")
        print(f"{q:6} {status:8} {rows_in:>10} {wall:>8} {eps:>10} {peak:>9} {duck:>9}  {result}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
