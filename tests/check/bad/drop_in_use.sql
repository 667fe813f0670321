-- expect: 4:13: cannot drop 'ev': 's' uses it
CREATE SOURCE ev (user_id BIGINT, event_time TIMESTAMP) WITH (connector = 'generator', events = '5');
CREATE SINK s WITH (connector = 'console') AS SELECT user_id FROM ev;
DROP SOURCE ev;
DROP SINK s;
DROP SOURCE ev;
