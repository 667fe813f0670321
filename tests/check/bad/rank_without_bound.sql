-- expect: 9:12: ROW_NUMBER
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');
CREATE MATERIALIZED VIEW ranked AS
SELECT user_id,
           ROW_NUMBER() OVER (PARTITION BY region ORDER BY event_time) AS rn
FROM ev;
