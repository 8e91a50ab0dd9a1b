#!/usr/bin/env python3
"""Summarises perf/many-core.sh's output folder as issue 14's tables (markdown).

Usage: python3 perf/many-core-summary.py OUT_DIR

Prints the scaling table (median committed/s per core count over the rounds, and its
ratio to the 2-core median), the open-loop latency table (client latency from the
intended send time: medians over the rounds of p50, p99 and p99.9, and each run's
per-stage p99 with the machine probe's sync and wake-up p99, which explain the tail),
and goal 3's ratio (median of compare's per-round 3PC/2PC ratios). A missing or
failed run is reported, never filled in.
"""

import json
import re
import statistics
import sys
from pathlib import Path


def load_runs(out_dir, prefix):
    """{key: [json, ...]} for OUT_DIR/<prefix>-<key>-r<round>.json, rounds in order."""
    runs = {}
    pattern = re.compile(rf"^{prefix}-(\d+)-r(\d+)\.json$")
    for path in sorted(out_dir.iterdir()):
        match = pattern.match(path.name)
        if not match:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            print(f"warning: {path.name} unreadable: {error}", file=sys.stderr)
            continue
        key, round_ = int(match.group(1)), int(match.group(2))
        runs.setdefault(key, []).append((round_, data))
    return {key: [data for _, data in sorted(values, key=lambda v: v[0])]
            for key, values in runs.items()}


def failed_runs(out_dir, prefix):
    """Logs of runs that left no JSON (the script records them as FAILED)."""
    names = []
    for log in sorted(out_dir.glob(f"{prefix}-*.log")):
        if not log.with_suffix(".json").exists():
            names.append(log.stem)
    return names


def scaling(out_dir):
    runs = load_runs(out_dir, "scale")
    if not runs:
        print("no scaling runs")
        return
    medians = {}
    for cores in sorted(runs):
        rates = [run["committed_per_s"] for run in runs[cores]]
        medians[cores] = statistics.median(rates)
    # The ratio is to the 2-core figure; the fewest cores measured otherwise.
    base_cores = 2 if 2 in medians else min(medians)
    base = medians[base_cores]
    print(f"| cores | committed/s (median) | runs | × {base_cores} cores |")
    print("| ---: | ---: | --- | ---: |")
    for cores in sorted(runs):
        rates = ", ".join(f"{rate:,.0f}" for rate in
                          (run["committed_per_s"] for run in runs[cores]))
        ratio = medians[cores] / base if base else float("nan")
        print(f"| {cores} | {medians[cores]:,.0f} | {rates} | {ratio:.2f} |")
    for name in failed_runs(out_dir, "scale"):
        print(f"failed: {name}")


def stage_p99(run, section, stage):
    for entry in run.get("latency_breakdown_us", {}).get(section, []):
        if entry.get("stage") == stage:
            return entry.get("p99")
    return None


def latency(out_dir):
    runs = load_runs(out_dir, "rate")
    if not runs:
        print("no latency runs")
        return
    print("| target/s | achieved/s | p50 | p99 | p99.9 | cpu % | runs |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rate in sorted(runs):
        group = runs[rate]
        med = lambda values: statistics.median(values)  # noqa: E731
        lat = [run["latency_us"] for run in group]
        print(f"| {rate:,} | {med([r['committed_per_s'] for r in group]):,.0f}"
              f" | {med([l['p50'] for l in lat]) / 1000:.2f} ms"
              f" | {med([l['p99'] for l in lat]) / 1000:.2f} ms"
              f" | {med([l['p999'] for l in lat]) / 1000:.2f} ms"
              f" | {med([r['cpu_percent'] for r in group]):.0f}"
              f" | {len(group)} |")
    print()
    print("Per run, p99 of each stage and of the machine probe (µs):")
    stages = ["batching", "queued", "prepare", "pre_commit", "completion", "engine"]
    print("| target/s | round | " + " | ".join(stages) + " | sync_4k | wakeup |")
    print("| ---: | ---: |" + " ---: |" * (len(stages) + 2))
    for rate in sorted(runs):
        for round_, run in enumerate(runs[rate], start=1):
            cells = [stage_p99(run, "stages", stage) for stage in stages]
            cells += [stage_p99(run, "probe", "sync_4k"), stage_p99(run, "probe", "wakeup")]
            text = " | ".join("-" if cell is None else f"{cell:,}" for cell in cells)
            print(f"| {rate:,} | {round_} | {text} |")
    for name in failed_runs(out_dir, "rate"):
        print(f"failed: {name}")


def protocols(out_dir):
    path = out_dir / "compare.json"
    if not path.exists():
        print("no compare run")
        return
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        # compare writes its JSON at the end: a run cut short leaves none, or an
        # empty file, and compare.log says how far it got.
        print(f"compare.json unreadable ({error}); see compare.log")
        return
    configs = {config["name"]: config for config in report.get("configs", [])}
    if "overlap" not in configs or "2pc" not in configs:
        print("compare.json lacks overlap or 2pc")
        return
    three = [r["committed_per_s"] for r in configs["overlap"]["rounds"]]
    two = [r["committed_per_s"] for r in configs["2pc"]["rounds"]]
    ratios = [a / b for a, b in zip(three, two) if b]
    if not ratios:
        print("compare.json has no rounds with both protocols")
        return
    print(f"3PC (overlap) median {statistics.median(three):,.0f}/s, "
          f"2PC median {statistics.median(two):,.0f}/s; "
          f"median of {len(ratios)} per-round ratios {statistics.median(ratios):.3f} "
          f"({', '.join(f'{r:.3f}' for r in ratios)})")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(sys.argv[1])
    if not out_dir.is_dir():
        print(f"many-core-summary.py: {out_dir} is not a folder", file=sys.stderr)
        return 2
    machine = out_dir / "machine.txt"
    if machine.exists():
        print(machine.read_text().strip())
        print()
    scaling(out_dir)
    print()
    latency(out_dir)
    print()
    protocols(out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
