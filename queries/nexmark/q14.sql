-- Nexmark q14: calculation: converted prices, a time-of-day class and a character count, for big bids.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q14.sql (from that directory)
-- Output: out/nexmark/q14/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q14.sql, with Freshet's snake_case column names.
-- Flink calls a UDF count_char(extra, 'c'); Freshet has no UDFs, so it is the expression
-- length(extra) - length(replace(extra, 'c', '')). HOUR(t) is EXTRACT(HOUR FROM t). price is a
-- DOUBLE (Flink: DECIMAL(23, 3)), as in q1.

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

CREATE SINK nexmark_q14 WITH (connector = 'parquet', path = 'out/nexmark/q14') AS
SELECT
    auction,
    bidder,
    0.908 * price AS price,
    CASE
        WHEN EXTRACT(HOUR FROM date_time) >= 8 AND EXTRACT(HOUR FROM date_time) <= 18 THEN 'dayTime'
        WHEN EXTRACT(HOUR FROM date_time) <= 6 OR EXTRACT(HOUR FROM date_time) >= 20 THEN 'nightTime'
        ELSE 'otherTime'
    END AS bid_time_type,
    date_time,
    extra,
    CAST(length(extra) - length(replace(extra, 'c', '')) AS BIGINT) AS c_counts -- count_char(extra, 'c')
FROM bid
WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000;
