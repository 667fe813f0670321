-- Flight monitoring in the style of air traffic control: alerts within seconds of the reports.
-- Input: one position report per aircraft per second (examples/flight_monitoring/positions.csv,
-- made by make_positions.py). Run from the repository root:
--   freshet run examples/flight_monitoring/monitoring.sql

CREATE SOURCE positions (
    flight      VARCHAR NOT NULL,
    report_time TIMESTAMP NOT NULL,
    latitude    DOUBLE,
    longitude   DOUBLE,
    altitude_ft BIGINT,
    speed_kts   DOUBLE,
    WATERMARK FOR report_time AS report_time - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'examples/flight_monitoring/positions.csv', format = 'csv');

-- Rapid descent: more than 1000 ft lost within a sliding 10 s window (evaluated every 2 s).
CREATE SINK descent_alerts WITH (connector = 'file', path = 'out/flight_alerts/descent.jsonl') AS
SELECT flight, window_start, window_end,
       MAX(altitude_ft) - MIN(altitude_ft) AS feet_lost,
       MIN(altitude_ft) AS lowest_ft
FROM HOP(positions, report_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
GROUP BY flight, window_start, window_end
HAVING MAX(altitude_ft) - MIN(altitude_ft) > 1000;

-- Loss of separation: two or more aircraft in the same 0.1° cell and 1000 ft band within 5 s.
CREATE SINK proximity_alerts WITH (connector = 'file', path = 'out/flight_alerts/proximity.jsonl') AS
SELECT round(latitude, 1) AS lat_cell, round(longitude, 1) AS lon_cell, altitude_ft / 1000 AS flight_level_k,
       window_start, window_end, COUNT(DISTINCT flight) AS aircraft
FROM TUMBLE(positions, report_time, INTERVAL '5' SECOND)
GROUP BY round(latitude, 1), round(longitude, 1), altitude_ft / 1000, window_start, window_end
HAVING COUNT(DISTINCT flight) > 1;

-- A per-aircraft picture for the controller's screen, updated every micro-batch.
CREATE MATERIALIZED VIEW traffic AS
SELECT flight, window_start, COUNT(*) AS reports, AVG(speed_kts) AS avg_speed_kts,
       MIN(altitude_ft) AS min_alt_ft, MAX(altitude_ft) AS max_alt_ft
FROM TUMBLE(positions, report_time, INTERVAL '1' MINUTE)
GROUP BY flight, window_start, window_end;

SELECT flight, COUNT(*) AS minutes, MIN(min_alt_ft) AS lowest_ft FROM traffic GROUP BY flight ORDER BY flight;
