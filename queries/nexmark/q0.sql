-- Nexmark q0: pass-through: each bid, projected (the cost of reading, decoding and writing).
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q0.sql (from that directory)
-- Output: out/nexmark/q0/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q0.sql, with Freshet's snake_case column names.

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

CREATE SINK nexmark_q0 WITH (connector = 'parquet', path = 'out/nexmark/q0') AS
SELECT auction, bidder, price, date_time, extra FROM bid;
