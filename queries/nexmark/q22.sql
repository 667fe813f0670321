-- Nexmark q22: get URL directories: the first three directories of each bid's URL.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q22.sql (from that directory)
-- Output: out/nexmark/q22/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q22.sql, with Freshet's snake_case column names.
-- SPLIT_INDEX(url, '/', i) counts from 0, split_part(url, '/', i + 1) from 1.

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

CREATE SINK nexmark_q22 WITH (connector = 'parquet', path = 'out/nexmark/q22') AS
SELECT
    auction, bidder, price, channel,
    split_part(url, '/', 4) AS dir1,
    split_part(url, '/', 5) AS dir2,
    split_part(url, '/', 6) AS dir3
FROM bid;
