#!/usr/bin/env python3
"""Splits a profile's samples by the engine module they were spent in.

    python3 perf/by-module.py perf/out/stacks.folded

Reads inferno's folded stacks (perf/flamegraph.sh writes them) and gives every sample
to the nearest frame on its stack, leaf first, that belongs to a known module; samples
with none (scheduler, futex waits outside a known module) are grouped by what they
are. Prints each group's share of all samples.
"""
import collections
import sys

MODULES = [
    ("idempotent ids (runtime::dedup)", ["runtime::dedup"]),
    ("tickets (issue, complete, wait)", ["pipeline::ticket"]),
    ("admission and intake hop (Engine::submit, MPSC, doorbells)",
     ["pipeline::mpsc", "pipeline::wait", "pipeline::admission", "Engine::submit"]),
    ("ledger (reserve, post, op encoding)", ["ledger::"]),
    ("WAL append and sync (user and kernel)",
     ["tricommit_wal", "SiteIo::write_appends", "SiteIo::finish_sync", "io_uring"]),
    ("protocol state machines",
     ["proto::coordinator", "proto::participant", "proto::member", "proto::record",
      "proto::checkpoint", "proto::msg", "proto::Output", "proto::predict"]),
    ("batcher", ["run_batcher", "pipeline::batcher"]),
    ("completion stage", ["run_completion"]),
    ("site loops and routing", ["runtime::site", "runtime::stages"]),
    ("load generator", ["tricommit_load::"]),
]


def module_of(frames):
    for frame in reversed(frames):
        for name, patterns in MODULES:
            if any(pattern in frame for pattern in patterns):
                return name
    if frames[0].startswith("iou-wrk"):
        return "WAL append and sync (user and kernel)"
    if any("futex" in f or "schedule" in f for f in frames):
        return "parking and waking (futex, scheduler)"
    return "other (" + frames[0] + ")"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: by-module.py STACKS_FOLDED")
    shares = collections.Counter()
    total = 0
    with open(sys.argv[1]) as folded:
        for line in folded:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            total += int(count)
            shares[module_of(stack.split(";"))] += int(count)
    if total == 0:
        sys.exit("no samples")
    for name, count in shares.most_common():
        print(f"{100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
