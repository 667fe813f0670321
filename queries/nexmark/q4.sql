-- Nexmark q4: average closing price per category.
--
-- Input: data/nexmark/auction.jsonl, data/nexmark/bid.jsonl
--   (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q4.sql (from that directory)
-- Output: out/nexmark/q4/part-*.parquet: a changelog (an `op` column, +I -U +U -D), replayed in
--   order it gives the result.
-- Standard text: nexmark-flink's queries/q4.sql, with Freshet's snake_case column names.
-- A join, the winning bid of each auction, then an average per category: the result updates.

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

CREATE SINK nexmark_q4 WITH (connector = 'parquet', path = 'out/nexmark/q4', format = 'changelog') AS
SELECT
    Q.category,
    AVG(Q.final) AS avg_final
FROM (
    SELECT MAX(B.price) AS final, A.category
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.category
) Q
GROUP BY Q.category;
