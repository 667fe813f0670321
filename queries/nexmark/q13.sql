-- Nexmark q13: bounded side input join: each bid with a value looked up by its auction.
--
-- Input: data/nexmark/bid.jsonl, data/nexmark/side_input.csv
--   (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q13.sql (from that directory)
-- Output: out/nexmark/q13/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q13.sql, with Freshet's snake_case column names.
-- Flink joins FOR SYSTEM_TIME AS OF PROCTIME() against side_input.txt; Freshet's lookup join to a
-- bounded table is that join (the table is read when the query starts). `freshet generate nexmark`
-- writes data/nexmark/side_input.csv (key,value for keys 0-9999, as Flink's SideInputGenerator).
-- MOD(B.auction, 10000) is written B.auction % 10000.

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

CREATE TABLE side_input (key BIGINT, value VARCHAR)
WITH ('connector' = 'filesystem', 'path' = 'data/nexmark/side_input.csv', 'format' = 'csv');

CREATE SINK nexmark_q13 WITH (connector = 'parquet', path = 'out/nexmark/q13') AS
SELECT
    B.auction,
    B.bidder,
    B.price,
    B.date_time,
    S.value
FROM bid B
JOIN side_input S
ON B.auction % 10000 = S.key;
