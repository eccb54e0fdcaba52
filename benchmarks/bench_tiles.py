"""The numba backend's row tiles: the whole forward pass with other tile sizes, in one process.

    python benchmarks/bench_tiles.py                       # batch 1, 8 and 32, 2 threads, 8 rounds
    python benchmarks/bench_tiles.py --tiles 20/32 17/32 --batch 8

A fused layer on many rows splits them into tiles of at most ``kernels.TILE_FLOATS`` floats of
its widest scratch (the block's fc1 output, tile rows x 4C) and at least
``kernels.MIN_TILE_ROWS`` rows. Both are read in Python on each call, so one process can switch
between them: each "E/R" of --tiles is TILE_FLOATS = 2^E and MIN_TILE_ROWS = R. Per batch size
and round, every setting runs two forward passes of the tiny @224 (realistic random weights),
in an order that alternates between rounds; reported: the median over rounds of each setting's
faster pass, ms per image. The process runs with --threads in its environment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", nargs="+", default=["20/32", "18/32", "17/32", "16/32"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args(argv)
    if os.environ.get("NUMBA_NUM_THREADS") != str(args.threads):  # the thread count is set at start
        sys.exit(subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])],
                                env=harness.thread_env(args.threads)).returncode)

    from convnext_np import kernels

    settings = [(1 << int(e), int(r)) for e, r in (t.split("/") for t in args.tiles)]
    forward = harness.build("numba", harness.model_dir("tiny", 224), args.threads)
    print(f"{harness.machine()['cpu']}; {args.threads} threads, tiny @224, {args.rounds} rounds; "
          "ms per image, medians\n")
    print("| batch | " + " | ".join(f"2^{t.bit_length() - 1} floats, >= {r} rows" for t, r in settings)
          + " |\n|---|" + "---|" * len(settings))
    for batch in args.batch:
        x = harness.pixels(batch, 224)
        best = {s: [] for s in settings}
        for s in settings:  # each setting's first pass packs nothing new, but may touch fresh scratch
            kernels.TILE_FLOATS, kernels.MIN_TILE_ROWS = s
            forward(x)
        for r in range(args.rounds):
            for s in (settings if r % 2 == 0 else settings[::-1]):
                kernels.TILE_FLOATS, kernels.MIN_TILE_ROWS = s
                passes = []
                for _ in range(2):
                    t0 = time.perf_counter()
                    forward(x)
                    passes.append(time.perf_counter() - t0)
                best[s].append(min(passes) * 1e3 / batch)
        print(f"| {batch} | " + " | ".join(f"{statistics.median(best[s]):.2f}" for s in settings) + " |")


if __name__ == "__main__":
    main()
