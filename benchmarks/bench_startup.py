"""Warm start of the numba backend, by phase, with and without ``backends.prepare``, in fresh processes.

    python benchmarks/bench_startup.py                 # tiny @224, batch 1, 2 threads, 6 pairs
    python benchmarks/bench_startup.py --pairs 10

Each run is a fresh interpreter with a warm Numba cache (run ``python -m convnext_np.warmup``
first, or let the first run compile): ``import convnext_np``; ``from_pretrained`` (the weights,
and the Numba import that resolving the backend does); the first forward pass (Numba's compiler
initialisation, the kernels' cache loads, packing the weights, the pass itself); a second pass
for comparison. "prepare" calls ``backends.prepare("numba")`` before ``from_pretrained``, which
initialises Numba in a thread while the weights load. Runs alternate between the two. Reported:
median (min-max) seconds per phase; "total" is import + load + first pass, the interpreter's own
start and the input's creation left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import convnext_np as cnp
from convnext_np import backends
t1 = time.perf_counter()
if sys.argv[2] == "prepare":
    backends.prepare("numba")
model = cnp.from_pretrained(sys.argv[1], backend="numba")
t2 = time.perf_counter()
from convnext_np.testing import random_pixels
x = random_pixels((1, 3, int(sys.argv[3]), int(sys.argv[3])), seed=0)
t3 = time.perf_counter()
model(x)
t4 = time.perf_counter()
model(x)
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first pass": t4 - t3, "second pass": t5 - t4,
                  "total": (t2 - t0) + (t4 - t3)}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=6)
    args = ap.parse_args(argv)
    d = harness.model_dir(args.variant, args.size)
    env = harness.thread_env(args.threads)
    print(f"{args.variant} @{args.size}, batch 1, {args.threads} threads, on {harness.machine()['cpu']}")
    runs = {"plain": [], "prepare": []}
    subprocess.run([sys.executable, "-c", CHILD, str(d), "plain", str(args.size)], env=env, check=True,
                   capture_output=True, cwd=harness.ROOT)  # compiles if the cache is cold; not counted
    for i in range(args.pairs):
        for mode in (("plain", "prepare") if i % 2 == 0 else ("prepare", "plain")):
            out = subprocess.run([sys.executable, "-c", CHILD, str(d), mode, str(args.size)], env=env,
                                 check=True, capture_output=True, text=True, cwd=harness.ROOT)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    phases = list(runs["plain"][0])
    print("\n| | " + " | ".join(phases) + " |")
    print("|---" * (len(phases) + 1) + "|")
    for mode, rs in runs.items():
        cells = [f"{statistics.median(r[p] for r in rs):.3f} ({min(r[p] for r in rs):.3f}-"
                 f"{max(r[p] for r in rs):.3f})" for p in phases]
        print(f"| {mode} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
