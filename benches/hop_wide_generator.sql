-- Benchmark: an operator-bound query. HOP windows of 5 minutes every 10 s (30 panes per window) with
-- an exact distinct count, straight from the generator (no decoding) to Parquet: the window
-- aggregate, not the source, is the work, so this is the case that splitting keyed operators over
-- `--workers` instances speeds up.
CREATE SOURCE course_events (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', kind = 'courses', seed = '42', events = 'EVENTS');

CREATE SINK user_bands WITH (connector = 'parquet', path = 'OUT_DIR/hop_wide_generator') AS
SELECT user_id % 1000 AS band, window_start, window_end, COUNT(*) AS views, COUNT(DISTINCT course_id) AS courses
FROM HOP(course_events, event_time, INTERVAL '10' SECOND, INTERVAL '5' MINUTE)
GROUP BY user_id % 1000, window_start, window_end;
