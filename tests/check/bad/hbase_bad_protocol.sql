-- expect: 8:57: option 'protocol': 'thrift3'; valid: thrift1, thrift2
CREATE SOURCE ev (
    user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', events = '1000');

CREATE SINK views WITH (connector = 'hbase', protocol = 'thrift3', table = 'views',
                        row_key = 'course_id, window_start') AS
SELECT course_id, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE) GROUP BY course_id, window_start, window_end;
