-- The whole pipeline: Kafka topic `course_events` → per-course, per-minute window counts → HBase
-- table `course_views` (upserts) + a Parquet archive; and recommendations for hesitating shoppers →
-- HBase table `recommendations`.
--
--   scripts/services start
--   freshet generate courses --rate 20000 --kafka 127.0.0.1:9092 --topic course_events
--   freshet run queries/course_activity_kafka.sql          # Ctrl-C stops; `startup = 'group'` resumes
--
-- Row keys are order-preserving (docs/hbase.md), so `course_views` scans by course and time range.

CREATE SOURCE course_events (
    user_id    BIGINT NOT NULL,
    course_id  BIGINT NOT NULL,
    region     VARCHAR,
    purchased  BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:9092', topic = 'course_events',
        format = 'json', group_id = 'course-activity', startup = 'group');

-- What sells in each region (top 3), computed offline from purchases; a lookup table.
CREATE TABLE regional_bestsellers (region VARCHAR, course_id BIGINT, rank BIGINT, buys BIGINT)
WITH (connector = 'file', path = 'queries/data/regional_bestsellers.csv', format = 'csv');

-- Upserted after every micro-batch: an analyst sees the current minute fill up.
CREATE SINK course_views WITH (connector = 'hbase', table = 'course_views', column_family = 'v',
                               row_key = 'course_id, window_start', create_table = 'true') AS
SELECT course_id, window_start, window_end,
       COUNT(*)                                   AS views,
       COUNT(DISTINCT user_id)                    AS viewers,
       SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM TUMBLE(course_events, event_time, INTERVAL '1' MINUTE)
GROUP BY course_id, window_start, window_end;

-- The archive: each closed minute once.
CREATE SINK course_views_archive WITH (connector = 'parquet', path = 'out/course_views_kafka') AS
SELECT course_id, window_start, window_end,
       COUNT(*)                                   AS views,
       COUNT(DISTINCT user_id)                    AS viewers,
       SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM TUMBLE(course_events, event_time, INTERVAL '1' MINUTE)
GROUP BY course_id, window_start, window_end;

-- A visit (SESSION per user and course, 30 s gap) with three or more views and no purchase is a
-- hesitation; suggest what users of the same region buy most, other than the course in question.
CREATE SINK recommendations WITH (connector = 'hbase', table = 'recommendations', column_family = 'r',
                                  row_key = 'user_id, hesitated_course, window_start, suggestion',
                                  create_table = 'true') AS
SELECT e.user_id, e.course_id AS hesitated_course, e.region, b.course_id AS suggestion, b.rank,
       window_start, window_end, COUNT(*) AS views
FROM SESSION(course_events, event_time, INTERVAL '30' SECOND) AS e
JOIN regional_bestsellers b ON b.region = e.region AND b.course_id <> e.course_id AND b.rank <= 2
GROUP BY e.user_id, e.course_id, e.region, b.course_id, b.rank, window_start, window_end
HAVING COUNT(*) >= 3 AND SUM(CASE WHEN e.purchased THEN 1 ELSE 0 END) = 0;
