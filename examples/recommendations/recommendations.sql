-- Recommendations for hesitating shoppers, live: what sells in the shopper's region right now, and
-- what users with the same interest bought. Everything is computed continuously from the one stream
-- of course-page views; nothing is precomputed offline.
--
-- Run from the repository root:  freshet run examples/recommendations/recommendations.sql
-- The same queries against Kafka and HBase: queries/course_activity_kafka.sql.

CREATE SOURCE course_events (
    user_id    BIGINT NOT NULL,
    course_id  BIGINT NOT NULL,
    region     VARCHAR,
    purchased  BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', kind = 'courses', seed = '7', events = '100000');

-- A visit is a SESSION per user and course (30 s without a view ends it). Three or more views and no
-- purchase is a hesitation. Emitted when the visit ends; its time attribute is visit_end.
CREATE VIEW hesitations AS
SELECT user_id, course_id, region, window_start AS visit_start, window_end AS visit_end, COUNT(*) AS views
FROM SESSION(course_events, event_time, INTERVAL '30' SECOND)
GROUP BY user_id, course_id, region, window_start, window_end
HAVING COUNT(*) >= 3 AND SUM(CASE WHEN purchased THEN 1 ELSE 0 END) = 0;

-- Regional bestsellers: per region, the three courses bought most over the last hour, ranked anew
-- every minute (a HOP window aggregate, then a window Top-N). Time attribute: ranked_at.
CREATE VIEW regional_bestsellers AS
SELECT region, course_id, buys, window_end AS ranked_at, rank FROM (
    SELECT region, course_id, window_start, window_end, buys,
           ROW_NUMBER() OVER (PARTITION BY region, window_start, window_end ORDER BY buys DESC, course_id) AS rank
    FROM (SELECT region, course_id, window_start, window_end, COUNT(*) AS buys
          FROM HOP(course_events, event_time, INTERVAL '1' MINUTE, INTERVAL '1' HOUR)
          WHERE purchased
          GROUP BY region, course_id, window_start, window_end))
WHERE rank <= 3;

-- For each hesitation, the region's bestsellers of the ranking made right after the visit ended
-- (an interval join: rows are kept only as long as the time bound needs them).
CREATE MATERIALIZED VIEW bestseller_suggestions AS
SELECT h.user_id, h.course_id AS hesitated_course, h.region, h.visit_start, h.views,
       b.course_id AS suggestion, b.rank, b.buys
FROM hesitations h
JOIN regional_bestsellers b
  ON b.region = h.region AND b.course_id <> h.course_id
 AND b.ranked_at >= h.visit_end AND b.ranked_at < h.visit_end + INTERVAL '1' MINUTE;

-- Users with similar habits: per hour, for each course viewed, the courses bought by its viewers
-- (a window join on the hour), and for each hesitation the three bought most by those who viewed
-- the same course (an interval join, then a Top-N).
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

CREATE MATERIALIZED VIEW similar_habits AS
SELECT user_id, hesitated_course, visit_start, suggestion, buyers, rank FROM (
    SELECT h.user_id, h.course_id AS hesitated_course, h.visit_start, c.bought AS suggestion, c.buyers,
           ROW_NUMBER() OVER (PARTITION BY h.user_id, h.course_id, h.visit_start ORDER BY c.buyers DESC, c.bought) AS rank
    FROM hesitations h
    JOIN co_purchases c
      ON c.viewed = h.course_id AND c.window_end > h.visit_end AND c.window_end <= h.visit_end + INTERVAL '1' HOUR)
WHERE rank <= 3;

-- As an analyst would ask at the REPL: who hesitates, and what to show them.
SELECT s.user_id, s.hesitated_course, s.region, s.suggestion AS bestseller, h.suggestion AS bought_by_similar_users
FROM bestseller_suggestions s
JOIN similar_habits h
  ON h.user_id = s.user_id AND h.hesitated_course = s.hesitated_course AND h.visit_start = s.visit_start
WHERE s.rank = 1 AND h.rank = 1
ORDER BY s.user_id, s.hesitated_course
LIMIT 10;
