-- HBase upsert throughput (scripts/bench-hbase.sh): every (user, course) pair's counters, upserted
-- after every micro-batch — about 1.44 M upserted rows of 4 cells from 2 M generated events.
-- EVENTS, TABLE and SINK_OPTIONS are filled in by the script.
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = 'EVENTS', seed = '42');

CREATE SINK pairs WITH (connector = 'hbase', table = 'TABLE', row_key = 'user_id, course_id',
                        create_table = 'true' SINK_OPTIONS) AS
SELECT user_id, course_id, COUNT(*) AS views, SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases,
       MIN(event_time) AS first_seen, MAX(event_time) AS last_seen
FROM ev GROUP BY user_id, course_id;
