-- expect: 10:38: TUMBLE: expected a positive INTERVAL, found INTERVAL '0' MINUTE
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');

CREATE SINK s WITH (connector = 'console') AS
SELECT region, COUNT(*) AS n
FROM TUMBLE(ev, event_time, INTERVAL '0' MINUTE) GROUP BY region, window_start, window_end;
