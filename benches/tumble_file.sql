-- Benchmark: the course TUMBLE query from a pre-generated JSON file to Parquet.
-- scripts/bench.sh substitutes EVENTS_FILE and OUT_DIR.
CREATE SOURCE course_events (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'file', path = 'EVENTS_FILE', format = 'json');

CREATE SINK course_views WITH (connector = 'parquet', path = 'OUT_DIR/tumble_file') AS
SELECT course_id, window_start, window_end,
       COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
       SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM TUMBLE(course_events, event_time, INTERVAL '1' MINUTE)
GROUP BY course_id, window_start, window_end;
