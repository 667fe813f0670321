-- expect: 10:6: HOP: the slide must not be larger than the size
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');

CREATE SINK s WITH (connector = 'console') AS
SELECT region, COUNT(*) AS n
FROM HOP(ev, event_time, INTERVAL '1' MINUTE, INTERVAL '10' SECOND) GROUP BY region, window_start, window_end;
