"""Images per second: the single-process classify path against Spark local[1] / local[2].

    python benchmarks/spark_throughput.py                    # micro fixture and tiny, 48 images
    python benchmarks/spark_throughput.py --models tiny --backend numpy --rounds 3

Every mode classifies the same files (tests/data/images repeated to --images files) with the
same model, batch size and top-k, and reads the bytes from disk itself:
- "single process": ``iter_classify`` over the paths in this process, BLAS (and Numba) with
  their default threads (one per core): what ``convnext-np classify`` does once the model is
  loaded;
- "CLI": ``convnext-np classify`` in a fresh process, start-up and model load included;
- Spark: ``binaryFile`` -> ``ImageClassifier`` -> ``collect`` in local[N] with
  ``spark.task.cpus`` = 1 (N workers with one thread each) or, for local[2] x 2, one task at a
  time with two threads. The first job (Python workers start, each loads the model) is timed
  separately ("first job"); images/s is the median (and best) of the warm jobs. The modes run
  interleaved, --rounds times, so that a burst of load from elsewhere hits them all.
Models: the committed micro fixture (10 labels) and "tiny": ConvNeXt-T at 224 with realistic
random weights (the 114 MB model users run; accuracy is irrelevant to speed).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = sorted((ROOT / "tests" / "data" / "images").iterdir())
MICRO = ROOT / "weights" / "fixtures" / "hf-safetensors"


def make_images(directory: Path, n: int) -> list:
    paths = []
    for i in range(n):
        src = IMAGES[i % len(IMAGES)]
        paths.append(directory / f"{i:04d}_{src.name}")
        shutil.copy(src, paths[-1])
    return paths


def make_tiny(directory: Path) -> Path:
    from safetensors.numpy import save_file

    from convnext_np import ConvNextConfig
    from convnext_np.testing import realistic_state_dict
    from convnext_np.weights import expected_shapes

    path = directory / "convnext-tiny-random.safetensors"
    save_file(realistic_state_dict(expected_shapes(ConvNextConfig.from_variant("tiny"))), str(path))
    return path


_LOADED = {}


def time_single_process(model_path, backend, paths, batch_size, top_k, repeats):
    import convnext_np as cnp
    from convnext_np.classify import iter_classify

    key = (str(model_path), backend)
    warmup = key not in _LOADED
    if warmup:
        _LOADED[key] = cnp.from_pretrained(model_path, backend=backend)
    model = _LOADED[key]
    times = []
    for _ in range(repeats + warmup):  # a first run (JIT, caches) is dropped
        t = time.perf_counter()
        results = list(iter_classify(paths, model, top_k, batch_size))
        times.append(time.perf_counter() - t)
        assert all(err is None for _, _, err in results)
    return [len(paths) / t for t in times[warmup:]], None


def time_cli(model_path, backend, directory, n, batch_size, top_k):
    exe = Path(sys.executable).with_name("convnext-np")
    cmd = [str(exe) if exe.exists() else "convnext-np", "classify", str(directory), "--model",
           str(model_path), "--backend", backend, "--batch-size", str(batch_size),
           "--top-k", str(top_k), "--format", "jsonl", "--no-progress"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return [], time.perf_counter() - t


def time_spark(model_path, backend, directory, n, batch_size, top_k, repeats, cores, task_cpus,
               partitions):
    from pyspark.sql import SparkSession

    from convnext_np.spark import ImageClassifier

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("convnext_np-throughput")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.task.cpus", str(task_cpus))
             .config("spark.sql.shuffle.partitions", str(partitions))
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.driver.host", "127.0.0.1").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        clf = ImageClassifier(modelPath=str(model_path), inputCol="content", topK=top_k,
                              batchSize=batch_size, backend=backend)

        def job():
            df = spark.read.format("binaryFile").load(str(directory)).repartition(partitions)
            t = time.perf_counter()
            rows = clf.transform(df).select("path", "predictions", "error").collect()
            elapsed = time.perf_counter() - t
            assert len(rows) == n and all(r.error is None for r in rows)
            return elapsed

        first = job()  # Python workers start and load the model (and JIT-compile, for numba)
        return [n / job() for _ in range(repeats)], first
    finally:
        spark.stop()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy as np
    import pyspark

    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"numpy {np.__version__}, pyspark {pyspark.__version__}, {platform.system()}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="micro,tiny", help="micro, tiny, or paths (comma-separated)")
    ap.add_argument("--backend", default="auto", help="auto, numpy or numba")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds; each runs every mode once, interleaved, against drifting load")
    ap.add_argument("--repeats", type=int, default=1, help="warm jobs per mode and round")
    ap.add_argument("--partitions", type=int, default=4,
                    help="partitions the binaryFile DataFrame is repartitioned to")
    args = ap.parse_args(argv)

    from convnext_np.backends import resolve

    backend = resolve(args.backend)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image_dir = tmp / "images"
        image_dir.mkdir()
        paths = make_images(image_dir, args.images)
        models = {}
        for name in args.models.split(","):
            models[name] = MICRO if name == "micro" else make_tiny(tmp) if name == "tiny" else Path(name)

        n, b, k, r = args.images, args.batch_size, args.top_k, args.repeats
        modes = [("single process (iter_classify)", "1 x all",
                  lambda m: time_single_process(m, backend, paths, b, k, r)),
                 ("CLI, fresh process", "1 x all",
                  lambda m: time_cli(m, backend, image_dir, n, b, k))]
        for cores, task_cpus in ((1, 1), (2, 1), (2, 2)):
            modes.append((f"Spark local[{cores}], task.cpus={task_cpus}",
                          f"{cores // task_cpus} x {task_cpus}",
                          lambda m, c=cores, tc=task_cpus: time_spark(
                              m, backend, image_dir, n, b, k, r, c, tc, args.partitions)))

        print(f"# {n} images ({len(IMAGES)} test images repeated), backend {backend}, batch size "
              f"{b}, top-k {k}, {args.partitions} partitions; {args.rounds} rounds x {r} warm "
              "job(s) per mode, interleaved")
        print(f"# {machine()}")
        print(f"# python benchmarks/spark_throughput.py {' '.join(argv or sys.argv[1:])}".rstrip())
        print("| model | mode | tasks x threads | images/s, median (best) | first job s (CLI: whole run) |")
        print("|---|---|---|---|---|")
        for name, model_path in models.items():
            rates = {label: [] for label, _, _ in modes}
            firsts = {label: [] for label, _, _ in modes}
            for _ in range(args.rounds):
                for label, _, run in modes:
                    rate, first = run(model_path)
                    rates[label] += rate
                    if first is not None:
                        firsts[label].append(first)
            for label, threads, _ in modes:
                if rates[label]:
                    rate_s = f"{statistics.median(rates[label]):.1f} ({max(rates[label]):.1f})"
                else:  # the CLI: the whole run, start-up and model load included
                    rate_s = f"{n / statistics.median(firsts[label]):.1f} incl. start-up"
                first_s = f"{statistics.median(firsts[label]):.1f}" if firsts[label] else ""
                print(f"| {name} | {label} | {threads} | {rate_s} | {first_s} |", flush=True)


if __name__ == "__main__":
    main()
