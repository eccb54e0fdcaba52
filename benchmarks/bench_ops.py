"""Where the time goes in convnext_np's forward pass: per op and stage, and inside the fused block.

    python benchmarks/bench_ops.py                          # tiny @224, batch 1, 2 threads, both backends
    python benchmarks/bench_ops.py --backend numba --batch 8 --variant small

Part 1 times every call the forward pass makes (stem, downsampling, blocks, head, and the ops
inside them; for ``numpy`` the block's residual and layer scale are its time outside the ops) and
reports the median per forward pass over --reps passes. "glue" is the rest of ``model(x)``: the
input check, the NCHW <-> NHWC transposes and, for a batch run in groups (below), the wait for
the other groups.

Part 2 (numba) takes the first block of each stage, with its real weights and input, and times
the fused kernel against the same work as separate Numba kernels, against its two GEMMs alone
(through the kernels' own tiling), and against NumPy's sgemm on those two GEMMs: what fusion
saves, and what stands between the block and the GEMM floor.

For ``numpy`` at a batch of several images the model runs one group of images per thread at
once (``threads.over_images``); Part 1 then times the ops of the calling thread's group only, per
image of the whole batch: the other groups run the same ops alongside, so that is each op's share
of the wall time.

Each configuration runs in a fresh process with the thread count in its environment.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

OPS = ("patchify", "depthwise_conv", "layer_norm", "linear", "gelu", "global_avg_pool")


def _median_ms(values, batch):
    return 1e3 * statistics.median(values) / batch


def per_op(backend: str, d: Path, size: int, batch: int, reps: int) -> dict:
    """{"rows": [(part, op, ms per image)], "total": ms per image} for one backend (in-process)."""
    import convnext_np as cnp
    from convnext_np import backends, model as M

    net = cnp.from_pretrained(d, backend=backend)
    ops = backends.get(backend)
    dims = net.config.hidden_sizes
    x = harness.pixels(batch, size)
    net(x)  # before the ops are wrapped: a cold Numba cache compiles here, on small warm-up models
    acc = defaultdict(float)
    where, in_op = ["glue"], [False]
    caller = threading.current_thread()

    def part(label_of, f):
        def wrapped(*args, **kwargs):
            if threading.current_thread() is not caller:  # another group's
                return f(*args, **kwargs)
            label = label_of(args[0])
            outer, where[0] = where[0], label
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                acc[(label, "(all)")] += time.perf_counter() - t0
                where[0] = outer
        return wrapped

    def leaf(name, f):
        def wrapped(*args, **kwargs):
            if in_op[0] or threading.current_thread() is not caller:
                # an op that calls another (patchify calls linear) is counted once; another
                # group's ops are not counted (the module docstring)
                return f(*args, **kwargs)
            in_op[0] = True
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                acc[(where[0], name)] += time.perf_counter() - t0
                in_op[0] = False
        return wrapped

    layers = ("stem", "downsample", "block", "head")
    saved = {n: getattr(M, n) for n in layers}
    saved_ops = {n: getattr(ops, n) for n in OPS + layers if hasattr(ops, n)}
    labels = {"stem": lambda x: "stem", "head": lambda x: "head",
              "downsample": lambda x: f"stage {dims.index(x.shape[-1]) + 2} downsample",
              "block": lambda x: f"stage {dims.index(x.shape[-1]) + 1} blocks"}
    try:
        for n in layers:  # a backend's fused layer replaces the model's composition
            owner = ops if hasattr(ops, n) else M
            setattr(owner, n, part(labels[n], getattr(owner, n)))
        for n in OPS:
            setattr(ops, n, leaf(n, saved_ops[n]))
        for _ in range(2):
            net(x)
        per_pass, totals = defaultdict(list), []
        for _ in range(reps):
            acc.clear()
            t0 = time.perf_counter()
            net(x)
            totals.append(time.perf_counter() - t0)
            parts = [v for (label, op), v in acc.items() if op == "(all)"]
            acc[("glue", "(all)")] = totals[-1] - sum(parts)
            for key, v in acc.items():
                per_pass[key].append(v)
    finally:
        for n, f in saved.items():
            setattr(M, n, f)
        for n, f in saved_ops.items():
            setattr(ops, n, f)
    rows = []
    for (label, op), values in per_pass.items():
        rows.append((label, op, _median_ms(values, batch)))
    for label in {label for label, _ in per_pass}:  # time inside a part but outside any op
        inner = [per_pass[(label, op)] for (lb, op) in per_pass if lb == label and op != "(all)"]
        if inner:
            rest = [total - sum(v[i] for v in inner) for i, total in enumerate(per_pass[(label, "(all)")])]
            rows.append((label, "outside the ops" + (" (residual, layer scale)" if "blocks" in label else ""),
                         _median_ms(rest, batch)))
    order = ["stem"] + [f"stage {s} {k}" for s in range(1, 5) for k in ("downsample", "blocks")] + ["head", "glue"]
    rows.sort(key=lambda r: (order.index(r[0]), r[1] != "(all)", -r[2]))
    return {"rows": rows, "total": _median_ms(totals, batch), "total_min": 1e3 * min(totals) / batch}


def inside_block(d: Path, size: int, batch: int, reps: int) -> list:
    """Per stage: fused block vs separate kernels vs its GEMMs alone vs NumPy sgemm (ms per image)."""
    import numpy as np

    import convnext_np as cnp
    from convnext_np import kernels

    net = cnp.from_pretrained(d, backend="numba")
    firsts = {}
    real_block = kernels.block

    def capture(x, **p):
        firsts.setdefault(x.shape[-1], (x.copy(), p))
        return real_block(x, **p)

    kernels.block = capture
    try:
        net(harness.pixels(batch, size))
    finally:
        kernels.block = real_block

    def timed(f):
        f()
        f()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return _median_ms(ts, batch)

    rows = []
    for c, (x, p) in sorted(firsts.items()):
        eps = p.pop("eps")
        p.pop("ops", None)
        h_in = kernels.depthwise_conv(x, p["dwconv_w"], p["dwconv_b"])
        h_in = kernels.layer_norm(h_in, p["norm_w"], p["norm_b"], eps)
        h = kernels.gelu(kernels.linear(h_in, p["pwconv1_w"], p["pwconv1_b"]))

        def separate():
            y = kernels.depthwise_conv(x, p["dwconv_w"], p["dwconv_b"])
            y = kernels.layer_norm(y, p["norm_w"], p["norm_b"], eps)
            y = kernels.gelu(kernels.linear(y, p["pwconv1_w"], p["pwconv1_b"]))
            return x + p["gamma"] * kernels.linear(y, p["pwconv2_w"], p["pwconv2_b"])

        time.sleep(0.3)  # NumPy's OpenBLAS threads (the previous stage's sgemm) stop spinning first
        fused = timed(lambda: kernels.block(x, **p, eps=eps))
        sep = timed(separate)
        gemms = timed(lambda: (kernels.linear(h_in, p["pwconv1_w"], p["pwconv1_b"]),
                               kernels.linear(h, p["pwconv2_w"], p["pwconv2_b"])))
        a, b = h_in.reshape(-1, c), h.reshape(-1, 4 * c)
        o1, o2 = np.empty((a.shape[0], 4 * c), np.float32), np.empty((a.shape[0], c), np.float32)
        time.sleep(0.3)  # Numba's OpenMP threads stop spinning before NumPy's BLAS starts
        floor = timed(lambda: (np.matmul(a, p["pwconv1_w"], out=o1), np.matmul(b, p["pwconv2_w"], out=o2)))
        stage = cnp.ConvNextConfig.from_json_file(d / "config.json").hidden_sizes.index(c) + 1
        rows.append({"stage": stage, "shape": list(x.shape), "fused": fused, "separate": sep, "gemms": gemms,
                     "floor": floor})
    return rows


def run_in_subprocess(part: str, backend: str, variant: str, size: int, batch: int, threads: int, reps: int):
    d = harness.model_dir(variant, size)
    spec = {"part": part, "backend": backend, "dir": str(d), "size": size, "batch": batch, "reps": reps}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                         text=True, env=harness.thread_env(threads), cwd=harness.ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_op_table(result: dict) -> str:
    lines = ["| part | op | ms/image | share |", "|---|---|---|---|"]
    for label, op, ms in result["rows"]:
        lines.append(f"| {label} | {op} | {ms:.2f} | {100 * ms / result['total']:.1f}% |")
    lines.append(f"| **forward pass** | | **{result['total']:.1f}** (min {result['total_min']:.1f}) | |")
    return "\n".join(lines)


def inside_table(rows: list) -> str:
    lines = ["| stage | block input | fused block | same work as separate kernels | its 2 GEMMs alone (kernels.linear) "
             "| NumPy sgemm, same 2 GEMMs | fused / sgemm |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {'x'.join(map(str, r['shape']))} | {r['fused']:.2f} | {r['separate']:.2f} "
                     f"| {r['gemms']:.2f} | {r['floor']:.2f} | {r['fused'] / r['floor']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", nargs="+", default=["numba", "numpy"], choices=["numba", "numpy"])
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        d = Path(spec["dir"])
        if spec["part"] == "per_op":
            print(json.dumps(per_op(spec["backend"], d, spec["size"], spec["batch"], spec["reps"])))
        else:
            print(json.dumps(inside_block(d, spec["size"], spec["batch"], spec["reps"])))
        return
    for batch in args.batch:
        for backend in args.backend:
            print(f"\n## {backend}, {args.variant} @{args.size}, batch {batch}, {args.threads} threads: ms per image\n")
            print(per_op_table(run_in_subprocess("per_op", backend, args.variant, args.size, batch,
                                                 args.threads, args.reps)))
        if "numba" in args.backend:
            print(f"\n## inside the fused block (numba), batch {batch}: ms per image\n")
            print(inside_table(run_in_subprocess("inside", "numba", args.variant, args.size, batch,
                                                 args.threads, args.reps)))


if __name__ == "__main__":
    main()
