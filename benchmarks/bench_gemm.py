"""The numba backend's GEMM under each candidate plan (``kernels.candidate_plans``) against NumPy's matmul.

    python benchmarks/bench_gemm.py                    # this CPU's plans + numpy, 2 threads
    python benchmarks/bench_gemm.py --lanes 8 --rounds 9

The same measurement that ``python -m convnext_np.warmup`` makes to choose this machine's plan
(``warmup.time_gemms``): ConvNeXt-T's fc1 and fc2 of every stage at 224, batch 1 and 8, each
contender in its own worker process, timed round-robin with the order rotating. Reported per
GEMM: GFLOP/s of the median round and of the fastest, and the fastest's fraction of the
machine's FMA peak (``fma_peak.c``); and each plan's score, the tuner's criterion (ms per image
over the shapes, fastest rounds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import harness  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--lanes", type=int, choices=[4, 8, 16], help="plans for this vector width (default: the CPU's)")
    ap.add_argument("--plans", nargs="+", help="plans 'lanes,mr,nr,mc,kc' instead of the candidates")
    args = ap.parse_args(argv)
    os.environ.update(harness.thread_env(args.threads))
    from convnext_np import kernels, warmup

    plans = args.plans or [",".join(map(str, p)) for p in kernels.candidate_plans(args.lanes)]
    facts = harness.machine()
    peak = harness.fma_peak(args.threads)
    print(f"{facts['cpu']}; {args.threads} threads; FMA peak "
          f"{f'{peak:.0f} GFLOP/s' if peak else 'not measured'}; {args.rounds} rounds", flush=True)
    times = warmup.time_gemms(plans + ["numpy"], rounds=args.rounds)
    names = {p: str(kernels.parse_plan(p)) for p in plans} | {"numpy": "NumPy matmul"}
    for batch in warmup.TUNE_BATCHES:
        shapes = warmup.gemm_shapes(batch)
        print(f"\n### batch {batch}: GFLOP/s, median round / fastest (fastest's fraction of the FMA peak)\n")
        print("| contender | " + " | ".join(f"({m}x{k})@({k}x{n})" for m, k, n in shapes) + " | ms/image, median / fastest |")
        print("|---" * (len(shapes) + 2) + "|")
        for c in plans + ["numpy"]:
            med = [statistics.median(per) for per in zip(*times[c][batch])]
            best = [min(per) for per in zip(*times[c][batch])]
            cells = [f"{2 * m * k * n / s / 1e9:.0f} / {2 * m * k * n / b / 1e9:.0f}"
                     + (f" ({2 * m * k * n / b / 1e9 / peak:.0%})" if peak else "")
                     for (m, k, n), s, b in zip(shapes, med, best)]
            print(f"| {names[c]} | " + " | ".join(cells) + f" | {1e3 * sum(med) / batch:.2f} / "
                  f"{1e3 * sum(best) / batch:.2f} |")
    print("\n### tuner score (ms per image, batch 1 + batch 8)\n")
    for c in plans + ["numpy"]:
        print(f"- {names[c]}: {1e3 * warmup.plan_score(times[c]):.2f}")


if __name__ == "__main__":
    main()
