"""Writes positions.csv: one position report per aircraft per second for 5 minutes (deterministic).

FSH123 starts a rapid descent (9000 ft/min) at t=120 s; FSH200 and FSH201 converge on the same spot and flight
level around t=200-240 s. Everything else cruises. Reports arrive up to 1.5 s out of order.
"""
import csv
import math
import random

random.seed(7)
START = 1767225600  # 2026-01-01T00:00:00Z
flights = {
    "FSH101": (48.00, 2.00, 0.010, 0.000, 35000),
    "FSH123": (48.50, 2.50, 0.000, 0.010, 36000),
    "FSH200": (49.00, 1.00, 0.018, 0.018, 33000),
    "FSH201": (49.80, 1.80, -0.018, -0.018, 33000),
    "FSH305": (47.00, 3.00, -0.008, 0.002, 31000),
    "FSH412": (46.50, 1.50, 0.006, -0.006, 29000),
}
rows = []
for flight, (lat0, lon0, dlat, dlon, alt0) in flights.items():
    for t in range(300):
        alt = alt0
        if flight == "FSH123" and t >= 120:
            alt = max(8000, alt0 - (t - 120) * 150)  # 9000 ft/min
        lat = lat0 + dlat * t / 10
        lon = lon0 + dlon * t / 10
        speed = 450 + 10 * math.sin(t / 30)
        jitter = random.uniform(0, 1.5)
        rows.append((START + t + jitter, flight, t, round(lat, 5), round(lon, 5), alt, round(speed, 1)))
rows.sort()  # by arrival time: event times are then out of order by up to 1.5 s
with open("positions.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["flight", "report_time", "latitude", "longitude", "altitude_ft", "speed_kts"])
    for _, flight, t, lat, lon, alt, speed in rows:
        stamp = f"2026-01-01T00:{t // 60:02d}:{t % 60:02d}.000Z"
        w.writerow([flight, stamp, lat, lon, alt, speed])
