-- Benchmark: Kafka → per-course, per-minute TUMBLE → HBase (upserts) + Parquet archive.
-- scripts/bench-kafka.sh substitutes TOPIC, TABLE, STARTUP, BOUNDED and OUT_DIR.
CREATE SOURCE course_events (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:9092', topic = 'TOPIC',
        startup = 'STARTUP', bounded = 'BOUNDED', group_id = 'TOPIC-bench');

CREATE SINK course_views WITH (connector = 'hbase', table = 'TABLE', column_family = 'v',
                               row_key = 'course_id, window_start', create_table = 'true') AS
SELECT course_id, window_start, window_end,
       COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
       SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM TUMBLE(course_events, event_time, INTERVAL '1' MINUTE)
GROUP BY course_id, window_start, window_end;

CREATE SINK course_views_archive WITH (connector = 'parquet', path = 'OUT_DIR/TOPIC') AS
SELECT course_id, window_start, window_end,
       COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
       SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM TUMBLE(course_events, event_time, INTERVAL '1' MINUTE)
GROUP BY course_id, window_start, window_end;
