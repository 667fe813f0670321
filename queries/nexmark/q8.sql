-- Nexmark q8: monitor new users: people who opened an auction in the 10 s window they registered in.
--
-- Input: data/nexmark/person.jsonl, data/nexmark/auction.jsonl
--   (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q8.sql (from that directory)
-- Output: out/nexmark/q8/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q8.sql, with Freshet's snake_case column names.
-- Two TUMBLE aggregates joined on their window bounds (a window join).

CREATE TABLE person (
    id            BIGINT,
    name          VARCHAR,
    email_address VARCHAR,
    credit_card   VARCHAR,
    city          VARCHAR,
    state         VARCHAR,
    date_time     TIMESTAMP NOT NULL,
    extra         VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = 'data/nexmark/person.jsonl', 'format' = 'json');

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

CREATE SINK nexmark_q8 WITH (connector = 'parquet', path = 'out/nexmark/q8') AS
SELECT P.id, P.name, P.starttime
FROM (
    SELECT id, name,
           window_start AS starttime,
           window_end AS endtime
    FROM TABLE(
        TUMBLE(TABLE person, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
    GROUP BY id, name, window_start, window_end
) P
JOIN (
    SELECT seller,
           window_start AS starttime,
           window_end AS endtime
    FROM TABLE(
        TUMBLE(TABLE auction, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
    GROUP BY seller, window_start, window_end
) A
ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime;
