-- Nexmark q2: selection: the bids on a set of auctions.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q2.sql (from that directory)
-- Output: out/nexmark/q2/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q2.sql, with Freshet's snake_case column names.
-- MOD(auction, 123) is written auction % 123.

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

CREATE SINK nexmark_q2 WITH (connector = 'parquet', path = 'out/nexmark/q2') AS
SELECT auction, price FROM bid WHERE auction % 123 = 0;
