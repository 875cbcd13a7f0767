#!/usr/bin/env python3
"""Markdown report of scripts/bench.sh results (standard library only).

    python3 scripts/bench_report.py [target/bench]

Reads results.jsonl (one cairn-bench JSON line per run), env.json and limits.json
from the directory and prints medians over the repetitions per case and registry,
and the ratio of each Cairn variant to the reference registry.
"""

import json
import os
import statistics
import sys

REFERENCE = "distribution"


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def primary(case):
    """The throughput that matters for a case: MB/s for blobs, ops/s otherwise."""
    return "mb_per_s" if case.startswith(("push", "pull")) else "ops_per_s"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/bench"
    rows = []
    with open(os.path.join(out, "results.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    env = load(os.path.join(out, "env.json")) or {}
    limits = load(os.path.join(out, "limits.json")) or {}
    limits_end = load(os.path.join(out, "limits_end.json")) or {}

    registries = []
    for r in rows:
        if r["registry"] not in registries:
            registries.append(r["registry"])
    registries.sort(key=lambda r: (r == REFERENCE, r))
    cairns = [r for r in registries if r != REFERENCE]
    cases = []
    for r in rows:
        c = r.get("case") or r["scenario"]
        if c not in cases:
            cases.append(c)

    by = {}
    failures = []
    for r in rows:
        c = r.get("case") or r["scenario"]
        if "setup_error" in r:
            failures.append(f"{c} / {r['registry']} (rep {r.get('rep', '?')}): {r['setup_error']}")
            continue
        if r.get("errors"):
            failures.append(
                f"{c} / {r['registry']} (rep {r.get('rep', '?')}): {r['errors']} failed ops, "
                f"first: {r.get('first_error')}"
            )
        by.setdefault((c, r["registry"]), []).append(r)

    def med(case, reg, key):
        return median([r.get(key) for r in by.get((case, reg), [])])

    def cpu_ms_per_op(case, reg):
        vals = []
        for r in by.get((case, reg), []):
            if r.get("server_cpu_s") is not None and r.get("ops"):
                vals.append(r["server_cpu_s"] * 1000 / r["ops"])
        return median(vals)

    p = print
    p("# Cairn benchmark report\n")
    if env:
        p(
            f"Machine: {env.get('nproc')} CPUs ({env.get('cpu')}), memory {env.get('mem')}, "
            f"kernel {env.get('kernel')}, disk {env.get('disk')}.  "
        )
        p(
            f"Load average at start {env.get('loadavg_start')}, at end {env.get('loadavg_end')}. "
            f"Started {env.get('started')}; matrix took {env.get('elapsed_s')} s "
            f"({env.get('cases')} cases × {len(registries)} registries × {env.get('reps')} reps). "
            f"Cairn {env.get('git')}, distribution {env.get('distribution')}, "
            f"PostgreSQL fsync={env.get('postgres_fsync')}.\n"
        )
    if limits:
        p("Machine limits:\n")
        p("| limit | MB/s | how |")
        p("|---|---:|---|")
        p(f"| SHA-256, one core | {fmt(limits.get('sha256_one_core_mb_s'))} | {limits.get('sha256_tool')} |")
        p(f"| loopback TCP | {fmt(limits.get('loopback_tcp_mb_s'))} | {limits.get('loopback_tool')} |")
        for key, label, tool in (
            ("disk_write_fsync_mb_s", "disk write + fsync, 1 GiB", "disk_tool"),
            ("disk_64mib_write_fsync_mb_s", "disk write + fsync, 64 MiB files", "disk_64mib_tool"),
        ):
            if limits.get(key) is None:
                continue
            after = limits_end.get(key)
            after = f"; {fmt(after)} after the matrix" if after is not None else ""
            p(f"| {label} | {fmt(limits.get(key))}{after} | {limits.get(tool)} |")
        p()
        if limits.get("loopback_rtt_us") is not None:
            p(
                f"Loopback round trip between two processes: {fmt(limits['loopback_rtt_us'], 1)} µs "
                f"({limits.get('loopback_rtt_tool')}); no request at concurrency 1 takes less.\n"
            )

    reps = max((len(v) for v in by.values()), default=0)
    p(
        f"## Throughput (median of {reps} run{'s' if reps != 1 else ''}; MB = 10^6 bytes; "
        "ratio = Cairn / reference, > 1 means Cairn is faster)\n"
    )
    head = ["case", "unit"] + registries + [f"{c} / ref" for c in cairns]
    p("| " + " | ".join(head) + " |")
    p("|" + "---|" * 2 + "---:|" * (len(registries) + len(cairns)))
    for c in cases:
        key = primary(c)
        vals = {reg: med(c, reg, key) for reg in registries}
        cells = [c, "MB/s" if key == "mb_per_s" else "ops/s"]
        cells += [fmt(vals[reg]) for reg in registries]
        cells += [ratio(vals[reg], vals.get(REFERENCE)) for reg in cairns]
        p("| " + " | ".join(cells) + " |")
    p()

    p("## Latency, ms (median of runs: p50 / p99)\n")
    head = ["case"] + registries + [f"{c} / ref p50" for c in cairns]
    p("| " + " | ".join(head) + " |")
    p("|---|" + "---:|" * (len(registries) + len(cairns)))
    for c in cases:
        cells = [c]
        for reg in registries:
            cells.append(f"{fmt(med(c, reg, 'p50_ms'), 2)} / {fmt(med(c, reg, 'p99_ms'), 2)}")
        cells += [ratio(med(c, reg, "p50_ms"), med(c, REFERENCE, "p50_ms")) for reg in cairns]
        p("| " + " | ".join(cells) + " |")
    p()

    p("## Server resources (median: peak RSS MiB during the run / server CPU ms per op)\n")
    p("| case | " + " | ".join(registries) + " |")
    p("|---|" + "---:|" * len(registries))
    for c in cases:
        cells = [c]
        for reg in registries:
            cells.append(f"{fmt(med(c, reg, 'server_peak_rss_mib'))} / {fmt(cpu_ms_per_op(c, reg), 2)}")
        p("| " + " | ".join(cells) + " |")
    p()

    extra = [
        (c, reg, med(c, reg, "pages_per_op"))
        for c in cases
        for reg in registries
        if med(c, reg, "pages_per_op") is not None
    ]
    if extra:
        p("Requests per tag listing: " + ", ".join(f"{reg} {fmt(v)}" for _, reg, v in extra) + ".\n")
        rtt = limits.get("loopback_rtt_us") if limits else None
        if rtt:
            bounds = sorted({(reg, v) for c, reg, v in extra if c.endswith("-n100") and v})
            p(
                "At concurrency 1 a listing takes at least one loopback round trip per request: "
                + ", ".join(f"{reg} at most {fmt(1e6 / (rtt * v))} listings/s" for reg, v in bounds)
                + ".\n"
            )

    if failures:
        p("## Errors\n")
        for f in failures:
            p(f"- {f}")
        p()


if __name__ == "__main__":
    main()
