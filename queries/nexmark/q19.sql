-- Nexmark q19: auction Top-10 price: the ten highest bids of each auction.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q19.sql (from that directory)
-- Output: out/nexmark/q19/part-*.parquet: a changelog (an `op` column, +I -U +U -D), replayed in
--   order it gives the result.
-- Standard text: nexmark-flink's queries/q19.sql, with Freshet's snake_case column names.
-- A Top-N (ROW_NUMBER ... <= 10): rows enter and leave the top ten as bids arrive.

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

CREATE SINK nexmark_q19 WITH (connector = 'parquet', path = 'out/nexmark/q19', format = 'changelog') AS
SELECT * FROM
(SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number FROM bid)
WHERE rank_number <= 10;
