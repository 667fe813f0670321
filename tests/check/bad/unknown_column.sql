-- expect: 8:56: No field named nope
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');

CREATE SINK s WITH (connector = 'blackhole') AS SELECT nope, COUNT(*) AS n
FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE) GROUP BY nope, window_start, window_end;
