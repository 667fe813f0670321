-- expect: 8:54: ORDER BY … LIMIT inside a continuous query
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');
CREATE MATERIALIZED VIEW first_users AS
SELECT user_id FROM (SELECT user_id FROM ev ORDER BY event_time LIMIT 10);
