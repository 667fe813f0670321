-- expect: 8:35: SESSION windows need an aggregate
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');
CREATE SINK s WITH (connector = 'console') AS
SELECT user_id, window_start FROM SESSION(ev, event_time, INTERVAL '30' SECOND);
