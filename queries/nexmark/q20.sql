-- Nexmark q20: expand bid with auction: bids on category-10 auctions with the auction's columns.
--
-- Input: data/nexmark/bid.jsonl, data/nexmark/auction.jsonl
--   (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q20.sql (from that directory)
-- Output: out/nexmark/q20/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q20.sql, with Freshet's snake_case column names.
-- A regular inner join; the two date_time and extra columns are named as Flink's sink names them.

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

CREATE TABLE auction (
    id          BIGINT,
    item_name   VARCHAR,
    description VARCHAR,
    initial_bid BIGINT,
    reserve     BIGINT,
    date_time   TIMESTAMP NOT NULL,
    expires     TIMESTAMP,
    seller      BIGINT,
    category    BIGINT,
    extra       VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = 'data/nexmark/auction.jsonl', 'format' = 'json');

CREATE SINK nexmark_q20 WITH (connector = 'parquet', path = 'out/nexmark/q20') AS
SELECT
    auction, bidder, price, channel, url, B.date_time AS bid_date_time, B.extra AS bid_extra,
    item_name, description, initial_bid, reserve, A.date_time AS auction_date_time, expires, seller,
    category, A.extra AS auction_extra
FROM
    bid AS B INNER JOIN auction AS A ON B.auction = A.id
WHERE A.category = 10;
