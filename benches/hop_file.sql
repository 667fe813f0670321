-- Benchmark: HOP 10 s / 2 s from the pre-generated JSON file to Parquet (panes of 2 s).
CREATE SOURCE course_events (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'file', path = 'EVENTS_FILE', format = 'json');

CREATE SINK course_hop WITH (connector = 'parquet', path = 'OUT_DIR/hop_file') AS
SELECT course_id, window_start, window_end, COUNT(*) AS views,
       SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM HOP(course_events, event_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
GROUP BY course_id, window_start, window_end;
