-- expect: 6:42: source 'ev' has no WATERMARK
CREATE SOURCE ev (user_id BIGINT, region VARCHAR, event_time TIMESTAMP)
WITH (connector = 'generator', events = '10');

CREATE SINK s WITH (connector = 'console') AS
SELECT region, COUNT(*) AS n FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE)
GROUP BY region, window_start, window_end;
