-- Nexmark q18: find last bid: each bidder's latest bid on each auction (deduplication).
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q18.sql (from that directory)
-- Output: out/nexmark/q18/part-*.parquet: a changelog (an `op` column, +I -U +U -D), replayed in
--   order it gives the result.
-- Standard text: nexmark-flink's queries/q18.sql, with Freshet's snake_case column names.
-- ROW_NUMBER() ... ORDER BY date_time DESC ... <= 1 keeps the last row per key; of bids with the same
-- time, the one that arrived last (Flink's rule).

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

CREATE SINK nexmark_q18 WITH (connector = 'parquet', path = 'out/nexmark/q18', format = 'changelog') AS
SELECT auction, bidder, price, channel, url, date_time, extra
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC) AS rank_number
      FROM bid)
WHERE rank_number <= 1;
