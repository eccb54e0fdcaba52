"""The auto-vectorised kernels (GELU, LayerNorm) compiled for 256-bit against 512-bit vectors.

    python benchmarks/bench_vector_width.py          # 2 threads, 7 rounds

On Intel CPUs with AVX-512, LLVM's tuning for the CPU (``prefer-256-bit``) vectorises plain
loops with 256-bit vectors; the two IR kernels (GEMM, depthwise conv) use the full width whatever
the tuning, and the plain-loop kernels ask for it per function (``kernels._wide_vectors``). This
times ``kernels.gelu`` and ``kernels.layer_norm`` at the tiny's stage-1 fc1 shape, batch 1
((3136, 384)), and the fused block's fc1 epilogue (``_bias_gelu``, one call on a 256 x 384
tile, in the calling thread), in fresh processes: as built, and with ``NUMBA_CPU_FEATURES`` set to the host's
features plus ``-prefer-256-bit,+prefer-512-bit``, the process-wide setting (which compiles the
kernels anew: the features are part of Numba's cache key). With the per-function request working,
the two agree. Alternating rounds; best of 20 calls per round; medians of the rounds, ns per
element.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

CHILD = """
import json, time
import numpy as np
from convnext_np import kernels
x = np.random.default_rng(0).standard_normal((3136, 384)).astype(np.float32)
w, b = np.ones(384, np.float32), np.zeros(384, np.float32)
out = {}
tile = x[:256].copy()  # the fc1 epilogue, bias + GELU, on one of the block's 256-row tiles
for name, f, size in (("gelu", lambda: kernels.gelu(x), x.size),
                      ("layer_norm", lambda: kernels.layer_norm(x, w, b, 1e-6), x.size),
                      ("bias_gelu", lambda: kernels._bias_gelu(tile, 0, 256, 0, 384, b), tile.size)):
    f()
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    out[name] = min(times) / size * 1e9
print(json.dumps(out))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    import llvmlite.binding as ll

    env = harness.thread_env(args.threads)
    wide = dict(env, NUMBA_CPU_FEATURES=ll.get_host_cpu_features().flatten() + ",-prefer-256-bit,+prefer-512-bit")
    modes = {"as built": env, "512-bit preferred process-wide": wide}
    print(f"{harness.machine()['cpu']}, {args.threads} threads; LLVM CPU {ll.get_host_cpu_name()}")
    runs = {m: [] for m in modes}
    for r in range(args.rounds + 1):
        for mode in (list(modes) if r % 2 else list(modes)[::-1]):
            out = subprocess.run([sys.executable, "-c", CHILD], env=modes[mode], check=True, capture_output=True,
                                 text=True, cwd=harness.ROOT)
            if r:  # the first round compiles
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("\n| vectors | gelu ns/element | layer_norm ns/element | bias_gelu (one thread's tile) ns/element |\n"
          "|---|---|---|---|")
    for mode, rs in runs.items():
        print(f"| {mode} | " + " | ".join(f"{statistics.median(r[k] for r in rs):.3f}" for k in ("gelu", "layer_norm", "bias_gelu"))
              + " |")


if __name__ == "__main__":
    os.environ.pop("NUMBA_CPU_FEATURES", None)
    main()
