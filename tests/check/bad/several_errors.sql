-- expect: 6:88: option 'speed': unknown option for connector 'generator'
-- expect: 10:8: No field named nope
-- expect: 12:18: Expected: SELECT, VALUES, or a subquery in the query body, found: SELEC
-- Errors in one statement do not stop the check of the next ones; a source with a bad option is
-- still declared, so the query over it is checked (and its own error found).
CREATE SOURCE ev (user_id BIGINT, event_time TIMESTAMP) WITH (connector = 'generator', speed = '1');

CREATE SINK broken WITH (connector = 'console') AS
SELECT user_id FROM ev;
SELECT nope FROM ev;

CREATE VIEW v AS SELEC * FROM ev;
-- v did not parse: this is not reported again as "not found".
SELECT * FROM v;
