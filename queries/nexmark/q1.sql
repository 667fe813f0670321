-- Nexmark q1: currency conversion: bid prices from dollars to euros.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q1.sql (from that directory)
-- Output: out/nexmark/q1/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q1.sql, with Freshet's snake_case column names.
-- Flink's price is DECIMAL(23, 3); DataFusion reads 0.908 as a DOUBLE, so price is a DOUBLE here.

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

CREATE SINK nexmark_q1 WITH (connector = 'parquet', path = 'out/nexmark/q1') AS
SELECT
    auction,
    bidder,
    0.908 * price AS price, -- dollars to euros
    date_time,
    extra
FROM bid;
