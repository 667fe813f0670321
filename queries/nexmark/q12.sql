-- Nexmark q12: processing-time windows: bids per bidder in 10 s windows.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q12.sql (from that directory)
-- Output: out/nexmark/q12/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q12.sql, with Freshet's snake_case column names.
-- Flink's q12 windows on PROCTIME(). Freshet has no processing-time attribute (results must not
-- depend on when rows happen to be read), so this is the closest form it runs: the same TUMBLE on
-- event time.

CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    url       VARCHAR,
    date_time TIMESTAMP NOT NULL,
    extra     VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = 'data/nexmark/bid.jsonl', 'format' = 'json');

CREATE SINK nexmark_q12 WITH (connector = 'parquet', path = 'out/nexmark/q12') AS
SELECT
    bidder,
    count(*) AS bid_count,
    window_start AS starttime,
    window_end AS endtime
FROM TABLE(
    TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;
