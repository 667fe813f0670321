-- Nexmark q10: log to file system: each bid with its day and minute.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q10.sql (from that directory)
-- Output: out/nexmark/q10/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q10.sql, with Freshet's snake_case column names.
-- Flink writes CSV files partitioned by (dt, hm); Freshet's Parquet sink does not partition, so the
-- partition columns are ordinary columns. DATE_FORMAT(t, 'yyyy-MM-dd') is to_char(t, '%Y-%m-%d').

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

CREATE SINK nexmark_q10 WITH (connector = 'parquet', path = 'out/nexmark/q10') AS
SELECT
    auction, bidder, price, date_time, extra,
    to_char(date_time, '%Y-%m-%d') AS dt,
    to_char(date_time, '%H:%M') AS hm
FROM bid;
