"""ConvNeXt V2 against ConvNeXt V1 of the same size on the Numba backend, side by side.

    python benchmarks/bench_v2.py                      # tiny @224, batch 1 and 8, 2 threads
    python benchmarks/bench_v2.py --cold-start         # also: the first forward pass with a cold
                                                       # Numba cache (compilation), V1 and V2

What GRN costs (Woo et al. 2023, Sec. 3): the V2 block is the V1 block less its layer scale plus
a GRN between fc1 and fc2, which needs the sums of squares of an image's whole fc1 output before
fc2 can start (docs/kernels.md). Two worker processes (``harness.Worker``), one per model, with
realistic random weights of the same variant, take turns as in ``bench_model.py`` (order
rotating, a pause before each ~0.6 s slice). Reported: median (min-max) wall-clock ms per image,
and V2 / V1 of the medians; then the same for the process's CPU time, which on a machine shared
with other work says more about the work each pass does (with one thread; with more it also
counts the time threads spin at barriers). The CPU and the load average are printed first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import fmt, stats  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cold-start", action="store_true",
                    help="also time one forward pass in a fresh process with an empty Numba cache")
    args = ap.parse_args(argv)

    print(f"CPU: {harness.machine()['cpu']}; {args.threads} threads; load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} before")
    dirs = {name: harness.model_dir(args.variant, args.size, model_type=name)
            for name in ("convnext", "convnextv2")}
    workers = {}
    try:
        for name, d in dirs.items():
            log(f"  starting {name} ...")
            workers[name] = harness.Worker("numba", d, args.size, args.batch, args.threads)
        times = {name: {b: [] for b in args.batch} for name in workers}
        cpu = {name: {b: [] for b in args.batch} for name in workers}
        order = list(workers)
        for r in range(args.rounds):
            for b in args.batch:
                for name in order[r % 2:] + order[:r % 2]:
                    w = workers[name]
                    time.sleep(harness.SETTLE_S)
                    times[name][b] += w.time(b, max(1, round(0.6 / max(w.estimate[b], 1e-6))))
                    cpu[name][b] += w.last_cpu
            log(f"  round {r + 1}/{args.rounds} done")
    finally:
        for w in workers.values():
            w.close()

    for what, measured in (("wall-clock", times), ("CPU", cpu)):
        print(f"\n{args.variant} @{args.size}, backend numba, {args.threads} threads: {what} ms per image, "
              "median (min-max)")
        print(f"{'batch':>5s}  {'ConvNeXt V1':>22s}  {'ConvNeXt V2':>22s}  {'V2 / V1':>8s}")
        for b in args.batch:
            v1, v2 = stats(measured["convnext"][b], b), stats(measured["convnextv2"][b], b)
            print(f"{b:5d}  {fmt(v1):>22s}  {fmt(v2):>22s}  {v2['median'] / v1['median']:8.3f}")
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} after")

    if args.cold_start:
        print("\nfirst forward pass (batch 1) in a fresh process, empty Numba cache (compiling):")
        for name, d in dirs.items():
            with tempfile.TemporaryDirectory() as cache:
                r = harness.run_oneshot("numba", d, args.size, 1, args.threads, NUMBA_CACHE_DIR=cache)
            print(f"  {'ConvNeXt V2' if name == 'convnextv2' else 'ConvNeXt V1'}: {r['first_forward_s']:.1f} s "
                  f"wall-clock, {r['first_forward_cpu_s']:.1f} s CPU")


if __name__ == "__main__":
    main()
