"""The benchmark's table and plot from scripts/bench.sh's results (no dependencies).

    report.py RESULTS.tsv [--md OUT.md] [--svg OUT.svg] [--clean CASE --dirty CASE]

RESULTS.tsv rows: case, engine, events, seconds, cpu_s, peak_mib, check — one per engine and case
(engines: freshet, duckdb, spark, flink; `freshet-check` rows carry the check of Freshet's output
made by another engine's script). Prints a Markdown table: per case Freshet's events/s, CPU seconds
and peak memory, its time as a multiple of DuckDB's (lower is better) and how many times faster it
is than Spark and Flink where they ran; the SVG is a bar chart of events/s per case and engine.
"""
import argparse
import collections
import math
import sys

ENGINES = ["freshet", "duckdb", "spark", "flink"]
COLOURS = {"freshet": "#1f77b4", "duckdb": "#ff7f0e", "spark": "#2ca02c", "flink": "#d62728"}


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def load(path):
    rows = collections.OrderedDict()
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if not parts or parts[0] == "case" or len(parts) < 7:
                continue
            case, engine, events, secs, cpu, peak, check = parts[:7]
            r = rows.setdefault(case, {})
            if engine == "freshet-check":
                r.setdefault("freshet", {})["check"] = check
                continue
            e = r.setdefault(engine, {})
            e.update(events=num(events), seconds=num(secs), cpu=num(cpu), peak=num(peak))
            e.setdefault("check", check)
    # Peers report no event count: the case's events are Freshet's.
    for r in rows.values():
        n = (r.get("freshet") or {}).get("events")
        for e in r.values():
            if e.get("events") is None:
                e["events"] = n
    return rows


def eps(e):
    if not e or not e.get("events") or not e.get("seconds"):
        return None
    return e["events"] / e["seconds"]


def fmt(v, spec):
    return "" if v is None else format(v, spec)


def table(rows, clean, dirty):
    out = [
        "| case | Freshet events/s | CPU s | peak MiB | check | × DuckDB's time | DuckDB events/s | Spark SS | PyFlink |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, r in rows.items():
        f, d = r.get("freshet", {}), r.get("duckdb")
        ratio = f["seconds"] / d["seconds"] if f.get("seconds") and d and d.get("seconds") else None
        peers = []
        for p in ("spark", "flink"):
            e = r.get(p)
            if e and e.get("seconds") and f.get("seconds"):
                mark = "" if e.get("check") in ("ok", "-") else f" ({e.get('check')})"
                peers.append(f"{fmt(eps(e) / 1e6, '.2f')} M (Freshet {e['seconds'] / f['seconds']:.1f}×){mark}")
            else:
                peers.append("n/a" if e and e.get("check") == "n/a" else "")
        out.append(
            f"| {case} | {fmt((eps(f) or 0) / 1e6, '.2f')} M | {fmt(f.get('cpu'), '.2f')} | {fmt(f.get('peak'), '.0f')} "
            f"| {f.get('check', '')} | {fmt(ratio, '.2f')} | {fmt(eps(d) / 1e6 if eps(d) else None, '.2f')}"
            f"{' M' if eps(d) else ''} | {peers[0]} | {peers[1]} |"
        )
    if clean in rows and dirty in rows:
        c, x = rows[clean].get("freshet", {}), rows[dirty].get("freshet", {})
        if c.get("seconds") and x.get("seconds"):
            out.append("")
            out.append(f"Dirty input (1 % malformed, 2 % late) runs at {100 * c['seconds'] / x['seconds']:.0f} % "
                       "of clean throughput.")
    return "\n".join(out)


def svg(rows):
    cases = [c for c, r in rows.items() if any(eps(r.get(e)) for e in ENGINES)]
    engines = [e for e in ENGINES if any(eps(rows[c].get(e)) for c in cases)]
    top = max(eps(rows[c].get(e)) or 0 for c in cases for e in engines) or 1
    # A linear axis up to the next 1, 2 or 5 × 10^k.
    scale = 10 ** math.floor(math.log10(top))
    top = next(m * scale for m in (1, 2, 5, 10) if m * scale >= top)
    bar, gap, left, height, base = 14, 18, 70, 300, 340
    width = left + len(cases) * (len(engines) * bar + gap) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{base + 130}" font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="16" font-size="13">Events per second by case and engine (same files, one run)</text>',
    ]
    for i in range(6):
        v = top * i / 5
        y = base - height * i / 5
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{v / 1e6:.1f} M</text>')
    for ci, c in enumerate(cases):
        x0 = left + ci * (len(engines) * bar + gap) + gap / 2
        for ei, e in enumerate(engines):
            v = eps(rows[c].get(e))
            if not v:
                continue
            h = height * v / top
            parts.append(
                f'<rect x="{x0 + ei * bar}" y="{base - h:.1f}" width="{bar - 2}" height="{h:.1f}" fill="{COLOURS[e]}">'
                f"<title>{c} {e}: {v / 1e6:.2f} M events/s</title></rect>"
            )
        cx = x0 + len(engines) * bar / 2
        parts.append(f'<text transform="translate({cx},{base + 8}) rotate(45)">{c}</text>')
    for ei, e in enumerate(engines):
        parts.append(f'<rect x="{left + ei * 90}" y="26" width="10" height="10" fill="{COLOURS[e]}"/>')
        parts.append(f'<text x="{left + ei * 90 + 14}" y="35">{e}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--md")
    ap.add_argument("--svg")
    ap.add_argument("--clean")
    ap.add_argument("--dirty")
    args = ap.parse_args()
    rows = load(args.results)
    text = table(rows, args.clean, args.dirty)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg(rows))
    wrong = [c for c, r in rows.items() for e in r.values() if e.get("check") == "WRONG"]
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
