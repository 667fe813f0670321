-- Nexmark q11: user sessions: bids per bidder in sessions closed by 10 s without a bid.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q11.sql (from that directory)
-- Output: out/nexmark/q11/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q11.sql, with Freshet's snake_case column names.
-- Flink's legacy GROUP BY SESSION(...) is written as the SESSION window function with PARTITION BY.

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

CREATE SINK nexmark_q11 WITH (connector = 'parquet', path = 'out/nexmark/q11') AS
SELECT
    bidder,
    count(*) AS bid_count,
    window_start AS starttime,
    window_end AS endtime
FROM TABLE(
    SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;
