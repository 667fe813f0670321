"""HBase REST gateway upsert throughput (a benchmark, not a test; run by `scripts/bench-hbase.sh rest`).

Writes ROWS rows of 4 cells shaped like `benches/hbase_upserts.sql`'s output (row key: user_id and
course_id in Freshet's order-preserving encoding; cells views, purchases, first_seen, last_seen as
text) to a new table through HBase's REST gateway: multi-row `PUT /<table>/<any row>` calls of
BATCH rows each, over CONNECTIONS keep-alive HTTP connections at once, as JSON or protobuf CellSets.

Every request body is encoded before the clock starts, so the figure is the gateway's (and HBase's)
ceiling for a client that costs nothing: an upper bound for a REST sink, to set against the Thrift
figures, which are measured through whole `freshet run`s. Afterwards a sample of rows is read back and
compared, and the rows/s is printed with the client's own CPU seconds.
"""

import argparse
import base64
import http.client
import json
import resource
import sys
import threading
import time
from urllib.parse import urlparse


def key(user, course):
    def enc(v):
        return b"\x01" + ((v & 0xFFFFFFFFFFFFFFFF) ^ (1 << 63)).to_bytes(8, "big")

    return enc(user) + enc(course)


def rows(n, ts):
    """n rows (key, [(column, value)]), deterministic."""
    for i in range(n):
        user, course = 1 + i // 25, 1 + (i * 7) % 400
        views = 1 + i % 13
        cells = [
            (b"v:views", str(views).encode()),
            (b"v:purchases", str(i % 3).encode()),
            (b"v:first_seen", b"2026-12-01T10:%02d:%02d.000" % (i % 60, (i // 60) % 60)),
            (b"v:last_seen", b"2026-12-01T11:%02d:%02d.000" % (i % 60, (i // 60) % 60)),
        ]
        yield key(user, course), cells, ts


def b64(b):
    return base64.b64encode(b).decode()


def json_body(batch):
    return json.dumps(
        {
            "Row": [
                {"key": b64(k), "Cell": [{"column": b64(c), "timestamp": ts, "$": b64(v)} for c, v in cells]}
                for k, cells, ts in batch
            ]
        }
    ).encode()


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, payload):
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def proto_body(batch):
    # CellSet { repeated Row rows = 1 }  Row { bytes key = 1; repeated Cell values = 2 }
    # Cell { bytes row = 1; bytes column = 2; int64 timestamp = 3; bytes data = 4 }
    out = bytearray()
    for k, cells, ts in batch:
        row = bytearray(field(1, k))
        for c, v in cells:
            cell = field(2, c) + varint(3 << 3) + varint(ts) + field(4, v)
            row += field(2, cell)
        out += field(1, bytes(row))
    return bytes(out)


def request(conn, method, path, body=None, ctype="application/json"):
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = ctype
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    return r.status, data, r.getheader("Location")


def read_row(c, table, k):
    """Row `k`'s cells {column: value}, through a REST scanner from `k` to just after it."""
    spec = json.dumps({"startRow": b64(k), "endRow": b64(k + b"\x00"), "batch": 100})
    status, data, location = request(c, "PUT", f"/{table}/scanner", spec.encode())
    if status != 201 or not location:
        sys.exit(f"opening a scanner: HTTP {status} {data[:200]!r}")
    scanner = urlparse(location).path
    status, data, _ = request(c, "GET", scanner)
    request(c, "DELETE", scanner)
    if status != 200:
        return {}
    return {base64.b64decode(x["column"]): base64.b64decode(x["$"]) for x in json.loads(data)["Row"][0]["Cell"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rest", default="http://127.0.0.1:8085")
    ap.add_argument("--table", required=True)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--format", choices=["json", "protobuf"], default="json")
    a = ap.parse_args()
    u = urlparse(a.rest)
    conn = lambda: http.client.HTTPConnection(u.hostname, u.port, timeout=120)  # noqa: E731

    c = conn()
    schema = json.dumps({"name": a.table, "ColumnSchema": [{"name": "v", "VERSIONS": "1"}]})
    status, data, _ = request(c, "PUT", f"/{a.table}/schema", schema.encode())
    if status not in (200, 201):
        sys.exit(f"creating table {a.table}: HTTP {status} {data[:200]!r}")

    ts = int(time.time() * 1000)
    all_rows = list(rows(a.rows, ts))
    encode, ctype = (json_body, "application/json") if a.format == "json" else (proto_body, "application/x-protobuf")
    bodies = [encode(all_rows[i : i + a.batch]) for i in range(0, len(all_rows), a.batch)]
    sent_bytes = sum(map(len, bodies))

    failures = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)

    def worker(w):
        c = conn()
        for i in range(w, len(bodies), a.connections):
            status, data, _ = request(c, "PUT", f"/{a.table}/batch", bodies[i], ctype)
            if status != 200:
                failures.append(f"call {i}: HTTP {status} {data[:200]!r}")
                return

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(a.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if failures:
        sys.exit("\n".join(failures[:5]))

    # Read a sample back: every cell as written. Through a scanner: Jetty refuses a path holding
    # bytes such as 0x00 (HTTP 400), so these binary row keys cannot be named in a URL.
    c = conn()  # the first may have been closed while idle
    for i in range(0, a.rows, max(1, a.rows // 50)):
        k, cells, _ = all_rows[i]
        got = read_row(c, a.table, k)
        if got != dict(cells):
            sys.exit(f"row {i}: read back {got}, wrote {dict(cells)}")

    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(
        f"rest {a.format:8} connections {a.connections} batch {a.batch}: {a.rows} rows in {elapsed:.1f} s, "
        f"{a.rows / elapsed / 1000:.1f} K rows/s ({sent_bytes / elapsed / 1e6:.1f} MB/s sent; client {cpu:.1f} CPU s)"
    )


if __name__ == "__main__":
    main()
