#!/usr/bin/env python3
"""Measures bench.py's formulation alternatives against each other.

Runs `bench.py` once per variant and repeat, whole processes, alternating the
variants (A B C A B C ...), and prints per variant the medians of training
samples/s, inference samples/s, batch-1 latency and peak RSS, with the most
any run saw of other processes' CPU use (above 0.25 cores a run is not to be
trusted) and the 1-minute load before the first run. Before each run it
waits (up to --wait seconds) until other processes use less than 0.2 cores
over 5 s, and a run that other processes disturbed anyway (more than 0.25
cores) is redone, up to --redo times (the table counts the discarded runs). Results as a Markdown
table (for docs/results/bench/pytorch-alternatives.md) and, with --json, raw.

    python3 bench/pytorch/alternatives.py --workload mmoe \\
        --data target/bench/census-like-200000-1.bin \\
        --variant base= --variant "mix mul=--mix mul" --repeats 3 -- --max-steps 100

A variant is `label=bench.py flags`; arguments after `--` go to every run.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

BUSY = 0.25


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(x for i, x in enumerate(v) if i not in (3, 4))


def wait_quiet(limit):
    """Waits until the machine's busy CPU is below 0.2 cores over 5 s; False after `limit` s."""
    end = time.time() + limit
    while time.time() < end:
        a = busy_ticks()
        time.sleep(5)
        if (busy_ticks() - a) / 100.0 / 5 < 0.2:
            return True
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--variant", action="append", required=True, help="label=flags")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write every run's JSON here")
    ap.add_argument("--wait", type=float, default=900, help="seconds to wait for a quiet machine before a run")
    ap.add_argument("--redo", type=int, default=3, help="redos of a run disturbed by other processes")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then flags for every run")
    a = ap.parse_args()
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    variants = []
    for v in a.variant:
        label, _, flags = v.partition("=")
        variants.append((label.strip(), shlex.split(flags)))
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    runs = {label: [] for label, _ in variants}
    discarded = {label: 0 for label, _ in variants}
    load_start = load_average()
    for rep in range(a.repeats):
        for label, flags in variants:
            for attempt in range(a.redo + 1):
                if not wait_quiet(a.wait):
                    print(f"the machine was not quiet for {a.wait:.0f} s; measuring anyway", file=sys.stderr)
                with tempfile.NamedTemporaryFile(suffix=".json") as out:
                    cmd = [sys.executable, script, "--workload", a.workload, "--data", a.data,
                           "--threads", str(a.threads), "--json", out.name, *flags, *rest]
                    load = load_average()
                    subprocess.run(cmd, check=True, env=env)
                    with open(out.name) as f:
                        r = json.load(f)
                r["load_before"] = load
                print(f"[{rep + 1}/{a.repeats}] {label}: train {r['train_samples_per_s']:.0f}/s, "
                      f"infer {r['infer_samples_per_s']:.0f}/s, latency {r['latency_us_median']:.0f} us, "
                      f"other cpu {r['other_cpu']:.2f}, load {load:.2f}", file=sys.stderr, flush=True)
                if r["other_cpu"] <= BUSY or attempt == a.redo:
                    break
                discarded[label] += 1
                print("    disturbed by other processes: redone", file=sys.stderr, flush=True)
            runs[label].append(r)

    med = lambda label, key: statistics.median(r[key] for r in runs[label])
    base = variants[0][0]
    print(f"\n{a.workload}: medians of {a.repeats} alternating runs, {a.threads} threads, "
          f"load {load_start:.2f} at the start; flags for every run: `{' '.join(rest)}`\n")
    print("| variant | flags | train samples/s (runs) | vs first | inference samples/s | vs first "
          "| batch-1 latency median (us) | peak RSS (MB) | warm-up s | max other CPU (cores) | redone |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, flags in variants:
        tr = [r["train_samples_per_s"] for r in runs[label]]
        print(f"| {label} | `{' '.join(flags)}` | {med(label, 'train_samples_per_s'):.0f} "
              f"({', '.join(f'{t:.0f}' for t in tr)}) "
              f"| {med(label, 'train_samples_per_s') / med(base, 'train_samples_per_s'):.2f} "
              f"| {med(label, 'infer_samples_per_s'):.0f} "
              f"| {med(label, 'infer_samples_per_s') / med(base, 'infer_samples_per_s'):.2f} "
              f"| {med(label, 'latency_us_median'):.0f} | {med(label, 'peak_rss_train_mb'):.0f} "
              f"| {med(label, 'warmup_secs'):.1f} "
              f"| {max(r['other_cpu'] for r in runs[label]):.2f} | {discarded[label]} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"workload": a.workload, "repeats": a.repeats, "threads": a.threads,
                       "flags": rest, "load_start": load_start, "runs": runs,
                       "discarded": discarded}, f, indent=1)


if __name__ == "__main__":
    main()
