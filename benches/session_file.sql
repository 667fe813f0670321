-- Benchmark: SESSION windows (gap 30 s) per user from the pre-generated JSON file to Parquet.
CREATE SOURCE course_events (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'file', path = 'EVENTS_FILE', format = 'json');

CREATE SINK user_sessions WITH (connector = 'parquet', path = 'OUT_DIR/session_file') AS
SELECT user_id, window_start, window_end, COUNT(*) AS views, COUNT(DISTINCT course_id) AS courses
FROM SESSION(course_events, event_time, INTERVAL '30' SECOND)
GROUP BY user_id, window_start, window_end;
