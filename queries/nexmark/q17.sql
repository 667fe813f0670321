-- Nexmark q17: auction statistics report: bids and prices per auction and day.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q17.sql (from that directory)
-- Output: out/nexmark/q17/part-*.parquet: a changelog (an `op` column, +I -U +U -D), replayed in
--   order it gives the result.
-- Standard text: nexmark-flink's queries/q17.sql, with Freshet's snake_case column names.
-- An unwindowed GROUP BY: each change of a group is written to the changelog.
-- DATE_FORMAT(t, 'yyyy-MM-dd') is to_char(t, '%Y-%m-%d').
-- avg(price) is a DOUBLE (Flink's AVG of a BIGINT is a BIGINT).

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

CREATE SINK nexmark_q17 WITH (connector = 'parquet', path = 'out/nexmark/q17', format = 'changelog') AS
SELECT
    auction,
    to_char(date_time, '%Y-%m-%d') AS day,
    count(*) AS total_bids,
    count(*) FILTER (WHERE price < 10000) AS rank1_bids,
    count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
    count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
    min(price) AS min_price,
    max(price) AS max_price,
    avg(price) AS avg_price,
    sum(price) AS sum_price
FROM bid
GROUP BY auction, to_char(date_time, '%Y-%m-%d');
