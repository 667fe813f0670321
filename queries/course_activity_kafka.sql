-- The whole pipeline: Kafka topic `course_events` → per-course, per-minute window counts → HBase
-- table `course_views` (upserts) + a Parquet archive; and live recommendations for hesitating
-- shoppers (what sells in their region now, what users with the same interest bought) → HBase tables
-- `recommendations` and `similar_habits`.
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

-- A visit is a SESSION per user and course (30 s without a view ends it); three or more views and no
-- purchase is a hesitation (emitted when the visit ends; time attribute visit_end).
CREATE VIEW hesitations AS
SELECT user_id, course_id, region, window_start AS visit_start, window_end AS visit_end, COUNT(*) AS views
FROM SESSION(course_events, event_time, INTERVAL '30' SECOND)
GROUP BY user_id, course_id, region, window_start, window_end
HAVING COUNT(*) >= 3 AND SUM(CASE WHEN purchased THEN 1 ELSE 0 END) = 0;

-- Per region, the three courses bought most over the last hour, ranked every minute.
CREATE VIEW regional_bestsellers AS
SELECT region, course_id, buys, window_end AS ranked_at, rank FROM (
    SELECT region, course_id, window_start, window_end, buys,
           ROW_NUMBER() OVER (PARTITION BY region, window_start, window_end ORDER BY buys DESC, course_id) AS rank
    FROM (SELECT region, course_id, window_start, window_end, COUNT(*) AS buys
          FROM HOP(course_events, event_time, INTERVAL '1' MINUTE, INTERVAL '1' HOUR)
          WHERE purchased
          GROUP BY region, course_id, window_start, window_end))
WHERE rank <= 3;

-- Each hesitation with its region's bestsellers (other than the course in question) of the ranking
-- made right after the visit ended.
CREATE SINK recommendations WITH (connector = 'hbase', table = 'recommendations', column_family = 'r',
                                  row_key = 'user_id, hesitated_course, visit_start, suggestion',
                                  create_table = 'true') AS
SELECT h.user_id, h.course_id AS hesitated_course, h.region, h.visit_start, h.views,
       b.course_id AS suggestion, b.rank, b.buys
FROM hesitations h
JOIN regional_bestsellers b
  ON b.region = h.region AND b.course_id <> h.course_id
 AND b.ranked_at >= h.visit_end AND b.ranked_at < h.visit_end + INTERVAL '1' MINUTE;

-- Users with similar habits: per hour, the courses bought by the viewers of each course; for each
-- hesitation, the three bought most by those who viewed the same course that hour.
CREATE VIEW hourly_views AS
SELECT DISTINCT user_id, course_id, window_start, window_end
FROM TUMBLE(course_events, event_time, INTERVAL '1' HOUR) WHERE NOT purchased;

CREATE VIEW hourly_buys AS
SELECT DISTINCT user_id, course_id, window_start, window_end
FROM TUMBLE(course_events, event_time, INTERVAL '1' HOUR) WHERE purchased;

CREATE VIEW co_purchases AS
SELECT v.course_id AS viewed, b.course_id AS bought, v.window_start, v.window_end, COUNT(*) AS buyers
FROM hourly_views v
JOIN hourly_buys b
  ON v.user_id = b.user_id AND v.window_start = b.window_start AND v.window_end = b.window_end
 AND v.course_id <> b.course_id
GROUP BY v.course_id, b.course_id, v.window_start, v.window_end;

-- A Top-N result updates (a suggestion can be displaced): HBase takes the changes, deleting rows
-- that fall out of the top 3.
CREATE SINK similar_habits WITH (connector = 'hbase', table = 'similar_habits', column_family = 's',
                                 row_key = 'user_id, hesitated_course, visit_start, rank', create_table = 'true') AS
SELECT user_id, hesitated_course, visit_start, rank, suggestion, buyers FROM (
    SELECT h.user_id, h.course_id AS hesitated_course, h.visit_start, c.bought AS suggestion, c.buyers,
           ROW_NUMBER() OVER (PARTITION BY h.user_id, h.course_id, h.visit_start ORDER BY c.buyers DESC, c.bought) AS rank
    FROM hesitations h
    JOIN co_purchases c
      ON c.viewed = h.course_id AND c.window_end > h.visit_end AND c.window_end <= h.visit_end + INTERVAL '1' HOUR)
WHERE rank <= 3;
