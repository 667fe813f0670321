-- Nexmark q21: add channel id: a channel id from the channel name or from the URL.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q21.sql (from that directory)
-- Output: out/nexmark/q21/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q21.sql, with Freshet's snake_case column names.
-- REGEXP_EXTRACT(url, re, 2) (NULL when the URL does not match) is written with regexp_like and
-- regexp_replace(url, '^.*?' || re || '.*$', '\2'): Freshet's DataFusion is built without the nested
-- expressions that regexp_match(url, re)[2] needs.

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

CREATE SINK nexmark_q21 WITH (connector = 'parquet', path = 'out/nexmark/q21') AS
SELECT
    auction, bidder, price, channel,
    CASE
        WHEN lower(channel) = 'apple' THEN '0'
        WHEN lower(channel) = 'google' THEN '1'
        WHEN lower(channel) = 'facebook' THEN '2'
        WHEN lower(channel) = 'baidu' THEN '3'
        WHEN regexp_like(url, '(&|^)channel_id=([^&]*)')
            THEN regexp_replace(url, '^.*?(&|^)channel_id=([^&]*).*$', '\2')
    END AS channel_id
FROM bid
WHERE regexp_like(url, '(&|^)channel_id=([^&]*)') OR
      lower(channel) IN ('apple', 'google', 'facebook', 'baidu');
