#!/usr/bin/env python3
"""CPU time and wake-ups per committed transaction, per kind of thread.

    python3 perf/thread-cpu.py START_S WINDOW_S COMMAND...
    python3 perf/thread-cpu.py 2.5 4 target/release/compare --seconds 6 --rounds 1 --configs overlap

Starts COMMAND, reads every thread's user + system ticks and voluntary context switches
from /proc/<pid>/task/*/ at START_S and again WINDOW_S later, waits for the command to
end, and divides by the committed/s figure it printed (tricommit-load's summary, or
the last compare round). Threads are grouped by name, digits at the end dropped
(tc-replica-0..2 become tc-replica-#). Ticks are 10 ms, so keep the window at a few
seconds. Pick START_S after the engine has opened and the warm-up has passed, and keep
START_S + WINDOW_S inside the run.
"""
import collections
import os
import re
import subprocess
import sys
import time


def sample(pid):
    """{tid: (group, cpu_ticks, voluntary_switches)} for the threads alive now."""
    found = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                comm = f.read().strip()
            with open(f"{base}/stat") as f:
                stat = f.read()
            with open(f"{base}/status") as f:
                status = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        switches = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
        if switches is None:
            continue
        ticks = int(fields[11]) + int(fields[12])
        found[tid] = (re.sub(r"[0-9]+$", "#", comm), ticks, int(switches.group(1)))
    return found


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    start_s, window_s, command = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    time.sleep(start_s)
    before, t0 = sample(child.pid), time.monotonic()
    time.sleep(window_s)
    after, t1 = sample(child.pid), time.monotonic()
    output = child.communicate()[0]
    # tricommit-load's summary line first ("committed/s  N"): its per-second lines
    # ("N committed/s") end with a partial second. Then compare's rounds.
    rates = re.findall(r"committed/s\s+(\d+)", output) or re.findall(
        r"(\d+) committed/s", output)
    if child.returncode != 0 or not rates:
        sys.exit(f"the command failed or printed no committed/s:\n{output[-2000:]}")
    committed_per_s = float(rates[-1])
    groups = collections.defaultdict(lambda: [0, 0])
    for tid, (group, ticks, switches) in after.items():
        if tid in before:
            groups[group][0] += ticks - before[tid][1]
            groups[group][1] += switches - before[tid][2]
    window = t1 - t0
    total = sum(ticks for ticks, _ in groups.values())

    def us_per_txn(ticks):
        return ticks / ticks_per_s / window / committed_per_s * 1e6

    print(f"committed/s {committed_per_s:.0f}  cpu {total / ticks_per_s / window:.0%}  "
          f"us/txn {us_per_txn(total):.3f}")
    for group, (ticks, switches) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        print(f"  {group:18} cpu {ticks / ticks_per_s / window:6.1%}  "
              f"us/txn {us_per_txn(ticks):6.3f}  "
              f"wake-ups per 1000 txns {switches / window / committed_per_s * 1e3:6.2f}")


if __name__ == "__main__":
    main()
