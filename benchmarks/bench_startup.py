"""Warm start of the numba backend, by phase, in fresh processes.

    python benchmarks/bench_startup.py                 # tiny @224, batch 1, 2 threads, 6 runs
    python benchmarks/bench_startup.py --runs 10

Each run is a fresh interpreter with a warm Numba cache (run ``python -m convnext_np.warmup``
first, or let the first run compile) and the package's bytecode written, as an installed package
has it (``harness.byte_compile``): ``import convnext_np``; ``from_pretrained`` (the weights,
and the Numba import that resolving the backend does); the first forward pass (Numba's compiler
initialisation, the kernels' cache loads, packing the weights, the pass itself); a second pass
for comparison. ``from_pretrained`` starts Numba's import and initialisation in a thread
(``backends.prepare``) before it reads the weights, so part of the first pass's set-up overlaps the
load. Reported: median (min-max) seconds per phase; "total" is import + load + first pass, the
interpreter's own start and the input's creation left out.
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
t1 = time.perf_counter()
model = cnp.from_pretrained(sys.argv[1], backend="numba")
t2 = time.perf_counter()
from convnext_np.testing import random_pixels
x = random_pixels((1, 3, int(sys.argv[2]), int(sys.argv[2])), seed=0)
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
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args(argv)
    d = harness.model_dir(args.variant, args.size)
    env = harness.thread_env(args.threads)
    print(f"{args.variant} @{args.size}, batch 1, {args.threads} threads, on {harness.machine()['cpu']}")
    harness.byte_compile()
    child = [sys.executable, "-c", CHILD, str(d), str(args.size)]
    subprocess.run(child, env=env, check=True, capture_output=True,
                   cwd=harness.ROOT)  # compiles if the cache is cold; not counted
    runs = [json.loads(subprocess.run(child, env=env, check=True, capture_output=True, text=True,
                                      cwd=harness.ROOT).stdout.strip().splitlines()[-1])
            for _ in range(args.runs)]
    phases = list(runs[0])
    print("\n| " + " | ".join(phases) + " |")
    print("|---" * len(phases) + "|")
    print("| " + " | ".join(f"{statistics.median(r[p] for r in runs):.3f} ({min(r[p] for r in runs):.3f}-"
                            f"{max(r[p] for r in runs):.3f})" for p in phases) + " |")

if __name__ == "__main__":
    main()
