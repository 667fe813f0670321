-- Course activity: per-course, per-minute views, distinct viewers and purchases.
-- Runs on the embedded default: the built-in generator as the source, a Parquet archive and an
-- in-memory materialized view as the results. `events` bounds the run; drop it (and set `rate`)
-- for an endless stream, and stop with Ctrl-C.

CREATE SOURCE course_events (
    user_id    BIGINT NOT NULL,
    course_id  BIGINT NOT NULL,
    region     VARCHAR,
    purchased  BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', kind = 'courses', seed = '42', events = '1000000');

-- The archive: each window row once, when the watermark passes its end.
CREATE SINK course_views_archive WITH (connector = 'parquet', path = 'out/course_views') AS
SELECT course_id, window_start, window_end,
       COUNT(*)                                   AS views,
       COUNT(DISTINCT user_id)                    AS viewers,
       SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM TUMBLE(course_events, event_time, INTERVAL '1' MINUTE)
GROUP BY course_id, window_start, window_end;

-- The same numbers, kept up to date after every micro-batch, for the REPL and the report below.
CREATE MATERIALIZED VIEW course_views AS
SELECT course_id, window_start, window_end,
       COUNT(*)                                   AS views,
       COUNT(DISTINCT user_id)                    AS viewers,
       SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM TUMBLE(course_events, event_time, INTERVAL '1' MINUTE)
GROUP BY course_id, window_start, window_end;

-- The most viewed courses over the whole run.
SELECT course_id, SUM(views) AS views, SUM(purchases) AS purchases,
       ROUND(100.0 * SUM(purchases) / SUM(views), 2) AS conversion_pct
FROM course_views
GROUP BY course_id
ORDER BY views DESC
LIMIT 5;
