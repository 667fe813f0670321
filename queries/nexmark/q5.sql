-- Nexmark q5: hot items: the auctions with the most bids in each 10 s window sliding by 2 s.
--
-- Input: data/nexmark/bid.jsonl (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q5.sql (from that directory)
-- Output: out/nexmark/q5/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q5.sql, with Freshet's snake_case column names.
-- Two HOP aggregates joined on their window bounds (a window join).

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

CREATE SINK nexmark_q5 WITH (connector = 'parquet', path = 'out/nexmark/q5') AS
SELECT AuctionBids.auction, AuctionBids.num
FROM (
    SELECT
        auction,
        count(*) AS num,
        window_start AS starttime,
        window_end AS endtime
    FROM TABLE(
        HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
    GROUP BY auction, window_start, window_end
) AS AuctionBids
JOIN (
    SELECT
        max(CountBids.num) AS maxn,
        CountBids.starttime,
        CountBids.endtime
    FROM (
        SELECT
            count(*) AS num,
            window_start AS starttime,
            window_end AS endtime
        FROM TABLE(
            HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
        GROUP BY auction, window_start, window_end
    ) AS CountBids
    GROUP BY CountBids.starttime, CountBids.endtime
) AS MaxBids
ON AuctionBids.starttime = MaxBids.starttime AND
   AuctionBids.endtime = MaxBids.endtime AND
   AuctionBids.num >= MaxBids.maxn;
