"""Packing the tiny's GEMM weights into panels, alone and beside a thread that runs Python.

    python benchmarks/bench_pack.py                 # 5 rounds

``kernels.pack`` (one strided copy per weight, and one for a partial last panel) against a copy
per panel, the form it replaced, on the 41 GEMM weights of ConvNeXt-T with this machine's NR.
A model packs its weights on its first call while Numba's set-up may still run in a background
thread (``backends.prepare``), which executes Python and so holds the interpreter lock in turns;
the "beside Python" columns reproduce that with a thread that sums in a loop. Reported: median
seconds over rounds (fresh output arrays each time, so page faults included) and NumPy copies made.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import harness  # noqa: E402
from convnext_np import ConvNextConfig, kernels  # noqa: E402


def per_panel(w):
    """The panels of ``w`` made one copy per panel."""
    k, n = w.shape
    nr = kernels.NR
    panels = np.zeros((-(-n // nr), k, nr), np.float32)
    for jp in range(panels.shape[0]):
        panels[jp, :, :min(nr, n - jp * nr)] = w[:, jp * nr:(jp + 1) * nr]
    return panels


def tiny_weights():
    config, rng = ConvNextConfig.from_variant("tiny"), np.random.default_rng(0)
    return [rng.standard_normal((k, n), dtype=np.float32) for _, k, n in harness.gemm_shapes(config, 224, 1)]


def timed(pack, weights, busy: bool) -> float:
    stop = threading.Event()
    if busy:
        threading.Thread(target=lambda: [sum(range(1000)) for _ in iter(stop.is_set, True)], daemon=True).start()
    t0 = time.perf_counter()
    for w in weights:
        pack(w)
    seconds = time.perf_counter() - t0
    stop.set()
    return seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    weights = tiny_weights()
    assert all(np.array_equal(kernels.pack(w), per_panel(w)) for w in weights)
    nr = kernels.NR
    copies = {"kernels.pack": sum(1 + (w.shape[1] % nr > 0) for w in weights),
              "a copy per panel": sum(-(-w.shape[1] // nr) for w in weights)}
    contenders = {"kernels.pack": kernels.pack, "a copy per panel": per_panel}
    times = {(name, busy): [] for name in contenders for busy in (False, True)}
    for r in range(args.rounds):
        for name in (list(contenders) if r % 2 else list(contenders)[::-1]):
            for busy in (False, True):
                times[name, busy].append(timed(contenders[name], weights, busy))
    print(f"ConvNeXt-T's {len(weights)} GEMM weights, NR = {nr}, {args.rounds} rounds; median seconds\n")
    print("| packing | copies | alone | beside Python |\n|---|---|---|---|")
    for name in contenders:
        print(f"| {name} | {copies[name]} | {statistics.median(times[name, False]):.3f} | "
              f"{statistics.median(times[name, True]):.3f} |")


if __name__ == "__main__":
    main()
