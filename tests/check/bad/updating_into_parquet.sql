-- expect: 9:51: sink 'per_region' (parquet) takes an append-only stream, but this query's result updates rows (GROUP BY without a window)
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');

CREATE SINK per_region WITH (connector = 'parquet', path = 'out/per_region') AS
SELECT region, COUNT(*) AS views FROM ev GROUP BY region;
