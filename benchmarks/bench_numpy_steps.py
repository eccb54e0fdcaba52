"""NumPy's ways to write one step of ``ops.gelu``, each against its equal: ns per element.

    python benchmarks/bench_numpy_steps.py          # 7 rounds

``ops.gelu`` runs a chain of ufuncs over chunks of ``ops.GELU_CHUNK`` float32 elements. Three of
its steps can each be written two ways that give the same values: |x| capped at 40 as
``np.abs`` then ``np.minimum`` or ``np.clip(x, -40, 40)`` then ``np.abs``, max(x, 0) as
``np.maximum(x, 0)`` or ``np.clip(x, 0, inf)``, and 1 / t as ``np.reciprocal(t)`` or
``np.divide(1, t)``. This checks that both forms of each give the same values (as ``==`` compares
them: ``np.clip`` keeps the sign of -0.0 where ``np.maximum`` gives +0.0) on one chunk of
standard-normal values with nan, the infinities, the signed zeros and values past the cap in it,
and times them on that chunk, written ``out=`` into a preallocated buffer as ``ops.gelu`` does;
and ``ops.gelu`` itself on the tiny's stage-1 fc1 output at batch 1 (3136 x 384). One thread
(NumPy's ufuncs run in the calling thread); alternating rounds, best of 200 calls per round (20
for ``ops.gelu``), medians of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from convnext_np import ops  # noqa: E402


def best_ns_per_element(f, size: int, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times) / size * 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(ops.GELU_CHUNK).astype(np.float32)
    x[:9] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 40, -40, 1e4, -1e4]
    t = np.abs(x) + 1
    out = np.empty_like(x)
    steps = {
        "abs(x) capped at 40": {"np.abs, then np.minimum(a, 40)": lambda: np.minimum(np.abs(x, out=out), 40, out=out),
                             "np.clip(x, -40, 40), then np.abs": lambda: np.abs(np.clip(x, -40, 40, out=out), out=out)},
        "max(x, 0)": {"np.maximum(x, 0)": lambda: np.maximum(x, 0, out=out),
                      "np.clip(x, 0, inf)": lambda: np.clip(x, 0, np.inf, out=out)},
        "1 / t": {"np.reciprocal(t)": lambda: np.reciprocal(t, out=out),
                  "np.divide(1, t)": lambda: np.divide(1, t, out=out)},
    }
    for step, forms in steps.items():
        first, second = (f().copy() for f in forms.values())
        assert np.array_equal(first, second, equal_nan=True), step
    fc1 = rng.standard_normal((3136, 384)).astype(np.float32)
    runs = {(step, form): [] for step, forms in steps.items() for form in forms}
    runs[("ops.gelu", "(3136, 384)")] = []
    for r in range(args.rounds):
        keys = list(runs) if r % 2 else list(runs)[::-1]
        for step, form in keys:
            if step == "ops.gelu":
                runs[(step, form)].append(best_ns_per_element(lambda: ops.gelu(fc1), fc1.size, 20))
            else:
                runs[(step, form)].append(best_ns_per_element(steps[step][form], x.size, 200))
    print(f"{harness.machine()['cpu']}; NumPy {np.__version__}; one chunk of {x.size} float32 elements\n")
    print("| step | form | ns per element |\n|---|---|---|")
    for (step, form), values in runs.items():
        print(f"| {step} | {form} | {statistics.median(values):.3f} |")


if __name__ == "__main__":
    main()
