"""convnext_np (both backends) against PyTorch eager, ONNX Runtime, OpenVINO and the GEMM floor, interleaved.

    python benchmarks/bench_model.py                                # tiny @224, batch 1 and 8, 2 threads
    python benchmarks/bench_model.py --variant base --batch 1 8 32 --threads 1 --contenders numba onnxruntime
    python benchmarks/bench_model.py --report docs/performance.md   # everything; writes the doc

Every contender runs in its own worker process with the thread count in its environment, warms
up (at least 3 passes and 1 s per batch size), then the workers take turns, order rotating,
each timing a ~0.6 s slice of forward passes after a 0.3 s pause, for --rounds rounds. Reported:
median (min-max) milliseconds per image over all timed passes, the fraction of the machine's
float32 FMA peak (``fma_peak.c``) each reaches, and the ratios the targets are stated in (numba
against the faster of ONNX Runtime and OpenVINO). The "GEMM floor" contender runs only the forward pass's GEMMs (stem,
fc1/fc2 of every block, downsampling, classifier) with ``np.matmul`` into preallocated outputs;
"the same GEMMs, convnext_np's kernel" runs them through the body of ``kernels.linear``, so that
``numba / its own GEMMs`` is what the rest of the forward pass costs on top of its GEMMs.

--report adds, in fresh processes: peak RSS (VmHWM) of classifying one batch; launch-to-first-
logits with a cold Numba cache (``backend="auto"``, which serves with NumPy while the kernels
compile in the background, and ``"numba"`` by name, which compiles in the call) and a warm one
(and ``import convnext_np`` alone), with the package's bytecode written first, as an installed
package has it; the per-op
breakdown of ``bench_ops.py``; and the scaling runs (tiny/small/base @224, tiny @384, batch
1/8/32, 1 vs 2 threads). It writes the markdown to the given path, machine details included.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ops  # noqa: E402
import harness  # noqa: E402
from harness import LABELS, fmt, stats  # noqa: E402

TARGETS = {
    "numba_vs_best_onnx": 1.0,  # against the faster of ONNX Runtime and OpenVINO
    "numba_fma_fraction": 0.40,  # of the machine's FMA peak, at batch 8
    "numpy_vs_torch": 2.0, "warm_start_s": 1.0, "cold_start_s": 5.0,
}
GFLOP = {}  # (variant, size) -> GFLOP per image (2 x MACs), from convnext_np.summary


def gflop(variant: str, size: int) -> float:
    if (variant, size) not in GFLOP:
        import convnext_np as cnp
        from convnext_np.summary import stage_rows

        config = cnp.ConvNextConfig.from_variant(variant, image_size=size)
        GFLOP[variant, size] = 2 * sum(row["macs"] for row in stage_rows(config, size)) / 1e9
    return GFLOP[variant, size]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def comparison(variant, size, batches, threads, rounds, contenders, unset=()) -> dict:
    d = harness.model_dir(variant, size, onnx=bool(set(contenders) & set(harness.ONNX_CONTENDERS)))
    log(f"{variant} @{size}, batches {batches}, {threads} threads: {', '.join(contenders)}"
        + (f" (without {', '.join(unset)})" if unset else ""))
    times = harness.interleaved(contenders, d, size, batches, threads, rounds, log=log, unset=unset)
    return {c: {b: stats(v, b) for b, v in per.items()} for c, per in times.items()}


def ratio(res, a, b, batch):
    if a in res and b in res:
        return res[a][batch]["median"] / res[b][batch]["median"]
    return None


def best_onnx(res, batch):
    """The faster of ONNX Runtime and OpenVINO at ``batch`` (the bar), or None."""
    there = [c for c in harness.ONNX_CONTENDERS if c in res]
    return min(there, key=lambda c: res[c][batch]["median"]) if there else None


def comparison_table(res: dict, batches, variant="tiny", size=224, peak=None) -> str:
    """ms/image per contender and batch; with ``peak`` (GFLOP/s), the fraction of it each reaches."""
    head = "| | " + " | ".join(f"batch {b}: ms/image, median (min-max)" for b in batches)
    head += " | " + " | ".join(f"batch {b}: of FMA peak" for b in batches) if peak else ""
    lines = [head + " |", "|---" * (len(batches) * (2 if peak else 1) + 1) + "|"]
    for c in harness.CONTENDERS:
        if c in res:
            row = f"| {LABELS[c]} | " + " | ".join(fmt(res[c][b]) for b in batches)
            if peak and c != "gemms":
                row += " | " + " | ".join(f"{gflop(variant, size) / (res[c][b]['median'] / 1e3) / peak:.0%}"
                                          for b in batches)
            elif peak:
                row += " |" * len(batches)
            lines.append(row + " |")
    for batch in batches:
        bar = best_onnx(res, batch)
        r = ratio(res, "numba", bar, batch) if bar else None
        if r is not None:
            lines.append(f"| *numba / the faster of ONNX Runtime and OpenVINO, batch {batch} ({LABELS[bar]})* | "
                         + " | ".join(f"{r:.2f}" if b == batch else "" for b in batches) + " |"
                         + (" |" * len(batches) if peak else ""))
    pairs = [("numba", "onnxruntime", "numba / ONNX Runtime"), ("numba", "openvino", "numba / OpenVINO"),
             ("numba", "floor", "numba / GEMM floor"),
             ("numba", "gemms", "numba / its own GEMMs alone"),
             ("numba", "torch", "numba / PyTorch eager"), ("numpy", "torch", "numpy / PyTorch eager"),
             ("onnxruntime", "floor", "ONNX Runtime / GEMM floor")]
    for a, b, label in pairs:
        rs = [ratio(res, a, b, batch) for batch in batches]
        if all(r is not None for r in rs):
            lines.append(f"| *{label}* | " + " | ".join(f"{r:.2f}" for r in rs) + " |"
                         + (" |" * len(batches) if peak else ""))
    return "\n".join(lines)


def targets(res: dict, batches, starts: dict | None, memory: dict | None, peak=None,
            variant="tiny", size=224) -> str:
    lines = []

    def check(name, ok, detail):
        lines.append(f"- {'met' if ok else '**not met**'}: {name} ({detail})")

    for batch in batches:
        bar = best_onnx(res, batch)
        r = ratio(res, "numba", bar, batch) if bar else None
        if r is not None:
            check(f"numba no slower than the faster of ONNX Runtime and OpenVINO, batch {batch}",
                  r <= TARGETS["numba_vs_best_onnx"], f"{LABELS[bar]}: ratio {r:.2f}")
        if peak and batch == 8 and "numba" in res:
            f = gflop(variant, size) / (res["numba"][batch]["median"] / 1e3) / peak
            check(f"numba at >= {TARGETS['numba_fma_fraction']:.0%} of the FMA peak, batch {batch}",
                  f >= TARGETS["numba_fma_fraction"], f"{f:.0%} of {peak:.0f} GFLOP/s")
        r = ratio(res, "numpy", "torch", batch)
        if r is not None:
            check(f"numpy within 2x of PyTorch eager, batch {batch}", r <= TARGETS["numpy_vs_torch"], f"ratio {r:.2f}")
    if memory:
        for batch, per in memory.items():
            if "numba" in per and "torch" in per:
                check(f"peak RSS of numba no higher than PyTorch's, batch {batch}", per["numba"] <= per["torch"],
                      f"{per['numba']:.0f} vs {per['torch']:.0f} MiB")
    if starts and "numba warm" in starts:
        s = starts["numba warm"]["launch_to_logits_s"]
        check(f"warm-cache start to first logits under {TARGETS['warm_start_s']:.0f} s", s < TARGETS["warm_start_s"],
              f"{s:.2f} s")
    if starts and "auto cold" in starts:
        s = starts["auto cold"]["launch_to_logits_s"]
        check(f"cold-cache start to first logits under {TARGETS['cold_start_s']:.0f} s (backend \"auto\")",
              s < TARGETS["cold_start_s"], f"{s:.2f} s")
    return "\n".join(lines)


def memory(variant, size, batches, threads, contenders) -> dict:
    d = harness.model_dir(variant, size, onnx=bool(set(contenders) & set(harness.ONNX_CONTENDERS)))
    if "numba" in contenders:  # compile into Numba's cache first: the peak is that of a warm start
        harness.run_oneshot("numba", d, size, 1, threads)
    out = {}
    for batch in batches:
        out[batch] = {}
        for c in contenders:
            log(f"  peak RSS: {c}, batch {batch}")
            r = harness.run_oneshot(c, d, size, batch, threads)
            out[batch][c] = r["peak_kib"] / 1024
            out[batch][c + " loaded"] = r["rss_loaded_kib"] / 1024
    return out


def memory_table(mem: dict, contenders) -> str:
    lines = ["| | " + " | ".join(f"peak, batch {b}" for b in mem) + " | after loading |",
             "|---" * (len(mem) + 2) + "|"]
    first = next(iter(mem))
    for c in contenders:
        lines.append(f"| {LABELS[c]} | " + " | ".join(f"{mem[b][c]:.0f} MiB" for b in mem)
                     + f" | {mem[first][c + ' loaded']:.0f} MiB |")
    return "\n".join(lines)


def startup(variant, size, threads, contenders, runs=3) -> dict:
    d = harness.model_dir(variant, size, onnx=bool(set(contenders) & set(harness.ONNX_CONTENDERS)))
    harness.byte_compile()
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        log("  start-up: auto, cold cache (NumPy serves while the kernels compile in the background)")
        out["auto cold"] = harness.run_oneshot("auto", d, size, 1, threads, NUMBA_CACHE_DIR=cache)
        started = time.monotonic()
        while not list(Path(cache).rglob("convnext_np-warm.json")):  # the background warm-up
            if time.monotonic() - started > 900:
                raise RuntimeError("the background warm-up did not finish in 15 minutes")
            time.sleep(0.5)
        marker = json.loads(next(Path(cache).rglob("convnext_np-warm.json")).read_text())
        out["auto cold"]["background_compile_s"] = marker["seconds"]
    with tempfile.TemporaryDirectory() as cache:
        log("  start-up: numba by name, cold cache")
        out["numba cold"] = harness.run_oneshot("numba", d, size, 1, threads, NUMBA_CACHE_DIR=cache)
        warm = [harness.run_oneshot("numba", d, size, 1, threads, NUMBA_CACHE_DIR=cache) for _ in range(runs)]
        out["numba warm"] = min(warm, key=lambda r: r["launch_to_logits_s"])
        out["numba warm"]["all"] = [r["launch_to_logits_s"] for r in warm]
    for c in contenders:
        if c != "numba":
            log(f"  start-up: {c}")
            rs = [harness.run_oneshot(c, d, size, 1, threads) for _ in range(runs)]
            out[c] = min(rs, key=lambda r: r["launch_to_logits_s"])
            out[c]["all"] = [r["launch_to_logits_s"] for r in rs]
    return out


def startup_table(starts: dict) -> str:
    lines = ["| | launch -> first logits (batch 1) | of which the first forward pass | `import convnext_np` "
             "| imports Numba? |", "|---|---|---|---|---|"]
    names = {"auto cold": 'auto, cold cache (NumPy serves; the kernels compile in the background)',
             "numba cold": 'numba by name, cold cache (compiles in the call)', "numba warm": "numba, warm cache"}
    for key, r in starts.items():
        allruns = r.get("all")
        spread = f" (runs: {', '.join(f'{s:.2f}' for s in allruns)})" if allruns else ""
        imp = "" if r["import_s"] is None else f"{r['import_s']:.2f} s"
        numba = "" if r["numba_imported_by_import"] is None else ("yes" if r["numba_imported_by_import"] else "no")
        lines.append(f"| {names[key] if key in names else LABELS[key]} | {r['launch_to_logits_s']:.2f} s{spread} "
                     f"| {r['first_forward_s']:.2f} s | {imp} | {numba} |")
    return "\n".join(lines)


SCALING = [  # (variant, size, batches, threads, contenders)
    ("tiny", 224, [1, 8, 32], 2, ["numba", "numpy", "torch", "onnxruntime", "floor"]),
    ("tiny", 224, [1, 8], 1, ["numba", "numpy", "torch", "onnxruntime", "floor"]),
    ("tiny", 384, [1, 8], 2, ["numba", "torch", "onnxruntime", "floor"]),
    ("small", 224, [1, 8], 2, ["numba", "torch", "onnxruntime", "floor"]),
    ("base", 224, [1, 8], 2, ["numba", "torch", "onnxruntime", "floor"]),
]


def report(path: Path, args) -> None:
    started = time.time()
    command = "python benchmarks/bench_model.py " + " ".join(sys.argv[1:])
    facts = harness.machine()
    main_contenders = ["numba", "numpy", "torch", "onnxruntime", "openvino", "floor", "gemms"]
    batches = [1, 8]
    log("FMA peak")
    peak = harness.fma_peak(args.threads)
    facts[f"float32 FMA peak, {args.threads} threads (benchmarks/fma_peak.c)"] = \
        f"{peak:.0f} GFLOP/s" if peak else "not measured (no C compiler or no FMA)"
    res = comparison("tiny", 224, batches, args.threads, args.rounds, main_contenders)
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    native = None
    if pinned and not args.no_native:  # the environment pins OpenBLAS's kernels: also measure without
        native = comparison("tiny", 224, batches, args.threads, args.rounds, main_contenders,
                            unset=("OPENBLAS_CORETYPE",))
        native_cores = subprocess.run(
            [sys.executable, "-c", "import sys; sys.path.insert(0, %r); import harness; "
             "print(', '.join(harness.openblas_cores()))" % str(Path(__file__).parent)],
            capture_output=True, text=True, env=harness.thread_env(args.threads, ("OPENBLAS_CORETYPE",))
        ).stdout.strip()
    log("peak RSS")
    mem = memory("tiny", 224, [1, 8, 32], args.threads, ["numba", "numpy", "torch", "onnxruntime"])
    log("start-up")
    starts = startup("tiny", 224, args.threads, ["numba", "numpy", "torch", "onnxruntime", "openvino"])
    log("per-op breakdown")
    breakdown = {(b, batch): bench_ops.run_in_subprocess("per_op", b, "tiny", 224, batch, args.threads, args.reps)
                 for batch in batches for b in ("numba", "numpy")}
    inside = {batch: bench_ops.run_in_subprocess("inside", "numba", "tiny", 224, batch, args.threads, args.reps)
              for batch in batches}
    scaling = []
    if not args.no_scaling:
        for variant, size, bs, threads, contenders in SCALING:
            log(f"scaling: {variant} @{size}, {threads} threads")
            scaling.append(((variant, size, bs, threads),
                            comparison(variant, size, bs, threads, max(3, args.rounds - 2), contenders)))
    minutes = (time.time() - started) / 60

    facts["numba threading layer"] = starts["numba warm"].get("threading_layer")
    facts["numba threads"] = args.threads
    facts_md = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    cold, warm = starts["numba cold"]["launch_to_logits_s"], starts["numba warm"]["launch_to_logits_s"]
    parts = [
        "# Performance",
        "",
        "Produced by the command below on the machine below; not typed. Every number is a "
        "measurement of this run, and on a shared machine spreads of 20-40% are normal: the "
        "medians of interleaved runs are what to compare.",
        "",
        f"```\n{command}\n```",
        "",
        f"Run {datetime.datetime.fromtimestamp(started).isoformat(timespec='seconds')}, "
        f"took {minutes:.1f} min.",
        "",
        "## Machine",
        "",
        facts_md,
        "",
        f"## ConvNeXt-T @224, float32, {args.threads} threads",
        "",
        "Interleaved (see `benchmarks/bench_model.py`); realistic random weights, the same for all.",
        "",
        (f"With the environment as it is here: `OPENBLAS_CORETYPE={pinned}`, so NumPy's OpenBLAS runs "
         "those kernels (the GEMM floor, and every GEMM of the numpy backend); the numba backend "
         "uses its own GEMM kernel, ONNX Runtime (MLAS) and PyTorch (oneDNN) theirs." if pinned else ""),
        "",
        comparison_table(res, batches, peak=peak),
        "",
        f"ConvNeXt-T @224 is {gflop('tiny', 224):.2f} GFLOP per image (2 x the MACs of "
        "`convnext-np info tiny`); the FMA-peak columns divide that rate by the machine's peak.",
        "",
        "### Targets",
        "",
        targets(res, batches, starts, mem, peak),
        "",
    ]
    if native is not None:
        parts += [
            f"### The same without `OPENBLAS_CORETYPE` (OpenBLAS's own choice here: {native_cores})",
            "",
            "Measured in the same way right after the table above; only the kernels of NumPy's OpenBLAS "
            "change (the numpy backend and the GEMM floor).",
            "",
            comparison_table(native, batches, peak=peak),
            "",
            targets(native, batches, None, None, peak),
            "",
        ]
    parts += [
        "## Peak memory (VmHWM of a fresh process that loads the model and classifies one batch)",
        "",
        memory_table(mem, ["numba", "numpy", "torch", "onnxruntime"]),
        "",
        "## Start-up (fresh process, batch 1)",
        "",
        "convnext_np's bytecode is written first (`harness.byte_compile`), as `pip install` writes it.",
        "",
        startup_table(starts),
        "",
        f"Cold Numba compile costs about {cold - warm:.1f} s in the call when the numba backend is "
        f"asked for by name, and {starts['auto cold']['background_compile_s']:.1f} s in the background "
        "warm-up that `backend=\"auto\"` starts while NumPy serves (`convnext_np/warmup.py`); once "
        "per machine either way (Numba's on-disk cache). `import convnext_np` imports no Numba and "
        "compiles nothing (tested in `tests/test_kernels.py`).",
        "",
        "## Where the time goes (`benchmarks/bench_ops.py`)",
        "",
    ]
    for batch in batches:
        for b in ("numba", "numpy"):
            parts += [f"### backend=\"{b}\", batch {batch}", "", bench_ops.per_op_table(breakdown[(b, batch)]), ""]
        parts += [f"### Inside the fused block (numba), batch {batch}: ms per image", "",
                  bench_ops.inside_table(inside[batch]), ""]
    if scaling:
        parts += ["## Scaling", ""]
        for (variant, size, bs, threads), r in scaling:
            parts += [f"### {variant} @{size}, {threads} thread{'s' if threads > 1 else ''}", "",
                      comparison_table(r, bs), ""]
    text = "\n".join(parts) + "\n"
    Path(path).write_text(text)
    print(text)
    log(f"wrote {path} ({minutes:.1f} min)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=15, help="forward passes per breakdown (--report)")
    ap.add_argument("--contenders", nargs="+", default=["numba", "numpy", "torch", "onnxruntime", "openvino",
                                                        "floor"],
                    choices=harness.CONTENDERS)
    ap.add_argument("--report", type=Path, help="run everything and write the markdown here")
    ap.add_argument("--no-scaling", action="store_true", help="with --report: skip the scaling runs")
    ap.add_argument("--no-native", action="store_true",
                    help="with --report: skip the re-run without OPENBLAS_CORETYPE when the environment sets it")
    args = ap.parse_args(argv)
    if (args.report or "numba" in args.contenders) and harness.plan_source() == "default":
        log("note: no GEMM plan is chosen for this machine and this kernels.py yet, so the numba backend runs "
            "the default blocking; python -m convnext_np.warmup chooses one (a few minutes, once)")
    if args.report:
        report(args.report, args)
        return
    facts = harness.machine()
    peak = harness.fma_peak(args.threads)
    res = comparison(args.variant, args.size, args.batch, args.threads, args.rounds, args.contenders)
    print(f"\n{args.variant} @{args.size}, {args.threads} threads, on {facts['cpu']}; "
          f"FMA peak {f'{peak:.0f} GFLOP/s' if peak else 'not measured'}\n")
    print(comparison_table(res, args.batch, args.variant, args.size, peak))
    print()
    print(targets(res, args.batch, None, None, peak, args.variant, args.size))


if __name__ == "__main__":
    main()
