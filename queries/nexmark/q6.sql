-- Nexmark q6: average selling price per seller over their last 10 closed auctions.
--
-- Input: data/nexmark/auction.jsonl, data/nexmark/bid.jsonl
--   (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q6.sql (from that directory)
-- Output: out/nexmark/q6/part-*.parquet: a changelog (an `op` column, +I -U +U -D), replayed in
--   order it gives the result.
-- Standard text: nexmark-flink's queries/q6.sql, with Freshet's snake_case column names.
-- Flink's own text does not run in Flink (its inner query reads A.id outside the subquery that defines
-- A, and an OVER aggregate needs an append-only input, while the winning bid of an auction changes as
-- bids arrive). This is the corrected text; Freshet refuses it for the same reason Flink would: the
-- OVER aggregate's input is an updating result. See README.md.

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

-- Freshet refuses it, naming the OVER aggregate and why (its input updates); the text is kept
-- here for reference, and tests/integration/nexmark.rs asserts the refusal:
-- > CREATE SINK nexmark_q6 WITH (connector = 'parquet', path = 'out/nexmark/q6', format = 'changelog') AS
-- > SELECT
-- >     Q.seller,
-- >     AVG(Q.price) OVER
-- >         (PARTITION BY Q.seller ORDER BY Q.date_time ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg_price
-- > FROM (
-- >     SELECT id, seller, price, date_time
-- >     FROM (
-- >         SELECT A.id, A.seller, B.price, B.date_time,
-- >                ROW_NUMBER() OVER (PARTITION BY A.id, A.seller ORDER BY B.price DESC) AS rownum
-- >         FROM auction AS A, bid AS B
-- >         WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
-- >     )
-- >     WHERE rownum <= 1
-- > ) AS Q;
