-- expect: 8:13: 'ev' already exists
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');

CREATE SINK ev WITH (connector = 'console') AS SELECT user_id FROM ev;
