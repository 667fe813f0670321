-- expect: 15:8: No field named viewers
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');

-- A materialized view is planned (not run) and declared, so later queries resolve against its columns.
CREATE MATERIALIZED VIEW per_region AS
SELECT region, window_start, COUNT(*) AS views
FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE)
GROUP BY region, window_start, window_end;

SELECT region, views FROM per_region ORDER BY views DESC LIMIT 3;
SELECT viewers FROM per_region;
