"""Requests of scripts/api-conformance.sh that a schema-driven tester does not make: a path that is not
UTF-8, a wrong Host, a body that is too big or too slow, a server too busy, the result caps, the SQL
policy, a missing token. Each must get the status docs/openapi.yaml documents, with a JSON
`{"error": "..."}` body (and the documented headers).

    python3 probes.py ADDR [--token TOKEN] [--slow] [--data-dir DIR]

`--slow`: also the probes that need a server started with `--request-timeout 2
--max-concurrent-requests 2` (408 for a slow body, 503 with Retry-After when busy). `--data-dir`:
also make the catalog unwritable for a moment (500 for a statement, a resume, a DELETE).
Exits 1 when a probe fails; prints one line per probe.
"""

import argparse
import http.client
import json
import os
import socket
import sys
import time

# Failures the server is known to have, with what to change: printed next to the failing probe.
KNOWN = {
    "path-not-utf8": (
        "server defect: axum's Path<String> rejection answers text/plain, not JSON. Fix in "
        "src/server.rs: take `Result<Path<String>, PathRejection>` in get_query, delete_query, pause "
        "and resume and answer `error(r.status(), r.body_text())`, as the body rejections already do"
    ),
    "catalog-not-writable": (
        "server defect: a statement, pause, resume or DELETE whose catalog write fails answers 400, "
        "502 or 409 as if the client were wrong, and the change stays applied in memory but not on "
        "disk. Fix in src/server.rs: Error::Io and Error::Internal -> 500 (status_of, "
        "pause_or_resume, delete_query); in src/session.rs: persist before the in-memory change "
        "(or undo it when persist fails)"
    ),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("--token")
    ap.add_argument("--slow", action="store_true")
    ap.add_argument("--data-dir", help="the server's data directory: also probe a catalog that cannot be written")
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    auth = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    sql = {"Content-Type": "application/sql", **auth}
    failures = []

    def request(method, path, headers=None, body=None):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def check(name, got, status, header=None):
        code, headers, data = got
        problems = []
        if code != status:
            problems.append(f"status {code}, documented {status}")
        ctype = headers.get("content-type", "")
        if ctype.split(";")[0].strip() != "application/json":
            problems.append(f"Content-Type {ctype!r}, documented application/json")
        else:
            try:
                body = json.loads(data)
                if not isinstance(body, dict) or not isinstance(body.get("error"), str):
                    problems.append('body is not {"error": "..."}')
            except ValueError:
                problems.append("body is not JSON")
        if header and header.lower() not in headers:
            problems.append(f"no {header} header")
        if problems:
            hint = next((h for k, h in KNOWN.items() if name.startswith(k)), None)
            failures.append(name)
            print(f"  FAIL {name}: {'; '.join(problems)}: {data[:200]!r}")
            if hint:
                print(f"       {hint}")
        else:
            print(f"  ok   {name}: {code}")

    check("path-not-utf8", request("GET", "/v1/queries/%FF", auth), 400)
    check(
        "path-not-utf8-pause",
        request("POST", "/v1/queries/%FF/pause", {"X-Freshet-Client": "probe", **auth}, b""),
        400,
    )
    check("unknown-endpoint", request("GET", "/v1/nope", auth), 404)
    check("wrong-method", request("PUT", "/v1/queries", auth, b""), 405)
    check("host-not-ours", request("GET", "/health", {"Host": "evil.example"}), 421)
    check(
        "post-as-a-form-would",
        request("POST", "/v1/statements", {"Content-Type": "text/plain", **auth}, b"SHOW QUERIES"),
        415,
    )
    check("pause-without-content-type", request("POST", "/v1/queries/live/pause", auth, b""), 415)
    check("body-over-cap", request("POST", "/v1/statements", sql, b"-" * ((1 << 20) + 1)), 413)
    check("body-not-utf8", request("POST", "/v1/statements", sql, b"\xff\xfe"), 400)
    check("empty-body", request("POST", "/v1/query", sql, b""), 400)
    check(
        "policy-refuses-a-path",
        request(
            "POST",
            "/v1/statements",
            sql,
            b"CREATE SINK refused WITH (connector = 'parquet', path = '/etc/freshet-probe') AS SELECT * FROM ev",
        ),
        403,
    )
    check(
        "answer-over-row-cap",
        request(
            "POST",
            "/v1/query",
            sql,
            b"WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT * FROM t",
        ),
        422,
    )
    check("drop-what-another-reads", request("DELETE", "/v1/queries/live", auth), 409)
    if args.token:
        check("no-token", request("GET", "/v1/queries"), 401, "WWW-Authenticate")
        check("wrong-token", request("GET", "/openapi.yaml", {"Authorization": "Bearer nope"}), 401)
        code, _, data = request("GET", "/health")
        print(f"  {'ok  ' if code == 200 else 'FAIL'} health-without-token: {code}")
        if code != 200:
            failures.append("health-without-token")

    if args.data_dir:
        # A directory where the catalog's temporary file goes: every write of the catalog fails.
        blocker = os.path.join(args.data_dir, "catalog.json.tmp")
        os.mkdir(blocker)
        try:
            check(
                "catalog-not-writable-statement",
                request(
                    "POST",
                    "/v1/statements",
                    sql,
                    b"CREATE SOURCE unsaved (course_id BIGINT NOT NULL, event_time TIMESTAMP NOT NULL) "
                    b"WITH (connector = 'generator', kind = 'courses', events = '10')",
                ),
                500,
            )
            check(
                "catalog-not-writable-resume",
                request("POST", "/v1/queries/held/resume", {"X-Freshet-Client": "probe", **auth}, b""),
                500,
            )
            check("catalog-not-writable-delete", request("DELETE", "/v1/queries/archive", auth), 500)
        finally:
            os.rmdir(blocker)

    if args.slow:
        # The guard takes a request's slot before it reads the body: two stalled bodies fill a server
        # with --max-concurrent-requests 2, and a third request is turned away at once.
        def stalled():
            s = socket.create_connection((host, port))
            head = f"POST /v1/statements HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/sql\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in auth.items())
            s.sendall((head + "Content-Length: 100\r\n\r\nSHOW").encode())
            return s

        held = [stalled(), stalled()]
        time.sleep(0.3)
        check("busy", request("GET", "/v1/queries", auth), 503, "Retry-After")
        # Each stalled body runs out of --request-timeout: 408.
        for i, s in enumerate(held):
            s.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except socket.timeout:
                pass
            s.close()
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            code = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
            headers = dict(
                (k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])
            )
            check(f"slow-body-{i + 1}", (code, headers, body), 408)

    print(f"probes: {len(failures)} failed" + (f" ({', '.join(failures)})" if failures else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
