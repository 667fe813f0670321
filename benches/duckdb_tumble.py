"""DuckDB on the same file and query as benches/tumble_file.sql: the reference for the ratio.

    duckdb_tumble.py EVENTS_FILE OUT.parquet [--freshet DIR] [--tsv RESULTS] [--events N]

With --freshet, Freshet's Parquet output of the same query (DIR/*.parquet) is compared with
DuckDB's answer row for row (both checks are printed); with --tsv a row is appended to the
benchmark's results table (case, engine, events, seconds, cpu_s, peak_mib, check).
"""
import argparse
import resource
import sys
import time

import duckdb

ap = argparse.ArgumentParser()
ap.add_argument("events")
ap.add_argument("out")
ap.add_argument("--freshet")
ap.add_argument("--tsv")
ap.add_argument("--events", dest="n", type=int, default=0)
args = ap.parse_args()

con = duckdb.connect()
con.execute("SET threads TO 2")
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
con.execute(
    f"""
    COPY (
      SELECT course_id, time_bucket(INTERVAL '1 minute', event_time) AS window_start,
             time_bucket(INTERVAL '1 minute', event_time) + INTERVAL '1 minute' AS window_end,
             COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
             SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
      FROM read_json('{args.events}', format = 'newline_delimited',
                     columns = {{'user_id': 'BIGINT', 'course_id': 'BIGINT', 'region': 'VARCHAR',
                                 'purchased': 'BOOLEAN', 'event_time': 'TIMESTAMP'}})
      GROUP BY ALL
    ) TO '{args.out}' (FORMAT parquet)
    """
)
elapsed = time.perf_counter() - t0
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
peak = cpu1.ru_maxrss / 1024
rows = con.execute(f"SELECT COUNT(*) FROM read_parquet('{args.out}')").fetchone()[0]
print(f"duckdb {elapsed:.3f} s {rows} rows, {cpu:.2f} CPU s, {peak:.0f} MiB peak")

check = "ok"
if args.freshet:
    # Rows in one and not the other, either way (EXCEPT ALL keeps duplicates).
    cols = "course_id, window_start, window_end, views, viewers, purchases"
    theirs = f"SELECT {cols} FROM read_parquet('{args.freshet}/*.parquet')"
    ours = f"SELECT {cols} FROM read_parquet('{args.out}')"
    extra = con.execute(f"SELECT COUNT(*) FROM ({theirs} EXCEPT ALL {ours})").fetchone()[0]
    missing = con.execute(f"SELECT COUNT(*) FROM ({ours} EXCEPT ALL {theirs})").fetchone()[0]
    if extra or missing:
        check = "WRONG"
        print(f"tumble_file: Freshet's output differs from DuckDB's: {missing} rows missing, {extra} unexpected")
    else:
        print(f"tumble_file: Freshet's output equals DuckDB's ({rows} rows)")
if args.tsv:
    with open(args.tsv, "a") as f:
        f.write(f"tumble_file\tduckdb\t{args.n}\t{elapsed:.3f}\t{cpu:.2f}\t{peak:.1f}\tok\n")
        if args.freshet:
            f.write(f"tumble_file\tfreshet-check\t\t\t\t\t{check}\n")
sys.exit(0 if check == "ok" else 1)
