#!/usr/bin/env python3
"""Turns the JSON lines of scripts/bench.sh runs into a table of medians.

Usage: report.py RESULTS.jsonl OUT_DIR
A run counts only when it had no errors (non-2xx, socket errors) and, for writes, the
servers' write counters moved by at least the completed requests. Writes OUT_DIR/
results.json and OUT_DIR/results.md and prints the Markdown table.
"""
import json
import statistics
import sys
from collections import defaultdict

SCENARIOS = ["put-c1", "put-c16", "put-c64", "put-c64-follower",
             "get-c16", "get-c64", "stale-c64", "put-c64-tls"]


def problems(run):
    bad = []
    for field in ("non2xx", "connect_errors", "read_errors", "write_errors", "timeouts"):
        if run.get(field, 0):
            bad.append(f"{field}={run[field]}")
    if run["scenario"].startswith("put") and run.get("landed", 0) < run["requests"]:
        bad.append(f"landed {run.get('landed')} < completed {run['requests']}")
    return bad


def main():
    results, out_dir = sys.argv[1], sys.argv[2]
    runs = [json.loads(l) for l in open(results) if l.strip()]
    good = defaultdict(list)
    rejected = []
    for run in runs:
        bad = problems(run)
        if bad:
            rejected.append(f"{run['system']} {run['scenario']} rep {run['rep']}: " + ", ".join(bad))
        else:
            good[(run["system"], run["scenario"])].append(run)
    table = []
    for sc in SCENARIOS:
        row = {"scenario": sc}
        for system in ("quorum-kv", "etcd"):
            rs = good.get((system, sc), [])
            row[system] = {
                "runs": len(rs),
                "rps": statistics.median(r["rps"] for r in rs) if rs else None,
                "p50_ms": statistics.median(r["p50_ms"] for r in rs) if rs else None,
                "p99_ms": statistics.median(r["p99_ms"] for r in rs) if rs else None,
            }
        q, e = row["quorum-kv"]["rps"], row["etcd"]["rps"]
        row["ratio"] = round(q / e, 2) if q and e else None
        table.append(row)
    with open(f"{out_dir}/results.json", "w") as f:
        json.dump({"scenarios": table, "rejected_runs": rejected, "runs": runs}, f, indent=1)

    def cell(v, fmt):
        return fmt.format(v) if v is not None else "n/a"

    lines = ["| scenario | quorum-kv req/s | p50 ms | p99 ms | etcd req/s | p50 ms | p99 ms | ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in table:
        q, e = row["quorum-kv"], row["etcd"]
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            row["scenario"], cell(q["rps"], "{:,.0f}"), cell(q["p50_ms"], "{:.2f}"),
            cell(q["p99_ms"], "{:.2f}"), cell(e["rps"], "{:,.0f}"), cell(e["p50_ms"], "{:.2f}"),
            cell(e["p99_ms"], "{:.2f}"), cell(row["ratio"], "{:.2f}×")))
    runs_per = sorted({len(good.get((s, sc), [])) for s in ("quorum-kv", "etcd") for sc in SCENARIOS})
    lines.append("")
    lines.append(f"Medians of {', '.join(map(str, runs_per))} counted run(s) per cell; ratio = quorum-kv ÷ etcd req/s.")
    if rejected:
        lines.append("")
        lines.append("Runs not counted:")
        lines.extend(f"- {r}" for r in rejected)
    text = "\n".join(lines) + "\n"
    with open(f"{out_dir}/results.md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
