-- expect: 10:13: table, source or view 'missing' not found
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');

CREATE MATERIALIZED VIEW v AS
SELECT region, COUNT(*) AS n
FROM TUMBLE(missing, event_time, INTERVAL '1' MINUTE) GROUP BY region, window_start, window_end;
