-- Nexmark q3: local item suggestion: sellers in Oregon, Idaho or California of category-10 auctions.
--
-- Input: data/nexmark/auction.jsonl, data/nexmark/person.jsonl
--   (relative to the directory freshet runs in), written by
--   freshet generate nexmark --events 10000000 --out data/nexmark
-- Run: freshet run queries/nexmark/q3.sql (from that directory)
-- Output: out/nexmark/q3/part-*.parquet (append-only: every row final).
-- Standard text: nexmark-flink's queries/q3.sql, with Freshet's snake_case column names.
-- A regular (unwindowed) inner join of two streams: both sides are kept in state.

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

CREATE SINK nexmark_q3 WITH (connector = 'parquet', path = 'out/nexmark/q3') AS
SELECT
    P.name, P.city, P.state, A.id
FROM
    auction AS A INNER JOIN person AS P ON A.seller = P.id
WHERE
    A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
