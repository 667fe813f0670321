-- Recommendations for hesitating shoppers: users who look at the same course again and again in one
-- visit without buying it, matched with what users in their region bought in the meantime.
-- Run from the repository root:  freshet run examples/recommendations/hesitating_shoppers.sql

CREATE SOURCE course_events (
    user_id    BIGINT NOT NULL,
    course_id  BIGINT NOT NULL,
    region     VARCHAR,
    purchased  BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', kind = 'courses', seed = '7', events = '300000');

-- A visit is a SESSION per user and course (30 s of inactivity ends it). Three or more views and
-- no purchase is a hesitation.
CREATE MATERIALIZED VIEW hesitations AS
SELECT user_id, course_id, region, window_start, window_end, COUNT(*) AS views
FROM SESSION(course_events, event_time, INTERVAL '30' SECOND)
GROUP BY user_id, course_id, region, window_start, window_end
HAVING COUNT(*) >= 3 AND SUM(CASE WHEN purchased THEN 1 ELSE 0 END) = 0;

-- What sells in each region, per minute.
CREATE MATERIALIZED VIEW regional_purchases AS
SELECT region, course_id, window_start, window_end, COUNT(*) AS buys
FROM TUMBLE(course_events, event_time, INTERVAL '1' MINUTE)
WHERE purchased
GROUP BY region, course_id, window_start, window_end;

-- The archive of hesitations, for the marketing team.
CREATE SINK hesitations_archive WITH (connector = 'parquet', path = 'out/hesitations') AS
SELECT user_id, course_id, region, window_start, window_end, COUNT(*) AS views
FROM SESSION(course_events, event_time, INTERVAL '30' SECOND)
GROUP BY user_id, course_id, region, window_start, window_end
HAVING COUNT(*) >= 3 AND SUM(CASE WHEN purchased THEN 1 ELSE 0 END) = 0;

-- For each hesitating user: the course most bought in their region during the 10 minutes before the
-- visit ended (other than the one they hesitate over), as an analyst would ask at the REPL.
WITH candidates AS (
    SELECT h.user_id, h.course_id AS hesitated, h.region, p.course_id AS suggestion, SUM(p.buys) AS buys
    FROM hesitations h
    JOIN regional_purchases p
      ON p.region = h.region
     AND p.window_end <= h.window_end
     AND p.window_end > h.window_end - INTERVAL '10' MINUTE
     AND p.course_id <> h.course_id
    GROUP BY h.user_id, h.course_id, h.region, p.course_id),
ranked AS (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id, hesitated ORDER BY buys DESC, suggestion) AS rank
    FROM candidates)
SELECT user_id, hesitated, region, suggestion, buys
FROM ranked WHERE rank = 1
ORDER BY buys DESC, user_id
LIMIT 10;
