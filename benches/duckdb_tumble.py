"""DuckDB on the same file and query as benches/tumble_file.sql: the reference for the ratio."""
import sys
import time

import duckdb

events, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads TO 2")
t0 = time.perf_counter()
con.execute(
    f"""
    COPY (
      SELECT course_id, time_bucket(INTERVAL '1 minute', event_time) AS window_start,
             time_bucket(INTERVAL '1 minute', event_time) + INTERVAL '1 minute' AS window_end,
             COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
             SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
      FROM read_json('{events}', format = 'newline_delimited',
                     columns = {{'user_id': 'BIGINT', 'course_id': 'BIGINT', 'region': 'VARCHAR',
                                 'purchased': 'BOOLEAN', 'event_time': 'TIMESTAMP'}})
      GROUP BY ALL
    ) TO '{out}' (FORMAT parquet)
    """
)
elapsed = time.perf_counter() - t0
rows = con.execute(f"SELECT COUNT(*) FROM read_parquet('{out}')").fetchone()[0]
print(f"duckdb {elapsed:.3f} s {rows} rows")
